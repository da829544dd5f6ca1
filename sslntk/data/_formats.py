"""Readers (and an IDX writer) for the official distribution formats of the image datasets.

* IDX (MNIST, Fashion-MNIST; LeCun et al., http://yann.lecun.com/exdb/mnist/ "FILE FORMATS"):
  bytes 0–1 zero, byte 2 the element type (0x08 ubyte, 0x09 byte, 0x0B int16, 0x0C int32,
  0x0D float32, 0x0E float64), byte 3 the rank r, then r big-endian uint32 sizes, then the data
  big-endian in C order. Read gzipped (`.gz`, detected by the gzip magic) or not.
* CIFAR-10/100 "python version" (Krizhevsky, https://www.cs.toronto.edu/~kriz/cifar.html): each
  batch file is a pickled dict with `data` (`(N, 3072)` uint8, each row the 1024 red, then green,
  then blue values of a 32×32 image in row-major order) and `labels` (CIFAR-10) or
  `fine_labels`/`coarse_labels` (CIFAR-100). Unpickled with a restricted unpickler that only
  rebuilds numpy arrays (a batch file cannot run code).
* STL-10 binary (Coates et al., https://cs.stanford.edu/~acoates/stl10/): `*_X.bin` is uint8
  `(N, 3, 96, 96)` with each channel stored column-major (Matlab order); `*_y.bin` uint8 labels
  1..10 (returned 0-based).

Every reader returns NHWC uint8 images / int64 labels and raises `FormatError` (a ValueError)
naming the file and what was expected.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np


class FormatError(ValueError):
    """A data file is missing, truncated or not in the expected format."""


IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {np.dtype(v).newbyteorder("=").str if v.itemsize > 1 else np.dtype(v).str: k
              for k, v in IDX_DTYPES.items()}


def _read_bytes(path) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: file not found")
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise FormatError(f"{p}: expected a complete gzip stream, got a corrupt one ({e})") \
                from None
    return raw


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes (already decompressed) into a native-endian array."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise FormatError(f"{name}: expected an IDX file (magic 0x00 0x00 <type> <rank>, type in "
                          f"{[hex(k) for k in IDX_DTYPES]}), got leading bytes {raw[:4]!r}")
    dt, rank = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * rank
    if len(raw) < header:
        raise FormatError(f"{name}: expected {header} header bytes for rank {rank}, got {len(raw)}")
    shape = struct.unpack(f">{rank}I", raw[4:header])
    want = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if len(raw) - header != want:
        raise FormatError(f"{name}: expected {want} data bytes for shape {shape} of {dt.name}, "
                          f"got {len(raw) - header}")
    return np.frombuffer(raw, dt, offset=header).reshape(shape).astype(dt.newbyteorder("="))


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array of its stored type and shape."""
    return parse_idx(_read_bytes(path), str(path))


def write_idx(path, array) -> Path:
    """Write `array` (uint8/int8/int16/int32/float32/float64) as an IDX file; gzipped when `path`
    ends in `.gz`. The inverse of `read_idx` (e.g. to build a small MNIST-format test set)."""
    a = np.asarray(array)
    key = a.dtype.newbyteorder("=").str if a.dtype.itemsize > 1 else a.dtype.str
    if key not in _IDX_CODES:
        raise TypeError(f"array: expected dtype uint8/int8/int16/int32/float32/float64, got "
                        f"{a.dtype}")
    if a.ndim < 1 or a.ndim > 255:
        raise ValueError(f"array: expected rank 1..255, got shape {a.shape}")
    code = _IDX_CODES[key]
    body = (bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
            + np.ascontiguousarray(a, IDX_DTYPES[code]).tobytes())
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".gz":
        body = gzip.compress(body, mtime=0)
    p.write_bytes(body)
    return p


def read_idx_images(path) -> np.ndarray:
    """IDX images `(N, H, W)` uint8 → `(N, H, W, 1)`."""
    a = read_idx(path)
    if a.ndim != 3 or a.dtype != np.uint8:
        raise FormatError(f"{path}: expected IDX images of rank 3 (N, H, W) and type ubyte, got "
                          f"shape {a.shape} of {a.dtype}")
    return a[..., None]


def read_idx_labels(path) -> np.ndarray:
    a = read_idx(path)
    if a.ndim != 1 or a.dtype != np.uint8:
        raise FormatError(f"{path}: expected IDX labels of rank 1 (N,) and type ubyte, got shape "
                          f"{a.shape} of {a.dtype}")
    return a.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# CIFAR python pickles
# ---------------------------------------------------------------------------------------------

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _NumpyOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if module.startswith("numpy.core"):  # numpy >= 2 moved numpy.core to numpy._core
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def parse_cifar_batch(raw: bytes, name: str = "<bytes>",
                      label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR python batch: `(N, 32, 32, 3)` uint8 images and `(N,)` int64 labels.
    `label_key`: "labels" (CIFAR-10), "fine_labels" or "coarse_labels" (CIFAR-100)."""
    try:
        d = _NumpyOnly(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a format error
        raise FormatError(f"{name}: expected a CIFAR python batch (a pickled dict), could not "
                          f"unpickle it ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise FormatError(f"{name}: expected a pickled dict, got {type(d).__name__}")
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or label_key not in d:
        raise FormatError(f"{name}: expected keys 'data' and {label_key!r}, got {sorted(d)}")
    data = np.asarray(d["data"])
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise FormatError(f"{name}: expected 'data' of shape (N, 3072) and dtype uint8, got "
                          f"{data.shape} {data.dtype}")
    if labels.shape != (data.shape[0],):
        raise FormatError(f"{name}: expected {data.shape[0]} labels ({label_key!r}), got shape "
                          f"{labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar_batch(path, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch file (see `parse_cifar_batch`)."""
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: file not found")
    return parse_cifar_batch(p.read_bytes(), str(p), label_key)


# ---------------------------------------------------------------------------------------------
# STL-10 binary
# ---------------------------------------------------------------------------------------------

STL10_SIZE = 96


def read_stl10_images(path) -> np.ndarray:
    """Read an STL-10 `*_X.bin`: `(N, 96, 96, 3)` uint8 (stored `(N, 3, 96, 96)` column-major)."""
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: file not found")
    per = 3 * STL10_SIZE * STL10_SIZE
    size = os.path.getsize(p)
    if size == 0 or size % per:
        raise FormatError(f"{p}: expected a multiple of {per} bytes (3×96×96 uint8 images), got "
                          f"{size}")
    a = np.fromfile(p, np.uint8).reshape(-1, 3, STL10_SIZE, STL10_SIZE)  # (N, C, W, H)
    return a.transpose(0, 3, 2, 1)


def read_stl10_labels(path) -> np.ndarray:
    """Read an STL-10 `*_y.bin`: labels 1..10 stored as uint8, returned 0-based int64."""
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{p}: file not found")
    y = np.fromfile(p, np.uint8).astype(np.int64)
    if y.size == 0 or y.min() < 1 or y.max() > 10:
        lo, hi = (int(y.min()), int(y.max())) if y.size else (None, None)
        raise FormatError(f"{p}: expected labels in 1..10 (uint8), got {y.size} values in "
                          f"[{lo}, {hi}]")
    return y - 1
