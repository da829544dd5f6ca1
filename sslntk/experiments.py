"""Experiments: a validated config → resumable computation → `results.json`, arrays and figures.

`run(cfg, out)` dispatches on `cfg["kind"]`:
  staircase      data → NTK over views → kernel dynamics → stepwise theory → figures
  width_sweep    finite networks of increasing width vs the NTK prediction from the same f₀
  phase_diagram  collapse phase diagram (measured rank vs the predicted boundary)
  hypergradient  d(outcome)/d(hyperparameter) by autodiff through data → kernel → theory,
                 checked against central finite differences

Each kind splits its work into parts (`RunDir.part`), saved atomically as they finish, so a killed
run resumes where it stopped and ends with the same numbers; a rerun of a finished run does no work.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import plots
from sslntk.rundir import RunDir

# ---------------------------------------------------------------------------------------------------
# shared pieces: data → views → kernels → f0
# ---------------------------------------------------------------------------------------------------

def _arch(cfg):
    from sslntk import kernels

    a = cfg["arch"]
    return kernels.Arch(kind=a["kind"], depth=a["depth"], activation=a["activation"],
                        W_std=float(a["W_std"]), b_std=float(a["b_std"]))


def _augment(cfg, noise=None):
    """The config's augmentation; `noise` may be a traced value (hypergradients)."""
    from sslntk import data

    d = cfg["data"]
    noise = d["noise"] if noise is None else noise
    augs = [data.gaussian_noise(noise)]
    if d["name"] == "digits" and d["translate"] > 0:
        augs.insert(0, data.translate(d["translate"]))
    return data.compose(*augs)


def _dataset(cfg):
    """(train x, test x) as arrays, float64 (closed forms and references run in float64)."""
    from sslntk import data

    d = cfg["data"]
    key = jax.random.PRNGKey(cfg["seed"])
    n_all = d["n"] + d["n_test"]
    opts = dict(d["options"])
    if d["name"] in ("gaussian_mixture",):
        opts.setdefault("key", jax.random.fold_in(key, 1))
    if d["name"] == "digits":
        opts.setdefault("key", jax.random.fold_in(key, 1))
    ds = data.load(d["name"], n=n_all, dtype=jnp.float64, **opts)
    x = ds.x
    return x[: d["n"]], x[d["n"]:]


def views_and_kernels(cfg, *, noise=None):
    """Stacked views `(2n, ...)`, test inputs, and the NTK/NNGP over [views; test]."""
    from sslntk import data, kernels

    key = jax.random.PRNGKey(cfg["seed"])
    x_tr, x_te = _dataset(cfg)
    views = data.make_views(x_tr, _augment(cfg, noise), jax.random.fold_in(key, 2))
    X = jnp.concatenate([views.stacked, x_te], axis=0) if x_te.shape[0] else views.stacked
    arch = _arch(cfg)
    K, K_nngp = kernels.ntk_and_nngp(arch, X)
    return views, X, K, K_nngp


def initial_function(K_nngp, k, alpha, key):
    """f₀ ~ N(0, α² K_nngp ⊗ I_k) over all rows of `K_nngp` (DESIGN.md "Small initialisation")."""
    N = K_nngp.shape[0]
    jitter = 1e-10 * jnp.trace(K_nngp) / N
    L = jnp.linalg.cholesky(K_nngp + jitter * jnp.eye(N, dtype=K_nngp.dtype))
    return alpha * (L @ jax.random.normal(key, (N, k), K_nngp.dtype))


# ---------------------------------------------------------------------------------------------------
# staircase
# ---------------------------------------------------------------------------------------------------

def run_staircase(rd: RunDir, cfg: dict, progress: bool) -> dict:
    from sslntk import dynamics, losses, metrics
    from sslntk.theory import stepwise

    dyn = cfg["dynamics"]
    N = 2 * cfg["data"]["n"]

    def kernel_part():
        _, X, K_all, Kn_all = views_and_kernels(cfg)
        f0_all = initial_function(Kn_all, dyn["k"], dyn["alpha"],
                                  jax.random.fold_in(jax.random.PRNGKey(cfg["seed"]), 3))
        return {"K_all": K_all, "f0_all": f0_all}

    kp = rd.part("kernel", kernel_part)
    K_all, f0_all = jnp.asarray(kp["K_all"]), jnp.asarray(kp["f0_all"])
    K, K_tx, f0, f0_te = K_all[:N, :N], K_all[N:, :N], f0_all[:N], f0_all[N:]
    has_test = K_tx.shape[0] > 0

    # Theory first: it sets the horizon (1.5 × the predicted k-th step time by default).
    th0 = stepwise.stepwise(K, f0, dyn["k"])
    t_end = dyn["horizon"] * float(jnp.max(jnp.where(jnp.isfinite(th0.step_times),
                                                       th0.step_times, 0.0)))
    if not t_end > 0:
        raise RuntimeError("staircase: no mode is learned (all contrastive eigenvalues <= 0)")
    ts = jnp.linspace(0.0, t_end, dyn["n_times"])
    th = stepwise.stepwise(K, f0, dyn["k"], ts=ts,
                           K_test_train=K_tx if has_test else None)
    loss = losses.get(cfg["loss"]["name"], **cfg["loss"]["constants"])

    def solve_part():
        traj = dynamics.solve(K, loss, f0, ts, method=dyn["method"],
                              K_test_train=K_tx if has_test else None,
                              f0_test=f0_te if has_test else None, progress=progress)
        out = {"f": traj.f, "loss": traj.loss, "status": traj.status, "n_steps": traj.n_steps,
               "method": np.array(traj.method)}
        if has_test:
            out["f_test"] = traj.f_test
        return out

    sp = rd.part("solve", solve_part)
    f = jnp.asarray(sp["f"])
    c_sim = metrics.cross_correlation_spectrum(f)            # (T, k), descending
    st_sim = np.asarray(metrics.step_times(c_sim, ts))
    st_th = np.asarray(th.step_times)
    rel = np.abs(st_sim - st_th) / st_th
    ts_np = np.asarray(ts)
    plots.staircase(rd.path, "loss_staircase", ts_np, sp["loss"], st_th,
                    loss_theory=np.asarray(th.loss), simulated_steps=st_sim,
                    title=f"{cfg['loss']['name']} loss, 2n = {N}, k = {dyn['k']}, α = {dyn['alpha']:g}")
    plots.eigenvalues(rd.path, "eigenvalues", ts_np, np.asarray(c_sim), np.asarray(th.c),
                      title="Eigenvalues of C(t): simulation (solid) vs logistic theory (dashed)")
    gam_all = np.asarray(stepwise.contrastive_modes(K, min(N, 4 * dyn["k"]))[0])
    plots.spectrum(rd.path, "contrastive_spectrum", gam_all, k=dyn["k"])

    headline = {
        "method": str(sp["method"]),
        "status": int(sp["status"]),
        "n_steps": int(sp["n_steps"]),
        "gammas": np.asarray(th.gammas).tolist(),
        "step_times_predicted": st_th.tolist(),
        "step_times_simulated": st_sim.tolist(),
        "step_time_rel_error_max": float(np.max(rel)),
        "final_loss": float(sp["loss"][-1]),
        "t_end": float(t_end),
    }
    if has_test:
        G_sim = sp["f_test"][-1] @ sp["f_test"][-1].T
        G_th = np.asarray(th.f_final_test @ th.f_final_test.T)
        headline["test_gram_rel_error_vs_kernel_pca"] = float(
            np.linalg.norm(G_sim - G_th) / np.linalg.norm(G_th))
    lines = [f"solver: {headline['method']} ({int(sp['n_steps'])} steps, status {int(sp['status'])})",
             "step times  predicted | simulated | rel. error"]
    lines += [f"  mode {j + 1:2d}: {a:10.4g} | {b:10.4g} | {r:8.2%}"
              for j, (a, b, r) in enumerate(zip(st_th, st_sim, rel, strict=True))]
    lines.append(f"final loss {headline['final_loss']:.3g}")
    if has_test:
        lines.append("held-out embedding Gram vs kernel-PCA closed form: rel. error "
                     f"{headline['test_gram_rel_error_vs_kernel_pca']:.3g}")
    arrays = {"ts": ts_np, "loss": sp["loss"], "loss_theory": np.asarray(th.loss),
              "c_sim": np.asarray(c_sim), "c_theory": np.asarray(th.c), "gammas": gam_all}
    return headline, lines, arrays


KINDS = {"staircase": run_staircase}


def run(cfg: dict, out, *, progress: bool = True):
    """Run a validated config into `out`. Returns `(results, did_work)`; a finished run with the same
    config returns its stored results and does no work."""
    import json

    rd = RunDir(out, cfg)
    if rd.is_done():
        res = json.loads((rd.path / "results.json").read_text())
        return res, False
    rd.open()
    rd.verbose = progress
    t0 = time.perf_counter()
    headline, lines, arrays = KINDS[cfg["kind"]](rd, cfg, progress)
    rd.timings["total"] = time.perf_counter() - t0
    return rd.write_results(headline, arrays, lines), True
