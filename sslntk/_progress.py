"""Plain-text progress for long runs (no extra dependency; works in terminals, CI logs, notebooks)."""

from __future__ import annotations

import sys
import time


class Progress:
    """`with Progress(total, "label") as p: ... p.update(1)` prints `label: i/total (eta)` at most
    every `every` seconds to stderr. `enabled=False` makes it silent."""

    def __init__(self, total: int, label: str = "", *, enabled: bool = True, every: float = 2.0,
                 stream=None):
        self.total, self.label, self.enabled, self.every = int(total), label, enabled, every
        self.stream = stream or sys.stderr
        self.i, self._t0, self._last = 0, time.perf_counter(), -1e9

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.enabled and self.total:
            self._print(final=True)

    def update(self, k: int = 1, **info):
        self.i += k
        self._info = info
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.every or self.i >= self.total):
            self._last = now
            self._print()

    def _print(self, final: bool = False):
        el = time.perf_counter() - self._t0
        eta = el / self.i * (self.total - self.i) if self.i else float("nan")
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in getattr(self, "_info", {}).items())
        end = "\n"
        msg = f"{self.label}: {self.i}/{self.total} [{el:.1f}s elapsed, eta {eta:.1f}s] {extra}"
        print(msg.rstrip(), file=self.stream, end=end, flush=True)
