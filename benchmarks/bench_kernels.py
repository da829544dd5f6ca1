"""Time and peak memory of `sslntk.kernels.ntk` on digits views, against neural-tangents' kernel_fn.

Cases: 2n = 2048 and 8192 stacked views of scikit-learn's 8×8 digits (n source images drawn with
replacement from the 1797, two augmented views each: random sub-pixel translation by up to 1 pixel
plus Gaussian noise σ = 0.1, `sslntk.data`), for an MLP (depth 2) and a CNN (depth 2, 3×3 SAME,
global average pooling), float32.

Each case runs in its own subprocess; memory is the process's peak RSS (`ru_maxrss`, which sees
XLA's buffers, unlike tracemalloc) minus its RSS after imports and data, before any kernel work:
it counts compilation, the blocks' intermediates and the (2n)² output (and, for the MLP, the
returned jax copy of it). "cpu s" is the process CPU time of the timed region (all threads): on a
shared machine wall time depends on the load, printed with the table.

MLP: the full kernel is computed, by sslntk ("native") and by neural-tangents' `kernel_fn` in the
same blocks ("nt", the peer). CNN: its pixel-pixel covariances make the full kernel cost
~(2n)²/2 · 2 layers · 64² dual-activation evaluations (about an hour for 2n = 2048 on 2 cores), so
the benchmark times `REPEATS` full-size blocks, reports the per-block time and extrapolates to the
nb(nb+1)/2 blocks of the symmetric kernel (marked "extrapolated"); the peer's per-pair throughput is
measured on a smaller block (neural-tangents' CPU conv path is slower still).

Run: `python benchmarks/bench_kernels.py` (add `--quick` for 2n = 2048 only).
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
PEER_BLOCK = 16


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _views(n2: int):
    import jax

    from sslntk import data

    ds = data.load("digits")
    key = jax.random.PRNGKey(0)
    idx = jax.random.randint(key, (n2 // 2,), 0, ds.x.shape[0])
    aug = data.compose(data.translate(1.0), data.gaussian_noise(0.1))
    return data.make_views(ds.x[idx], aug, jax.random.fold_in(key, 1)).stacked


def run_case(kind: str, n2: int) -> dict:
    import numpy as np

    from sslntk import kernels as K_

    arch = K_.mlp(depth=2) if kind == "mlp" else K_.cnn(depth=2)
    x = _views(n2)
    x.block_until_ready()
    rss0 = _rss_mib()
    b = K_.auto_block_size(arch, x.shape, x.dtype)
    res = {"kind": kind, "n2": n2, "block": b}
    if kind == "mlp":
        # warm-up: compile the block shapes the full call uses
        nb, rows = K_._partition(n2, b)
        K_.ntk(arch, x[: 2 * rows], block_size=rows).block_until_ready()
        t, c = time.perf_counter(), time.process_time()
        K = K_.ntk(arch, x, method="native")
        K.block_until_ready()
        res["seconds"] = time.perf_counter() - t
        res["cpu"] = time.process_time() - c
        res["peak_mib"] = _peak_mib() - rss0
        K_.ntk(arch, x[: 2 * rows], block_size=rows, method="nt").block_until_ready()
        del K
        t = time.perf_counter()
        Kp = K_.ntk(arch, x, method="nt")
        Kp.block_until_ready()
        res["peer_seconds"] = time.perf_counter() - t
        res["extrapolated"] = False
        return res
    # CNN: time REPEATS full-size off-diagonal blocks, extrapolate
    nb, rows = K_._partition(n2, b)
    xa, xb = x[:rows], x[rows: 2 * rows]
    K_.ntk(arch, xa, xb).block_until_ready()                      # compile
    out = np.full((n2, n2), 0.0, np.float32)                      # the output the full call holds
    ts, cs = [], []
    for r in range(REPEATS):
        t, c = time.perf_counter(), time.process_time()
        k = K_.ntk(arch, x[r * rows:(r + 1) * rows], xb)
        k.block_until_ready()
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
        out[:rows, :rows] = np.asarray(k)
    res["peak_mib"] = _peak_mib() - rss0
    blocks = nb * (nb + 1) // 2
    res["block_seconds"] = float(np.median(ts))
    res["seconds"] = res["block_seconds"] * blocks
    res["cpu"] = float(np.median(cs)) * blocks
    res["blocks"] = blocks
    res["pairs_per_s"] = rows * rows / res["block_seconds"]
    # peer: neural-tangents' kernel_fn on a small block, per-pair throughput
    pa, pb = x[:PEER_BLOCK], x[PEER_BLOCK: 2 * PEER_BLOCK]
    for m in ("native", "nt"):
        K_.ntk(arch, pa, pb, method=m).block_until_ready()
        t = time.perf_counter()
        K_.ntk(arch, pb, pa, method=m).block_until_ready()
        res[f"small_{m}_s"] = time.perf_counter() - t
    res["peer_seconds"] = res["seconds"] * res["small_nt_s"] / res["small_native_s"]
    res["extrapolated"] = True
    return res


def main(argv: list[str]) -> None:
    if len(argv) >= 3 and argv[0] == "--case":
        print("RESULT " + json.dumps(run_case(argv[1], int(argv[2]))), flush=True)
        return
    sizes = (2048,) if "--quick" in argv else (2048, 8192)
    print(f"sslntk.kernels.ntk on digits views, float32, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at start")
    rows = []
    for kind in ("mlp", "cnn"):
        for n2 in sizes:
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, __file__, "--case", kind, str(n2)],
                               capture_output=True, text=True)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if p.returncode or not line:
                print(f"{kind} 2n={n2}: FAILED\n{p.stderr[-2000:]}")
                raise SystemExit(1)
            r = json.loads(line[0][7:])
            r["wall"] = time.perf_counter() - t0
            rows.append(r)
            print(f"  done {kind} 2n={n2} in {r['wall']:.0f}s", flush=True)
    print()
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    print(f"{'arch':5} {'2n':>5} {'block':>5} {'ntk time':>12} {'cpu s':>10} {'peak MiB':>9} "
          f"{'nt time':>12} {'nt/sslntk':>9}  note")
    for r in rows:
        note = (f"extrapolated from {REPEATS} of {r['blocks']} blocks "
                f"({r['block_seconds']:.1f}s each, {r['pairs_per_s']:.0f} pairs/s); "
                f"nt ratio from a {PEER_BLOCK}x{PEER_BLOCK} block" if r["extrapolated"]
                else "measured")
        print(f"{r['kind']:5} {r['n2']:5d} {r['block']:5d} {r['seconds']:11.1f}s "
              f"{r['cpu']:10.1f} {r['peak_mib']:9.0f} {r['peer_seconds']:11.1f}s "
              f"{r['peer_seconds'] / r['seconds']:9.2f}  {note}")


if __name__ == "__main__":
    main(sys.argv[1:])
