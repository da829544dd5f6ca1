"""JAX's persistent compilation cache, on by default for sslntk's programs.

A fresh Python process compiles every jitted program again (seconds each for the solvers); with the
cache on disk a second process loads them instead. sslntk turns the cache on when it is imported,
unless the user already configured one (`JAX_COMPILATION_CACHE_DIR` or
`jax.config.update("jax_compilation_cache_dir", ...)`, which are left as they are).

Where: `$SSLNTK_CACHE_DIR` if set (`off`, `0`, `false` or `none` turns the cache off), else
`$XDG_CACHE_HOME/sslntk/jax`, else `~/.cache/sslntk/jax`. Every program is stored
(`MIN_COMPILE_SECONDS = 0`: a first 2n = 512 staircase compiles about a hundred small programs,
which together cost more than the few large ones). The folder is kept near `MAX_BYTES` by `prune`
(oldest entries first), run at most once a day in a background thread when sslntk turns the cache
on — not by JAX's own size cap (`jax_compilation_cache_max_size`), which scans the whole folder
(a `stat` and a read per entry) under a file lock on every write: with ~17 000 entries a run that
compiles many programs spent most of its time there.

The settings go through environment variables when JAX is not imported yet (so `import sslntk`
does not import JAX) and through `jax.config` when it is. Entries are keyed by the program, the
JAX/XLA version, the backend and the compile options, so float32/float64 runs, Python versions and
devices never share a wrong entry.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

MIN_COMPILE_SECONDS = 0.0
MAX_BYTES = 2 * 1024**3
PRUNE_EVERY_SECONDS = 24 * 3600
OFF = ("off", "0", "false", "none", "no")
_STAMP = ".sslntk-pruned"


def cache_dir() -> Path | None:
    """The folder sslntk uses for JAX's compilation cache, or None when `$SSLNTK_CACHE_DIR` turns it
    off."""
    env = os.environ.get("SSLNTK_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in OFF or not env.strip() else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sslntk" / "jax"


def enable() -> Path | None:
    """Turn JAX's persistent compilation cache on at `cache_dir()` unless the user configured one or
    turned it off; return the folder in use by sslntk (None when it does not manage the cache)."""
    folder = cache_dir()
    if folder is None or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    settings = {"jax_compilation_cache_dir": str(folder),
                "jax_persistent_cache_min_compile_time_secs": MIN_COMPILE_SECONDS}
    jax = sys.modules.get("jax")
    if jax is None:
        for name, value in settings.items():
            os.environ.setdefault(name.upper(), str(value))
    else:
        if jax.config.jax_compilation_cache_dir is not None:
            return None
        for name, value in settings.items():
            if name.upper() in os.environ:      # the user's own setting of this option wins
                continue
            try:
                jax.config.update(name, value)
            except AttributeError:      # an option this JAX does not have (older releases)
                pass
    _prune_if_due(folder)
    return folder


def prune(folder: Path, max_bytes: int = MAX_BYTES) -> int:
    """Delete the least recently written entries of the cache `folder` until its entries take at
    most `max_bytes`; return how many entries were deleted. Safe beside running processes: JAX
    treats an entry that vanishes before it is read as a miss and compiles again."""
    entries = []
    for p in Path(folder).glob("*-cache"):
        try:
            st = p.stat()
        except OSError:         # deleted meanwhile
            continue
        entries.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    removed = 0
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        for q in (p, p.with_name(p.name[: -len("-cache")] + "-atime")):
            try:
                q.unlink()
            except OSError:
                pass
        total -= size
        removed += 1
    return removed


def _prune_if_due(folder: Path) -> None:
    """Run `prune` in a daemon thread when the folder was last pruned more than a day ago."""
    stamp = folder / _STAMP
    try:
        if time.time() - stamp.stat().st_mtime < PRUNE_EVERY_SECONDS:
            return
    except OSError:         # never pruned (or no folder yet)
        pass
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stamp.touch()
    except OSError:         # read-only home: JAX will not write there either
        return
    threading.Thread(target=prune, args=(folder,), name="sslntk-cache-prune", daemon=True).start()
