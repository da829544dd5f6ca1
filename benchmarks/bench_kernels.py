"""Time and peak memory of `sslntk.kernels.ntk`, against neural-tangents' kernel_fn (the peer).

Cases (float32, depth 2, 3×3 SAME convolutions, ReLU):

* MLP on 2n = 2048 (and 8192) stacked views of scikit-learn's 8×8 digits (n source images drawn
  with replacement from the 1797, two augmented views each: random sub-pixel translation by up to
  1 pixel plus Gaussian noise σ = 0.1, `sslntk.data`). Full kernel by sslntk and by neural-tangents
  in the same blocks, both measured.
* CNN, flatten readout, on 2n = 2048 random standard-normal 32×32×3 images: measured.
* CNN, global average pooling, on 2n = 2048 digits views (8×8×1): measured; and on 32×32×3 images
  at 2n = 32 (measured), with its extrapolation to 2n = 2048 printed as a separate row marked
  "EXTRAPOLATED".
* without `--quick`: 2n = 8192 rows (MLP and CNN-flatten on digits measured, CNN-GAP on digits
  extrapolated from 3 full-size blocks).
The 32×32×3 GAP case is measured at 2n = 32 only: at ~15 pairs per CPU-second its 2n = 2048 kernel
(2.1M pairs) would take ~40 CPU-hours.

Cost model (per pair of images, H×W pixels, F = 9 filter taps, L = 2 layers; `_recursion`):
GAP needs the whole pixel-pixel covariance, L·(H·W)² dual-activation evaluations and
L·F·(H·W)² adds; flatten only its pixel diagonal, L·H·W and L·F·H·W. With x2 = None the kernel is
assembled from the (2n)(2n + 1)/2 pairs of the upper block triangle. So 32×32 GAP costs ~(1024/64)²
= 256× a digits GAP pair, and 32×32 flatten ~1/64 of a 32×32 GAP pair.

Peer: neural-tangents' `kernel_fn` (`method="nt"`) and sslntk's (`method="native"`) time the same
off-diagonal block, side by side in the same process; the "nt time" of a CNN row is sslntk's
measured time × that ratio (neural-tangents' full CNN kernels take hours on CPU), marked as such.

Each case runs in its own subprocess; memory is the process's peak RSS (`ru_maxrss`, which sees
XLA's buffers, unlike tracemalloc) minus its RSS after imports and data, before any kernel work:
it counts compilation, the blocks' intermediates and the (2n)² output. "cpu s" is the process CPU
time of the timed region (all threads): on a shared machine wall time depends on the load, printed
with the table (`os.getloadavg`, at start and end of every case).

Run: `python benchmarks/bench_kernels.py` (add `--quick` for 2n = 2048 only).

A `--quick` run (2 cores shared with other jobs, load 11-16, after the conv `_barrier` change; the
GAP 32×32×3 row was then measured at 2n = 64; the flatten row is a rerun of its case with the peer
on a 64×64 block, load 14.7→16.8; the first run, peer on 16×16: 337.7 s, 99.8 cpu s, ratio 3.59):

    arch        images      2n block     ntk time      cpu s  peak MiB      nt time nt/sslntk
    mlp         digits    2048  2048         0.3s        0.1       117         0.8s      2.47
    cnn-flatten 32x32x3   2048   144       258.8s       95.7       561       879.9s      3.40
    cnn-gap     digits    2048    48      1046.3s      361.9       377     24576.9s     23.49
    cnn-gap     32x32x3     64     8       150.5s       94.9      2000      2597.1s     17.25
    cnn-gap     32x32x3   2048     8    151855.4s    95759.0       nan   2619768.6s     17.25 EXTRAPOLATED

Before the `_barrier` change the same CNN blocks took 2.8× (GAP) and 3.5× (flatten) the CPU time.
The GAP 32×32×3 block (8 rows, the minimum) needs ~2 GB, over `BLOCK_MEMORY_BUDGET`.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

REPEATS = 3

# (name, arch kind, readout, images, 2n, mode); mode: "full" (the whole kernel, measured) or
# "blocks" (REPEATS full-size blocks, extrapolated to the whole kernel)
QUICK_CASES = [
    ("mlp", "mlp", None, "digits", 2048, "full"),
    ("cnn-flatten", "cnn", "flatten", "32x32x3", 2048, "full"),
    ("cnn-gap", "cnn", "gap", "digits", 2048, "full"),
    ("cnn-gap", "cnn", "gap", "32x32x3", 32, "full"),
]
LONG_CASES = [
    ("mlp", "mlp", None, "digits", 8192, "full"),
    ("cnn-flatten", "cnn", "flatten", "digits", 8192, "full"),
    ("cnn-gap", "cnn", "gap", "digits", 8192, "blocks"),
]
# peer blocks: large enough that the ratio is not set by per-call overheads (a 16×16 flatten block
# on 32×32 images takes ~10 ms), small enough for neural-tangents' GAP conv (~1M entries per pair
# on 32×32 images)
PEER_BLOCK = {"digits": 16, "32x32x3": 64}
PEER_BLOCK_GAP32 = 4


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _images(images: str, n2: int):
    import jax
    import jax.numpy as jnp

    from sslntk import data

    key = jax.random.PRNGKey(0)
    if images == "32x32x3":
        return jax.random.normal(key, (n2, 32, 32, 3), jnp.float32)
    ds = data.load("digits")
    idx = jax.random.randint(key, (n2 // 2,), 0, ds.x.shape[0])
    aug = data.compose(data.translate(1.0), data.gaussian_noise(0.1))
    return data.make_views(ds.x[idx], aug, jax.random.fold_in(key, 1)).stacked


def _timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    out.block_until_ready()
    return out, time.perf_counter() - t, time.process_time() - c


def run_case(name: str, kind: str, readout: str | None, images: str, n2: int, mode: str) -> dict:
    import numpy as np

    from sslntk import kernels as K_
    from sslntk.kernels._assembly import _partition

    arch = K_.mlp(depth=2) if kind == "mlp" else K_.cnn(depth=2, readout=readout)
    x = _images(images, n2)
    x.block_until_ready()
    rss0 = _rss_mib()
    b = K_.auto_block_size(arch, x.shape, x.dtype)
    nb, rows = _partition(n2, b)
    res = {"name": name, "images": images, "n2": n2, "block": rows, "blocks": nb * (nb + 1) // 2,
           "load0": os.getloadavg()[0]}
    if mode == "full":
        # warm-up: compile the two block shapes the full call uses (diagonal and off-diagonal)
        K_.ntk(arch, x[: min(n2, 2 * rows)], block_size=rows).block_until_ready()
        _, res["seconds"], res["cpu"] = _timed(lambda: K_.ntk(arch, x, method="native"))
        res["extrapolated"] = False
    else:
        xa, xb = x[:rows], x[rows: 2 * rows]
        K_.ntk(arch, xa, xb).block_until_ready()                      # compile
        out = np.full((n2, n2), 0.0, np.float32)                      # the output a full call holds
        ts, cs = [], []
        for r in range(REPEATS):
            k, t, c = _timed(lambda r=r: K_.ntk(arch, x[r * rows:(r + 1) * rows], xb))
            ts.append(t)
            cs.append(c)
            out[:rows, :rows] = np.asarray(k)
        res["block_seconds"] = float(np.median(ts))
        res["seconds"] = res["block_seconds"] * res["blocks"]
        res["cpu"] = float(np.median(cs)) * res["blocks"]
        res["extrapolated"] = True
    res["peak_mib"] = _peak_mib() - rss0
    res["pairs_per_s"] = n2 * (n2 + 1) / 2 / res["seconds"]
    if kind == "mlp":
        K_.ntk(arch, x[: 2 * rows], block_size=rows, method="nt").block_until_ready()
        _, res["peer_seconds"], _ = _timed(lambda: K_.ntk(arch, x, method="nt"))
        res["peer_measured"] = True
    else:
        # peer: the same off-diagonal block by both methods, side by side
        pb = PEER_BLOCK_GAP32 if (readout == "gap" and images == "32x32x3") else PEER_BLOCK[images]
        pa, pbb = x[:pb], x[pb: 2 * pb]
        for m in ("native", "nt"):
            K_.ntk(arch, pa, pbb, method=m).block_until_ready()
            times = [_timed(lambda m=m: K_.ntk(arch, pbb, pa, method=m))[1] for _ in range(2)]
            res[f"small_{m}_s"] = min(times)
        res["peer_block"] = pb
        res["peer_seconds"] = res["seconds"] * res["small_nt_s"] / res["small_native_s"]
        res["peer_measured"] = False
    res["load1"] = os.getloadavg()[0]
    return res


def _row(r: dict, extra: str = "") -> str:
    if r.get("extrapolated_from"):
        note = (f"EXTRAPOLATED from the measured 2n={r['extrapolated_from']} row × pairs ratio "
                f"{r['pair_ratio']:.0f}")
    elif r["extrapolated"]:
        note = (f"EXTRAPOLATED from {REPEATS} of {r['blocks']} blocks "
                f"({r['block_seconds']:.1f}s each)")
    else:
        note = f"measured, {r['blocks']} blocks"
    note += f", {r['pairs_per_s']:.0f} pairs/s"
    if r["peer_measured"]:
        note += "; nt measured"
    else:
        note += (f"; nt time = ratio on a {r['peer_block']}x{r['peer_block']} block "
                 f"({r['small_nt_s']:.2f}s vs {r['small_native_s']:.2f}s)")
    note += f"; load {r['load0']:.1f}→{r['load1']:.1f}" + extra
    return (f"{r['name']:11} {r['images']:8} {r['n2']:5d} {r['block']:5d} {r['seconds']:11.1f}s "
            f"{r['cpu']:10.1f} {r['peak_mib']:9.0f} {r['peer_seconds']:11.1f}s "
            f"{r['peer_seconds'] / r['seconds']:9.2f}  {note}")


def main(argv: list[str]) -> None:
    if len(argv) >= 7 and argv[0] == "--case":
        readout = None if argv[3] == "-" else argv[3]
        print("RESULT " + json.dumps(run_case(argv[1], argv[2], readout, argv[4], int(argv[5]),
                                              argv[6])), flush=True)
        return
    cases = QUICK_CASES + ([] if "--quick" in argv else LONG_CASES)
    print(f"sslntk.kernels.ntk, float32, depth 2 (CNN: 3x3 SAME, ReLU), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    rows = []
    for name, kind, readout, images, n2, mode in cases:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--case", name, kind, readout or "-", images,
                            str(n2), mode], capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            print(f"{name} {images} 2n={n2}: FAILED\n{p.stderr[-2000:]}")
            raise SystemExit(1)
        r = json.loads(line[0][7:])
        rows.append(r)
        print(f"  done in {time.perf_counter() - t0:.0f}s: {_row(r)}", flush=True)
        if name == "cnn-gap" and images == "32x32x3" and not r["extrapolated"]:
            # the GAP kernel on 32x32x3 at 2n = 2048 would take hours: extrapolate the measured
            # small case by the number of pairs (the cost per pair is independent of 2n)
            ratio = (2048 * 2049 / 2) / (n2 * (n2 + 1) / 2)
            e = dict(r, n2=2048, seconds=r["seconds"] * ratio, cpu=r["cpu"] * ratio,
                     peer_seconds=r["peer_seconds"] * ratio, extrapolated_from=n2,
                     pair_ratio=ratio, peak_mib=float("nan"), blocks=0)
            rows.append(e)
    print()
    print(f"load average {os.getloadavg()[0]:.1f} at end (2 cores shared: wall time ≈ cpu s × load "
          f"/ cores when load > cores)")
    print(f"{'arch':11} {'images':8} {'2n':>5} {'block':>5} {'ntk time':>12} {'cpu s':>10} "
          f"{'peak MiB':>9} {'nt time':>12} {'nt/sslntk':>9}  note")
    for r in rows:
        print(_row(r))


if __name__ == "__main__":
    main(sys.argv[1:])
