"""Atomic result files: write to a temporary file in the same folder, then `os.replace`.

A reader never sees a half-written `results.json`, checkpoint or `.npz`, even if the run is killed.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_checkpoint(path, fingerprint: str, treedef, *, differ: str):
    """Resume state of a training checkpoint: `(z, state)` with `z` its arrays and `state` the
    pytree of `treedef` rebuilt from its `state_j` leaves, or `(None, None)` when `path` is None or
    absent. A checkpoint written by another run (its `fingerprint` differs) raises a ValueError
    naming the file; `differ` says what may differ ("model, data, loss ...")."""
    import jax
    import jax.numpy as jnp
    if path is None or not Path(path).exists():
        return None, None
    z = load_npz(path)
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
