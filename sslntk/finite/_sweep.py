"""Width sweeps: how far finite networks leave the kernel prediction, and how that scales with width.

For every width and seed: build `network(arch, width, k, alpha=α)`, train it by `train` (GD by
default), solve the kernel dynamics `sslntk.dynamics.solve(K, loss, f₀, ts)` with
`K = kernels.ntk(arch, views)` and the SAME `f₀` = the network's own initial function (and
`K_test_train`, `f0_test` on held-out points), and compare on the same `ts` grid:

- relative function deviation `δ(t) = ‖f_net(t) − f_ker(t)‖_F / ‖f_ker(t)‖_F` (train views and
  held-out points);
- kernel drift `‖Θ_T − Θ_0‖_F / ‖Θ_0‖_F` (empirical NTK at the end vs init) and the init error
  `‖Θ_0 − K‖_F / ‖K‖_F` against the analytic NTK (on the first `drift_points` views);
- eigenvalues of the cross-correlation `C(t)` (`metrics.cross_correlation_spectrum`) and the step
  times (`metrics.step_times`) of both;
- the fitted exponent `b` of `max_{t ≤ window} δ(t) ∝ width^b` (`fit_exponent`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from sslntk import _io, dynamics, kernels, metrics
from sslntk import _validate as V
from sslntk import losses as L
from sslntk._progress import Progress
from sslntk._status import Outcome, names
from sslntk.finite._inputs import check_loss, save_steps, stacked_inputs
from sslntk.finite._network import linearize, network
from sslntk.finite._ntk import empirical_ntk
from sslntk.finite._train import (
    stack_models,
    train,
    train_batched,
    unstack_model,
)


def relative_deviation(f, f_ref) -> jax.Array:
    """`‖f − f_ref‖_F / ‖f_ref‖_F` over the last two axes, `(..., N, k)` → `(...,)` (inf/NaN where
    `f_ref = 0`, e.g. at t = 0 with α = 0)."""
    f, f_ref = V.as_float_array("f", f), V.as_float_array("f_ref", f_ref)
    if f.ndim < 2 or f.shape != f_ref.shape:
        raise ValueError(f"f, f_ref: expected equal shapes (..., N, k), got {tuple(f.shape)} and "
                         f"{tuple(f_ref.shape)}")
    num = jnp.sqrt(jnp.sum((f - f_ref) ** 2, axis=(-2, -1)))
    return num / jnp.sqrt(jnp.sum(f_ref**2, axis=(-2, -1)))


@dataclass(frozen=True)
class ExponentFit:
    """`log δ = a + b·log width` fitted by least squares over all (width, seed) points.

    slope: b. intercept: a. ci_t: 95 % t-interval of b (OLS standard error, df = N − 2).
    ci_boot: 95 % percentile interval of b from `n_boot` bootstrap resamples of the seeds within
    each width (captures the seed-to-seed spread without assuming Gaussian residuals).
    """

    slope: float
    intercept: float
    ci_t: tuple[float, float]
    ci_boot: tuple[float, float]
    n_points: int

    def as_dict(self) -> dict:
        return dict(slope=self.slope, intercept=self.intercept, ci_t=list(self.ci_t),
                    ci_boot=list(self.ci_boot), n_points=self.n_points)


def fit_exponent(widths, dev, *, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> ExponentFit:
    """Fit `dev ∝ width^b`: `widths (W,)`, `dev (W, S)` positive deviations (seeds along axis 1).
    Returns an `ExponentFit` with the OLS slope, its t-interval and a seed-bootstrap interval."""
    w = np.asarray(widths, dtype=np.float64)
    d = np.asarray(dev, dtype=np.float64)
    if d.ndim == 1:
        d = d[:, None]
    if w.ndim != 1 or d.shape[0] != w.shape[0] or w.shape[0] < 2:
        raise ValueError(f"widths, dev: expected (W,) with W >= 2 and (W, S), got {w.shape}, "
                         f"{d.shape}")
    if not (np.all(np.isfinite(d)) and np.all(d > 0) and np.all(w > 0)):
        raise ValueError("dev: expected finite, positive deviations (a failed run leaves NaN)")
    S = d.shape[1]
    X = np.repeat(np.log(w), S)
    Y = np.log(d).ravel()
    N = X.size

    def ols(x, y):
        xm = x.mean()
        b = np.sum((x - xm) * (y - y.mean())) / np.sum((x - xm) ** 2)
        return b, y.mean() - b * xm

    b, a = ols(X, Y)
    if N > 2:
        resid = Y - (a + b * X)
        se = np.sqrt(np.sum(resid**2) / (N - 2) / np.sum((X - X.mean()) ** 2))
        q = scipy.stats.t.ppf(0.5 + level / 2, N - 2)
        ci_t = (float(b - q * se), float(b + q * se))
    else:
        ci_t = (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    logd = np.log(d)
    for i in range(n_boot):
        idx = rng.integers(0, S, size=d.shape)
        boots[i] = ols(X, np.take_along_axis(logd, idx, axis=1).ravel())[0]
    lo, hi = np.quantile(boots, [0.5 - level / 2, 0.5 + level / 2])
    return ExponentFit(float(b), float(a), ci_t, (float(lo), float(hi)), int(N))


@dataclass(frozen=True)
class WidthSweep(Outcome):
    """Result of `width_sweep` (arrays indexed [width, seed, time, ...]).

    widths (W,), seeds (S,), ts (T,) times (t = lr·step); method: the kernel solver used.
    dev_train, dev_test: (W, S, T) relative function deviation (dev_test None without x_test).
    deviation: (W, S) max of dev_train over t ≤ window (window = ts[-1] unless given).
    kernel_drift: (W, S) ‖Θ_end − Θ_0‖_F/‖Θ_0‖_F. init_kernel_error: (W, S) ‖Θ_0 − K‖_F/‖K‖_F.
    spectra_net, spectra_ker: (W, S, T, k) eigenvalues of C(t). step_times_net, step_times_ker:
    (W, S, k). loss_net, loss_ker: (W, S, T). exponent: `ExponentFit` of `deviation` vs width
    (None with one width). seconds: (W,) wall time per width. lr_rate: (W, S) lr·ρ.
    dev_net_lin, dev_lin_ker: (W, S, T) with `linearized=True` (else None): the deviation split
    into the network vs its own linearisation at init (the kernel MOVING during training) and that
    linearisation vs the kernel trajectory (the finite-width kernel at init differing from the
    infinite-width one, including its cross-output terms).
    status_net, failed_step_net: (W, S) the trainer's status (`sslntk._status`: success /
    nonfinite / diverged / stationary) and failing step (−1: none) of every network.
    status_ker: (W, S) the kernel solve's status. `ok`: every run of both succeeded; the sweep
    warns (RuntimeWarning) otherwise, and the exponent fit skips when a deviation is not finite.
    terms_net, terms_ker: with `record_terms=True`, `{term: (W, S, T)}` the loss's named terms.
    """

    widths: np.ndarray
    seeds: np.ndarray
    ts: np.ndarray
    method: str
    window: float
    dev_train: np.ndarray
    dev_test: np.ndarray | None
    deviation: np.ndarray
    kernel_drift: np.ndarray
    init_kernel_error: np.ndarray
    spectra_net: np.ndarray
    spectra_ker: np.ndarray
    step_times_net: np.ndarray
    step_times_ker: np.ndarray
    loss_net: np.ndarray
    loss_ker: np.ndarray
    seconds: np.ndarray
    lr_rate: np.ndarray
    exponent: ExponentFit | None = None
    dev_net_lin: np.ndarray | None = None
    dev_lin_ker: np.ndarray | None = None
    extra: dict = field(default_factory=dict)
    status_net: np.ndarray | None = None
    failed_step_net: np.ndarray | None = None
    status_ker: np.ndarray | None = None
    terms_net: dict | None = None
    terms_ker: dict | None = None

    outcome_label = "finite.width_sweep"

    @property
    def status(self) -> np.ndarray:
        """`(W, S)` one status per run: the network's when it did not succeed, else the kernel
        solve's (`sslntk._status.Status` codes; SUCCESS when neither was recorded)."""
        shape = (len(self.widths), len(self.seeds))
        net = np.zeros(shape, np.int32) if self.status_net is None else np.asarray(self.status_net)
        ker = np.zeros(shape, np.int32) if self.status_ker is None else np.asarray(self.status_ker)
        return np.where(net != 0, net, ker).astype(np.int32)

    def failure_detail(self) -> str:
        return self._status_text()

    def _status_text(self) -> str:
        out = []
        for i, w in enumerate(self.widths):
            for j, s in enumerate(self.seeds):
                sn = None if self.status_net is None else int(self.status_net[i, j])
                sk = None if self.status_ker is None else int(self.status_ker[i, j])
                if sn or sk:
                    step = "" if self.failed_step_net is None or self.failed_step_net[i, j] < 0 \
                        else f" at step {int(self.failed_step_net[i, j])}"
                    out.append(f"width {int(w)} seed {int(s)}: network {names(sn or 0)}{step}, "
                               f"kernel {names(sk or 0)}")
        return "; ".join(out) or "success"

    def summary(self) -> dict:
        """JSON-ready summary (per-width means/max and the exponent)."""
        out = dict(widths=self.widths.tolist(), seeds=self.seeds.tolist(), method=self.method,
                   window=self.window,
                   deviation_mean=self.deviation.mean(1).tolist(),
                   deviation_max=self.deviation.max(1).tolist(),
                   kernel_drift_mean=self.kernel_drift.mean(1).tolist(),
                   init_kernel_error_mean=self.init_kernel_error.mean(1).tolist(),
                   seconds=self.seconds.tolist(), ok=self.ok, status=self._status_text())
        w = self.ts <= self.window
        if self.dev_test is not None:
            out["deviation_test_mean"] = self.dev_test[:, :, w].max(-1).mean(1).tolist()
        for name in ("dev_net_lin", "dev_lin_ker"):
            arr = getattr(self, name)
            if arr is not None:
                out[name + "_mean"] = arr[:, :, w].max(-1).mean(1).tolist()
        if self.exponent is not None:
            out["exponent"] = self.exponent.as_dict()
        return out


_FIELDS = ("dev_train", "dev_test", "kernel_drift", "init_kernel_error", "spectra_net",
           "spectra_ker", "step_times_net", "step_times_ker", "loss_net", "loss_ker", "lr_rate",
           "dev_net_lin", "dev_lin_ker", "status_net", "failed_step_net", "status_ker")


def _default_method():
    return "gd" if importlib.util.find_spec("sslntk.dynamics._gd") is not None else "ode"


def width_sweep(arch: kernels.Arch, views, loss, widths: Sequence[int], seeds, *, alpha: float,
                lr: float, steps: int, ts=None, x_test=None, out_dim: int = 4,
                method: str | None = None, window: float | None = None, optimizer: str = "gd",
                batch_size: int | None = None, optimizer_options: dict | None = None,
                vmap_seeds: bool = True, drift_points: int = 256,
                solve_options: dict | None = None, checkpoint=None, linearized: bool = False,
                progress: bool = True, param: str = "ntk", base_width: int | None = None,
                reference: str | None = None, record_terms: bool = False) -> WidthSweep:
    """Finite networks of several widths × seeds against the kernel trajectory from the same f₀.

    Args:
      arch: `sslntk.kernels.Arch`. views: `Views` or stacked `(2n, *in_shape)` (dtype sets the
        network dtype). loss: `Loss`/name. widths: increasing positive ints. seeds: an int S (seeds
        0..S−1) or a sequence of ints; network `(w, s)` is drawn from
        `fold_in(jax.random.key(s), w)`.
      alpha: small-init scale (`docs/how-to/finite-vs-kernel.md`). lr, steps, ts, optimizer,
        batch_size, optimizer_options: as `train` (the save grid is `lr·rint(ts/lr)`, shared
        with the kernel solve).
      x_test: held-out inputs `(m, *in_shape)`. out_dim: embedding dimension k.
      method: kernel solver for `dynamics.solve`: default "gd" at the same `lr` when installed
        (isolates the finite-width effect from time discretisation), else "ode" (gradient flow;
        then `train` checks lr·ρ and warns when GD is too coarse for the flow).
      window: summary `deviation = max_{t ≤ window} dev_train` (default: the last time).
      vmap_seeds: train all seeds of a width together in one compiled call (`train_batched`:
        `jax.vmap` on GPU/TPU, `lax.map` on CPU); False: one `train` call after another.
      drift_points: number of train views (the first ones) for the empirical-NTK drift/init error.
      solve_options: extra options for `dynamics.solve` (e.g. `rtol`).
      checkpoint: a directory; each finished width is saved (atomically) and skipped on resume.
      linearized: also train each network's linearisation at init (`linearize`) and split the
        deviation into `dev_net_lin` (kernel motion) and `dev_lin_ker` (init kernel fluctuation);
        doubles the training cost.
      param, base_width: the networks' parametrisation (`network`). reference: the kernel
        trajectory compared with: "infinite" (`kernels.ntk(arch)`, the default for param="ntk";
        only defined for it) or "empirical" (each network's own empirical-NTK prediction from
        `kernel_prediction`, full output-space kernel, the default otherwise; then the deviation
        is the kernel's motion, and `init_kernel_error` is NaN).
      progress: one bar over the widths (and one for the kernel), `sslntk._progress`.
      record_terms: also record the loss's named terms of the networks and the kernel solves
        (`WidthSweep.terms_net`, `terms_ker`; needs a `losses.Loss`).

    Outcome: `status_net`, `failed_step_net`, `status_ker` per (width, seed); a RuntimeWarning
    names every run that did not succeed (a NaN deviation leaves the exponent unfitted).
    """
    from sslntk.finite import _param
    from sslntk.finite._kernel_prediction import kernel_prediction
    param = _param.check_param(param)
    if reference is None:
        reference = "infinite" if param == "ntk" else "empirical"
    V.choice("reference", reference, ["infinite", "empirical"])
    if reference == "infinite" and param != "ntk":
        raise ValueError(f"reference: the infinite-width NTK (kernels.ntk) is the limit of the NTK "
                         f"parametrisation only; with param={param!r} use reference='empirical'")
    pkw = dict(param=param, base_width=base_width)
    if optimizer_options is not None and not isinstance(optimizer_options, dict):
        raise TypeError(f"optimizer_options: expected a dict, got {type(optimizer_options).__name__}")
    opt_tag = optimizer if not optimizer_options else \
        f"{optimizer}{sorted(optimizer_options.items())!r}"
    tag_arch = (arch if param == "ntk" and reference == "infinite"
                else f"{arch!r}|{param}|{base_width}|{reference}")
    if not isinstance(arch, kernels.Arch) and not (reference == "empirical"
                                                   and getattr(arch, "kind", None) == "resnet"):
        raise TypeError(f"arch: expected a sslntk.kernels.Arch (a finite.resnet has no "
                        f"infinite-width kernel: use reference='empirical'), got "
                        f"{type(arch).__name__}")
    widths = [V.positive_int("widths[i]", w) for w in widths]
    if not widths or any(b <= a for a, b in zip(widths, widths[1:], strict=False)):
        raise ValueError(f"widths: expected a non-empty increasing sequence, got {widths}")
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        seeds = list(range(V.positive_int("seeds", seeds)))
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: expected a count >= 1 or distinct ints, got {seeds}")
    out_dim = V.positive_int("out_dim", out_dim)
    x = getattr(views, "stacked", views)
    x = V.stacked_views("views", x, ndim=range(2, 6))
    in_shape = tuple(x.shape[1:])
    probe = network(arch, 1, out_dim, key=jax.random.key(0), in_shape=in_shape, alpha=alpha,
                    dtype=x.dtype, **pkw)
    x = stacked_inputs(views, probe)
    loss = check_loss(loss, x, probe)
    V.positive_float("lr", lr)
    steps = V.positive_int("steps", steps)
    s_save = save_steps(float(lr), steps, ts)
    tgrid = s_save * float(lr)
    method = _default_method() if method is None else method
    V.choice("method", method, list(dynamics.METHODS))
    opts = dict(solve_options or {})
    if method == "gd":
        opts.setdefault("lr", float(lr))
    window = float(tgrid[-1]) if window is None else float(V.positive_float("window", window))
    xt = None if x_test is None else V.as_float_array("x_test", x_test)
    if xt is not None and xt.shape[1:] != x.shape[1:]:
        raise ValueError(f"x_test: expected shape (m, {', '.join(map(str, in_shape))}), got "
                         f"{tuple(xt.shape)}")
    nd = min(V.positive_int("drift_points", drift_points), x.shape[0])

    if record_terms and not isinstance(loss, L.Loss):
        raise ValueError("record_terms: needs a sslntk.losses.Loss or a loss name, got a callable")
    if reference == "infinite":
        K = kernels.ntk(arch, x, progress=progress)
        Ktt = None if xt is None else kernels.ntk(arch, xt, x, progress=progress)
        K_drift = K[:nd, :nd]
    ckdir = Path(checkpoint) if checkpoint is not None else None
    W = len(widths)
    res: dict[str, list] = {name: [] for name in _FIELDS}
    seconds = []
    terms_net: dict[str, list] = {}
    terms_ker: dict[str, list] = {}

    with Progress(W, "width sweep", enabled=progress) as prog:
        for w in widths:
            cfile = None if ckdir is None else ckdir / f"width_{w}.npz"
            if cfile is not None and cfile.exists():
                z = _io.load_npz(cfile)
                if (z["seeds"].tolist() == seeds and np.array_equal(z["ts"], tgrid)
                        and str(z["tag"]) == _tag(tag_arch, loss, alpha, lr, opt_tag, method, x)
                        and (not linearized or "dev_net_lin" in z)
                        and (not record_terms or any(n.startswith("terms_") for n in z))):
                    for name in _FIELDS:
                        res[name].append(z[name] if name in z else None)
                    for name in z:
                        for pre, tgt in (("terms_net__", terms_net), ("terms_ker__", terms_ker)):
                            if name.startswith(pre):
                                tgt.setdefault(name[len(pre):], []).append(z[name])
                    seconds.append(float(z["seconds"]))
                    prog.update(1, width=w, resumed=1)
                    continue
            t0 = time.perf_counter()
            models = [network(arch, w, out_dim, key=jax.random.fold_in(jax.random.key(s), w),
                              in_shape=in_shape, alpha=alpha, dtype=x.dtype, **pkw)
                      for s in seeds]
            keys = jnp.stack([jax.random.fold_in(jax.random.key(s), 10**9 + w) for s in seeds])
            # the lr·ρ warning concerns GD vs the gradient FLOW; a "gd" kernel solve at the same
            # lr is discrete on both sides, so there is nothing to warn about.
            kw = dict(lr=lr, steps=steps, optimizer=optimizer, batch_size=batch_size, ts=tgrid,
                      x_test=xt, progress=False, check_lr=method != "gd",
                      optimizer_options=optimizer_options)
            f_net, ft_net, l_net, trained, rate, st_net, fs_net = _train_seeds(
                models, x, loss, keys, kw, vmap_seeds)
            f_lin = None
            if linearized:
                f_lin = _train_seeds([linearize(m) for m in models], x, loss, keys,
                                     {**kw, "check_lr": False, "x_test": None}, vmap_seeds)[0]
            f_ker, ft_ker, l_ker, drift, err0, st_ker = [], [], [], [], [], []
            for m, mt in zip(models, trained, strict=True):
                f0 = m(x)
                f0t = None if xt is None else m(xt)
                if reference == "infinite":
                    traj = dynamics.solve(K, loss, f0, jnp.asarray(tgrid, x.dtype), method=method,
                                          K_test_train=Ktt, f0_test=f0t, **opts)
                else:
                    o = {k: v for k, v in opts.items() if k != "lr"}
                    traj = kernel_prediction(m, x, loss, tgrid, method=method,
                                             lr=opts.get("lr"), x_test=xt,
                                             solve_options=o or None)
                f_ker.append(np.asarray(traj.f))
                ft_ker.append(None if xt is None else np.asarray(traj.f_test))
                l_ker.append(np.asarray(traj.loss))
                st_ker.append(int(traj.status if reference == "infinite"
                                  else traj.trajectory.status))
                if getattr(m, "couples_batch", False):    # BatchNorm: the batch map's kernel
                    from sslntk.finite._kernel_prediction import output_space_ntk
                    th0, th1 = (output_space_ntk(mm, x[:nd])[0] for mm in (m, mt))
                else:
                    th0 = np.asarray(empirical_ntk(m, x[:nd]))
                    th1 = np.asarray(empirical_ntk(mt, x[:nd]))
                drift.append(np.linalg.norm(th1 - th0) / np.linalg.norm(th0))
                err0.append(np.nan if reference != "infinite" else
                            np.linalg.norm(th0 - np.asarray(K_drift)) / np.linalg.norm(K_drift))
            f_ker = np.stack(f_ker)
            res["dev_train"].append(np.asarray(relative_deviation(f_net, f_ker)))
            res["dev_net_lin"].append(None if f_lin is None else
                                      np.asarray(relative_deviation(f_net, f_lin)))
            res["dev_lin_ker"].append(None if f_lin is None else
                                      np.asarray(relative_deviation(f_lin, f_ker)))
            res["dev_test"].append(None if xt is None else
                                   np.asarray(relative_deviation(ft_net, np.stack(ft_ker))))
            res["kernel_drift"].append(np.array(drift))
            res["init_kernel_error"].append(np.array(err0))
            sn = np.asarray(metrics.cross_correlation_spectrum(jnp.asarray(f_net)))
            sk = np.asarray(metrics.cross_correlation_spectrum(jnp.asarray(f_ker)))
            res["spectra_net"].append(sn)
            res["spectra_ker"].append(sk)
            res["step_times_net"].append(np.asarray(metrics.step_times(sn, tgrid)))
            res["step_times_ker"].append(np.asarray(metrics.step_times(sk, tgrid)))
            res["loss_net"].append(l_net)
            res["loss_ker"].append(np.stack(l_ker))
            res["lr_rate"].append(rate)
            res["status_net"].append(np.asarray(st_net, np.int32))
            res["failed_step_net"].append(np.asarray(fs_net, np.int64))
            res["status_ker"].append(np.asarray(st_ker, np.int32))
            new_terms = {}
            if record_terms:
                tf = jax.vmap(jax.vmap(loss.terms))
                for pre, tgt, ff in (("terms_net__", terms_net, f_net),
                                     ("terms_ker__", terms_ker, f_ker)):
                    for name, v in tf(jnp.asarray(ff)).items():
                        tgt.setdefault(name, []).append(np.asarray(v))
                        new_terms[pre + name] = np.asarray(v)
            seconds.append(time.perf_counter() - t0)
            if cfile is not None:
                arrays = {n: res[n][-1] for n in _FIELDS if res[n][-1] is not None}
                _io.atomic_write_npz(cfile, seeds=np.array(seeds), ts=tgrid,
                                     seconds=np.array(seconds[-1]),
                                     tag=np.array(_tag(tag_arch, loss, alpha, lr, opt_tag, method,
                                                       x)), **arrays, **new_terms)
            prog.update(1, width=w, dev=float(np.max(res["dev_train"][-1][:, tgrid <= window])))
    arr = {n: (None if any(a is None for a in res[n]) else np.stack(res[n])) for n in _FIELDS}
    wmask = tgrid <= window
    deviation = arr["dev_train"][:, :, wmask].max(-1)
    fit = None
    if W >= 2 and np.all(np.isfinite(deviation)) and np.all(deviation > 0):
        fit = fit_exponent(widths, deviation)
    ws = WidthSweep(widths=np.array(widths), seeds=np.array(seeds), ts=tgrid, method=method,
                    window=window, deviation=deviation, seconds=np.array(seconds),
                    exponent=fit, **arr,
                    terms_net={k: np.stack(v) for k, v in terms_net.items()} or None,
                    terms_ker={k: np.stack(v) for k, v in terms_ker.items()} or None)
    if not ws.ok:
        import warnings

        warnings.warn(f"finite.width_sweep: did not succeed ({ws._status_text()})"
                      + ("" if fit is not None or W < 2 else "; exponent not fitted")
                      + "; call .raise_if_failed() to make this an error", RuntimeWarning,
                      stacklevel=2)
    return ws


def _train_seeds(models, x, loss, keys, kw, vmap_seeds):
    """Train `models` (one per seed) → `f (S, T, 2n, k)`, `f_test`, `loss (S, T)`, the trained
    models and `lr·ρ (S,)`; vmapped over the seeds when `vmap_seeds` and there are several."""
    S = len(models)
    if vmap_seeds and S > 1:
        r = train_batched(stack_models(models), x, loss, keys=keys, **kw)
        f = np.moveaxis(np.asarray(r.f), 1, 0)
        ft = None if r.f_test is None else np.moveaxis(np.asarray(r.f_test), 1, 0)
        rate = np.asarray(r.lr_rate) if r.lr_rate is not None else np.full(S, np.nan)
        return (f, ft, np.asarray(r.loss).T, [unstack_model(r.params, i) for i in range(S)], rate,
                np.asarray(r.status), np.asarray(r.failed_step))
    rs = [train(m, x, loss, key=k, **kw) for m, k in zip(models, keys, strict=True)]
    ft = None if rs[0].f_test is None else np.stack([np.asarray(r.f_test) for r in rs])
    rate = np.array([np.nan if r.lr_rate is None else float(r.lr_rate) for r in rs])
    return (np.stack([np.asarray(r.f) for r in rs]), ft, np.stack([np.asarray(r.loss) for r in rs]),
            [r.model for r in rs], rate, np.array([int(r.status) for r in rs]),
            np.array([int(r.failed_step) for r in rs]))


def _tag(arch, loss, alpha, lr, optimizer, method, x) -> str:
    h = hashlib.sha256(np.ascontiguousarray(np.asarray(x)).tobytes()).hexdigest()[:16]
    return f"{arch!r}|{loss!r}|{alpha!r}|{lr!r}|{optimizer}|{method}|{h}"

