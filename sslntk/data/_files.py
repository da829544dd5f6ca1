"""File-backed image datasets: MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100, STL-10 from their
official distribution files (readers: `_formats`; downloads: `_download`).

Where the files are looked for: `root` if given, else `$SSLNTK_DATA`, else `~/.cache/sslntk`:

| name | folder under root | files |
| --- | --- | --- |
| mnist | `mnist/` (or `MNIST/raw/`) | `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` |
| fashion_mnist | `fashion_mnist/` (or `FashionMNIST/raw/`) | the same four names |
| cifar10 | `cifar-10-batches-py/` | `data_batch_1`…`data_batch_5`, `test_batch` |
| cifar100 | `cifar-100-python/` | `train`, `test` |
| stl10 | `stl10_binary/` | `train_X.bin`, `train_y.bin`, `test_X.bin`, `test_y.bin`, `unlabeled_X.bin` |

For CIFAR and STL-10 the official archive (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`,
`stl10_binary.tar.gz`) placed in `root` also works: its MD5 is checked and the needed members are
extracted next to it (each atomically). `download=True` fetches the missing official files into
`root` (resumable, MD5-verified, atomic; see `_download`).

URLs and MD5s are those published with the datasets and used by torchvision
(`torchvision/datasets/mnist.py`, `cifar.py`, `stl10.py`, github.com/pytorch/vision).
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk.data import _download, _formats
from sslntk.data._datasets import Dataset, balanced_counts

FormatError = _formats.FormatError


@dataclass(frozen=True)
class Remote:
    """One downloadable official file: its name, published MD5 and mirrors (tried in order)."""

    filename: str
    md5: str
    urls: tuple[str, ...]


# MNIST: torchvision/datasets/mnist.py (MNIST.mirrors / MNIST.resources); the MD5s of the gzipped
# IDX files as published on yann.lecun.com and mirrored by the PyTorch team on S3.
_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                  "http://yann.lecun.com/exdb/mnist/")
_MNIST_MD5 = {"train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
              "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
              "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
              "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c"}
# Fashion-MNIST: torchvision/datasets/mnist.py (FashionMNIST), github.com/zalandoresearch/fashion-mnist.
_FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_FASHION_MD5 = {"train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310"}

# name -> folder candidates, {file: Remote} (IDX) or archive Remote + member folder
REMOTES: dict[str, dict[str, Remote]] = {
    "mnist": {f: Remote(f + ".gz", md5, tuple(m + f + ".gz" for m in _MNIST_MIRRORS))
              for f, md5 in _MNIST_MD5.items()},
    "fashion_mnist": {f: Remote(f + ".gz", md5, tuple(m + f + ".gz" for m in _FASHION_MIRRORS))
                      for f, md5 in _FASHION_MD5.items()},
    # CIFAR: torchvision/datasets/cifar.py (CIFAR10/CIFAR100 .url, .tgz_md5);
    # https://www.cs.toronto.edu/~kriz/cifar.html
    "cifar10": {"archive": Remote("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                                  ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",))},
    "cifar100": {"archive": Remote("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                                   ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",))},
    # STL-10: torchvision/datasets/stl10.py (STL10.url, .tgz_md5); https://cs.stanford.edu/~acoates/stl10/
    "stl10": {"archive": Remote("stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb",
                                ("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",))},
}

_FOLDERS = {"mnist": ("mnist", "MNIST/raw"), "fashion_mnist": ("fashion_mnist", "FashionMNIST/raw"),
            "cifar10": ("cifar-10-batches-py",), "cifar100": ("cifar-100-python",),
            "stl10": ("stl10_binary",)}
_SPLIT_FILES = {
    "idx": {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")},
    "cifar10": {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    "cifar100": {"train": ("train",), "test": ("test",)},
    "stl10": {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin"),
              "unlabeled": ("unlabeled_X.bin",)},
}
SPLITS = {"mnist": ("train", "test"), "fashion_mnist": ("train", "test"),
          "cifar10": ("train", "test"), "cifar100": ("train", "test"),
          "stl10": ("train", "test", "unlabeled")}
N_CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "stl10": 10}
CLASS_NAMES = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"),
    "stl10": ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
}
STANDARDIZE_IMAGES = ("channel", "global", "pixel", "none")


def data_root(root=None) -> Path:
    """`root`, else `$SSLNTK_DATA`, else `~/.cache/sslntk`."""
    if root is None:
        root = os.environ.get("SSLNTK_DATA") or Path.home() / ".cache" / "sslntk"
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root: expected a folder path (str or os.PathLike), got "
                        f"{type(root).__name__}")
    return Path(root).expanduser()


def _where(name, root: Path) -> str:
    folders = " or ".join(f"{root / f}/" for f in _FOLDERS[name])
    if name in ("mnist", "fashion_mnist"):
        files = ", ".join(f"{f}[.gz]" for f in _MNIST_MD5)
        src = "; ".join(r.urls[0] for r in REMOTES[name].values())
        return f"Put {files} in {folders} (from {src})"
    split_files = sorted({f for fs in _SPLIT_FILES[name].values() for f in fs})
    arc = REMOTES[name]["archive"]
    return (f"Put {', '.join(split_files)} in {folders}, or the official archive {arc.filename} "
            f"(from {', '.join(arc.urls) or 'its official site'}) in {root}/")


def _missing_error(name, root, missing, source):
    return FileNotFoundError(
        f"{name}: files not found: {', '.join(missing)}. {_where(name, root)}, or pass "
        f"download=True. (root {root} comes from {source}; set "
        f"the root argument or $SSLNTK_DATA to change it.)")


def _extract(archive: Path, prefix: str, members: Sequence[str], dest: Path):
    """Extract `prefix/member` for the given members into `dest/prefix/`, each atomically; other
    members and any path outside `dest` are never written."""
    out = dest / prefix
    out.mkdir(parents=True, exist_ok=True)
    want = {f"{prefix}/{m}": m for m in members}
    found = set()
    try:
        with tarfile.open(archive, "r:*") as tf:
            for info in tf:
                name = info.name.lstrip("./")
                if name not in want or not info.isfile():
                    continue
                src = tf.extractfile(info)
                fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{want[name]}.", suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as fh:
                        while b := src.read(1 << 20):
                            fh.write(b)
                    os.replace(tmp, out / want[name])
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
                found.add(name)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise FormatError(f"{archive}: expected a tar.gz archive holding {prefix}/, could not read "
                          f"it ({type(e).__name__}: {e})") from None
    lost = sorted(set(want) - found)
    if lost:
        raise FormatError(f"{archive}: expected members {lost} in the archive, not found")


def _ensure(name: str, split: str, root, download: bool, progress: bool) -> list[Path]:
    """Paths of the split's files, extracting / downloading as needed."""
    source = "the root argument" if root is not None else (
        "$SSLNTK_DATA" if os.environ.get("SSLNTK_DATA") else "the default ~/.cache/sslntk")
    root = data_root(root)
    files = _SPLIT_FILES["idx" if name in ("mnist", "fashion_mnist") else name][split]
    if name in ("mnist", "fashion_mnist"):
        found, missing = [], []
        for f in files:
            cands = [root / d / g for d in _FOLDERS[name] for g in (f, f + ".gz")]
            hit = next((c for c in cands if c.is_file()), None)
            if hit is None and download:
                rem = REMOTES[name][f]
                hit = _fetch_any(rem, root / _FOLDERS[name][0] / rem.filename, progress)
            (found.append(hit) if hit is not None else missing.append(f))
        if missing:
            raise _missing_error(name, root, missing, source)
        return found
    for folder in _FOLDERS[name]:
        paths = [root / folder / f for f in files]
        if all(p.is_file() for p in paths):
            return paths
    arc = REMOTES[name]["archive"]
    arc_path = root / arc.filename
    if not arc_path.is_file():
        if not download:
            missing = [f for f in files if not (root / _FOLDERS[name][0] / f).is_file()]
            raise _missing_error(name, root, missing, source)
        _fetch_any(arc, arc_path, progress)
    elif _download.md5sum(arc_path) != arc.md5:
        raise FormatError(f"{arc_path}: expected the official archive with MD5 {arc.md5}, got MD5 "
                          f"{_download.md5sum(arc_path)} (a corrupt or different file; delete it "
                          f"or pass download=True after deleting it)")
    every = sorted({f for fs in _SPLIT_FILES[name].values() for f in fs})  # all splits at once
    _extract(arc_path, _FOLDERS[name][0], every, root)
    return [root / _FOLDERS[name][0] / f for f in files]


def _fetch_any(rem: Remote, path: Path, progress: bool) -> Path:
    errors = []
    for url in rem.urls:
        try:
            return _download.fetch(url, path, md5=rem.md5, progress=progress)
        except _download.DownloadError as e:
            errors.append(str(e))
    raise _download.DownloadError(f"{rem.filename}: every mirror failed: " + " | ".join(errors))


def _read(name: str, split: str, paths: list[Path]) -> tuple[np.ndarray, np.ndarray | None]:
    if name in ("mnist", "fashion_mnist"):
        x = _formats.read_idx_images(paths[0])
        y = _formats.read_idx_labels(paths[1])
        if len(y) != len(x):
            raise FormatError(f"{paths[1]}: expected {len(x)} labels to match {paths[0].name}, "
                              f"got {len(y)}")
        return x, y
    if name in ("cifar10", "cifar100"):
        key = "labels" if name == "cifar10" else "fine_labels"
        parts = [_formats.read_cifar_batch(p, key) for p in paths]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    x = _formats.read_stl10_images(paths[0])
    if split == "unlabeled":
        return x, None
    y = _formats.read_stl10_labels(paths[1])
    if len(y) != len(x):
        raise FormatError(f"{paths[1]}: expected {len(x)} labels to match {paths[0].name}, got "
                          f"{len(y)}")
    return x, y


def _check_classes(classes, K):
    if classes is None:
        return tuple(range(K))
    if isinstance(classes, (int, np.integer, str)) or not isinstance(classes, Sequence):
        raise TypeError(f"classes: expected a sequence of class indices 0..{K - 1}, got {classes!r}")
    bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, (int, np.integer))
           or not 0 <= c < K]
    if bad or len(set(classes)) != len(classes) or len(classes) < 1:
        raise ValueError(f"classes: expected distinct class indices in 0..{K - 1} (at least one), "
                         f"got {list(classes)!r}")
    return tuple(sorted(int(c) for c in classes))


def select(labels: np.ndarray | None, n_total: int, classes, n, key) -> np.ndarray:
    """Row indices: the given classes, then a class-balanced subset of `n` (counts differ by at most
    one, capped by availability); `key=None`: the first rows of each class in file order, else a
    random balanced subset in random order. Unlabelled data (`labels` None): the first / random
    `n` rows."""
    if key is not None:
        V.check_key("key", key)
    pool = np.arange(n_total) if labels is None else np.flatnonzero(np.isin(labels, classes))
    if n is None:
        return pool
    n = V.positive_int("n", n, minimum=2)
    if n > len(pool):
        what = "samples" if labels is None else f"samples of classes {list(classes)}"
        raise ValueError(f"n: expected at most {len(pool)} ({what}), got {n}")
    if key is not None:
        pool = pool[np.asarray(jax.random.permutation(key, len(pool)))]
    if labels is None:
        return pool[:n]
    lab = labels[pool]
    counts = balanced_counts(n, np.array([np.sum(lab == c) for c in classes]))
    take = np.zeros(len(pool), bool)
    for c, k in zip(classes, counts, strict=True):
        take[np.flatnonzero(lab == c)[:k]] = True
    return pool[take]


def _standardize(x01: np.ndarray, how: str):
    if how == "channel":
        mean = x01.mean(axis=(0, 1, 2), dtype=np.float64)
        std = x01.std(axis=(0, 1, 2), dtype=np.float64)
    elif how == "global":
        mean, std = np.float64(x01.mean(dtype=np.float64)), np.float64(x01.std(dtype=np.float64))
    elif how == "pixel":
        mean, std = x01.mean(0, dtype=np.float64), x01.std(0, dtype=np.float64)
    else:
        return x01, np.float64(0.0), np.float64(1.0)
    std = np.where(std > 0, std, 1.0)
    return (x01 - mean) / std, mean, std


def load_files(name: str, n: int | None = None, *, root=None, split: str = "train",
               classes: Sequence[int] | None = None, standardize: str | bool = "channel",
               key=None, download: bool = False, progress: bool = True,
               dtype=jnp.float32) -> Dataset:
    """Load `name` (mnist, fashion_mnist, cifar10, cifar100, stl10) from its official files.

    `split`: "train" or "test" ("unlabeled" too for stl10: labels -1, `classes` not allowed).
    Selection as in `digits`: `classes` keeps those classes, re-indexed to `0..len(classes)-1` in
    sorted order (`info["classes"]` maps back); `n` a class-balanced subset (first rows per class
    in file order without `key`, random with `key`); `info["indices"]` are the file rows.
    Standardisation, computed in float64 on the selected subset of the pixel values scaled to
    [0, 1]: "channel" (default; per-channel mean/std, the usual CIFAR/ImageNet normalisation),
    "global" (one mean/std, or True), "pixel" (per pixel/channel; constant pixels only centred),
    "none" (or False: values in [0, 1]). `x = (pixels/255 − info["mean"]) / info["std"]`, so
    `data.recipe(..., mean=info["mean"], std=info["std"])` augments in [0, 1] pixel units.
    Images are NHWC: `(n, 28, 28, 1)` (MNIST, Fashion-MNIST), `(n, 32, 32, 3)` (CIFAR),
    `(n, 96, 96, 3)` (STL-10).
    """
    V.choice("name", name, sorted(SPLITS))
    dt = V.float_dtype(dtype, any_float=True)
    if not isinstance(split, str):
        raise TypeError(f"split: expected a str, got {type(split).__name__}")
    V.choice("split", split, SPLITS[name])
    if isinstance(standardize, bool):
        standardize = "global" if standardize else "none"
    V.choice("standardize", standardize, STANDARDIZE_IMAGES)
    for flag, v in (("download", download), ("progress", progress)):
        if not isinstance(v, bool):
            raise TypeError(f"{flag}: expected a bool, got {v!r}")
    K = N_CLASSES[name]
    if split == "unlabeled" and classes is not None:
        raise ValueError("classes: the stl10 'unlabeled' split has no labels; expected None")
    classes_ = _check_classes(classes, K)
    if n is not None:
        V.positive_int("n", n, minimum=2)
    if key is not None:
        V.check_key("key", key)
    paths = _ensure(name, split, root, download, progress)
    images, labels = _read(name, split, paths)
    if labels is not None and (labels.min() < 0 or labels.max() >= K):
        raise FormatError(f"{paths[-1]}: expected labels in 0..{K - 1}, got range "
                          f"[{labels.min()}, {labels.max()}]")
    idx = select(labels, len(images), classes_, n, key)
    x01 = images[idx].astype(np.float64) / 255.0
    X, mean, std = _standardize(x01, standardize)
    if labels is None:
        y = np.full(len(idx), -1, np.int32)
    else:
        remap = np.full(K, -1, np.int64)
        remap[list(classes_)] = np.arange(len(classes_))
        y = remap[labels[idx]].astype(np.int32)
    names = CLASS_NAMES.get(name)
    return Dataset(name=name, x=jnp.asarray(X, dtype=dt), y=jnp.asarray(y),
                   image_shape=tuple(images.shape[1:]),
                   n_classes=len(classes_) if labels is not None else 0,
                   info={"standardize": standardize, "mean": mean, "std": std, "indices": idx,
                         "classes": classes_ if labels is not None else None, "split": split,
                         "files": [str(p) for p in paths],
                         "class_names": (tuple(names[c] for c in classes_) if names and
                                         labels is not None else None)})


def _loader(name):
    def f(n: int | None = None, **options) -> Dataset:
        return load_files(name, n, **options)
    f.__name__ = name
    f.__qualname__ = name
    f.__doc__ = f"`load_files({name!r}, n, **options)`: {name} from its official files.\n\n" + \
        (load_files.__doc__ or "")
    return f


mnist = _loader("mnist")
fashion_mnist = _loader("fashion_mnist")
cifar10 = _loader("cifar10")
cifar100 = _loader("cifar100")
stl10 = _loader("stl10")
LOADERS = {"mnist": mnist, "fashion_mnist": fashion_mnist, "cifar10": cifar10,
           "cifar100": cifar100, "stl10": stl10}
