"""Experiments: a validated config → resumable computation → `results.json`, arrays and figures.

`run(cfg, out)` dispatches on `cfg["kind"]`:
  staircase      data → NTK over views → kernel dynamics → stepwise theory → figures
  width_sweep    finite networks of increasing width vs the NTK prediction from the same f₀
  phase_diagram  collapse phase diagram (measured rank vs the predicted boundary)
  finite_staircase  a ResNet trained with an SSL loss from small init: eig C(t) steps vs its
                 own empirical-NTK prediction
  hypergradient  d(outcome)/d(hyperparameter) by autodiff through data → kernel → theory,
                 checked against central finite differences

Each kind splits its work into parts (`RunDir.part`), saved atomically as they finish, so a killed
run resumes where it stopped and ends with the same numbers; a rerun of a finished run does no work.
"""

from __future__ import annotations

import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import plots
from sslntk._status import STATUS_NAMES
from sslntk.config import IMAGE_DATASETS
from sslntk.rundir import RunDir

# ---------------------------------------------------------------------------------------------------
# shared pieces: data → views → kernels → f0
# ---------------------------------------------------------------------------------------------------

def _arch(cfg):
    from sslntk import kernels

    a = cfg["arch"]
    return kernels.Arch(kind=a["kind"], depth=a["depth"], activation=a["activation"],
                        W_std=float(a["W_std"]), b_std=float(a["b_std"]))


def _augment(cfg, noise=None, stats=(0.0, 1.0)):
    """The config's augmentation; `noise` may be a traced value (hypergradients). `stats`: the
    dataset's (mean, std) in [0, 1] pixel units, for the recipes' photometric steps."""
    from sslntk import data

    d = cfg["data"]
    noise = d["noise"] if noise is None else noise
    if d["recipe"] != "none":
        opts = {"color_strength": d["color_strength"]} if d["recipe"] == "simclr" else {}
        r = data.recipe(d["recipe"], mean=stats[0], std=stats[1], blur=d["blur"], **opts)
        g = data.gaussian_noise(noise)
        return data.ViewPair(data.compose(r.a, g), data.compose(r.b, g))
    augs = [data.gaussian_noise(noise)]
    if d["name"] in IMAGE_DATASETS and d["translate"] > 0:
        augs.insert(0, data.translate(d["translate"]))
    return data.compose(*augs)


def _dtype(cfg):
    return jnp.float64 if cfg["precision"] == "float64" else jnp.float32


def _load(cfg):
    from sslntk import config

    return config.load_dataset(cfg)


def _pixel_stats(ds):
    """(mean, std) mapping the dataset's x back to [0, 1] pixels (digits: raw values / 16)."""
    if ds.name == "digits":
        return np.asarray(ds.info["mean"]) / 16.0, np.asarray(ds.info["std"]) / 16.0
    if "mean" in ds.info:
        return ds.info["mean"], ds.info["std"]
    return 0.0, 1.0


def _dataset(cfg):
    """(train x, test x) as arrays in the config's precision."""
    d = cfg["data"]
    x = _load(cfg).x
    return x[: d["n"]], x[d["n"]:]


def _dataset_and_augment(cfg, noise=None):
    d = cfg["data"]
    ds = _load(cfg)
    x = ds.x
    return x[: d["n"]], x[d["n"]:], _augment(cfg, noise, _pixel_stats(ds))


def views_and_kernels(cfg, *, noise=None, progress: bool = False):
    """Stacked views `(2n, ...)`, test inputs, and the NTK/NNGP over [views; test]."""
    from sslntk import data, kernels

    key = jax.random.PRNGKey(cfg["seed"])
    x_tr, x_te, aug = _dataset_and_augment(cfg, noise)
    views = data.make_views(x_tr, aug, jax.random.fold_in(key, 2))
    X = jnp.concatenate([views.stacked, x_te], axis=0) if x_te.shape[0] else views.stacked
    arch = _arch(cfg)
    K, K_nngp = kernels.ntk_and_nngp(arch, X, progress=progress)
    return views, X, K, K_nngp


def _finite_or_none(v):
    """JSON-friendly list: NaN/inf (a mode without a step time) become null."""
    return [float(x) if np.isfinite(x) else None for x in np.asarray(v, dtype=float)]


def _finite_prefix_steps(spectra, ts, threshold=None):
    """`metrics.detect_steps` on the finite prefix of a saved spectrum `(T, k)`: a run that stopped
    (diverged, NaN) has NaN rows after its last good save, which `detect_steps` refuses; the step
    times come from the rows before. Fewer than two good rows: every mode "not learned"."""
    from sslntk import metrics

    spectra, ts = np.asarray(spectra), np.asarray(ts)
    good = np.all(np.isfinite(spectra), axis=-1)
    T = int(np.argmin(good)) if not good.all() else len(good)
    kw = {} if threshold is None else {"threshold": threshold}
    if T >= 2:
        return metrics.detect_steps(spectra[:T], ts[:T], **kw)
    k = spectra.shape[-1]
    return metrics.Steps(times=np.full(k, np.nan), learned=np.zeros(k, bool),
                         reason=np.full(k, metrics.UNDEFINED), final=np.full(k, np.nan))


# ---------------------------------------------------------------------------------------------------
# staircase
# ---------------------------------------------------------------------------------------------------

def run_staircase(rd: RunDir, cfg: dict, progress: bool) -> dict:
    from sslntk import diagnostics, dynamics, explain, losses, metrics
    from sslntk.kernels import initial_function
    from sslntk.theory import staircase

    dyn = cfg["dynamics"]
    N = 2 * cfg["data"]["n"]

    def kernel_part():
        _, X, K_all, Kn_all = views_and_kernels(cfg, progress=progress)
        f0_all = initial_function(Kn_all, dyn["k"], dyn["alpha"],
                                  jax.random.fold_in(jax.random.PRNGKey(cfg["seed"]), 3))
        return {"K_all": K_all, "f0_all": f0_all}

    kp = rd.part("kernel", kernel_part)
    K_all, f0_all = jnp.asarray(kp["K_all"]), jnp.asarray(kp["f0_all"])
    K, K_tx, f0, f0_te = K_all[:N, :N], K_all[N:, :N], f0_all[:N], f0_all[N:]
    has_test = K_tx.shape[0] > 0

    # Theory first: it sets the horizon (1.5 × the predicted k-th step time by default).
    th0 = staircase.stepwise(K, f0, dyn["k"])
    t_end = dyn["horizon"] * float(jnp.max(jnp.where(jnp.isfinite(th0.step_times),
                                                       th0.step_times, 0.0)))
    if not t_end > 0:
        raise RuntimeError("staircase: no mode is learned (all contrastive eigenvalues <= 0)")
    ts = jnp.linspace(0.0, t_end, dyn["n_times"])
    th = staircase.stepwise(K, f0, dyn["k"], ts=ts,
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
    terms = {n: np.asarray(v) for n, v in jax.vmap(loss.terms)(f).items()}
    diag = diagnostics.collapse(f)
    diagnostics.check_collapse(diag, k=dyn["k"], where="staircase")
    c_sim = metrics.cross_correlation_spectrum(f)            # (T, k), descending
    steps_sim = _finite_prefix_steps(c_sim, ts)
    st_sim = np.asarray(steps_sim.times)
    st_th = np.asarray(th.step_times)
    learned = np.asarray(steps_sim.learned)
    not_learned = [j + 1 for j in np.flatnonzero(~learned)]
    with np.errstate(invalid="ignore"):
        rel = np.abs(st_sim - st_th) / st_th                 # NaN for modes not learned
    ts_np = np.asarray(ts)
    plots.staircase(rd.path, "loss_staircase", ts_np, sp["loss"], st_th,
                    loss_theory=np.asarray(th.loss), simulated_steps=st_sim, terms=terms,
                    sim_label=f"kernel dynamics ({str(sp['method'])})",
                    theory_label="stepwise theory (closed form)",
                    predicted_label="predicted step times (theory)",
                    measured_label="measured step times (kernel dynamics)",
                    not_learned=not_learned,
                    title=f"{cfg['loss']['name']} loss, 2n = {N}, k = {dyn['k']}, α = {dyn['alpha']:g}")
    plots.eigenvalues(rd.path, "eigenvalues", ts_np, np.asarray(c_sim), np.asarray(th.c),
                      sim_label="kernel dynamics", theory_label="stepwise theory (logistic)",
                      steps_sim=st_sim, not_learned=not_learned,
                      title="Eigenvalues of C(t): kernel dynamics (solid) vs logistic theory "
                            "(dashed)")
    gam_all = np.asarray(staircase.contrastive_modes(K, min(N, 4 * dyn["k"]))[0])
    plots.spectrum(rd.path, "contrastive_spectrum", gam_all, k=dyn["k"])

    headline = {
        "method": str(sp["method"]),
        "status": int(sp["status"]),
        "n_steps": int(sp["n_steps"]),
        "gammas": np.asarray(th.gammas).tolist(),
        "step_times_predicted": _finite_or_none(st_th),
        "step_times_simulated": _finite_or_none(st_sim),
        "modes_not_learned": not_learned,
        "step_threshold": metrics.STEP_THRESHOLD,
        "step_time_rel_error_max": (float(np.max(rel[learned])) if learned.any()
                                    else float("nan")),
        "final_loss": float(sp["loss"][-1]),
        "t_end": float(t_end),
    }
    if has_test:
        G_sim = sp["f_test"][-1] @ sp["f_test"][-1].T
        G_th = np.asarray(th.f_final_test @ th.f_final_test.T)
        headline["test_gram_rel_error_vs_kernel_pca"] = float(
            np.linalg.norm(G_sim - G_th) / np.linalg.norm(G_th))
    headline["final_terms"] = {n: float(v[-1]) for n, v in terms.items()}
    chead, cnotes, clines = explain.collapse_lines(diag, k=dyn["k"],
                                                   threshold=diagnostics.COLLAPSE_RANK)
    headline.update(chead)
    notes, why = explain.staircase_notes(headline, gam_all, k=dyn["k"], alpha=dyn["alpha"],
                                         step_rel_errors=rel)
    notes.update(cnotes)
    degenerate = {m for p in notes["step_time_rel_error_max"]["degenerate_pairs"] for m in p[:2]}
    status = STATUS_NAMES.get(int(sp["status"]), str(int(sp["status"])))
    lines = [f"solver: {headline['method']} ({int(sp['n_steps'])} steps, status {status})",
             "step times  predicted | simulated | rel. error   (! = near-degenerate pair)"]
    lines += [f"  mode {j + 1:2d}: {a:10.4g} | "
              + (f"{b:10.4g} | {r:8.2%}" + ("  !" if j + 1 in degenerate else "") if ok else
                 f"{'not learned':>10} |           (final eig {fv:.3g} < "
                 f"{metrics.STEP_THRESHOLD:g})" if np.isfinite(fv) and fv < metrics.STEP_THRESHOLD
                 else f"{'not learned':>10} |           (no step inside the window)")
              for j, (a, b, r, ok, fv) in enumerate(zip(st_th, st_sim, rel, learned,
                                                         np.asarray(steps_sim.final), strict=True))]
    if not_learned:
        lines.append(f"  modes {', '.join(map(str, not_learned))}: not learned by t_end = "
                     f"{float(t_end):.4g} (horizon {dyn['horizon']:g} × the last predicted step): "
                     "no measured step time")
    lines += [w for w in why if w.startswith(("  → step", "    !"))]
    lines.append(f"final loss {headline['final_loss']:.3g} ("
                 + ", ".join(f"{n} {v:.3g}" for n, v in headline["final_terms"].items()) + ")")
    lines += [w for w in why if w.startswith("  → final")]
    if has_test:
        lines.append("held-out embedding Gram vs kernel-PCA closed form: rel. error "
                     f"{headline['test_gram_rel_error_vs_kernel_pca']:.3g}")
        lines += [w for w in why if w.startswith("  → held-out")]
    lines += clines
    headline["notes"] = notes
    arrays = {"ts": ts_np, "loss": sp["loss"], "loss_theory": np.asarray(th.loss),
              "c_sim": np.asarray(c_sim), "c_theory": np.asarray(th.c), "gammas": gam_all,
              **{f"term_{n}": v for n, v in terms.items()},
              **{f"diag_{n}": np.asarray(v) for n, v in diag.items()}}
    return headline, lines, arrays


KINDS = {"staircase": run_staircase}


def run(cfg: dict, out, *, progress: bool = True, overrides=()):
    """Run a validated config into `out`. Returns `(results, did_work)`; a finished run with the same
    config returns its stored results and does no work.

    Before any work: the output path is checked (`RunDir.check_target`) and the config is checked
    against its dataset (`config.check_data`); both raise one-line errors (RunDirError,
    ConfigError). Then the directory is locked: a second process running into the same `out`
    waits for the first and finds its results. `overrides` (the command line's `--set KEY=VALUE`,
    already merged into `cfg`) are recorded in `config.json` and `results.json`.
    See `docs/how-to/run-experiments.md`."""
    import json

    from sslntk import config

    if cfg["precision"] == "float64":
        jax.config.update("jax_enable_x64", True)   # float64 runs need it process-wide
    rd = RunDir(out, cfg)
    rd.overrides = list(overrides)
    rd.check_target()
    if rd.is_done():
        return json.loads((rd.path / "results.json").read_text()), False
    config.check_data(cfg)
    with rd.lock():
        if rd.is_done():            # another process finished it while this one waited
            return json.loads((rd.path / "results.json").read_text()), False
        rd.open()
        rd.verbose = progress
        t0 = time.perf_counter()
        headline, lines, arrays = KINDS[cfg["kind"]](rd, cfg, progress)
        rd.timings["total"] = time.perf_counter() - t0
        return rd.write_results(headline, arrays, lines), True


# ---------------------------------------------------------------------------------------------------
# hypergradient
# ---------------------------------------------------------------------------------------------------

def hypergradient_outcome(cfg: dict):
    """`outcome(θ)`: the configured outcome as a differentiable function of the hyperparameter θ
    (`hypergradient.wrt`: the augmentation noise strength or the initial scale α).

    data → augmented views → NTK/NNGP (neural-tangents) → f₀ ~ α·N(0, K_nngp) → stepwise theory
    (`step_time`: the predicted time of step `mode`) or the kernel dynamics (`final_loss`: the ODE
    loss at the horizon). Every stage is JAX, so `jax.grad(outcome)` is exact.
    """
    from sslntk import dynamics, losses
    from sslntk.kernels import initial_function
    from sslntk.theory import staircase

    dyn, hg = cfg["dynamics"], cfg["hypergradient"]
    N = 2 * cfg["data"]["n"]
    cfg_train = {**cfg, "data": {**cfg["data"], "n_test": 0}}
    key_f0 = jax.random.fold_in(jax.random.PRNGKey(cfg["seed"]), 3)
    loss = losses.get(cfg["loss"]["name"], **cfg["loss"]["constants"])

    def outcome(theta, t_end=None):
        noise = theta if hg["wrt"] == "noise" else None
        alpha = theta if hg["wrt"] == "alpha" else dyn["alpha"]
        _, _, K, Kn = views_and_kernels(cfg_train, noise=noise)
        f0 = initial_function(Kn[:N, :N], dyn["k"], alpha, key_f0)
        if hg["outcome"] == "step_time":
            return staircase.stepwise(K, f0, dyn["k"]).step_times[hg["mode"] - 1]
        traj = dynamics.solve(K, loss, f0, jnp.array([0.0, t_end]), method="ode",
                              check_psd=False)
        return traj.loss[-1]

    return outcome


def run_hypergradient(rd: RunDir, cfg: dict, progress: bool):
    from sslntk.kernels import initial_function
    from sslntk.theory import staircase

    hg, dyn = cfg["hypergradient"], cfg["dynamics"]
    theta0 = float(cfg["data"]["noise"] if hg["wrt"] == "noise" else dyn["alpha"])
    outcome = hypergradient_outcome(cfg)
    t_end = None
    if hg["outcome"] == "final_loss":
        # the horizon is fixed at the base point (1.5 × predicted last step time), then held constant
        N = 2 * cfg["data"]["n"]
        _, _, K, Kn = views_and_kernels({**cfg, "data": {**cfg["data"], "n_test": 0}})
        f0 = initial_function(Kn[:N, :N], dyn["k"], dyn["alpha"],
                              jax.random.fold_in(jax.random.PRNGKey(cfg["seed"]), 3))
        t_end = 1.5 * float(jnp.max(staircase.stepwise(K, f0, dyn["k"]).step_times))
    f = (lambda th: outcome(th)) if t_end is None else (lambda th: outcome(th, t_end))

    def grad_part():
        val, g = jax.value_and_grad(f)(jnp.asarray(theta0, _dtype(cfg)))
        h = hg["fd_eps"] * theta0
        dt = _dtype(cfg)
        fd = (f(jnp.asarray(theta0 + h, dt)) - f(jnp.asarray(theta0 - h, dt))) / (2 * h)
        return {"value": val, "grad": g, "fd": fd, "h": np.asarray(h)}

    gp = rd.part("gradient", grad_part)
    xs = theta0 * np.linspace(0.5, 1.5, 9)

    def curve_part():
        return {"xs": xs, "ys": np.array([float(f(jnp.asarray(x, _dtype(cfg)))) for x in xs])}

    cp = rd.part("curve", curve_part)
    g, fd = float(gp["grad"]), float(gp["fd"])
    rel = abs(g - fd) / max(abs(fd), 1e-300)
    what = "noise strength" if hg["wrt"] == "noise" else "initial scale α"
    out_label = (f"predicted time of step {hg['mode']}" if hg["outcome"] == "step_time"
                 else "loss at the horizon")
    plots.hypergradient(rd.path, "hypergradient", cp["xs"], cp["ys"], grad_at=theta0, grad=g,
                        xlabel=what, ylabel=out_label,
                        title=f"d({out_label})/d({what}) by jax.grad vs the curve")
    headline = {"wrt": hg["wrt"], "outcome": hg["outcome"], "theta": theta0,
                "value": float(gp["value"]), "grad": g, "finite_difference": fd,
                "grad_rel_error_vs_fd": rel}
    lines = [f"{out_label} at {what} = {theta0:g}: {float(gp['value']):.6g}",
             f"d/d({what}): jax.grad {g:.6g} | central FD (h = {float(gp['h']):.3g}) {fd:.6g} | "
             f"rel. diff {rel:.2e}"]
    return headline, lines, {"xs": cp["xs"], "ys": cp["ys"]}


KINDS["hypergradient"] = run_hypergradient


# ---------------------------------------------------------------------------------------------------
# width_sweep
# ---------------------------------------------------------------------------------------------------

def run_width_sweep(rd: RunDir, cfg: dict, progress: bool):
    from sslntk import data, explain, finite, losses

    dyn, fin = cfg["dynamics"], cfg["finite"]
    key = jax.random.PRNGKey(cfg["seed"])
    x_tr, x_te, aug = _dataset_and_augment(cfg)
    views = data.make_views(x_tr, aug, jax.random.fold_in(key, 2))
    loss = losses.get(cfg["loss"]["name"], **cfg["loss"]["constants"])
    T = fin["lr"] * fin["steps"]
    ts = np.linspace(0.0, T, dyn["n_times"])
    done = [w for w in fin["widths"] if (rd.parts / "width_sweep" / f"width_{w}.npz").exists()]
    if done:
        import sys

        print(f"[sslntk] width_sweep: resuming: {len(done)} of {len(fin['widths'])} widths "
              f"finished by an earlier run ({', '.join(map(str, done))})", file=sys.stderr,
              flush=True)
    ws = finite.width_sweep(_arch(cfg), views, loss, fin["widths"], fin["seeds"],
                            alpha=dyn["alpha"], lr=fin["lr"], steps=fin["steps"], ts=ts,
                            x_test=x_te if x_te.shape[0] else None, out_dim=dyn["k"],
                            method=dyn["method"], checkpoint=rd.parts / "width_sweep",
                            progress=progress, record_terms=True)
    fit = ws.exponent
    kw = {}
    if fit is not None:
        kw = dict(slope=fit.slope, intercept=fit.intercept, ci=fit.ci_boot)
    plots.deviation_vs_width(rd.path, "deviation_vs_width", ws.widths, ws.deviation,
                             title=f"{cfg['loss']['name']}: finite {cfg['arch']['kind']} vs NTK "
                                   f"(α = {dyn['alpha']:g}, t ≤ {ws.window:g})", **kw)
    plots.deviation_vs_width(rd.path, "kernel_drift_vs_width", ws.widths, ws.kernel_drift,
                             ylabel="kernel drift  ‖Θ_T − Θ_0‖_F / ‖Θ_0‖_F",
                             title="Empirical-NTK drift during training")
    if ws.terms_net:
        plots.loss_terms(rd.path, "loss_terms_vs_width", ws.ts, ws.terms_net,
                         reference=ws.terms_ker, labels=[f"width {int(w)}" for w in ws.widths],
                         title=f"{cfg['loss']['name']} loss terms (mean over seeds)")
    headline = ws.summary()
    notes, why = explain.width_sweep_notes(headline)
    lines = [f"kernel solver: {ws.method}; deviation = max over t ≤ {ws.window:g} of "
             "‖f_net − f_ntk‖/‖f_ntk‖ on train views"]
    for i, w in enumerate(ws.widths):
        lines.append(f"  width {int(w):6d}: deviation {ws.deviation[i].mean():.3g} "
                     f"(seeds {', '.join(f'{d:.3g}' for d in ws.deviation[i])}), "
                     f"kernel drift {ws.kernel_drift[i].mean():.3g}")
    if fit is not None:
        lines.append(f"fitted exponent: deviation ∝ width^{fit.slope:.3f}, 95% CI (bootstrap) "
                     f"[{fit.ci_boot[0]:.3f}, {fit.ci_boot[1]:.3f}], t-interval "
                     f"[{fit.ci_t[0]:.3f}, {fit.ci_t[1]:.3f}]")
    lines += why
    if ws.terms_net:
        headline["final_terms_net_mean"] = {n: np.asarray(v)[..., -1].mean(1).tolist()
                                            for n, v in ws.terms_net.items()}
    headline["notes"] = notes
    arrays = {"widths": ws.widths, "ts": ws.ts, "dev_train": ws.dev_train,
              "deviation": ws.deviation, "kernel_drift": ws.kernel_drift,
              "loss_net": ws.loss_net, "loss_ker": ws.loss_ker}
    if ws.dev_test is not None:
        arrays["dev_test"] = ws.dev_test
    for pre, src in (("terms_net_", ws.terms_net), ("terms_ker_", ws.terms_ker)):
        arrays.update({pre + n: v for n, v in (src or {}).items()})
    return headline, lines, arrays


KINDS["width_sweep"] = run_width_sweep


# ---------------------------------------------------------------------------------------------------
# phase_diagram
# ---------------------------------------------------------------------------------------------------

def run_phase_diagram(rd: RunDir, cfg: dict, progress: bool):
    from sslntk import phase

    ph = cfg["phase"]
    xs = np.linspace(*ph["x_range"], ph["grid"])
    gs = np.linspace(*ph["gamma_range"], ph["grid"])

    def grid_part():
        pd = phase.phase_diagram(ph["model"], ph["x_axis"], x=xs, gamma=gs,
                                 key=jax.random.PRNGKey(cfg["seed"]), spectrum=ph["spectrum"],
                                 tau=ph["tau"], progress=progress)
        return {"measured_rank": pd.measured_rank, "predicted_rank": pd.predicted_rank,
                "metastable_rank": pd.metastable_rank, "hysteresis": pd.hysteresis,
                "boundary_cells": pd.boundary_agreement(), "agreement": pd.agreement()}

    gp = rd.part("grid", grid_part)
    xlabel = "augmentation strength σ²" if ph["x_axis"] == "augmentation" else "minority fraction p"
    plots.phase_diagram(rd.path, "phase_diagram", xs, gs, gp["measured_rank"],
                        predicted_rank=gp["predicted_rank"],
                        metastable_rank=gp["metastable_rank"], xlabel=xlabel,
                        title=f"{ph['model']} linear model")
    bc = gp["boundary_cells"]
    worst = float(np.max(bc[np.isfinite(bc)])) if np.isfinite(bc).any() else 0.0
    headline = {"agreement_outside_hysteresis": float(gp["agreement"]),
                "max_boundary_offset_cells": worst,
                "hysteresis_cells": int(np.sum(gp["hysteresis"]))}
    lines = [f"measured rank == predicted rank in {float(gp['agreement']):.1%} of cells outside the "
             f"hysteresis band ({int(np.sum(gp['hysteresis']))} cells in it)",
             f"largest measured-vs-predicted boundary offset: {worst:g} grid cells"]
    return headline, lines, {"x": xs, "gamma": gs, **{k: gp[k] for k in (
        "measured_rank", "predicted_rank", "metastable_rank", "hysteresis")}}


KINDS["phase_diagram"] = run_phase_diagram


# ---------------------------------------------------------------------------------------------------
# finite_staircase
# ---------------------------------------------------------------------------------------------------

def staircase_order(st_net, st_ker, final_net, final_ker, min_final: float) -> dict:
    """Steps detected in a finite net's eigenvalues vs its kernel prediction, and their order.

    A mode's step is detected when its step time is finite and its final eigenvalue exceeds
    `min_final`. `order_matches`: the net's detected steps come in the same order (over the
    descending eigenvalue index) as the prediction's; `steps_in_sequence`: the net's steps are
    strictly increasing in time, i.e. the eigenvalues rise one at a time."""
    st_net, st_ker = np.asarray(st_net, float), np.asarray(st_ker, float)
    det_net = np.isfinite(st_net) & (np.asarray(final_net) > min_final)
    det_ker = np.isfinite(st_ker) & (np.asarray(final_ker) > min_final)
    both = det_net & det_ker
    n = int(both.sum())
    a, b = st_net[both], st_ker[both]
    order = bool(n > 0 and np.array_equal(np.argsort(a, kind="stable"),
                                          np.argsort(b, kind="stable")))
    sn = st_net[det_net]
    seq = bool(sn.size > 0 and np.all(np.diff(sn) > 0))
    sep = float(np.min(sn[1:] / sn[:-1])) if sn.size > 1 and np.all(sn[:-1] > 0) else float("nan")
    rel = np.abs(a - b) / b if n else np.zeros(0)
    return {"n_steps_detected": int(det_net.sum()), "n_steps_predicted": int(det_ker.sum()),
            "n_steps_both": n, "order_matches": order, "steps_in_sequence": seq,
            "min_step_ratio": sep,
            "step_time_rel_error_max": float(np.max(rel)) if n else float("nan")}


def _step_cell(t) -> str:
    return f"{t:10.4g}" if np.isfinite(t) else f"{'not learned':>11}"


def _say_resume(name: str, ckpt, total: int):
    """Print "resuming from step N of M" when a training checkpoint of an earlier run exists."""
    import sys

    from sslntk import _io

    if not ckpt.exists() or (ckpt.parent / f"{name}.npz").exists():
        return
    try:
        step = int(_io.load_npz(ckpt)["step"])
    except (_io.DamagedFileError, KeyError):
        return
    print(f"[sslntk] {name}: resuming from step {step} of {total}", file=sys.stderr, flush=True)


def run_finite_staircase(rd: RunDir, cfg: dict, progress: bool):
    from sslntk import data, finite, losses, metrics

    dyn, rn, fin = cfg["dynamics"], cfg["resnet"], cfg["finite"]
    key = jax.random.PRNGKey(cfg["seed"])
    x_tr, _, aug = _dataset_and_augment(cfg)
    views = data.make_views(x_tr, aug, jax.random.fold_in(key, 2))
    loss = losses.get(cfg["loss"]["name"], **cfg["loss"]["constants"])
    spec = finite.resnet(rn["blocks"], activation=rn["activation"],
                         norm=None if rn["norm"] == "none" else rn["norm"])
    model = finite.network(spec, rn["width"], dyn["k"], key=jax.random.fold_in(key, 3),
                           alpha=dyn["alpha"], in_shape=x_tr.shape[1:], dtype=x_tr.dtype)
    lr, steps = fin["lr"], fin["steps"]
    # saved times on exact GD steps (float64): the prediction's GD solver needs multiples of lr
    ts = lr * np.round(np.linspace(0.0, steps, fin["n_times"]))
    ckpt = rd.parts / "train_checkpoint.npz"
    _say_resume("train", ckpt, steps)

    def train_part():
        # full-batch GD; the prediction below solves the same discrete GD at the same lr, so the
        # comparison is step for step and needs no gradient-flow step-size check
        tr = finite.train(model, views, loss, lr=lr, steps=steps, ts=ts, progress=progress,
                          check_lr=False, checkpoint=ckpt)
        return {"ts": np.asarray(tr.ts), "f": np.asarray(tr.f), "loss": np.asarray(tr.loss),
                "status": np.asarray(tr.status)}

    tp = rd.part("train", train_part)
    # the times reached, rounded back onto GD steps in float64 (a float32 run stores them rounded)
    ts_tr = lr * np.round(np.asarray(tp["ts"], dtype=np.float64) / lr)

    def kernel_part():
        with warnings.catch_warnings():
            # ts_tr are exact GD steps in float64; the prediction casts them to the model's
            # float32, which puts them ~eps32 × steps (1e-5 steps at 200) off the grid and makes
            # the GD solver warn before rounding them back onto the very same steps
            warnings.filterwarnings("ignore", message="method 'gd': ts are not multiples of lr",
                                    category=UserWarning)
            kp = finite.kernel_prediction(model, views, loss, ts_tr, lr=lr)
        return {"f": kp.f, "loss": kp.loss, "cross_output": np.asarray(kp.cross_output),
                "status": np.asarray(kp.trajectory.status)}

    kp = rd.part("kernel_prediction", kernel_part)
    c_net = np.asarray(metrics.cross_correlation_spectrum(jnp.asarray(tp["f"])))
    c_ker = np.asarray(metrics.cross_correlation_spectrum(jnp.asarray(kp["f"])))
    det_net = _finite_prefix_steps(c_net, ts_tr, fin["min_final"])
    det_ker = _finite_prefix_steps(c_ker, ts_tr, fin["min_final"])
    st_net, st_ker = np.asarray(det_net.times), np.asarray(det_ker.times)
    summ = staircase_order(st_net, st_ker, c_net[-1], c_ker[-1], fin["min_final"])
    not_learned = [j + 1 for j in np.flatnonzero(~np.asarray(det_net.learned))]
    plots.eigenvalues(rd.path, "eigenvalues", ts_tr, c_net, c_ker, sim_label="ResNet (GD)",
                      theory_label="empirical-NTK prediction (GD on Θ₀)", steps_sim=st_net,
                      steps_theory=st_ker, not_learned=not_learned,
                      title=f"ResNet-{rn['blocks']} width {rn['width']}, "
                            f"{cfg['loss']['name']}, α = {dyn['alpha']:g}: eig C(t)")
    plots.staircase(rd.path, "loss_staircase", ts_tr, tp["loss"], st_ker,
                    loss_theory=np.asarray(kp["loss"]), simulated_steps=st_net,
                    sim_label="ResNet (full-batch GD)",
                    theory_label="empirical-NTK prediction (GD on Θ₀)",
                    predicted_label="step times of the empirical-NTK prediction",
                    measured_label="step times of the ResNet", not_learned=not_learned,
                    title=f"ResNet loss vs empirical-NTK prediction (2n = {2 * x_tr.shape[0]})")
    _fin = _finite_or_none

    headline = {**summ,
                "step_times_net": _fin(st_net), "step_times_predicted": _fin(st_ker),
                "final_eigenvalues_net": c_net[-1].tolist(),
                "final_eigenvalues_predicted": c_ker[-1].tolist(),
                "final_loss_net": float(tp["loss"][-1]),
                "final_loss_predicted": float(kp["loss"][-1]),
                "status": int(tp["status"]), "prediction_status": int(kp["status"]),
                "cross_output": float(kp["cross_output"]), "t_end": float(ts_tr[-1])}
    headline["notes"] = {
        "n_steps_detected": "modes of eig C(t) (descending) of the ResNet whose final eigenvalue "
                            f"exceeds {fin['min_final']:g}; step time = first time at half the "
                            "final value (metrics.step_times)",
        "order_matches": "the ResNet's detected steps come in the same time order as those of "
                         "its own empirical-NTK (init) prediction, mode by mode",
        "steps_in_sequence": "the ResNet's step times strictly increase with the mode index: the "
                             "eigenvalues rise one at a time",
        "cross_output": "‖Θ − K ⊗ I_k‖_F / ‖Θ‖_F of the output-space NTK at init",
    }
    lines = [f"ResNet-{rn['blocks']} (norm {rn['norm']}), width {rn['width']}, k = {dyn['k']}, "
             f"α = {dyn['alpha']:g}, GD lr {lr:g} × {steps} steps",
             "step times  ResNet | empirical-NTK prediction"]
    lines += [f"  mode {j + 1:2d}: {_step_cell(a)} | {_step_cell(b)}   (final eig {cn:.3g} | "
              f"{ck:.3g})"
              for j, (a, b, cn, ck) in enumerate(zip(st_net, st_ker, c_net[-1], c_ker[-1],
                                                     strict=True))]
    if not_learned:
        lines.append(f"  not learned: a final eigenvalue below finite.min_final = "
                     f"{fin['min_final']:g}, or no rise inside the window (no step time)")
    lines.append(f"steps detected: {summ['n_steps_detected']} (prediction "
                 f"{summ['n_steps_predicted']}); order matches the prediction: "
                 f"{summ['order_matches']}; one at a time: {summ['steps_in_sequence']}")
    lines.append(f"final loss {headline['final_loss_net']:.3g} (prediction "
                 f"{headline['final_loss_predicted']:.3g})")
    arrays = {"ts": ts_tr, "c_net": c_net, "c_predicted": c_ker, "loss_net": tp["loss"],
              "loss_predicted": kp["loss"], "step_times_net": st_net,
              "step_times_predicted": st_ker}
    return headline, lines, arrays


KINDS["finite_staircase"] = run_finite_staircase


def run_downstream(rd: RunDir, cfg: dict, progress: bool):
    """Probe accuracy vs t, k, width and augmentation strength (`sslntk.downstream`)."""
    from sslntk import downstream

    return downstream.run_downstream(rd, cfg, progress)


KINDS["downstream"] = run_downstream
def run_stability(rd: RunDir, cfg: dict, progress: bool):   # the runner lives in sslntk.stability
    from sslntk import stability

    return stability.run_stability(rd, cfg, progress)


KINDS["stability"] = run_stability
