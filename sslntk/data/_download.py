"""Downloading an archive: resumable (HTTP Range), checksum-verified, atomic, with a progress bar.

`fetch(url, path, md5=...)` streams `url` into `path.part` (same folder), resuming an existing
`.part` with `Range: bytes=<size>-` (a server answering 200 instead of 206 restarts it), retries a
connection that ends early (again with Range) up to `retries` times, verifies the MD5, then
`os.replace`s `.part` onto `path`. `path` therefore only ever holds a complete, verified file. On a
checksum mismatch, an HTTP error, or a transfer still short after the retries the `.part` is
deleted and `DownloadError` raised (nothing partial is left behind); only when the process itself
is stopped (KeyboardInterrupt, kill) the `.part` stays, so the next call resumes it.

Progress: `tqdm` when it is installed, else a plain text meter on stderr.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class DownloadError(OSError):
    """A download failed (network, truncated transfer, checksum mismatch)."""


def md5sum(path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()  # noqa: S324 - the datasets publish MD5s; integrity, not security
    with open(path, "rb") as fh:
        while b := fh.read(chunk):
            h.update(b)
    return h.hexdigest()


class _TextMeter:
    def __init__(self, total, desc, stream, every=0.5):
        self.total, self.desc, self.stream, self.every = total, desc, stream, every
        self.n, self._last = 0, 0.0

    def update(self, k):
        self.n += k
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._print()

    def _print(self):
        mb = self.n / 2**20
        if self.total:
            pct = 100.0 * self.n / self.total
            msg = f"\r{self.desc}: {mb:8.1f} / {self.total / 2**20:.1f} MiB ({pct:5.1f}%)"
        else:
            msg = f"\r{self.desc}: {mb:8.1f} MiB"
        print(msg, end="", file=self.stream, flush=True)

    def close(self):
        self._print()
        print(file=self.stream, flush=True)


def _meter(total, initial, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        m = _TextMeter(total, desc, sys.stderr)
        m.n = initial
        return m
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc)


def _total_from(resp, start: int) -> int | None:
    cr = resp.headers.get("Content-Range")
    if cr:
        m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", cr)
        if m and m.group(3) != "*":
            return int(m.group(3))
    cl = resp.headers.get("Content-Length")
    return start + int(cl) if cl is not None else None


def _one_request(url, part: Path, timeout, chunk, meter_state, progress, desc):
    """One GET (ranged when `part` has bytes). Returns (bytes now in part, total or None)."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "sslntk"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) dataset URLs
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # range not satisfiable: restart from scratch
            part.unlink()
            return 0, None
        raise
    with resp:
        status = getattr(resp, "status", 200)
        if have and status != 206:  # server ignored Range: start over
            have = 0
        if status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                have = 0  # an unexpected range: start over with a full request next time
                part.unlink(missing_ok=True)
                return 0, None
        total = _total_from(resp, have)
        if meter_state.get("meter") is None:
            meter_state["meter"] = _meter(total, have, desc, progress)
        meter = meter_state["meter"]
        with open(part, "ab" if have else "wb") as fh:
            while True:
                try:
                    b = resp.read(chunk)
                except (http.client.IncompleteRead, ConnectionError, TimeoutError):
                    break  # the connection dropped: the caller retries with Range
                if not b:
                    break
                fh.write(b)
                if meter is not None:
                    meter.update(len(b))
        return part.stat().st_size, total


def fetch(url: str, path, *, md5: str | None = None, progress: bool = True,
          timeout: float = 60.0, retries: int = 3, chunk: int = 1 << 16) -> Path:
    """Download `url` to `path` (see the module docstring): resumable, MD5-checked, atomic.
    Returns `path`. An existing `path` is trusted only if its MD5 matches (or `md5` is None)."""
    if not isinstance(url, str) or not re.match(r"https?://", url):
        raise ValueError(f"url: expected an http(s) URL, got {url!r}")
    if md5 is not None and not (isinstance(md5, str) and re.fullmatch(r"[0-9a-f]{32}", md5)):
        raise ValueError(f"md5: expected 32 lowercase hex digits, got {md5!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries: expected an integer >= 0, got {retries!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    path = Path(path)
    if path.exists() and (md5 is None or md5sum(path) == md5):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    state: dict = {}
    desc = path.name
    try:
        got, total = 0, None
        for _attempt in range(retries + 1):
            try:
                got, total = _one_request(url, part, timeout, chunk, state, progress, desc)
            except urllib.error.HTTPError as e:
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                    TimeoutError) as e:
                if _attempt == retries:
                    raise DownloadError(f"{url}: {getattr(e, 'reason', e)} (after "
                                        f"{retries + 1} attempts)") from None
                continue
            if total is not None and got == total:
                break
            if total is None and got > 0:
                break  # no length announced: the transfer ended cleanly
        else:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: truncated transfer, got {got} of {total} bytes after "
                                f"{retries + 1} attempts (nothing kept)")
        if total is not None and got != total:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: expected {total} bytes, got {got} (nothing kept)")
        if md5 is not None:
            have = md5sum(part)
            if have != md5:
                part.unlink(missing_ok=True)
                raise DownloadError(f"{url}: checksum mismatch for {path.name}: expected MD5 {md5}, "
                                    f"got {have} (downloaded file deleted)")
        os.replace(part, path)
    except (KeyboardInterrupt, SystemExit):
        raise  # the process is being stopped: keep the .part, the next call resumes it
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        m = state.get("meter")
        if m is not None:
            m.close()
    return path
