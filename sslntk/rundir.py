"""A run directory: resumable parts, atomic results, and "same config → no work".

Layout of `DIR/`:
  `config.json`      the validated config and its hash (written first; identifies the run)
  `parts/NAME.npz`   one finished unit of work each (a kernel, one (width, seed) training, ...),
                     written atomically, so a killed run resumes from the parts it finished
  `results.json`     config, versions, device, timings, headline numbers (written last, atomically)
  `arrays.npz`       the arrays behind the figures
  `*.png`, `*.pdf`   figures
  `.lock`            held (`flock`) by the process writing the directory
A second run of the same config into the same DIR finds `results.json` with its hash and does no work;
a different config into a DIR that holds another run is refused (nothing is overwritten). Two
processes writing one DIR at once: the second waits for the first (it says so) and then finds the
run done. A damaged part file (truncated, overwritten) is named and recomputed. Every file is
written atomically with the user's umask (`sslntk._io`). See `docs/how-to/run-experiments.md`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from sslntk import _io
from sslntk.config import config_hash


def _maybe_simulate_kill(n_computed: int):
    """Fault injection for the resume tests: with `SSLNTK_KILL_AFTER_PARTS=N` in the environment the
    process dies abruptly (`os._exit`, no cleanup, like SIGKILL) right after its N-th saved part."""
    n = os.environ.get("SSLNTK_KILL_AFTER_PARTS")
    if n is not None and n_computed >= int(n):
        os._exit(137)


class RunDirError(RuntimeError):
    """The output directory cannot hold this run (another config's run, a file, not writable)."""


def _say(msg: str):
    print(f"[sslntk] {msg}", file=sys.stderr, flush=True)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("sslntk", "jax", "jaxlib", "neural-tangents", "flax", "optax", "diffrax", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def device() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')} x{jax.device_count()}"


class RunDir:
    """Manage one run directory for a validated config `cfg`."""

    def __init__(self, out: str | Path, cfg: dict):
        self.path = Path(out)
        self.cfg = cfg
        self.hash = config_hash(cfg)
        self.parts = self.path / "parts"
        self.timings: dict[str, float] = {}
        self.computed: list[str] = []   # parts computed in this process (not loaded)
        self.verbose = False
        self.overrides: list[str] = []   # the command line's --set KEY=VALUE, recorded

    # -- state -------------------------------------------------------------------------------
    def _stored_hash(self) -> str | None:
        f = self.path / "config.json"
        if not f.exists():
            return None
        try:
            return json.loads(f.read_text()).get("hash")
        except (json.JSONDecodeError, OSError):
            return None

    def is_done(self) -> bool:
        f = self.path / "results.json"
        if not f.exists() or self._stored_hash() != self.hash:
            return False
        try:
            return json.loads(f.read_text()).get("config_hash") == self.hash
        except json.JSONDecodeError:
            return False

    def check_target(self) -> None:
        """Refuse, before any work, an output path that cannot become a run directory: an existing
        file, a path under a file, a folder that cannot be created or written."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise RunDirError(f"--out {str(p)!r} is a file, not a directory; choose a directory")
        probe = p
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise RunDirError(f"--out {str(p)!r}: {str(probe)!r} is a file, not a directory")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise RunDirError(f"--out {str(p)!r}: no permission to write in {str(probe)!r}")

    def lock(self) -> _Lock:
        """An exclusive lock on `DIR/.lock` (a context manager). A second process waits for the
        first to finish (and says so), then sees its finished run."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"--out {str(self.path)!r}: cannot create it ({e.strerror})") from None
        return _Lock(self.path / ".lock")

    def open(self) -> RunDir:
        """Claim the directory for this config (refuse one that holds another config's run)."""
        stored = self._stored_hash()
        if stored is not None and stored != self.hash:
            raise RunDirError(f"--out {str(self.path)!r} holds a run of a different config "
                              f"(hash {stored}, this config {self.hash}); use another directory")
        if stored is None and self.path.exists() and any(
                p.name != ".lock" for p in self.path.iterdir()):
            raise RunDirError(f"--out {str(self.path)!r} exists and is not an sslntk run directory; "
                              "use an empty or new directory")
        _io.atomic_write_json(self.path / "config.json", {"hash": self.hash, "config": self.cfg,
                                                          "overrides": list(self.overrides)})
        return self

    # -- parts -------------------------------------------------------------------------------
    def part(self, name: str, compute: Callable[[], dict]) -> dict:
        """Load `parts/NAME.npz` if a previous run finished it, else compute, save atomically, return."""
        f = self.parts / f"{name}.npz"
        if f.exists():
            try:
                arrays = _io.load_npz(f)
            except _io.DamagedFileError as e:
                _say(f"{name}: {e}; recomputing it")
                f.unlink(missing_ok=True)
            else:
                self._say(f"{name}: loaded (finished by an earlier run)")
                return arrays
        # on a terminal: "computing" (its progress bars follow) and "done"; in logs one line per
        # part (the parts' own progress phases print one line each, sslntk._progress)
        self._say(f"{name}: computing ...", only_bar=True)
        t0 = time.perf_counter()
        arrays = compute()
        self.timings[name] = time.perf_counter() - t0
        self._say(f"{name}: done in {self.timings[name]:.1f} s")
        _maybe_simulate_kill(len(self.computed))
        _io.atomic_write_npz(f, **arrays)
        self.computed.append(name)
        return _io.load_npz(f)   # the same dtype/rounding whether computed now or resumed

    def _say(self, msg: str, only_bar: bool = False):
        from sslntk._progress import mode

        m = mode(sys.stderr, self.verbose)
        if m == "bar" or (m == "line" and not only_bar):
            print(f"[sslntk] {msg}", file=sys.stderr, flush=True)

    def write_results(self, headline: dict, arrays: dict | None = None,
                      summary_lines: list[str] | None = None) -> dict:
        if arrays:
            _io.atomic_write_npz(self.path / "arrays.npz", **arrays)
        res = {"config": self.cfg, "config_hash": self.hash, "overrides": list(self.overrides),
               "versions": versions(),
               "device": device(), "timings_s": self.timings, "headline": headline,
               "summary_lines": summary_lines or [],
               "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _io.atomic_write_json(self.path / "results.json", res)
        return res


class _Lock:
    """`flock` on a file, held while the context is open; the holder's pid is written into it."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    def __enter__(self) -> _Lock:
        try:
            import fcntl
        except ImportError:        # no flock (Windows): no lock, as before
            return self
        self.fh = open(self.path, "a+")  # noqa: SIM115 (held open for the lock's lifetime)
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.seek(0)
            who = self.fh.read().strip() or "unknown"
            _say(f"{self.path.parent} is being written by another sslntk run (pid {who}); waiting "
                 "for it to finish (Ctrl-C to stop)")
            fcntl.flock(self.fh, fcntl.LOCK_EX)
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(str(os.getpid()))
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        if self.fh is not None:
            import fcntl

            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
            self.fh = None
