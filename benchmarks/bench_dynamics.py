"""Speed through structure: sslntk's eigen-reduced solver vs neural-tangents' peer, and the cost
of the public entry point.

Problem: Barlow Twins (theory form, λ = 1) on noise-augmented digit views
(`sslntk.data.digits`, globally standardised, source images drawn with replacement up to n = N/2,
two views each with `gaussian_noise(0.5)`), 2-hidden-layer ReLU NTK (`kernels.ntk(mlp(depth=2))`),
k = 16, α = 1e-3, `f0 = α · L ξ` with `L = chol(K_nngp + 1e-6·mean(diag)·I)`, ξ ~ N(0, I)
(the infinite-width small-init law `f0 ~ N(0, α² K_nngp)`). Horizon 1.5 × the predicted
16th step time `t_16 = ln(1/(γ_16 α²)) / (8 γ_16)` (Simon et al. 2023, §3, `c_16(0) ≈ γ_16 α²`), with
γ from the contrastive decomposition; T = 100 saved times.

Timed (float32, CPU, side by side in one process):
* peer: `kernels.reference_gradient_descent` (nt `predict.gradient_descent` in `jax.jit`: Dormand–
  Prince on the full (2n, k) system, rtol = atol = 1.4e-8); the SECOND call is timed, over the
  whole horizon (from 2n = 4096 the compiling first call integrates 1e-3 of it, same shapes).
* sslntk: `linalg.eigen_decomposition` (top-m contrastive eigenpairs, Krylov for N > 1024) +
  the `dynamics.Eigen` solver (second call, compiled), i.e. everything but the kernel.
* floor: the kernel time plus one top-m decomposition — what any kernel method must at least pay.
Accuracy: both against a float64 tight-tolerance reference: the full ODE (`dynamics.Ode`,
rtol 1e-10) for N ≤ 2048; for N = 8192 (a float64 full ODE takes hours here) the float64 eigen
solve with m = 4·m_default and rtol 1e-10 — labelled in the output. Error = max_t |L − L_ref| /
max(L_ref(t), 1e-2) (relative, floored at 1e-2 of one plateau step: at the end of the horizon
the BT loss is ~1e-6 and a relative error there measures round-off, not the staircase), with L the
loss of each method's float32 trajectory evaluated in float64: evaluating BT's loss in float32
alone is ~2e-4 off (printed), more than either trajectory's own error.

Sweep (N = 2048): 32 (seed, α) pairs (4 seeds × α in logspace(−4, −2, 8)), horizon from the
smallest α; sslntk `solve_many` (one decomposition, vmapped) vs the peer in a Python loop (timed on
the 8 runs of seed 0, which span every α, ×4, labelled; `--sweep-loop-runs 32` times all) and under
`jax.vmap` (all 32 runs by default; `--sweep-peer-runs` fewer, ×32/that, labelled). Sweep
accuracy: against the float64 eigen solve with m = 4·m_default (validated against the full float64
ODE in the single-staircase rows).

Public entry vs internal path (`--public`, sizes `--public-sizes 4096,8192`, float32): the
public `dynamics.solve(K, loss, f0, ts)` with default options (input validation: symmetry and
finiteness in one tiled pass, the block-Lanczos PSD check; the "auto" choice, the STATIONARY check)
beside the internal path, the same solver object called directly (`dynamics.choose_solver` once,
then `solver.solve(K, method, state0, ts)`, which trusts K and does not check it), compiled once,
then `--rounds` interleaved rounds (public, internal, public, ...); the medians and their ratio
public/internal are printed (target ≤ 1.15), and the minima and their ratio beside them (on a
machine shared with other jobs the minimum is the more stable of the two).

    python benchmarks/bench_dynamics.py [--sizes 512,2048,8192] [--quick] [--no-sweep]
        [--only-sweep] [--sweep-peer-runs 32] [--sweep-loop-runs 8] [--peer-horizon-frac 1.0]
        [--m M] [--no-peer] [--public [--public-sizes 4096,8192] [--rounds 5]]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)  # for the float64 reference; timed paths are float32

from sslntk import data, dynamics, kernels, linalg, losses  # noqa: E402
from sslntk.dynamics import _eigen, solve_many  # noqa: E402

K_OUT = 16
ALPHA = 1e-3
T_SAVE = 100


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    jax.block_until_ready(out)
    return out, time.perf_counter() - t


def problem(N, key=0, dtype=jnp.float32):
    n = N // 2
    ds = data.digits()
    k1, k2 = jax.random.split(jax.random.PRNGKey(key))
    idx = jax.random.choice(k1, ds.n, (n,), replace=n > ds.n)
    views = data.make_views(ds.x[idx], data.gaussian_noise(0.5), k2)
    arch = kernels.mlp(depth=2)
    (Kt, Kn), t_kernel = timed(kernels.ntk_and_nngp, arch, views, dtype=dtype)
    return Kt, Kn, t_kernel


def init(Kn, k, alpha, seed):
    Kn64 = np.asarray(Kn, np.float64)
    L = np.linalg.cholesky(Kn64 + 1e-6 * np.mean(np.diag(Kn64)) * np.eye(len(Kn64)))
    xi = np.random.default_rng(seed).standard_normal((len(Kn64), k))
    return jnp.asarray(alpha * (L @ xi), jnp.float32)


def rel_err(L, Lref):
    L, Lref = np.asarray(L, np.float64), np.asarray(Lref, np.float64)
    return float(np.max(np.abs(L - Lref) / np.maximum(Lref, 1e-2)))


def traj_err(loss, f, Lref):
    """Error of a trajectory `f (T, 2n, k)`: its loss curve evaluated in float64 against the
    reference (a float32 evaluation of BT's C = fᵀZf/2n alone is off by ~2e-4 here — see the
    `float32 loss evaluation` line — which would hide the trajectories' own errors)."""
    return rel_err(jax.vmap(loss)(jnp.asarray(f, jnp.float64)), Lref)


def peer(loss, K, f0, ts):
    return kernels.reference_gradient_descent(loss, K, f0, ts)[0]


def ours(K, loss, f0, ts, m, eig_method="auto"):
    dec = linalg.eigen_decomposition(K, m, "contrastive", method=eig_method)
    return dynamics.Eigen(decomposition=dec).solve(K, loss, loss.init(f0), ts), dec


def public_vs_internal(N, rounds):
    """Median wall time of the public `dynamics.solve` (defaults) and of the internal path (the
    solver object it picks, called directly on the same inputs), interleaved rounds."""
    print(f"\n== public vs internal, 2n = {N}, k = {K_OUT}, α = {ALPHA}, float32")
    K, Kn, t_kernel = problem(N)
    loss = losses.get("barlow_twins")
    f0 = init(Kn, K_OUT, ALPHA, seed=0)
    dec = linalg.eigen_decomposition(K, _eigen.default_m(K_OUT, N, "contrastive"), "contrastive")
    g16 = float(dec.values[K_OUT - 1])
    ts = jnp.linspace(0.0, 1.5 * np.log(1.0 / (g16 * ALPHA**2)) / (8 * g16), T_SAVE,
                      dtype=jnp.float32)
    solver, reason = dynamics.choose_solver(K, loss, f0, ts)
    state0 = loss.init(f0)

    def public():
        return dynamics.solve(K, loss, f0, ts)

    def internal():
        return solver.solve(K, loss, state0, ts)

    a, b = public(), internal()          # compile both
    jax.block_until_ready((a, b))
    assert a.method == solver.name and a.ok and b.ok, (a.method, a.status_name, b.status_name)
    assert float(jnp.max(jnp.abs(a.loss - b.loss))) == 0.0
    tp, ti = [], []
    for _ in range(rounds):
        tp.append(timed(public)[1])
        ti.append(timed(internal)[1])
    mp, mi = float(np.median(tp)), float(np.median(ti))
    print(f"solver {solver.name!r} ({reason}); kernel {t_kernel:.1f}s")
    print(f"public dynamics.solve: median {mp:.3f}s, min {min(tp):.3f}s {np.round(tp, 3).tolist()}")
    print(f"internal solver.solve: median {mi:.3f}s, min {min(ti):.3f}s {np.round(ti, 3).tolist()}")
    print(f"RATIO public/internal = {mp / mi:.3f} (target <= 1.15); ratio of minima "
          f"{min(tp) / min(ti):.3f}")
    return mp / mi


def single(N, args):
    print(f"\n== single staircase, 2n = {N}, k = {K_OUT}, α = {ALPHA}")
    K, Kn, t_kernel = problem(N)
    loss = losses.get("barlow_twins")
    f0 = init(Kn, K_OUT, ALPHA, seed=0)
    m = _eigen.default_m(K_OUT, N, "contrastive") if args.m is None else args.m
    dec, t_dec_cold = timed(linalg.eigen_decomposition, K, m, "contrastive")
    dec, t_dec = timed(linalg.eigen_decomposition, K, m, "contrastive")
    g16 = float(dec.values[K_OUT - 1])
    t16 = np.log(1.0 / (g16 * ALPHA**2)) / (8 * g16)
    ts = jnp.linspace(0.0, 1.5 * t16, T_SAVE, dtype=jnp.float32)
    print(f"kernel {t_kernel:.2f}s | γ_1 = {float(dec.values[0]):.4g}, γ_16 = {g16:.4g}, "
          f"t_16 = {t16:.4g}, horizon {1.5 * t16:.4g}, m = {m}, decomposition {dec.method}")

    (tr, _), t_ours_cold = timed(ours, K, loss, f0, ts, m)
    (tr, _), t_ours = timed(ours, K, loss, f0, ts, m)
    print(f"sslntk eigen: {t_ours:.3f}s (decomposition {t_dec:.3f}s + solve; cold with compile "
          f"{t_ours_cold:.2f}s), status {tr.status_name}, {int(tr.n_steps)} steps, "
          f"bound(T) = {float(tr.bound[-1]):.3g}")

    # Reference (float64).
    K64, f64 = K.astype(jnp.float64), f0.astype(jnp.float64)
    ts64 = ts.astype(jnp.float64)
    if N <= 2048:
        ref, t_ref = timed(dynamics.solve, K64, loss, f64, ts64, dynamics.Ode(rtol=1e-10),
                           check_psd=False)
        ref_name = "full ODE float64 rtol 1e-10"
    else:
        m_ref = 4 * m
        dec64 = linalg.eigen_decomposition(K64, m_ref, "contrastive")
        ref, t_ref = timed(dynamics.solve, K64, loss, f64, ts64,
                           dynamics.Eigen(decomposition=dec64, rtol=1e-10), check_psd=False)
        ref_name = f"eigen float64 m={m_ref} rtol 1e-10 (full f64 ODE infeasible here)"
    print(f"reference: {ref_name} ({t_ref:.1f}s), status {ref.status_name}; L(0) = "
          f"{float(ref.loss[0]):.4g}, L(T) = {float(ref.loss[-1]):.3g}")
    err_ours = traj_err(loss, tr.f, ref.loss)
    floor32 = rel_err(jax.vmap(loss)(ref.f.astype(jnp.float32)), ref.loss)
    print(f"float32 loss evaluation of the reference trajectory itself: {floor32:.2e} off (the "
          f"floor of any loss curve computed in float32); errors below use float64 evaluation")

    res = dict(N=N, t_kernel=t_kernel, t_dec=t_dec, t_ours=t_ours, err_ours=err_ours)
    if args.no_peer:
        print(f"peer: skipped (--no-peer); loss error vs reference: sslntk {err_ours:.2e}; "
              f"floor = kernel {t_kernel:.2f}s + decomposition {t_dec:.2f}s")
        t_full = err_full = float("nan")
        if args.full_ode:   # sslntk's own full-system ODE (Tsit5), the peer's algorithm class
            timed(dynamics.solve, K, loss, f0, ts * 1e-3, "ode", check_psd=False)
            full, t_full = timed(dynamics.solve, K, loss, f0, ts, "ode", check_psd=False)
            err_full = traj_err(loss, full.f, ref.loss)
            print(f"sslntk full (2n, k) ODE: {t_full:.3f}s, status {full.status_name}, "
                  f"{int(full.n_steps)} steps, error {err_full:.2e} -> full/eigen "
                  f"{t_full / t_ours:.1f}x")
        return {**res, "t_peer": t_full, "err_peer": err_full}
    if args.peer_horizon_frac < 1.0 and N >= 8192:
        frac = args.peer_horizon_frac
        ts_p = ts[: max(2, int(T_SAVE * frac))]
        peer(loss, K, f0, ts_p[:2])
        fp, t_peer_short = timed(peer, loss, K, f0, ts_p)
        t_peer = t_peer_short * float(ts[-1] / ts_p[-1])
        err_peer = traj_err(loss, fp, ref.loss[: len(ts_p)])
        label = (f"EXTRAPOLATED from horizon {float(ts_p[-1]):.4g} ({t_peer_short:.1f}s measured, "
                 f"×{float(ts[-1] / ts_p[-1]):.2f} linear in time)")
    else:
        # The first call compiles. From 2n = 4096 on, a full-horizon call takes minutes, so the
        # compiling call integrates only 1e-3 of the horizon (same shapes → the same executable);
        # the timed second call always integrates the whole horizon.
        warm = ts * 1e-3 if N >= 4096 else ts
        _, t_peer_cold = timed(peer, loss, K, f0, warm)
        fp, t_peer = timed(peer, loss, K, f0, ts)
        err_peer = traj_err(loss, fp, ref.loss)
        label = (f"measured, whole horizon (compiling call {t_peer_cold:.2f}s"
                 f"{' on 1e-3 of the horizon' if N >= 4096 else ''})")
    res.update(t_peer=t_peer, err_peer=err_peer)
    floor = t_kernel + t_dec
    print(f"peer nt.predict.gradient_descent: {t_peer:.3f}s {label}")
    print(f"loss error vs reference: sslntk {err_ours:.2e}, peer {err_peer:.2e}")
    print(f"RATIO peer/sslntk = {t_peer / t_ours:.1f}x   (floor = kernel {t_kernel:.2f}s + "
          f"decomposition {t_dec:.2f}s = {floor:.2f}s; sslntk total incl. kernel "
          f"{t_kernel + t_ours:.2f}s = {(t_kernel + t_ours) / floor:.2f}x the floor; "
          f"solve alone {t_ours - t_dec:.3f}s)")
    return res


def sweep(args, N=2048, n_seeds=4, n_alpha=8):
    print(f"\n== sweep: {n_seeds} seeds × {n_alpha} α on one kernel, 2n = {N}, k = {K_OUT}")
    K, Kn, t_kernel = problem(N)
    loss = losses.get("barlow_twins")
    alphas = np.logspace(-4, -2, n_alpha)
    f0s = jnp.stack([init(Kn, K_OUT, a, seed=s) for s in range(n_seeds) for a in alphas])
    m = _eigen.default_m(K_OUT, N, "contrastive")
    dec = linalg.eigen_decomposition(K, m, "contrastive")
    dec, t_dec = timed(linalg.eigen_decomposition, K, m, "contrastive")
    g16 = float(dec.values[K_OUT - 1])
    t16 = np.log(1.0 / (g16 * alphas[0] ** 2)) / (8 * g16)
    ts = jnp.linspace(0.0, 1.5 * t16, T_SAVE, dtype=jnp.float32)

    def run_ours():
        d = linalg.eigen_decomposition(K, m, "contrastive")
        return solve_many(K, loss, f0s, ts, decomposition=d, check_psd=False)

    _, t_cold = timed(run_ours)
    tr, t_ours = timed(run_ours)
    print(f"sslntk solve_many (decomposition + one joint solve of the 32 runs): {t_ours:.2f}s "
          f"(cold {t_cold:.2f}s); all ok: {bool(np.all(np.asarray(tr.status) == 0))}")
    B = len(f0s)
    if args.no_peer:
        print(f"peer: skipped (--no-peer); floor = kernel {t_kernel:.2f}s + one decomposition "
              f"{t_dec:.2f}s")
        return
    nv = min(args.sweep_peer_runs, B)
    # Loop: the step count of an adaptive solver depends on α, so the loop is timed on all n_alpha
    # α of seed 0 (runs 0..n_alpha-1) and scaled by the number of seeds (labelled when scaled).
    nl = min(args.sweep_loop_runs, B)
    _, t_cold1 = timed(peer, loss, K, f0s[0], ts)
    t0 = time.perf_counter()
    fl = [jax.block_until_ready(peer(loss, K, f0s[i], ts)) for i in range(nl)]
    t_loop = (time.perf_counter() - t0) * B / nl
    tag = "measured" if nl == B else f"EXTRAPOLATED: runs 0..{nl - 1} measured, ×{B / nl:g}"
    print(f"peer in a loop: {t_loop:.2f}s ({tag}; compiling call {t_cold1:.2f}s)")
    fp = jnp.stack(fl)
    t_vmap = float("inf")
    if nv > 1:
        vpeer = jax.jit(jax.vmap(lambda f0: kernels.reference_gradient_descent(loss, K, f0, ts)[0]))
        _, t_vc = timed(vpeer, f0s[:nv])
        fp, t_v = timed(vpeer, f0s[:nv])
        t_vmap = t_v * B / nv
        tag = "measured" if nv == B else f"EXTRAPOLATED: {nv} runs measured {t_v:.2f}s, ×{B / nv:g}"
        print(f"peer under vmap: {t_vmap:.2f}s ({tag}; cold {t_vc:.2f}s)")
    # Accuracy of the sweep: both against the float64 full ODE on a few runs.
    errs_o, errs_p = [], []
    dec64 = linalg.eigen_decomposition(K.astype(jnp.float64), 4 * m, "contrastive")
    for i in sorted({0, len(fp) - 1}):
        ref = dynamics.solve(K.astype(jnp.float64), loss, f0s[i].astype(jnp.float64),
                             ts.astype(jnp.float64), dynamics.Eigen(decomposition=dec64, rtol=1e-10),
                             check_psd=False)
        errs_o.append(traj_err(loss, tr.f[i], ref.loss))
        errs_p.append(traj_err(loss, fp[i], ref.loss))
    print(f"loss error vs float64 eigen m={4 * m} rtol 1e-10 (runs 0 and {len(fp) - 1}): sslntk "
          f"{max(errs_o):.2e}, peer {max(errs_p):.2e}")
    best = min(t_vmap, t_loop)
    floor = t_kernel + t_dec
    print(f"RATIO peer(best of vmap/loop)/sslntk = {best / t_ours:.1f}x   (floor = kernel "
          f"{t_kernel:.2f}s + one decomposition {t_dec:.2f}s = {floor:.2f}s; sslntk sweep incl. "
          f"kernel {t_kernel + t_ours:.2f}s = {(t_kernel + t_ours) / floor:.2f}x the floor)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="512,2048,8192")
    ap.add_argument("--quick", action="store_true", help="2n = 512 only, no sweep")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--m", type=int, default=None)
    ap.add_argument("--sweep-peer-runs", type=int, default=32,
                    help="time the vmapped peer on this many of the 32 sweep runs and "
                         "extrapolate (labelled) when fewer than 32; 1 skips the vmapped peer")
    ap.add_argument("--sweep-loop-runs", type=int, default=8,
                    help="time the peer's Python loop on the first this-many runs (seed 0, every "
                         "α) and scale to 32 (labelled); 32 measures the whole loop")
    ap.add_argument("--only-sweep", action="store_true")
    ap.add_argument("--full-ode", action="store_true",
                    help="with --no-peer: also time sslntk's full-system ODE in the peer column")
    ap.add_argument("--no-peer", action="store_true",
                    help="time sslntk only (e.g. on a GPU with a JAX that neural-tangents rejects)")
    ap.add_argument("--peer-horizon-frac", type=float, default=1.0,
                    help="at 2n >= 8192 time the peer on this fraction of the horizon and "
                         "extrapolate (labelled); 1.0 measures the whole horizon")
    ap.add_argument("--public", action="store_true",
                    help="only time the public dynamics.solve against the internal path")
    ap.add_argument("--public-sizes", default="4096,8192")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    sizes = [512] if args.quick else [int(s) for s in args.sizes.split(",")]
    print(f"devices: {jax.devices()}, float32")
    if args.public:
        ratios = {N: public_vs_internal(N, args.rounds)
                  for N in (int(s) for s in args.public_sizes.split(","))}
        print("\nsummary public/internal: " + ", ".join(f"2n = {N}: {r:.3f}"
                                                       for N, r in ratios.items()))
        return
    rows = [] if args.only_sweep else [single(N, args) for N in sizes]
    print("\nsummary (wall seconds; ratio = peer / sslntk; errors: max relative loss error)")
    print(f"{'2n':>6} {'kernel':>8} {'decomp':>8} {'sslntk':>8} {'peer':>9} {'ratio':>7} "
          f"{'err sslntk':>11} {'err peer':>10}")
    for r in rows:
        print(f"{r['N']:>6} {r['t_kernel']:>8.2f} {r['t_dec']:>8.3f} {r['t_ours']:>8.3f} "
              f"{r['t_peer']:>9.2f} {r['t_peer'] / r['t_ours']:>7.1f} {r['err_ours']:>11.2e} "
              f"{r['err_peer']:>10.2e}")
    if not (args.quick or args.no_sweep):
        sweep(args)


if __name__ == "__main__":
    main()
