"""Atomic result files: write to a temporary file in the same folder, then `os.replace`.

A reader never sees a half-written `results.json`, checkpoint or `.npz`, even if the run is killed.
Files get the permissions of an ordinary file of the user (`0o666` less the umask: 0644 with the
usual umask 022), so results can be shared, e.g. on a cluster; `mkstemp` alone would leave 0600.
A file that cannot be read back (truncated, not an `.npz`) raises `DamagedFileError` naming it.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np

_UMASK_LOCK = threading.Lock()


class DamagedFileError(ValueError):
    """A result file exists but cannot be read (truncated or overwritten); `path` names it."""

    def __init__(self, path, reason: str):
        self.path = Path(path)
        super().__init__(f"{path}: damaged file ({reason})")


def file_mode() -> int:
    """`0o666 & ~umask`: the mode `open()` would give a new file (0644 for umask 022)."""
    with _UMASK_LOCK:          # os.umask can only be read by setting it: restore at once
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file + `os.replace`), mode `file_mode()`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_jsonable)
                                     + "\n").encode())


def atomic_write_npz(path, **arrays) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic_write_bytes(path, buf.getvalue())


def load_npz(path) -> dict[str, np.ndarray]:
    """All arrays of an `.npz` file; `DamagedFileError` naming the file if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DamagedFileError(path, f"{type(e).__name__}: {e}") from None


def load_checkpoint(path, fingerprint: str, treedef, *, differ: str):
    """Resume state of a training checkpoint: `(z, state)` with `z` its arrays and `state` the
    pytree of `treedef` rebuilt from its `state_j` leaves, or `(None, None)` when `path` is None or
    absent. A checkpoint written by another run (its `fingerprint` differs) raises a ValueError
    naming the file; `differ` says what may differ ("model, data, loss ...")."""
    import jax
    import jax.numpy as jnp
    if path is None or not Path(path).exists():
        return None, None
    try:
        z = load_npz(path)
    except DamagedFileError as e:
        import sys

        print(f"[sslntk] checkpoint {e}: starting from step 0 instead", file=sys.stderr,
              flush=True)
        return None, None
    if str(z["fingerprint"]) != fingerprint:
        raise ValueError(f"checkpoint: {path} was written by a different run ({differ} differ); "
                         f"delete it or pass another path")
    leaves = [jnp.asarray(z[f"state_{j}"]) for j in range(treedef.num_leaves)]
    return z, jax.tree.unflatten(treedef, leaves)


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if hasattr(o, "tolist"):
        return np.asarray(o).tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
