"""Figures (matplotlib, Agg): each function takes plain arrays and writes `NAME.png` and `NAME.pdf`.

Axes carry units: time is "t (learning rate × steps)", deviations are relative (dimensionless).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from sslntk import _io

# Figures are bare `matplotlib.figure.Figure` objects rendered by `savefig` (Agg for PNG), never
# registered with pyplot: importing this module leaves the user's backend alone (a global
# `matplotlib.use("Agg")` switched a notebook's inline backend off, so its later figures vanished).


def _subplots(*args, **kwargs):
    """Like pyplot's `subplots`, without pyplot: `(fig, axes)`."""
    figsize = kwargs.pop("figsize", None)
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)

TIME_LABEL = "t  (learning rate × steps)"


def _save(fig, out: str | Path, name: str) -> list[Path]:
    out = Path(out)
    paths = []
    for ext in ("png", "pdf"):
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight")
        paths.append(_io.atomic_write_bytes(out / f"{name}.{ext}", buf.getvalue()))
    return paths


def staircase(out, name, ts, loss, predicted_steps, *, loss_theory=None, simulated_steps=None,
              title="Barlow Twins loss staircase", terms=None):
    """Loss vs time with the predicted step times as dashed verticals (and the theory curve).
    `terms`: optional `{name: (T,)}` named loss terms (`Loss.terms`), drawn as thin lines."""
    fig, ax = _subplots(figsize=(6.4, 4.0))
    ax.plot(ts, loss, lw=2, label="simulated (kernel dynamics)")
    for i, (tn, tv) in enumerate(sorted((terms or {}).items())):
        ax.plot(ts, np.asarray(tv), lw=1, alpha=0.8, color=f"C{4 + i}", label=f"term: {tn}")
    if loss_theory is not None:
        ax.plot(ts, loss_theory, "k--", lw=1, label="stepwise theory")
    for j, t in enumerate(np.asarray(predicted_steps)):
        if np.isfinite(t):
            ax.axvline(t, color="C3", ls=":", lw=1, label="predicted step times" if j == 0 else None)
    if simulated_steps is not None:
        st = np.asarray(simulated_steps)
        st = st[np.isfinite(st)]
        ax.plot(st, np.interp(st, ts, loss), "o", ms=4, color="C2", label="measured step times")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel("loss  L(t)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out, name)


def eigenvalues(out, name, ts, c_sim, c_theory=None, *, ylabel="eigenvalues of C(t)",
                title="Embedding eigenvalues", sim_label="simulated",
                theory_label="theory (logistic)", steps_sim=None, steps_theory=None):
    """Per-mode eigenvalue trajectories `(T, k)`: simulated solid, theory dashed, log-time axis."""
    c_sim = np.asarray(c_sim)
    fig, ax = _subplots(figsize=(6.4, 4.0))
    for j in range(c_sim.shape[1]):
        ax.plot(ts, c_sim[:, j], color=f"C{j % 10}", lw=2,
                label=sim_label if j == 0 else None)
        if c_theory is not None:
            ax.plot(ts, np.asarray(c_theory)[:, j], color="k", ls="--", lw=0.8,
                    label=theory_label if j == 0 else None)
    # optional step times: measured (dots on the curve) and predicted (dotted verticals)
    for j, t in enumerate(np.asarray(steps_theory if steps_theory is not None else [])):
        if np.isfinite(t):
            ax.axvline(t, color=f"C{j % 10}", ls=":", lw=0.8)
    for j, t in enumerate(np.asarray(steps_sim if steps_sim is not None else [])):
        if np.isfinite(t):
            ax.plot([t], [np.interp(t, ts, c_sim[:, j])], "o", ms=4, color=f"C{j % 10}")
    ax.set_xlabel(TIME_LABEL)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out, name)


def spectrum(out, name, gammas, *, k=None, title="Contrastive-kernel spectrum"):
    """Eigenvalues γ_j of M = K^{1/2} Z K^{1/2}/2n (log scale, positive part), top-k highlighted."""
    g = np.asarray(gammas)
    j = np.arange(1, len(g) + 1)
    fig, ax = _subplots(figsize=(6.4, 4.0))
    pos = g > 0
    ax.semilogy(j[pos], g[pos], ".", ms=3, color="C0", label="γ_j > 0")
    if k:
        ax.semilogy(j[:k][pos[:k]], g[:k][pos[:k]], "o", ms=5, color="C3", label=f"top {k} (learned)")
    ax.set_xlabel("index j")
    ax.set_ylabel("γ_j  (eigenvalue of M)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, out, name)


def deviation_vs_width(out, name, widths, deviations, *, slope=None, ci=None, intercept=None,
                       ylabel="relative function deviation  ‖f_net − f_ntk‖/‖f_ntk‖",
                       title="Finite width vs NTK"):
    """Log–log deviation against width: per-seed points, mean, and the fitted power law."""
    w = np.asarray(widths, float)
    d = np.asarray(deviations, float)          # (W, S)
    fig, ax = _subplots(figsize=(6.4, 4.0))
    for s in range(d.shape[1]):
        ax.loglog(w, d[:, s], "o", color="C0", alpha=0.4, ms=4, label="seeds" if s == 0 else None)
    ax.loglog(w, np.exp(np.mean(np.log(d), axis=1)), "s-", color="C0", label="geometric mean")
    if slope is not None and intercept is not None:
        lab = f"fit: width^{slope:.2f}"
        if ci is not None:
            lab += f"  (95% CI [{ci[0]:.2f}, {ci[1]:.2f}])"
        ax.loglog(w, np.exp(intercept) * w**slope, "k--", lw=1, label=lab)
    ax.set_xlabel("hidden width")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, out, name)


def phase_diagram(out, name, xs, gammas, rank, *, predicted_rank=None, metastable_rank=None,
                  xlabel="augmentation strength σ²", ylabel="weight decay γ",
                  title="Collapse phase diagram"):
    """Measured rank as a discrete image over (x, γ); predicted boundaries as contour lines: the
    global minimum's (white dashed) and, where it differs, the state the initialisation reaches
    (red dotted, the hysteresis band lies between them)."""
    from matplotlib.colors import BoundaryNorm
    from matplotlib.lines import Line2D

    xs, gammas, rank = np.asarray(xs), np.asarray(gammas), np.asarray(rank)
    top = int(max(np.max(rank), np.max(predicted_rank) if predicted_rank is not None else 0))
    fig, ax = _subplots(figsize=(6.4, 4.8))
    dx = (xs[1] - xs[0]) / 2 if len(xs) > 1 else 0.5
    dg = (gammas[1] - gammas[0]) / 2 if len(gammas) > 1 else 0.5
    cmap = matplotlib.colormaps["viridis"].resampled(top + 1)
    im = ax.imshow(rank.T, origin="lower", aspect="auto", cmap=cmap,
                   norm=BoundaryNorm(np.arange(-0.5, top + 1.5), cmap.N),
                   extent=(xs[0] - dx, xs[-1] + dx, gammas[0] - dg, gammas[-1] + dg))
    cb = fig.colorbar(im, ax=ax, ticks=np.arange(top + 1))
    cb.set_label("measured rank of the representation")
    handles = []
    levels = np.arange(0.5, top + 0.5)
    for pr, color, ls, lab in ((predicted_rank, "w", "--", "predicted (global minimum)"),
                               (metastable_rank, "r", ":", "predicted (from this init)")):
        if pr is None or len(levels) == 0:
            continue
        if pr is metastable_rank and predicted_rank is not None and np.array_equal(pr, predicted_rank):
            continue
        ax.contour(xs, gammas, np.asarray(pr).T, levels=levels, colors=color, linewidths=1.5,
                   linestyles=ls)
        handles.append(Line2D([], [], color=color, ls=ls, label=lab))
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper right", facecolor="0.5", framealpha=0.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, out, name)


def hypergradient(out, name, xs, outcome, *, grad_at=None, grad=None, xlabel="augmentation noise",
                  ylabel="outcome", title="Outcome vs hyperparameter with its autodiff tangent"):
    """Outcome curve with the autodiff tangent line at one point."""
    fig, ax = _subplots(figsize=(6.4, 4.0))
    ax.plot(xs, outcome, "o-", ms=3, label="outcome")
    if grad_at is not None and grad is not None:
        x0 = float(grad_at)
        y0 = float(np.interp(x0, xs, outcome))
        span = (np.max(xs) - np.min(xs)) * 0.25
        xx = np.array([x0 - span, x0 + span])
        ax.plot(xx, y0 + grad * (xx - x0), "k--", label=f"jax.grad tangent (slope {grad:.3g})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out, name)


def loss_terms(out, name, ts, terms, *, reference=None, labels=None, title="Loss terms over time"):
    """Named loss terms over time: `terms {term: (..., T)}` (leading axes, e.g. widths × seeds,
    are averaged over all but the first, which becomes one line per entry with `labels`).
    `reference {term: (..., T)}` (e.g. the kernel prediction) is drawn dashed."""
    names = sorted(terms)
    fig, axes = _subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, tn in zip(axes[0], names, strict=True):
        for src, ls in ((terms, "-"), (reference, "--")):
            if src is None or tn not in src:
                continue
            v = np.asarray(src[tn], dtype=np.float64)
            v = v.reshape((-1,) + v.shape[-1:]) if v.ndim <= 2 else \
                v.reshape(v.shape[0], -1, v.shape[-1]).mean(1)
            for i, row in enumerate(v):
                lab = None if ls == "--" else (labels[i] if labels is not None and i < len(labels)
                                               else None)
                ax.plot(ts, row, ls, lw=1.5 if ls == "-" else 1, color=f"C{i}", label=lab)
        ax.set_title(tn, fontsize=10)
        ax.set_xlabel(TIME_LABEL)
        ax.grid(alpha=0.3)
    if labels is not None:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(title + ("  (dashed: kernel prediction)" if reference else ""), fontsize=10)
    fig.tight_layout()
    return _save(fig, out, name)
