"""Downstream accuracy of SSL representations: predicted by the kernel theory, measured on finite
networks, step by step.

The kernel regime predicts the whole representation over time, on held-out points too: a labelled
evaluation set ``x_eval`` (its first ``m_fit`` rows train the probe, the rest test it) rides along
the kernel flow through the cross kernel ``K_eval_train (m, 2n)`` and its initial embedding
``f0_eval (m, k)`` (`sslntk.dynamics.solve`'s test points). Probing that embedding at every saved
time (`sslntk.probes`) turns the trajectory into an accuracy curve. For Barlow Twins (λ = 1) from
small initialisation the representation is learned one eigenmode of the contrastive kernel at a
time (Simon et al. 2023), so the accuracy rises in steps at the predicted step times, and the
plateau after step j is the accuracy of the top-j eigenfunctions — the kernel-PCA representation
``g_1..g_j`` of `sslntk.theory.final_embedding`; `limit_curve` gives that accuracy as a
function of k (the t → ∞ limit for k output dimensions).

- `probe_embeddings`: the probes on ``f_eval (T, m, k)``.
- `kernel_curve`: `dynamics.solve` with the evaluation points carried along, probed at every time.
- `limit_curve`: accuracy of the top-k contrastive eigenfunctions for each k.
- `staircase`: the α → 0 prediction, ``limit(k = #steps passed)`` as a function of time.
- `plateaus`: accuracy on each plateau of the staircase (between predicted step times).
- `finite_curve`: a finite network trained by `finite.train` (``x_test = x_eval``) and the kernel
  prediction from the same f0, probed the same way; `width_sweep` repeats it over widths and seeds.
- `strength_objective` / `strength_gradient`: the held-out probe loss as a differentiable function
  of the augmentation strength through data → views → NTK → theory → probe, and its derivative
  checked against central finite differences.
- `run_downstream`: the experiment kind ``downstream``.

Time is learning rate × steps throughout. Theory: docs/theory/downstream.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk import probes as P
from sslntk._status import Outcome

__all__ = ["DownstreamCurve", "LimitCurve", "FiniteComparison", "WidthAccuracy",
           "probe_embeddings", "kernel_curve", "limit_curve", "staircase", "plateaus", "finite_curve",
           "width_sweep", "strength_objective", "strength_gradient", "run_downstream"]

DEFAULT_PROBES = ("ridge", "knn")


def _probe_objects(probes) -> dict[str, P.Probe]:
    if isinstance(probes, (str, P.Probe)):
        probes = (probes,)
    out = {}
    for p in probes:
        obj = P.get(p)
        out[obj.name if isinstance(p, P.Probe) else p] = obj
    if not out:
        raise ValueError("probes: expected at least one probe, got none")
    return out


def _labels(y_fit, y_test):
    return _ints("y_fit", y_fit), _ints("y_test", y_test)


def _ints(name, y):
    arr = np.asarray(y)
    if not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 1 or arr.size == 0:
        raise TypeError(f"{name}: expected a non-empty 1-D array of integer labels, got "
                        f"{arr.dtype} of shape {arr.shape}")
    return jnp.asarray(arr, jnp.int32)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class DownstreamCurve(Outcome):
    """Probe accuracy over time for one representation trajectory.

    Attributes:
      ts: ``(T,)`` times (learning rate × steps).
      accuracy, loss: ``{probe: (T,)}`` held-out accuracy in [0, 1] and the probe's loss.
      f_eval: ``(T, m, k)`` embeddings of the evaluation points (first ``m_fit`` rows: probe fit).
      status: the status of the trajectory (`sslntk._status`), or of the worst probe when the
        trajectory succeeded and a probe did not.
      method: the solver / trainer that produced it.
    """

    ts: jax.Array
    accuracy: dict
    loss: dict
    f_eval: jax.Array
    status: jax.Array
    method: str = field(default="", metadata=dict(static=True))

    outcome_label = "downstream curve"


def probe_embeddings(f_eval, y_fit, y_test, probes=DEFAULT_PROBES, *, n_classes=None
                     ) -> dict[str, P.ProbeResult]:
    """Each probe on ``f_eval (m, k)`` or ``(T, m, k)``: rows ``[:len(y_fit)]`` train it, the rest
    ``(len(y_test))`` test it. Returns ``{probe name: ProbeResult}`` (fields with a leading T)."""
    y_fit, y_test = _labels(y_fit, y_test)
    f_eval = V.as_float_array("f_eval", f_eval, ndim=(2, 3))
    m_fit = y_fit.shape[0]
    if f_eval.shape[-2] != m_fit + y_test.shape[0]:
        raise ValueError(f"f_eval: expected m = len(y_fit) + len(y_test) = "
                         f"{m_fit + y_test.shape[0]} rows, got shape {tuple(f_eval.shape)}")
    if n_classes is None:
        n_classes = int(max(int(jnp.max(y_fit)), int(jnp.max(y_test)))) + 1
    return {name: pr(f_eval[..., :m_fit, :], y_fit, f_eval[..., m_fit:, :], y_test,
                     n_classes=n_classes)
            for name, pr in _probe_objects(probes).items()}


def _curve(ts, f_eval, y_fit, y_test, probes, status, method, n_classes=None):
    res = probe_embeddings(f_eval, y_fit, y_test, probes, n_classes=n_classes)
    st = jnp.asarray(status)
    if int(jnp.max(st)) == 0:
        st = jnp.asarray(max(int(jnp.max(r.status)) for r in res.values()), jnp.int32)
    return DownstreamCurve(ts=jnp.asarray(ts), accuracy={k: r.accuracy for k, r in res.items()},
                           loss={k: r.loss for k, r in res.items()}, f_eval=f_eval, status=st,
                           method=method)


def kernel_curve(K, loss, f0, ts, *, K_eval_train, f0_eval, y_fit, y_test, probes=DEFAULT_PROBES,
                 method: str = "auto", n_classes=None, **solve_options) -> DownstreamCurve:
    """Kernel-regime prediction of downstream accuracy over time.

    ``traj = dynamics.solve(K, loss, f0, ts, method, K_test_train=K_eval_train, f0_test=f0_eval)``;
    the evaluation embedding ``f_eval(t) = f0_eval − K_eval_train ∫₀ᵗ ∇_f L ds`` is probed at every
    saved time.

    Args:
      K: ``(2n, 2n)`` kernel over stacked views; loss: a loss (name or object); f0: ``(2n, k)``.
      ts: ``(T,)`` times (learning rate × steps).
      K_eval_train: ``(m, 2n)`` cross kernel of the labelled evaluation points; f0_eval: ``(m, k)``
        their initial embedding (e.g. rows of the same ``N(0, α² K_nngp)`` draw as f0).
      y_fit, y_test: labels of the first ``m_fit`` rows (probe training) and of the rest (test).
      probes: names or `sslntk.probes.Probe` objects. method, solve_options: as `dynamics.solve`.

    Returns a `DownstreamCurve`.

    Example::

        cur = downstream.kernel_curve(K, "barlow_twins", f0, ts, K_eval_train=K_ex,
                                      f0_eval=f0_ex, y_fit=y[:64], y_test=y[64:])
        cur.accuracy["ridge"]          # (T,)
    """
    from sslntk import dynamics

    traj = dynamics.solve(K, loss, f0, ts, method, K_test_train=K_eval_train, f0_test=f0_eval,
                          **solve_options)
    return _curve(traj.ts, traj.f_test, y_fit, y_test, probes, traj.status, traj.method,
                  n_classes)


@dataclass(frozen=True)
class LimitCurve:
    """t → ∞ accuracy of the top-k contrastive eigenfunctions (kernel PCA), per k.

    ks: ``(K,)``; accuracy, loss: ``{probe: (K,)}``; gammas: ``(max k,)`` the eigenvalues γ_j of
    ``M = K^{1/2} Z K^{1/2}/2n`` (modes with γ_j ≤ 0 are never learned and contribute 0)."""

    ks: np.ndarray
    accuracy: dict
    loss: dict
    gammas: np.ndarray


def limit_curve(K, K_eval_train, y_fit, y_test, ks: Sequence[int], probes=DEFAULT_PROBES, *,
                n_classes=None) -> LimitCurve:
    """Accuracy of the α → 0, t → ∞ Barlow Twins (λ = 1) representation with k outputs, for each
    k in ``ks``: ``f(x) = k_X(x)ᵀ A_k Γ_k^{-1/2}`` (`theory.final_embedding`, identity
    output rotation) on the evaluation points, probed as `kernel_curve` does.

    The plateau of the staircase after step j equals the k = j value here (the unlearned
    directions are still O(α) there; see docs/theory/downstream.md)."""
    from sslntk.theory import staircase as stepwise

    ks = [V.positive_int("ks[i]", int(k)) for k in ks]
    if not ks:
        raise ValueError("ks: expected at least one k, got none")
    K = V.square_kernel("K", K)
    gam, _, _ = stepwise.contrastive_modes(K, max(ks))
    acc, lss = {}, {}
    for k in ks:
        _, fe = stepwise.final_embedding(K, k, K_test_train=K_eval_train)
        res = probe_embeddings(fe, y_fit, y_test, probes, n_classes=n_classes)
        for name, r in res.items():
            acc.setdefault(name, []).append(float(r.accuracy))
            lss.setdefault(name, []).append(float(r.loss))
    return LimitCurve(np.asarray(ks), {k: np.asarray(v) for k, v in acc.items()},
                      {k: np.asarray(v) for k, v in lss.items()}, np.asarray(gam))


def staircase(limit: LimitCurve, step_times, ts, initial: dict | None = None) -> dict:
    """The α → 0 prediction of accuracy over time: ``a(t) = limit(k = j(t))`` where
    ``j(t) = #{j : t_j ≤ t}`` modes are learned (sharp steps at the predicted step times
    ``t_j``; ``limit.ks`` must be ``1..k``). Before the first step the representation is the
    initial one: ``initial[probe]`` (e.g. the curve's value at t = 0), NaN if not given.
    Returns ``{probe: (T,)}``."""
    st = np.sort(np.asarray(step_times, float))
    if not np.array_equal(np.asarray(limit.ks), np.arange(1, len(limit.ks) + 1)):
        raise ValueError(f"limit: expected ks = 1..k, got {np.asarray(limit.ks).tolist()}")
    if len(st) > len(limit.ks):
        raise ValueError(f"step_times: expected at most {len(limit.ks)} (one per k of limit), "
                         f"got {len(st)}")
    j = np.searchsorted(st[np.isfinite(st)], np.asarray(ts, float), side="right")
    out = {}
    for p, acc in limit.accuracy.items():
        a0 = np.nan if initial is None else float(initial[p])
        vals = np.concatenate([[a0], np.asarray(acc)])
        out[p] = vals[j]
    return out


def plateaus(curve: DownstreamCurve, step_times, *, probe: str | None = None) -> np.ndarray:
    """Accuracy on each plateau of the staircase: at ``t = 0`` (nothing learned) and at the
    geometric middle ``sqrt(t_j t_{j+1})`` between consecutive predicted step times (after the
    last step: ``t_k + (t_k − t_{k−1})``, clipped to the last saved time). Returns ``(k+1,)``:
    entry j is the accuracy with j modes learned (nearest saved time)."""
    ts = np.asarray(curve.ts)
    st = np.sort(np.asarray(step_times)[np.isfinite(step_times)])
    name = probe or next(iter(curve.accuracy))
    acc = np.asarray(curve.accuracy[name])
    mids = [0.0] + [float(np.sqrt(a * b)) for a, b in zip(st[:-1], st[1:], strict=True)]
    if len(st):
        last = st[-1] + (st[-1] - st[-2] if len(st) > 1 else st[-1])
        mids.append(min(float(last), float(ts[-1])))
    idx = [int(np.argmin(np.abs(ts - t))) for t in mids]
    return acc[idx]


# ----------------------------------------------------------------------------------------------
# Finite networks against the kernel prediction from the same f0


@dataclass(frozen=True)
class FiniteComparison:
    """A finite network's probe accuracy over training beside the kernel prediction from its f0.

    net, kernel: `DownstreamCurve` s on the same times; gap: ``{probe: float}`` the accuracy
    difference ``net − kernel`` at the last saved time (in [−1, 1]); width: the hidden width."""

    net: DownstreamCurve
    kernel: DownstreamCurve
    gap: dict
    width: int


def _stack_eval(views, x_eval):
    from sslntk import data

    x = views.stacked if isinstance(views, data.Views) else jnp.asarray(views)
    x_eval = V.as_float_array("x_eval", x_eval)
    if x_eval.shape[1:] != x.shape[1:]:
        raise ValueError(f"x_eval: expected inputs of the views' shape (m, "
                         f"{', '.join(map(str, x.shape[1:]))}), got {tuple(x_eval.shape)}")
    V.same_dtype(views=x, x_eval=x_eval)
    return x, x_eval


def finite_curve(net, views, loss, x_eval, y_fit, y_test, *, arch, lr: float, steps: int,
                 ts=None, probes=DEFAULT_PROBES, method: str = "gd", K=None, n_classes=None,
                 **train_options) -> FiniteComparison:
    """Train ``net`` (`finite.train`, full-batch GD, ``x_test = x_eval``), probe its evaluation
    embeddings at every saved time, and do the same for the kernel prediction from the SAME
    initial function (``f0 = res.f[0]``, ``f0_eval = res.f_test[0]``) with the infinite-width NTK
    of ``arch`` (`dynamics.solve(..., method)`; "gd" takes the same learning rate).

    Args:
      net: a `finite.network(arch, width, k, key=..., alpha=...)` (NTK parametrisation).
      views: `data.Views` or stacked inputs ``(2n, *in_shape)``; x_eval: ``(m, *in_shape)``.
      y_fit, y_test: labels of the first ``m_fit`` evaluation rows and of the rest.
      arch: the `kernels.Arch` of ``net``; lr, steps, ts: as `finite.train`.
      K: optional precomputed NTK ``(2n + m, 2n + m)`` over ``[views; x_eval]`` (reused by sweeps).

    Example::

        net = finite.network(arch, 4096, 4, key=jax.random.key(0), alpha=1e-2)
        cmp = downstream.finite_curve(net, views, "barlow_twins", x_eval, y[:64], y[64:],
                                      arch=arch, lr=0.05, steps=400)
        cmp.gap["ridge"]          # final accuracy, network minus kernel prediction
    """
    from sslntk import dynamics, finite, kernels

    x, x_eval = _stack_eval(views, x_eval)
    N = x.shape[0]
    res = finite.train(net, x, loss, lr=lr, steps=steps, ts=ts, x_test=x_eval,
                       progress=train_options.pop("progress", False), **train_options)
    if K is None:
        K = kernels.ntk(arch, jnp.concatenate([x, x_eval]))
    K = jnp.asarray(K, x.dtype)
    opts = {"lr": lr} if method == "gd" else {}
    traj = dynamics.solve(K[:N, :N], loss, res.f[0], res.ts, method,
                          K_test_train=K[N:, :N], f0_test=res.f_test[0], **opts)
    cn = _curve(res.ts, res.f_test, y_fit, y_test, probes, res.status, "finite.train", n_classes)
    ck = _curve(traj.ts, traj.f_test, y_fit, y_test, probes, traj.status, traj.method, n_classes)
    gap = {p: float(cn.accuracy[p][-1] - ck.accuracy[p][-1]) for p in cn.accuracy}
    return FiniteComparison(cn, ck, gap, int(getattr(net, "width", -1)))


@dataclass(frozen=True)
class WidthAccuracy:
    """`width_sweep` result, arrays indexed ``[width, seed, time]``.

    widths ``(W,)``, seeds ``(S,)``, ts ``(T,)``; acc_net, acc_kernel: ``{probe: (W, S, T)}``;
    gap: ``{probe: (W, S)}`` final accuracy network − kernel; status_net, status_kernel ``(W, S)``.
    """

    widths: np.ndarray
    seeds: np.ndarray
    ts: np.ndarray
    acc_net: dict
    acc_kernel: dict
    gap: dict
    status_net: np.ndarray
    status_kernel: np.ndarray

    def summary(self) -> dict:
        """JSON-ready: per probe and width, mean final accuracies and gap (mean and max |gap|)."""
        out = {"widths": self.widths.tolist(), "seeds": self.seeds.tolist()}
        for p in self.acc_net:
            out[p] = {"final_acc_net_mean": self.acc_net[p][..., -1].mean(1).tolist(),
                      "final_acc_kernel_mean": self.acc_kernel[p][..., -1].mean(1).tolist(),
                      "gap_mean": self.gap[p].mean(1).tolist(),
                      "gap_abs_max": np.abs(self.gap[p]).max(1).tolist()}
        return out


def width_sweep(arch, views, loss, x_eval, y_fit, y_test, widths: Sequence[int], seeds, *,
                alpha: float, out_dim: int, lr: float, steps: int, ts=None,
                probes=DEFAULT_PROBES, method: str = "gd", progress: bool = False,
                **train_options) -> WidthAccuracy:
    """`finite_curve` for every width and seed (``seeds``: a count or a list of ints; network keys
    ``jax.random.key(seed)``), the infinite-width NTK computed once. Accuracy vs width beside
    `sslntk.finite.width_sweep`'s deviation vs width."""
    from sslntk import finite, kernels

    widths = [V.positive_int("widths[i]", int(w)) for w in widths]
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not widths or not seeds:
        raise ValueError(f"widths, seeds: expected at least one of each, got {widths}, {seeds}")
    x, x_eval = _stack_eval(views, x_eval)
    K = kernels.ntk(arch, jnp.concatenate([x, x_eval]))
    names = list(_probe_objects(probes))
    ak = {p: [[None] * len(seeds) for _ in widths] for p in names}
    an = {p: [[None] * len(seeds) for _ in widths] for p in names}
    sn = np.zeros((len(widths), len(seeds)), np.int32)
    sk_ = np.zeros_like(sn)
    ts_out = None
    for i, w in enumerate(widths):
        for j, s in enumerate(seeds):
            net = finite.network(arch, w, out_dim, key=jax.random.key(s), alpha=alpha,
                                 dtype=x.dtype)
            c = finite_curve(net, x, loss, x_eval, y_fit, y_test, arch=arch, lr=lr, steps=steps,
                             ts=ts, probes=probes, method=method, K=K, **train_options)
            ts_out = np.asarray(c.net.ts)
            sn[i, j], sk_[i, j] = int(jnp.max(c.net.status)), int(jnp.max(c.kernel.status))
            for p in names:
                an[p][i][j] = np.asarray(c.net.accuracy[p])
                ak[p][i][j] = np.asarray(c.kernel.accuracy[p])
            if progress:
                print(f"downstream width {w} seed {s}: gap " +
                      ", ".join(f"{p} {g:+.3f}" for p, g in c.gap.items()), flush=True)
    an = {p: np.asarray(v) for p, v in an.items()}
    ak = {p: np.asarray(v) for p, v in ak.items()}
    gap = {p: an[p][..., -1] - ak[p][..., -1] for p in names}
    return WidthAccuracy(np.asarray(widths), np.asarray(seeds), ts_out, an, ak, gap, sn, sk_)


# ----------------------------------------------------------------------------------------------
# The probe loss as a function of the augmentation strength (hypergradient)


def strength_objective(x_train, x_eval, y_fit, y_test, augmentation, arch, k: int, *, key,
                       lam: float = 1.0, standardize: str = "coordinate"):
    """``loss(s)``: the held-out ridge-probe loss of the α → 0, t → ∞ Barlow Twins representation
    as a differentiable function of the augmentation strength ``s``.

    data ``x_train (n, ...)`` → views ``make_views(x_train, augmentation(s), key)`` → NTK of
    ``arch`` over ``[views; x_eval]`` → top-k kernel-PCA embedding of the evaluation points
    (`theory.final_embedding`) → features standardised on the fit rows → ridge fit with
    the fixed ``λ`` (`probes.ridge_fit`) → mean squared error on the test rows (``probes.Ridge``'s
    loss). Every stage is JAX, so ``jax.grad(loss)(s)`` is exact (away from degenerate spectra).

    Args:
      augmentation: ``strength -> data.Augmentation`` (e.g. ``data.gaussian_noise``).
      arch: `kernels.Arch`; k: number of modes; key: `jax.random` key of the view draw.
    """
    from sslntk import data, kernels
    from sslntk.theory import staircase as stepwise

    y_fit, y_test = _labels(y_fit, y_test)
    m_fit = y_fit.shape[0]
    C = int(max(int(jnp.max(y_fit)), int(jnp.max(y_test)))) + 1
    V.choice("standardize", standardize, P.STANDARDIZE)

    def loss(s):
        v = data.make_views(x_train, augmentation(s), key)
        N = v.stacked.shape[0]
        K = kernels.ntk(arch, jnp.concatenate([v.stacked, x_eval]))
        _, fe = stepwise.final_embedding(K[:N, :N], k, K_test_train=K[N:, :N])
        a, b = P.standardize(fe[:m_fit], fe[m_fit:], mode=standardize)
        W, c = P.ridge_fit(a, y_fit, C, lam)
        return P._ridge_loss(W, c, b, y_test, C)

    return loss


def strength_gradient(objective, s: float, *, rel_step: float = 1e-4) -> dict:
    """``d objective / d s`` by `jax.grad` and by central finite differences with step
    ``h = rel_step · s``: ``{"value", "grad", "fd", "h", "rel_error"}``."""
    s = float(s)
    val, g = jax.value_and_grad(objective)(jnp.asarray(s))
    h = rel_step * abs(s)
    fd = (float(objective(jnp.asarray(s + h))) - float(objective(jnp.asarray(s - h)))) / (2 * h)
    g = float(g)
    return {"value": float(val), "grad": g, "fd": fd, "h": h,
            "rel_error": abs(g - fd) / max(abs(fd), 1e-300)}


# ----------------------------------------------------------------------------------------------
# The experiment kind "downstream"


def _figure(out, name, panels, title):
    """One row of panels ``[(xlabel, ylabel, [(x, y, style, label), ...], vlines), ...]`` written
    as NAME.png / NAME.pdf (matplotlib Agg, atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sslntk import _io

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.9), squeeze=False)
    for ax, (xl, yl, lines, vlines) in zip(axes[0], panels, strict=True):
        for x, y, style, label in lines:
            ax.plot(x, y, style, ms=3, lw=1.5, label=label)
        for j, t in enumerate(() if vlines is None else vlines):
            ax.axvline(t, color="0.5", ls=":", lw=1, label="predicted step times" if j == 0 else None)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=130, bbox_inches="tight")
        _io.atomic_write_bytes(out / f"{name}.{ext}", buf.getvalue())
    plt.close(fig)


def _cfg_probes(cfg):
    pc = cfg["probe"]
    out = []
    for name in pc["kinds"]:
        if name == "knn":
            out.append(P.KNN(k=pc["knn_k"], temperature=pc["temperature"]))
        else:
            out.append(P.get(name, standardize=pc["standardize"], val_fraction=pc["val_fraction"]))
    return out


def _cfg_data(cfg):
    """(x_train, x_test, y_train, y_test) as the other experiment kinds load them: ``n + n_test``
    samples drawn with ``fold_in(PRNGKey(seed), 1)``, the first ``n`` are the SSL training set (and
    the probe's training rows, clean), the rest the held-out test rows."""
    from sslntk import data

    d = cfg["data"]
    opts = dict(d["options"])
    opts.setdefault("key", jax.random.fold_in(jax.random.PRNGKey(cfg["seed"]), 1))
    if d["classes"]:
        opts.setdefault("classes", d["classes"])
    if d["name"] in ("mnist", "fashion_mnist", "cifar10", "cifar100", "stl10"):
        opts.setdefault("root", d["root"] or None)
        opts.setdefault("download", d["download"])
        opts.setdefault("split", d["split"])
    dt = jnp.float64 if cfg["precision"] == "float64" else jnp.float32
    ds = data.load(d["name"], n=d["n"] + d["n_test"], dtype=dt, **opts)
    # (mean, std) mapping x back to [0, 1] pixels for the recipes (digits: raw values / 16)
    stats = (np.asarray(ds.info["mean"]) / 16.0, np.asarray(ds.info["std"]) / 16.0) \
        if ds.name == "digits" else (ds.info.get("mean", 0.0), ds.info.get("std", 1.0))
    n = d["n"]
    y = np.asarray(ds.y)
    return ds.x[:n], ds.x[n:], y[:n], y[n:], stats


def _cfg_augmentation(cfg, noise, stats=(0.0, 1.0)):
    """The config's augmentation with noise strength ``noise`` (traceable), as the other kinds
    build it: a recipe followed by Gaussian noise, or (image data) translation then noise."""
    from sslntk import data

    d = cfg["data"]
    if d["recipe"] != "none":
        mean, std = stats
        opts = {"color_strength": d["color_strength"]} if d["recipe"] == "simclr" else {}
        r = data.recipe(d["recipe"], mean=mean, std=std, blur=d["blur"], **opts)
        g = data.gaussian_noise(noise)
        return data.ViewPair(data.compose(r.a, g), data.compose(r.b, g))
    augs = [data.gaussian_noise(noise)]
    if d["name"] in ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "stl10") \
            and d["translate"] > 0:
        augs.insert(0, data.translate(d["translate"]))
    return data.compose(*augs)


def run_downstream(rd, cfg: dict, progress: bool):
    """Experiment kind ``downstream``: probe accuracy vs t for the kernel prediction (with the
    stepwise theory's step times and the kernel-PCA plateaus), vs k (t → ∞), for finite networks of
    several widths from the same f0, and vs augmentation strength with the gradient of the probe
    loss checked against central finite differences. Returns ``(headline, lines, arrays)``."""
    from sslntk import data, kernels
    from sslntk.theory import staircase as stepwise

    d, dyn, fin, st_cfg = cfg["data"], cfg["dynamics"], cfg["finite"], cfg["strength"]
    lc = cfg["loss"]
    if lc["name"] != "barlow_twins" or lc["constants"].get("lam", 1.0) != 1.0:
        # the horizon, the step times and the kernel-PCA limit are the λ = 1 BT theory's
        raise ValueError(f"loss: the downstream kind predicts Barlow Twins with lam = 1, got "
                         f"{lc['name']} {lc['constants']}")
    n, N, k = d["n"], 2 * d["n"], dyn["k"]
    seed = jax.random.PRNGKey(cfg["seed"])
    prb = _cfg_probes(cfg)
    names = [p.name for p in prb]
    x_tr, x_te, y_fit, y_test, stats = _cfg_data(cfg)
    if y_test.size == 0:
        raise ValueError("data.n_test: the downstream kind needs held-out labelled points, got 0")
    aug = _cfg_augmentation(cfg, d["noise"], stats)
    views = data.make_views(x_tr, aug, jax.random.fold_in(seed, 2))
    flat = views.stacked.reshape(N, -1)
    x_eval = jnp.concatenate([x_tr, x_te]).reshape(n + x_te.shape[0], -1)
    arch = kernels.Arch(kind=cfg["arch"]["kind"], depth=cfg["arch"]["depth"],
                        activation=cfg["arch"]["activation"], W_std=float(cfg["arch"]["W_std"]),
                        b_std=float(cfg["arch"]["b_std"]))

    def kernel_part():
        K_all, Kn_all = kernels.ntk_and_nngp(arch, jnp.concatenate([flat, x_eval]),
                                             progress=progress)
        f0_all = kernels.initial_function(Kn_all, k, dyn["alpha"],
                                          jax.random.fold_in(seed, 3))
        return {"K_all": K_all, "f0_all": f0_all}

    kp = rd.part("kernel", kernel_part)
    K_all, f0_all = jnp.asarray(kp["K_all"]), jnp.asarray(kp["f0_all"])
    K, K_ex, f0, f0_ex = K_all[:N, :N], K_all[N:, :N], f0_all[:N], f0_all[N:]
    th = stepwise.stepwise(K, f0, k)
    t_steps = np.asarray(th.step_times)
    t_end = dyn["horizon"] * float(np.max(np.where(np.isfinite(t_steps), t_steps, 0.0)))
    if not t_end > 0:
        raise RuntimeError("downstream: no mode is learned (all contrastive eigenvalues <= 0)")
    ts = jnp.linspace(0.0, t_end, dyn["n_times"])

    def curve_part():
        cur = kernel_curve(K, cfg["loss"]["name"], f0, ts, K_eval_train=K_ex, f0_eval=f0_ex,
                           y_fit=y_fit, y_test=y_test, probes=prb, method=dyn["method"],
                           progress=progress)
        lim = limit_curve(K, K_ex, y_fit, y_test, range(1, k + 1), probes=prb)
        out = {"status": np.asarray(cur.status), "method": np.array(cur.method)}
        for p in names:
            out[f"acc_{p}"] = np.asarray(cur.accuracy[p])
            out[f"loss_{p}"] = np.asarray(cur.loss[p])
            out[f"limit_{p}"] = np.asarray(lim.accuracy[p])
        return out

    cp = rd.part("kernel_curve", curve_part)
    m_te = int(y_test.shape[0])
    plat = {p: plateaus(DownstreamCurve(ts, {p: cp[f"acc_{p}"]}, {}, jnp.zeros(()), 0), t_steps)
            for p in names}
    # binomial standard error of an accuracy measured on m_te test points
    se = {p: np.sqrt(np.clip(plat[p] * (1 - plat[p]), 1e-12, None) / m_te) for p in names}

    def finite_part():
        steps = int(np.ceil(t_end / fin["lr"]))
        ws = width_sweep(arch, flat, cfg["loss"]["name"], x_eval, y_fit, y_test, fin["widths"],
                         fin["seeds"], alpha=dyn["alpha"], out_dim=k, lr=fin["lr"], steps=steps,
                         ts=np.linspace(0.0, steps * fin["lr"], fin["n_times"]), probes=prb,
                         progress=progress, check_lr=False)
        out = {"ts": ws.ts, "status_net": ws.status_net, "status_kernel": ws.status_kernel}
        for p in names:
            out[f"net_{p}"], out[f"ker_{p}"] = ws.acc_net[p], ws.acc_kernel[p]
        return out

    fp = rd.part("finite", finite_part) if fin["widths"] else None

    def strength_part():
        x_img = jnp.concatenate([x_tr, x_te])
        obj = strength_objective(x_tr, x_img, y_fit, y_test,
                                 lambda s: _cfg_augmentation(cfg, s, stats), arch, k,
                                 key=jax.random.fold_in(seed, 2), lam=st_cfg["lam"],
                                 standardize=cfg["probe"]["standardize"])
        g = strength_gradient(obj, d["noise"], rel_step=st_cfg["fd_eps"])
        xs = np.asarray(st_cfg["values"], float)
        acc = {p: [] for p in names}
        for s in xs:
            v = data.make_views(x_tr, _cfg_augmentation(cfg, float(s), stats),
                                jax.random.fold_in(seed, 2))
            Ks = kernels.ntk(arch, jnp.concatenate([v.stacked.reshape(N, -1), x_eval]))
            _, fe = stepwise.final_embedding(Ks[:N, :N], k, K_test_train=Ks[N:, :N])
            for p, r in probe_embeddings(fe, y_fit, y_test, prb).items():
                acc[p].append(float(r.accuracy))
        return {"xs": xs, **{f"acc_{p}": np.asarray(v) for p, v in acc.items()},
                **{key: np.asarray(val) for key, val in g.items()}}

    sp = rd.part("strength", strength_part)

    # ---- figures
    tsn = np.asarray(ts)
    panels = [("t  (learning rate × steps)", "held-out accuracy",
               [(tsn, cp[f"acc_{p}"], "-", f"{p}: kernel prediction") for p in names], t_steps),
              ("k (output dimensions)", "accuracy at t → ∞ (kernel PCA)",
               [(np.arange(1, k + 1), cp[f"limit_{p}"], "o-", p) for p in names], None)]
    if fp is not None:
        lines = []
        for i, w in enumerate(fin["widths"]):
            lines.append((fp["ts"], fp[f"net_{names[0]}"][i].mean(0), "-", f"width {w}"))
        lines.append((fp["ts"], fp[f"ker_{names[0]}"][-1].mean(0), "k--", "kernel, same f0"))
        panels.append(("t  (learning rate × steps)", f"{names[0]} accuracy (finite nets)", lines,
                       None))
    panels.append(("augmentation noise strength", "accuracy at t → ∞",
                   [(sp["xs"], sp[f"acc_{p}"], "o-", p) for p in names], None))
    _figure(rd.path, "downstream", panels,
            f"Downstream probes, {d['name']} 2n = {N}, k = {k}, α = {dyn['alpha']:g}")

    # ---- headline and summary
    head = {"probes": names, "step_times_predicted": t_steps.tolist(), "t_end": t_end,
            "n_test": m_te, "method": str(cp["method"]), "status": int(cp["status"]),
            "final_accuracy": {p: float(cp[f"acc_{p}"][-1]) for p in names},
            "plateau_accuracy": {p: plat[p].tolist() for p in names},
            "plateau_standard_error": {p: se[p].tolist() for p in names},
            "limit_accuracy_vs_k": {p: cp[f"limit_{p}"].tolist() for p in names},
            "strength": {"values": sp["xs"].tolist(),
                         "limit_accuracy": {p: sp[f"acc_{p}"].tolist() for p in names},
                         "noise": d["noise"], "probe_loss": float(sp["value"]),
                         "grad": float(sp["grad"]), "finite_difference": float(sp["fd"]),
                         "grad_rel_error_vs_fd": float(sp["rel_error"])}}
    lines = [f"kernel solver {head['method']}; held-out accuracy on {m_te} test points "
             f"(binomial s.e. ≈ {max(se[names[0]]):.3f})",
             "predicted step times: " + ", ".join(f"{t:.3g}" for t in t_steps)]
    for p in names:
        lines.append(f"  {p}: plateaus (0..{k} modes learned) "
                     + " → ".join(f"{a:.3f}" for a in plat[p])
                     + f" | kernel PCA top-k, k = 1..{k}: "
                     + ", ".join(f"{a:.3f}" for a in cp[f"limit_{p}"]))
    if fp is not None:
        head["finite"] = {"widths": list(fin["widths"]), "seeds": fin["seeds"]}
        for p in names:
            gap = fp[f"net_{p}"][..., -1] - fp[f"ker_{p}"][..., -1]
            head["finite"][p] = {"final_acc_net_mean": fp[f"net_{p}"][..., -1].mean(1).tolist(),
                                 "final_acc_kernel_mean": fp[f"ker_{p}"][..., -1].mean(1).tolist(),
                                 "gap_mean": gap.mean(1).tolist()}
            lines.append(f"  {p}: final accuracy net − kernel (same f0) by width "
                         + ", ".join(f"{w}: {g:+.3f}" for w, g in zip(fin["widths"],
                                                                       gap.mean(1), strict=True)))
    lines.append(f"d(ridge probe loss)/d(noise) at {d['noise']:g}: jax.grad {float(sp['grad']):.6g}"
                 f" | central FD {float(sp['fd']):.6g} | rel. diff {float(sp['rel_error']):.2e}")
    arrays = {"ts": tsn, **{f"acc_{p}": cp[f"acc_{p}"] for p in names},
              **{f"limit_{p}": cp[f"limit_{p}"] for p in names},
              "strength_values": sp["xs"], **{f"strength_acc_{p}": sp[f"acc_{p}"] for p in names}}
    if fp is not None:
        arrays["finite_ts"] = fp["ts"]
        arrays.update({f"finite_net_{p}": fp[f"net_{p}"] for p in names})
        arrays.update({f"finite_kernel_{p}": fp[f"ker_{p}"] for p in names})
    return head, lines, arrays
