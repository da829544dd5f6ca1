"""Scale (issue [H]): time and peak memory of the BT staircase per phase, 2n = 2048 … 32768, the
same runs on 1, 2, 4, 8 forced host devices, and the memory plan of 2n = 131072 over 8 devices.

Problem (as `bench_dynamics.py`): Barlow Twins (theory form, λ = 1), k = 16, α = 1e-3, digits
views (`data.digits`, sources drawn with replacement up to n = N/2, `gaussian_noise(0.5)` views),
2-hidden-layer ReLU MLP NTK, float32. One difference: `f0 = α·ξ`, ξ ~ N(0, I) (the NNGP Cholesky
init of bench_dynamics is an O(N³) float64 factorisation: hours at 2n = 32768 on 2 cores, and
not what is being scaled). Horizon 1.5 × t_16 (`t_16 = ln(1/(γ_16 α²)) / (8 γ_16)`), T = 50.

Phases, each in the SAME sharded code path (`mesh=` over the D forced host devices, D = 1 too):
* kernel: `kernels.ntk(arch, views, mesh=mesh)` — one call (compilation included: ~1–2 s);
* decomposition: `linalg.eigen_decomposition(K, m = 64, "contrastive")` (sharded Krylov) — the
  second, compiled call;
* solve: `dynamics.solve(K, bt, f0, ts, "eigen", decomposition=dec)` — the second call.
Peak memory: the child process's peak RSS (`ru_maxrss`) after each phase (one fresh process per
(D, 2n), so each figure is that run's own peak; the forced host devices share the process).
Exponents: least-squares slope of log(time) against log(2n) over the sizes run on 1 device.

HONESTY: forced host devices are XLA's way of exercising multi-device code on one CPU; here all of
them share the same 2 physical cores (and a machine shared with other jobs), so the D-device
ratios measure sharding overhead, not speed-up. On a multi-GPU node each device has its own
compute and memory.

    python benchmarks/bench_scale.py [--sizes 2048,4096,8192,16384,32768] [--max-n 8192]
        [--devices 1,2,4,8] [--device-max-n 8192] [--plan-n 131072] [--plan-devices 8]
        [--no-devices] [--no-plan]
Short run: `--max-n 4096 --device-max-n 2048`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

K_OUT = 16
ALPHA = 1e-3
T_SAVE = 50
M = 64


def _peak_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux


def child(N: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sslntk import data, dynamics, kernels, linalg, losses

    def timed(fn, *a, **kw):
        t = time.perf_counter()
        out = fn(*a, **kw)
        jax.block_until_ready(out)
        return out, time.perf_counter() - t

    D = jax.device_count()
    mesh = jax.make_mesh((D,), ("rows",))
    n = N // 2
    ds = data.digits()
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    idx = jax.random.choice(k1, ds.n, (n,), replace=n > ds.n)
    views = data.make_views(ds.x[idx], data.gaussian_noise(0.5), k2)
    arch = kernels.mlp(depth=2)
    r = dict(N=N, devices=D, base_gib=_peak_gib())
    K, r["kernel_s"] = timed(kernels.ntk, arch, views, dtype=jnp.float32, mesh=mesh)
    r["kernel_gib"] = _peak_gib()
    r["blocks"] = sorted({tuple(s.data.shape) for s in K.addressable_shards})
    dec, r["dec_cold_s"] = timed(linalg.eigen_decomposition, K, M, "contrastive")
    dec, r["dec_s"] = timed(linalg.eigen_decomposition, K, M, "contrastive")
    r["dec_gib"] = _peak_gib()
    g16 = float(dec.values[K_OUT - 1])
    t16 = np.log(1.0 / (g16 * ALPHA**2)) / (8 * g16)
    ts = jnp.linspace(0.0, 1.5 * t16, T_SAVE, dtype=jnp.float32)
    f0 = ALPHA * jax.random.normal(jax.random.PRNGKey(1), (N, K_OUT), jnp.float32)
    bt = losses.get("barlow_twins")
    tr, r["solve_cold_s"] = timed(dynamics.solve, K, bt, f0, ts, "eigen", decomposition=dec)
    tr, r["solve_s"] = timed(dynamics.solve, K, bt, f0, ts, "eigen", decomposition=dec)
    r["solve_gib"] = _peak_gib()
    r["status"] = int(tr.status)
    r["loss0"], r["loss_end"] = float(tr.loss[0]), float(tr.loss[-1])
    r["gamma1"], r["gamma16"] = float(dec.values[0]), g16
    r["max_residual"] = float(jnp.max(dec.residual[:K_OUT]))
    return r


def plan_child(N: int) -> dict:
    import jax
    import jax.numpy as jnp

    from sslntk import kernels, linalg

    D = jax.device_count()
    mesh = jax.make_mesh((D,), ("rows",))
    t = time.perf_counter()
    kp = kernels.memory_plan(kernels.mlp(depth=2), (N, 64), mesh=mesh, dtype=jnp.float32)
    dp = linalg.memory_plan(N, M, "contrastive", mesh=mesh, dtype=jnp.float32)
    return dict(N=N, devices=D, kernel=kp, decomposition=dp, compile_s=time.perf_counter() - t)


def _run(args: list[str], devices: int, timeout: float) -> dict | None:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    try:
        p = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"   ({' '.join(args)} on {devices} devices: timed out after {timeout:.0f}s)")
        return None
    if p.returncode != 0:
        print(f"   ({' '.join(args)} on {devices} devices failed: {p.stderr.strip()[-800:]})")
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def _slope(xs, ys) -> float:
    import numpy as np

    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2048,4096,8192,16384,32768")
    ap.add_argument("--max-n", type=int, default=None, help="drop sizes above this 2n")
    ap.add_argument("--devices", default="1,2,4,8")
    ap.add_argument("--device-max-n", type=int, default=8192,
                    help="largest 2n of the multi-device comparison")
    ap.add_argument("--plan-n", type=int, default=131072)
    ap.add_argument("--plan-devices", type=int, default=8)
    ap.add_argument("--no-devices", action="store_true")
    ap.add_argument("--no-plan", action="store_true")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per child run")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--plan-child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.child)))
        return
    if a.plan_child is not None:
        print(json.dumps(plan_child(a.plan_child)))
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    if any(s < 64 or s % 16 for s in sizes):
        ap.error(f"--sizes: expected 2n >= 64 divisible by 16, got {sizes}")
    if a.max_n is not None:
        sizes = [s for s in sizes if s <= a.max_n]
    devs = [int(d) for d in a.devices.split(",")]
    print(f"bench_scale: BT staircase, k = {K_OUT}, α = {ALPHA}, m = {M}, float32, ReLU MLP NTK, "
          f"digits views; {os.cpu_count()} CPU cores; host devices are forced "
          f"(--xla_force_host_platform_device_count) and SHARE these cores")
    print("\n== 1 device: time (s) and peak RSS (GiB) per phase")
    print(f"{'2n':>7} {'kernel':>8} {'decomp':>8} {'solve':>8} | {'GiB@K':>6} {'GiB@dec':>7} "
          f"{'GiB@solve':>9} | K bytes/device  status  loss0→end   max eig residual")
    rows = []
    for N in sizes:
        r = _run(["--child", str(N)], 1, a.timeout)
        if r is None:
            continue
        rows.append(r)
        print(f"{N:>7} {r['kernel_s']:>8.2f} {r['dec_s']:>8.2f} {r['solve_s']:>8.2f} | "
              f"{r['kernel_gib']:>6.2f} {r['dec_gib']:>7.2f} {r['solve_gib']:>9.2f} | "
              f"{N * N * 4 / 2**30:>8.2f} GiB   {r['status']}  {r['loss0']:.3g}→{r['loss_end']:.3g}"
              f"   {r['max_residual']:.2g}   (cold: decomposition {r['dec_cold_s']:.2f}s, "
              f"solve {r['solve_cold_s']:.2f}s)", flush=True)
    if len(rows) >= 2:
        xs = [r["N"] for r in rows]
        print("fitted cost exponents (time ∝ (2n)^p, least squares over "
              f"{xs[0]}…{xs[-1]}): " + ", ".join(
                  f"{ph} p = {_slope(xs, [r[k] for r in rows]):.2f}"
                  for ph, k in (("kernel", "kernel_s"), ("decomposition", "dec_s"),
                                ("solve", "solve_s"))))
        print("  (expected: kernel 2 — N² entries; decomposition 2 — (depth+1) products "
              "K @ (N, b); solve ~0-1 — an (m, k) ODE plus O(N m k) lifts)")

    if not a.no_devices:
        dsz = [s for s in sizes if s <= a.device_max_n]
        print(f"\n== 1, 2, 4, 8 forced host devices (ratio of time to 1 device; all on the same "
              f"{os.cpu_count()} physical cores)")
        base = {r["N"]: r for r in rows}
        for N in dsz:
            ref = base.get(N)
            for D in devs:
                r = ref if (D == 1 and ref is not None) else _run(["--child", str(N)], D,
                                                                   a.timeout)
                if r is None:
                    continue
                if ref is None:
                    ref = base[N] = r
                rk, rd, rs = (r[k] / ref[k] for k in ("kernel_s", "dec_s", "solve_s"))
                print(f"2n = {N:>6}, D = {D}: kernel {r['kernel_s']:7.2f}s ({rk:4.2f}×)  "
                      f"decomposition {r['dec_s']:6.2f}s ({rd:4.2f}×)  solve {r['solve_s']:6.2f}s "
                      f"({rs:4.2f}×)  peak {r['solve_gib']:.2f} GiB  row blocks {r['blocks']}",
                      flush=True)

    if not a.no_plan:
        N, D = a.plan_n, a.plan_devices
        print(f"\n== plan: 2n = {N} over {D} forced host devices (compiled programs' "
              f"memory_analysis(); nothing is run)")
        p = _run(["--plan-child", str(N)], D, a.timeout)
        if p is not None:
            g = lambda b: f"{b / 2**30:.2f} GiB"
            kp, dp = p["kernel"], p["decomposition"]
            print(f"kernel program, per device: arguments {g(kp['arguments'])}, outputs "
                  f"{g(kp['outputs'])} (its row block {N // D} × {N}), temporaries "
                  f"{g(kp['temporaries'])}, peak {g(kp['peak'])}; tile {kp['tile']}")
            kr = dp["krylov"]
            print(f"Krylov program (m = {M}, block {dp['block']}, depth {dp['depth']}), per device:"
                  f" arguments {g(kr['arguments'])} (the K block), temporaries "
                  f"{g(kr['temporaries'])}, peak {g(kr['peak'])}; tail-norm program peak "
                  f"{g(dp['tail_norm']['peak'])}")
            need = max(kp["peak"], dp["peak"])
            print(f"→ needs {g(need)} per device, {g(need * D)} in all (K alone: "
                  f"{g(kp['kernel_bytes_total'])}); this host offers {g(kp['limit'] * D)} "
                  f"available to its {D} forced devices: "
                  f"{'fits' if need <= kp['limit'] else 'does NOT fit here'}; on {D} devices with "
                  f">= {g(need * 1.1)} each (e.g. 8 × H100 80 GB) it fits. (compile {p['compile_s']:.1f}s)")


if __name__ == "__main__":
    main()
