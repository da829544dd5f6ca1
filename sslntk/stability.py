"""The stability comparison: SimCLR, BYOL, SimSiam, SwAV, Barlow Twins and DINO, with the ablations
each paper discusses, on the same views and kernel (Jha et al. 2024's centre-vector mechanism;
Tian et al. 2021; Caron et al. 2021).

- `method_suite(...)`: the runs (name → method) with their constants.
- `run_suite(K, f0, ts, methods, ...)`: kernel-regime trajectories and, per saved time, the
  centre norm ‖s‖, the mean sample norm E‖μ‖ and their ratio R (on the l2-normalised embedding,
  `metrics.stability`), RankMe, the representation-Gram eigenvalues, the predictor's eigenvalues
  and DINO's teacher entropies; `classify` labels each run collapsed / dimensional / healthy.
- `mode_phase_diagram(...)`: collapse of BYOL / SimSiam over (EMA rate, weight decay) from Tian
  et al.'s one-mode system (`theory.noncontrastive`); `dino_phase_diagram(...)`: DINO over
  (teacher temperature, centre rate) in the kernel regime.
- `run_stability(rd, cfg, progress)`: the `stability` experiment kind (results.json, arrays,
  figures). See docs/theory/asymmetric.md.
"""

from __future__ import annotations

import warnings

import numpy as np

#: a run whose R = ‖s‖/E‖μ‖ exceeds this at the end is completely collapsed (Jha et al. §1.3)
COLLAPSE_RATIO = 0.9
#: ... or whose embedding shrank below this fraction of its start (collapse to zero)
VANISH = 1e-3
#: DINO: uniform targets (mean entropy above this fraction of ln k) or one dominant class
#: (batch-mean entropy below this fraction of ln k) are collapse
DINO_UNIFORM, DINO_ONE_CLASS = 0.9, 0.6
LABELS = ("collapsed", "dimensional", "healthy")


def method_suite(*, k: int, eta=0.01, ema_rate=0.4, alpha_p=1.0, p0=0.5, teacher_temp=0.04,
                 student_temp=0.1, center_rate=5.0, n_prototypes=10, temperature=0.5,
                 form="euclidean", ablations: bool = True) -> dict:
    """The six methods (kernel regime; BYOL / SimSiam in `form` "euclidean" or "cosine") and,
    with `ablations`, the
    ablations their papers discuss: no predictor, no EMA, no stop-gradient (BYOL / SimSiam), no
    centring, no sharpening (DINO), Barlow Twins without the off-diagonal term."""
    from sslntk import losses
    from sslntk import methods as M

    suite = {
        "simclr": losses.get("simclr", temperature=temperature),
        "byol": M.BYOL(ema=ema_rate, alpha_p=alpha_p, eta=eta, p0=p0, form=form),
        "simsiam": M.SimSiam(alpha_p=alpha_p, eta=eta, p0=p0, form=form),
        "swav": M.SwAV(n_prototypes=n_prototypes),
        "barlow_twins": losses.get("barlow_twins"),
        "dino": M.DINO(ema=ema_rate, center_rate=center_rate, teacher_temp=teacher_temp,
                       student_temp=student_temp),
    }
    if ablations:
        suite.update({
            "byol_no_predictor": M.BYOL(ema=ema_rate, eta=eta, predictor="identity", form=form),
            "byol_no_ema": M.Predictive(kind="byol", ema=None, alpha_p=alpha_p, eta=eta, p0=p0,
                                        form=form),
            "simsiam_no_predictor": M.SimSiam(eta=eta, predictor="identity", form=form),
            "simsiam_no_stop_gradient": M.SimSiam(alpha_p=alpha_p, eta=eta, p0=p0, form=form,
                                                  stop_gradient=False),
            "dino_no_centering": M.DINO(ema=ema_rate, center_rate=center_rate,
                                        teacher_temp=teacher_temp, student_temp=student_temp,
                                        centering="none"),
            "dino_no_sharpening": M.DINO(ema=ema_rate, center_rate=center_rate,
                                         teacher_temp=student_temp, student_temp=student_temp),
            "barlow_twins_no_off_diagonal": losses.get("barlow_twins", lam=0.0),
        })
    return suite


def _measures(method, traj):
    """Per saved time: stability diagnostics, RankMe, Gram eigenvalues, predictor eigenvalues,
    DINO entropies (numpy arrays with a leading time axis)."""
    import jax
    import jax.numpy as jnp

    from sslntk import methods as M
    from sslntk import metrics

    f = jnp.asarray(traj.f)
    T, N, k = f.shape
    z = metrics.group_views(f)
    st = metrics.stability(z)
    out = {
        "f_norm": np.asarray(jnp.linalg.norm(f, axis=(1, 2))),
        "center_norm": np.asarray(st.center_norm),
        "mean_norm": np.asarray(st.mean_norm),
        "ratio": np.asarray(st.ratio),
        "rankme": np.asarray(jnp.stack([metrics.rankme(f[i]) for i in range(T)])),
        "gram_eigs": np.asarray(jnp.linalg.eigvalsh(jnp.einsum("tni,tnj->tij", f, f) / N)),
    }
    aux = traj.aux
    if isinstance(method, M.Predictive):
        states = [M.State(f=f[i], aux=jax.tree_util.tree_map(lambda a, i=i: a[i], aux))
                  for i in range(T)]
        Wp = jnp.stack([method.predictor_of(s) for s in states])
        out["predictor_eigs"] = np.asarray(jnp.linalg.eigvalsh((Wp + jnp.swapaxes(Wp, 1, 2)) / 2))
    if isinstance(method, M.DINO):
        states = [M.State(f=f[i], aux=jax.tree_util.tree_map(lambda a, i=i: a[i], aux))
                  for i in range(T)]
        d = [method.diagnostics(s) for s in states]
        for key in ("entropy", "batch_entropy", "top_share"):
            out[key] = np.asarray([float(x[key]) for x in d])
    return out


def classify(measures: dict, k: int) -> str:
    """collapsed / dimensional / healthy from a run's final measures: collapsed when the
    embedding vanished (‖f‖ < 1e-3 of its start), all directions agree (R > 0.9), or DINO's
    targets are uniform or dominated by one class; dimensional when RankMe < k/2; else healthy."""
    if not np.all(np.isfinite(measures["f_norm"])):
        return "collapsed"
    if measures["f_norm"][-1] < VANISH * measures["f_norm"][0]:
        return "collapsed"
    if measures["ratio"][-1] > COLLAPSE_RATIO:
        return "collapsed"
    if "entropy" in measures:
        if measures["entropy"][-1] > DINO_UNIFORM * np.log(k):
            return "collapsed"
        if measures["batch_entropy"][-1] < DINO_ONE_CLASS * np.log(k):
            return "collapsed"
    if measures["rankme"][-1] < k / 2:
        return "dimensional"
    return "healthy"


def run_suite(K, f0, ts, methods: dict, *, key=None, solver="gd", **solver_options) -> dict:
    """Solve every method of `methods` on kernel `K (2n, 2n)` from `f0 (2n, k)` at times `ts` and
    measure it. Returns `{name: {"label", "status", measure arrays...}}`; a run that did not
    succeed (e.g. a stiff ODE out of steps, a diverging GD) is labelled "failed" with its status,
    never classified. Default solver: "gd" (every method's discrete step; pass `lr`)."""
    import jax
    import jax.numpy as jnp

    from sslntk import dynamics

    key = jax.random.key(0) if key is None else key
    out = {}
    for name, m in methods.items():
        state0 = m.init(jnp.asarray(f0), key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # reported as the run's status
            tr = dynamics.solve(jnp.asarray(K), m, state0, jnp.asarray(ts), solver=solver,
                                **solver_options)
        if tr.ok:
            meas = _measures(m, tr)
            meas["label"] = classify(meas, f0.shape[1])
        else:
            nan = np.full(len(ts), np.nan)
            meas = {"f_norm": nan, "center_norm": nan, "mean_norm": nan, "ratio": nan,
                    "rankme": nan, "label": "failed"}
        meas["status"] = tr.status_name
        out[name] = meas
    return out


def mode_phase_diagram(betas, etas, *, p0=0.3, lambda_s=1.5, alpha_p=1.0, t_end=4000.0):
    """Collapse of one BYOL mode over (EMA rate beta, weight decay eta) from Tian et al.'s App.-D
    system (`theory.simulate_mode`), started on the parabola (w = w_p = p0) with tau(0) = 0, plus
    the SimSiam column (beta = ∞: target = online). Returns `(collapsed (B, E) bool, p_final
    (B, E), simsiam_collapsed (E,))`."""
    import jax.numpy as jnp

    from sslntk.theory import noncontrastive as T

    b = jnp.asarray(betas, dtype=float)[:, None]
    e = jnp.asarray(etas, dtype=float)[None, :]
    tr = T.simulate_mode(T.ModeSystem(lambda_s=lambda_s, alpha_p=alpha_p, beta=b, eta=e), p0, p0,
                         0.0, t_end=t_end)
    sim = T.simulate_mode(T.ModeSystem(lambda_s=lambda_s, alpha_p=alpha_p, eta=e[0]), p0, p0,
                          0.0, t_end=t_end)
    return (np.asarray(T.classify_modes(tr.p[-1])), np.asarray(tr.p[-1]),
            np.asarray(T.classify_modes(sim.p[-1])))


def dino_phase_diagram(K, f0, ts, teacher_temps, center_rates, *, ema_rate=0.5,
                       student_temp=0.1, **solver_options) -> np.ndarray:
    """DINO labels (collapsed / dimensional / healthy, as integers 0 / 1 / 2; -1 failed) over
    (teacher temperature, centre rate) in the kernel regime: `(len(teacher_temps),
    len(center_rates))`; `solver_options` as `run_suite`."""
    from sslntk import methods as M

    lab = np.zeros((len(teacher_temps), len(center_rates)), dtype=int)
    for i, tt in enumerate(teacher_temps):
        for j, cr in enumerate(center_rates):
            m = M.DINO(ema=ema_rate, center_rate=float(cr), teacher_temp=float(tt),
                       student_temp=student_temp)
            r = run_suite(K, f0, ts, {"dino": m}, **solver_options)["dino"]
            lab[i, j] = LABELS.index(r["label"]) if r["label"] in LABELS else -1
    return lab


# ---------------------------------------------------------------------------------------------
# the experiment kind


def _figures(path, ts, runs, betas, etas, mode_collapsed, tts, crs, dino_lab):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in runs.items():
        axes[0].plot(ts, r["ratio"], label=name)
        axes[1].plot(ts, r["rankme"], label=name)
    axes[0].set(xlabel="t (lr × steps)", ylabel="R = ‖s‖ / E‖μ‖", title="centre ratio")
    axes[1].set(xlabel="t (lr × steps)", ylabel="RankMe", title="RankMe")
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(path / f"stability_curves.{ext}", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].imshow(mode_collapsed.astype(float), origin="lower", aspect="auto", cmap="RdYlGn_r",
                   vmin=0, vmax=1)
    axes[0].set_xticks(range(len(etas)), [f"{e:g}" for e in etas])
    axes[0].set_yticks(range(len(betas)), [f"{b:g}" for b in betas])
    axes[0].set(xlabel="weight decay η", ylabel="EMA rate β", title="BYOL mode: collapsed (red)")
    axes[1].imshow(dino_lab, origin="lower", aspect="auto", cmap="RdYlGn", vmin=0, vmax=2)
    axes[1].set_xticks(range(len(crs)), [f"{c:g}" for c in crs])
    axes[1].set_yticks(range(len(tts)), [f"{t:g}" for t in tts])
    axes[1].set(xlabel="centre rate β_c", ylabel="teacher temperature",
                title="DINO: collapsed / dimensional / healthy")
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(path / f"stability_phase.{ext}", dpi=120)
    plt.close(fig)


def run_stability(rd, cfg: dict, progress: bool):
    """The `stability` experiment kind: every method of `method_suite` on the config's views and
    NTK from one `f0`, the BYOL/SimSiam and DINO phase diagrams, figures, results."""
    import jax
    import jax.numpy as jnp

    from sslntk import experiments as E
    from sslntk import kernels

    st = cfg["stability"]
    n = cfg["data"]["n"]
    N = 2 * n
    k = st["k"]
    _, _, K, Kn = E.views_and_kernels(cfg, progress=progress)
    K, Kn = K[:N, :N], Kn[:N, :N]
    key = jax.random.PRNGKey(cfg["seed"])
    f0 = kernels.initial_function(Kn, k, st["alpha"], jax.random.fold_in(key, 3))
    ts = jnp.linspace(0.0, st["t_end"], st["n_times"]).astype(K.dtype)
    suite = method_suite(k=k, eta=st["eta"], ema_rate=st["ema_rate"], alpha_p=st["alpha_p"],
                         teacher_temp=st["teacher_temp"], center_rate=st["center_rate"],
                         n_prototypes=st["n_prototypes"], form=st["form"],
                         ablations=st["ablations"])

    def runs_part():
        res = run_suite(K, f0, ts, suite, key=jax.random.fold_in(key, 4), solver="gd",
                        lr=st["lr"])
        flat = {}
        for name, r in res.items():
            for m, v in r.items():
                flat[f"{name}__{m}"] = np.asarray(v)
        return flat

    flat = rd.part("runs", runs_part)
    runs = {}
    for key_, v in flat.items():
        name, m = key_.split("__", 1)
        runs.setdefault(name, {})[m] = v
    betas, etas = np.asarray(st["ema_rates"], float), np.asarray(st["weight_decays"], float)

    def mode_part():
        c, p, s = mode_phase_diagram(betas, etas)
        return {"collapsed": c, "p_final": p, "simsiam_collapsed": s}

    mp = rd.part("mode_phase", mode_part)
    tts, crs = np.asarray(st["teacher_temps"], float), np.asarray(st["center_rates"], float)
    dp = rd.part("dino_phase", lambda: {"labels": dino_phase_diagram(
        K, f0, ts, tts, crs, ema_rate=st["ema_rate"], solver="gd", lr=st["lr"])})
    _figures(rd.path, np.asarray(ts), runs, betas, etas, np.asarray(mp["collapsed"]), tts, crs,
             np.asarray(dp["labels"]))
    table = {name: str(r["label"]) for name, r in runs.items()}
    headline = {"labels": table,
                "mode_collapsed_cells": int(np.sum(mp["collapsed"])),
                "dino_collapsed_cells": int(np.sum(np.asarray(dp["labels"]) == 0))}
    lines = [f"{name:30s} {lab:12s} R={float(runs[name]['ratio'][-1]):.3f} "
             f"RankMe={float(runs[name]['rankme'][-1]):.2f}" for name, lab in table.items()]
    arrays = {"ts": np.asarray(ts), **{k_: v for k_, v in flat.items()},
              "mode_collapsed": mp["collapsed"], "mode_p_final": mp["p_final"],
              "dino_labels": dp["labels"], "ema_rates": betas, "weight_decays": etas,
              "teacher_temps": tts, "center_rates": crs}
    return headline, lines, arrays


__all__ = ["method_suite", "run_suite", "classify", "mode_phase_diagram", "dino_phase_diagram",
           "run_stability", "COLLAPSE_RATIO", "VANISH", "LABELS"]
