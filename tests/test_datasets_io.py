"""File-backed datasets: the official formats (IDX, CIFAR python pickles in a tar.gz, STL-10
binary), written here independently of sslntk's readers (struct / pickle / raw bytes, following the
format descriptions), read back exactly; class-balanced subsets; errors naming the file; and the
downloader against a local HTTP server on 127.0.0.1 (never the internet).
"""

import gzip
import hashlib
import http.server
import io
import os
import pickle
import struct
import tarfile
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

from sslntk import data as D
from sslntk.data import _download, _files, _formats

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------------------------
# independent writers of the official formats
# --------------------------------------------------------------------------------------------------

def idx_bytes(a: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
            np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}
    head = bytes([0, 0, code[a.dtype], a.ndim]) + b"".join(struct.pack(">I", s) for s in a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_mnist(folder: Path, n_train=40, n_test=20, gz=True, size=28, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        y = np.resize(np.arange(10, dtype=np.uint8), n)
        rng.shuffle(y)
        for kind, arr in (("images-idx3-ubyte", x), ("labels-idx1-ubyte", y)):
            raw = idx_bytes(arr)
            name = f"{split}-{kind}" + (".gz" if gz else "")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(gzip.compress(raw) if gz else raw)
        out[split] = (x, y)
    return out


def cifar_batch(n, n_classes, label_key, rng):
    imgs = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = [int(v) for v in np.resize(np.arange(n_classes), n)]
    # official layout: each row is 1024 R, then 1024 G, then 1024 B values, row-major 32×32
    rows = imgs.transpose(0, 3, 1, 2).reshape(n, 3072)
    d = {b"batch_label": b"testing batch", b"data": rows, label_key: labels,
         b"filenames": [b"img%d.png" % i for i in range(n)]}
    return imgs, np.array(labels), pickle.dumps(d, protocol=2)


def write_cifar_tar(path: Path, which="cifar10", per_batch=12, seed=0):
    """The official tar.gz: `cifar-10-batches-py/data_batch_{1..5}`, `test_batch` (or CIFAR-100's
    `cifar-100-python/train`, `test` with fine labels)."""
    rng = np.random.default_rng(seed)
    if which == "cifar10":
        top, members, K, key = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + \
            ["test_batch"], 10, b"labels"
    else:
        top, members, K, key = "cifar-100-python", ["train", "test"], 100, b"fine_labels"
    truth = {}
    with tarfile.open(path, "w:gz") as tf:
        for m in members:
            n = per_batch if which == "cifar10" else 2 * K
            x, y, raw = cifar_batch(n, K, key, rng)
            truth[m] = (x, y)
            ti = tarfile.TarInfo(f"{top}/{m}")
            ti.size = len(raw)
            tf.addfile(ti, io.BytesIO(raw))
        ti = tarfile.TarInfo(f"{top}/readme.html")
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"hi\n"))
    return truth


def stl_bytes(imgs_nhwc: np.ndarray) -> bytes:
    # stored (N, 3, 96, 96) with each channel column-major: index order (n, c, col, row)
    return np.ascontiguousarray(imgs_nhwc.transpose(0, 3, 2, 1)).tobytes()


def write_stl(folder: Path, n_train=20, n_test=10, n_unl=6, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unl)):
        x = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        (folder / f"{split}_X.bin").write_bytes(stl_bytes(x))
        y = None
        if split != "unlabeled":
            y = np.resize(np.arange(1, 11, dtype=np.uint8), n)
            (folder / f"{split}_y.bin").write_bytes(y.tobytes())
        out[split] = (x, y)
    return out


def exact_pixels(ds):
    """Back to uint8 from standardize='none' (x = pixels / 255): exact up to float64 round-off."""
    v = np.asarray(ds.x, dtype=np.float64) * 255.0
    assert np.max(np.abs(v - np.rint(v))) < 1e-9
    return np.rint(v).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_roundtrips_every_type(tmp_path, dtype, gz):
    a = (RNG.standard_normal((3, 4, 5)) * 50).astype(dtype)
    raw = idx_bytes(a)
    p = tmp_path / ("a.idx.gz" if gz else "a.idx")
    p.write_bytes(gzip.compress(raw) if gz else raw)
    b = _formats.read_idx(p)
    assert b.dtype == np.dtype(dtype).newbyteorder("=") and b.shape == a.shape
    np.testing.assert_array_equal(b, a)
    q = D.write_idx(tmp_path / ("w.gz" if gz else "w"), a)       # the library's writer: inverse
    np.testing.assert_array_equal(_formats.read_idx(q), a)
    if not gz:
        assert q.read_bytes() == raw


def test_mnist_roundtrip_gz_and_plain(tmp_path):
    truth = write_mnist(tmp_path / "mnist", gz=True)
    ds = D.load("mnist", root=tmp_path, standardize="none", dtype=np.float64)
    assert ds.x.shape == (40, 28, 28, 1) and ds.image_shape == (28, 28, 1) and ds.n_classes == 10
    np.testing.assert_array_equal(exact_pixels(ds)[..., 0], truth["train"][0])
    np.testing.assert_array_equal(ds.y, truth["train"][1])
    te = D.load("mnist", root=tmp_path, split="test", standardize="none", dtype=np.float64)
    np.testing.assert_array_equal(exact_pixels(te)[..., 0], truth["t10k"][0])
    truth = write_mnist(tmp_path / "FashionMNIST" / "raw", gz=False, seed=1)  # torchvision layout
    fm = D.load("fashion_mnist", root=tmp_path, standardize="none", dtype=np.float64)
    np.testing.assert_array_equal(exact_pixels(fm)[..., 0], truth["train"][0])
    assert fm.info["class_names"][0] == "T-shirt/top"


def test_root_from_environment(tmp_path, monkeypatch):
    write_mnist(tmp_path / "mnist")
    monkeypatch.setenv("SSLNTK_DATA", str(tmp_path))
    assert D.load("mnist", n=10).n == 10


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
def test_cifar_archive_and_folder_roundtrip(tmp_path, which, monkeypatch):
    arc = tmp_path / _files.REMOTES[which]["archive"].filename
    truth = write_cifar_tar(arc, which)
    md5 = hashlib.md5(arc.read_bytes()).hexdigest()
    monkeypatch.setitem(_files.REMOTES, which, {"archive": _files.Remote(arc.name, md5, ())})
    ds = D.load(which, root=tmp_path, standardize="none", dtype=np.float64)
    train = ["train"] if which == "cifar100" else [f"data_batch_{i}" for i in range(1, 6)]
    np.testing.assert_array_equal(exact_pixels(ds), np.concatenate([truth[m][0] for m in train]))
    np.testing.assert_array_equal(ds.y, np.concatenate([truth[m][1] for m in train]))
    assert ds.x.shape[1:] == (32, 32, 3)
    # extracted next to the archive; only the needed members, no temp files
    folder = tmp_path / _files._FOLDERS[which][0]
    assert not (folder / "readme.html").exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    arc.unlink()  # now from the folder alone
    te = D.load(which, root=tmp_path, split="test", standardize="none", dtype=np.float64)
    tname = "test" if which == "cifar100" else "test_batch"
    np.testing.assert_array_equal(exact_pixels(te), truth[tname][0])


def test_cifar_batch_reader_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(_formats.FormatError, match=r"data_batch_1.*posix.system|data_batch_1.*not"
                       r" allowed"):
        _formats.read_cifar_batch(p)


def test_stl10_roundtrip_and_unlabeled(tmp_path):
    truth = write_stl(tmp_path / "stl10_binary")
    ds = D.load("stl10", root=tmp_path, standardize="none", dtype=np.float64)
    np.testing.assert_array_equal(exact_pixels(ds), truth["train"][0])
    np.testing.assert_array_equal(ds.y, truth["train"][1].astype(int) - 1)
    # the orientation (column-major: the row index runs fastest): byte 1 of the file is
    # (row 1, col 0) of channel 0, byte 96 is (row 0, col 1), byte 96·96 starts channel 1
    raw = (tmp_path / "stl10_binary" / "train_X.bin").read_bytes()
    x0 = np.asarray(ds.x[0]) * 255
    assert raw[1] == round(x0[1, 0, 0]) and raw[96] == round(x0[0, 1, 0])
    assert raw[96 * 96] == round(x0[0, 0, 1])
    un = D.load("stl10", root=tmp_path, split="unlabeled", standardize="none", n=4,
                dtype=np.float64)
    np.testing.assert_array_equal(exact_pixels(un), truth["unlabeled"][0][:4])
    assert np.all(np.asarray(un.y) == -1)


# --------------------------------------------------------------------------------------------------
# subsets and standardisation
# --------------------------------------------------------------------------------------------------

def test_class_balanced_subsets(tmp_path):
    write_mnist(tmp_path / "mnist", n_train=200)
    raw = _formats.read_idx_labels(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz")
    ds = D.load("mnist", root=tmp_path, n=23)
    counts = np.bincount(np.asarray(ds.y), minlength=10)
    assert counts.sum() == 23 and counts.max() - counts.min() <= 1
    idx = ds.info["indices"]
    assert np.all(np.diff(idx) > 0)                       # key=None: file order
    for c in range(10):                                   # ... the first rows of each class
        np.testing.assert_array_equal(idx[raw[idx] == c], np.flatnonzero(raw == c)[:counts[c]])
    sub = D.load("mnist", root=tmp_path, n=9, classes=[7, 2, 5], key=jax.random.key(3))
    assert sorted(np.bincount(np.asarray(sub.y)).tolist()) == [3, 3, 3]
    np.testing.assert_array_equal(np.array(sub.info["classes"])[np.asarray(sub.y)],
                                  raw[sub.info["indices"]])
    again = D.load("mnist", root=tmp_path, n=9, classes=[7, 2, 5], key=jax.random.key(3))
    np.testing.assert_array_equal(sub.info["indices"], again.info["indices"])


@pytest.mark.parametrize("how", ["channel", "global", "pixel"])
def test_standardisation(tmp_path, how, monkeypatch):
    write_stl(tmp_path / "stl10_binary")
    ds = D.load("stl10", root=tmp_path, standardize=how, dtype=np.float64)
    x = np.asarray(ds.x)
    axes = {"channel": (0, 1, 2), "global": None, "pixel": 0}[how]
    np.testing.assert_allclose(x.mean(axis=axes), 0, atol=1e-12)
    np.testing.assert_allclose(x.std(axis=axes), 1, atol=1e-12)
    raw = exact_pixels(D.load("stl10", root=tmp_path, standardize="none", dtype=np.float64))
    np.testing.assert_allclose(x * ds.info["std"] + ds.info["mean"], raw / 255.0, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------

def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mnist: files not found: train-images-idx3-ubyte.*"
                       r"Put .*mnist/.*download=True.*root argument"):
        D.load("mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"cifar10: files not found.*data_batch_1.*"
                       r"cifar-10-batches-py/.*cifar-10-python.tar.gz.*www.cs.toronto.edu"):
        D.load("cifar10", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"stl10.*stl10_binary.tar.gz"):
        D.load("stl10", root=tmp_path, split="test")


def test_bad_files_name_the_file_and_the_expectation(tmp_path):
    d = tmp_path / "mnist"
    write_mnist(d, gz=False)
    p = d / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])                          # truncated
    with pytest.raises(_formats.FormatError, match=r"train-images-idx3-ubyte: expected 31360 data "
                       r"bytes for shape \(40, 28, 28\) of uint8, got 31355"):
        D.load("mnist", root=tmp_path)
    p.write_bytes(b"\x89PNG....")
    with pytest.raises(_formats.FormatError, match=r"train-images-idx3-ubyte: expected an IDX file"):
        D.load("mnist", root=tmp_path)
    p.write_bytes(idx_bytes(np.zeros(40, np.uint8)))             # labels where images belong
    with pytest.raises(_formats.FormatError, match=r"expected IDX images of rank 3"):
        D.load("mnist", root=tmp_path)
    write_mnist(d, gz=False)
    (d / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(39, np.uint8)))
    with pytest.raises(_formats.FormatError, match=r"train-labels-idx1-ubyte: expected 40 labels"):
        D.load("mnist", root=tmp_path)
    (d / "train-images-idx3-ubyte").write_bytes(gzip.compress(b"abc")[:-4])
    with pytest.raises(_formats.FormatError, match=r"train-images-idx3-ubyte: expected a complete "
                       r"gzip stream"):
        D.load("mnist", root=tmp_path)
    s = tmp_path / "stl10_binary"
    write_stl(s)
    (s / "train_X.bin").write_bytes(b"\0" * 100)
    with pytest.raises(_formats.FormatError, match=r"train_X.bin: expected a multiple of 27648"):
        D.load("stl10", root=tmp_path)
    write_stl(s)
    (s / "train_y.bin").write_bytes(bytes([0] * 20))
    with pytest.raises(_formats.FormatError, match=r"train_y.bin: expected labels in 1..10"):
        D.load("stl10", root=tmp_path)
    c = tmp_path / "cifar-10-batches-py"
    c.mkdir()
    for m in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (c / m).write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(_formats.FormatError, match=r"data_batch_1: expected 'data' of shape "
                       r"\(N, 3072\)"):
        D.load("cifar10", root=tmp_path)
    (c / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(_formats.FormatError, match=r"data_batch_1: expected a CIFAR python batch"):
        D.load("cifar10", root=tmp_path)


def test_archive_with_wrong_checksum_names_it(tmp_path):
    arc = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_tar(arc)
    with pytest.raises(_formats.FormatError, match=r"cifar-10-python.tar.gz: expected the official "
                       r"archive with MD5 c58f30108f718f92721af3b95e74349a"):
        D.load("cifar10", root=tmp_path)


@pytest.mark.parametrize("kw, err, match", [
    ({"split": "val"}, ValueError, r"split: unknown value 'val'"),
    ({"classes": [0, 10]}, ValueError, r"classes: expected distinct class indices in 0..9"),
    ({"classes": 3}, TypeError, r"classes: expected a sequence"),
    ({"n": 1}, ValueError, r"n: expected an integer >= 2"),
    ({"n": 41}, ValueError, r"n: expected at most 40"),
    ({"standardize": "zca"}, ValueError, r"standardize: unknown value 'zca'"),
    ({"download": "yes"}, TypeError, r"download: expected a bool"),
    ({"root": 3}, TypeError, r"root: expected a folder path"),
    ({"key": 3}, TypeError, r"key: expected a jax.random key"),
])
def test_bad_arguments(tmp_path, kw, err, match):
    write_mnist(tmp_path / "mnist")
    with pytest.raises(err, match=match):
        D.load("mnist", **{"root": tmp_path, **kw})


# --------------------------------------------------------------------------------------------------
# download against a local server
# --------------------------------------------------------------------------------------------------

class _Server:
    """A local HTTP server with scripted behaviour: `mode` is "ok" (Range supported), "truncate"
    (announces the full length, sends half, closes; every time), "drop_once" (the first request is
    cut after half, the rest served), "no_range" (ignores Range headers)."""

    def __init__(self, payload: bytes):
        self.payload, self.mode, self.requests, self.ranges = payload, "ok", 0, []
        srv = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                srv.requests += 1
                if srv.requests > 20:                        # bounded: a runaway loop fails fast
                    self.send_error(503)
                    return
                rng = self.headers.get("Range")
                srv.ranges.append(rng)
                body, start = srv.payload, 0
                if rng and srv.mode != "no_range":
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                cut = srv.mode == "truncate" or (srv.mode == "drop_once" and srv.requests == 1)
                self.wfile.write(part[: len(part) // 2] if cut else part)
                self.wfile.flush()
                if cut:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file.bin"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server(RNG.integers(0, 256, 300_000, dtype=np.uint8).tobytes())
    yield s
    s.close()


def _md5(b):
    return hashlib.md5(b).hexdigest()


def test_download_success(server, tmp_path):
    p = _download.fetch(server.url, tmp_path / "f.bin", md5=_md5(server.payload), progress=True,
                        timeout=10)
    assert p.read_bytes() == server.payload and server.requests == 1
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]
    _download.fetch(server.url, p, md5=_md5(server.payload), timeout=10)   # verified: no request
    assert server.requests == 1


def test_download_checksum_mismatch_leaves_nothing(server, tmp_path):
    with pytest.raises(_download.DownloadError, match=r"checksum mismatch for f.bin: expected MD5 "
                       r"0{32}, got " + _md5(server.payload)):
        _download.fetch(server.url, tmp_path / "f.bin", md5="0" * 32, progress=False, timeout=10)
    assert os.listdir(tmp_path) == []


def test_download_truncated_transfer_leaves_nothing(server, tmp_path):
    server.mode = "truncate"
    with pytest.raises(_download.DownloadError, match=r"truncated transfer.*of 300000 bytes after 3 "
                       r"attempts"):
        _download.fetch(server.url, tmp_path / "f.bin", md5=_md5(server.payload), progress=False,
                        timeout=10, retries=2)
    assert os.listdir(tmp_path) == [] and server.requests == 3


def test_download_interrupted_is_resumed_with_range(server, tmp_path):
    server.mode = "drop_once"
    p = _download.fetch(server.url, tmp_path / "f.bin", md5=_md5(server.payload), progress=False,
                        timeout=10)
    assert p.read_bytes() == server.payload
    assert server.requests == 2 and server.ranges == [None, "bytes=150000-"]
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_download_resumes_a_part_left_by_a_killed_process(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(server.payload[:1000])
    p = _download.fetch(server.url, tmp_path / "f.bin", md5=_md5(server.payload), progress=False,
                        timeout=10)
    assert p.read_bytes() == server.payload and server.ranges == ["bytes=1000-"]
    server.mode, server.ranges = "no_range", []                 # a server ignoring Range: restart
    (tmp_path / "g.bin.part").write_bytes(b"x" * 1000)
    q = _download.fetch(server.url, tmp_path / "g.bin", md5=_md5(server.payload), progress=False,
                        timeout=10)
    assert q.read_bytes() == server.payload
    assert sorted(os.listdir(tmp_path)) == ["f.bin", "g.bin"]


def test_download_http_error_and_bad_arguments(server, tmp_path):
    with pytest.raises(ValueError, match="url: expected an http"):
        _download.fetch("ftp://x", tmp_path / "f")
    with pytest.raises(ValueError, match="md5: expected 32 lowercase hex"):
        _download.fetch(server.url, tmp_path / "f", md5="abc")
    server.requests = 100                                        # the server answers 503 now
    with pytest.raises(_download.DownloadError, match=r"HTTP 503"):
        _download.fetch(server.url, tmp_path / "f", progress=False, timeout=10)
    assert os.listdir(tmp_path) == []


def test_load_with_download_from_local_mirror(tmp_path, monkeypatch):
    src = tmp_path / "src"
    truth = write_mnist(src, gz=True)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    s = _Server(b"")
    try:
        class Multi(_Server):
            pass
        served = []
        handler = s.httpd.RequestHandlerClass
        orig = handler.do_GET

        def do_GET(self):
            name = self.path.rsplit("/", 1)[1]
            served.append(name)
            s.payload = files[name]
            orig(self)
        handler.do_GET = do_GET
        base = s.url.rsplit("/", 1)[0] + "/"
        remotes = {f: _files.Remote(f + ".gz", _md5(files[f + ".gz"]),
                                    ("http://127.0.0.1:9/unreachable/" + f + ".gz", base + f + ".gz"))
                   for f in _files._MNIST_MD5}
        monkeypatch.setitem(_files.REMOTES, "mnist", remotes)
        root = tmp_path / "root"
        ds = D.load("mnist", root=root, download=True, progress=False, standardize="none",
                    dtype=np.float64)
        np.testing.assert_array_equal(exact_pixels(ds)[..., 0], truth["train"][0])
        assert sorted(served) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
        assert sorted(os.listdir(root / "mnist")) == sorted(served)
    finally:
        s.close()
