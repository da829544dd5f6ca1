"""The kernel-side counterpart of `train_augmented`: training on fresh augmentations every step,
predicted from the model's own empirical NTK through the augmentation-averaged kernel.

Why pooling draws is the right kernel problem. `train_augmented` takes, at step s, one gradient
step on `L(f(views_s))` with views drawn anew. With a small learning rate the steps average the
draws, so in the kernel regime the network follows the gradient flow of the EXPECTED loss
`E_ω L(C_ω)` (stochastic-approximation limit). For the losses built from pair-averaged moments
(Barlow Twins, spectral contrastive, VICReg's invariance and covariance: `C = (1/2n) Σ_i
f(a_i) f(b_i)ᵀ`, symmetrised), the draws' moments concentrate around their mean as n grows, so
`E_ω ∇L(C_ω) ≈ ∇L(E_ω C_ω)`; and `E_ω C_ω ≈ (1/D) Σ_d C_d` is EXACTLY the moment of the pooled
set of D draws taken as n·D positive pairs `[a¹..a^D, b¹..b^D]`. So the prediction is the ordinary
kernel dynamics (`dynamics.solve`, DESIGN.md time t = lr·steps) on the 2nD pooled views, with the
model's own initial embeddings there, read out on the fixed evaluation views through
`Θ(eval, pooled)`. A minibatch of B < n sources per step has the same expected moment, so the
prediction does not depend on `batch_size` (the minibatch only adds noise). Momentum or Adam
change the clock (plain SGD/GD is the comparison).

The augmentation-averaged kernel itself: `K̄ = (1/D) Σ_d K(views_d)` `(2n, 2n)`. Its cross block
is the Gram matrix of the augmentation-mean features, `K̄_ab[i, j] = E φ(a_i)·φ(b_j) = μ_i·μ_j`
(a and b drawn independently; stepwise digest §2 "augmentation-averaged view of Γ":
`E[x x'ᵀ] = E μ μᵀ`), so in the D → ∞ limit the eigenvalues of Barlow Twins' `M` (stepwise digest
§6, `γ_j`, the rates at which the modes are learned) are those of `sym(K̄_ab)/n`, returned as
`gamma`. With a finite D the pooled problem still carries the draws' own noise terms (a bias of
order 1/D in the γ's), which `gamma_pooled` (the top eigenvalues of the pooled `M`) shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk import data, dynamics, metrics
from sslntk import losses as L
from sslntk.finite._kernel_prediction import KERNELS, kernel_prediction
from sslntk.finite._network import _check_key, ensure_built
from sslntk.finite._ntk import _f, empirical_ntk, split_trainable
from sslntk.finite._train import _check_loss, _offsets


@dataclass(frozen=True)
class AugmentedPrediction:
    """What `augmented_kernel_prediction` returns (arrays on the solver's `ts`).

    ts (T,); f (T, 2m, k): predicted embeddings of the evaluation views; loss (T,): the loss of
    those; spectrum (T, k): their covariance eigenvalues (`metrics.embedding_spectrum`, as
    `train_augmented` records them); step_times (k,): `metrics.step_times` of that spectrum;
    pooled_loss (T,): the loss of the pooled views (the problem that is solved); averaged_kernel
    (2n, 2n): `K̄ = (1/D) Σ_d K(views_d)`, one-output empirical NTK; gamma (n,): eigenvalues of
    `sym(K̄_ab)/n`, descending (module docstring); gamma_pooled (k,): top eigenvalues of the pooled
    `M = K^{1/2} Z K^{1/2} / 2nD`; n_draws; eval_views; trajectory: the `dynamics.Trajectory`.
    """

    ts: np.ndarray
    f: np.ndarray
    loss: np.ndarray
    spectrum: np.ndarray
    step_times: np.ndarray
    pooled_loss: np.ndarray
    averaged_kernel: np.ndarray
    gamma: np.ndarray
    gamma_pooled: np.ndarray
    n_draws: int
    eval_views: data.Views
    trajectory: object

    @property
    def ok(self) -> bool:
        return self.trajectory.ok


def pooled_views(x, augment, key, n_draws: int) -> jax.Array:
    """`(2nD, *in_shape)`: D draws of `data.make_views(x, augment, key, n_draws=D)` pooled as n·D
    positive pairs, `[a¹_1..a¹_n, .., a^D_1..a^D_n, b¹_1..b¹_n, .., b^D_1..b^D_n]`."""
    v = data.make_views(x, augment, key, n_draws=n_draws)
    a, b = (v.a, v.b) if v.has_draws else (v.a[None], v.b[None])
    return jnp.concatenate([a.reshape(-1, *a.shape[2:]), b.reshape(-1, *b.shape[2:])])


def augmented_kernel_prediction(model, x, augment, loss, ts, *, key, n_draws: int = 16,
                                eval_views=None, method: str = "ode", lr: float | None = None,
                                kernel: str = "one_output", chunk: int = 64,
                                solve_options: dict | None = None) -> AugmentedPrediction:
    """Kernel-regime prediction of `train_augmented(model, x, augment, loss, ...)` (module doc).

    Args:
      model: the untrained network (an NNX module `(N, *in_shape) → (N, k)`); its empirical NTK at
        its current parameters and its own f₀ are used (small init included).
      x: source samples `(n, *in_shape)`. augment: as `train_augmented`.
      loss: `sslntk.losses.Loss` or name (a plain callable needs `kernel="full"`).
      ts: `(T,)` times, t = lr·steps of the training it predicts.
      key: `jax.random` key of the D pooled draws (any key: they stand for the expectation; it
        need not be the training key). n_draws: D (the pooled problem has 2n·D views).
      eval_views: the fixed evaluation `Views` to predict, e.g. `train_augmented(...).eval_views`
        (default: the same default draw as `train_augmented` with this `key`).
      method: a `dynamics.solve` method ("ode": gradient flow; "gd" with `lr`: discrete steps).
      kernel: "one_output" (`K ⊗ I_k`, the Jacobian-contraction `empirical_ntk`, affordable for
        large 2nD; not for batch-coupled models) or "full" (the output-space Θ of
        `kernel_prediction`, 2nD·k JVP/VJP pairs).
      chunk, solve_options: as `kernel_prediction`.
    """
    x = V.as_float_array("x", x)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"x: expected source samples (n, *in_shape) with n >= 2, got "
                         f"{tuple(x.shape)}")
    _check_key(key)
    D = V.positive_int("n_draws", n_draws)
    V.choice("kernel", kernel, KERNELS)
    ensure_built(model, x)
    if eval_views is None:
        eval_views = data.make_views(x, augment, jax.random.fold_in(key, 2**31 - 1))
    if not isinstance(eval_views, data.Views) or eval_views.has_draws:
        raise TypeError("eval_views: expected single-draw sslntk.data.Views")
    xe = eval_views.stacked
    if xe.shape[1:] != x.shape[1:] or xe.dtype != x.dtype:
        raise ValueError(f"eval_views: expected views of samples {tuple(x.shape[1:])} ({x.dtype}),"
                         f" got {tuple(xe.shape[1:])} ({xe.dtype})")
    xp = pooled_views(x, augment, key, D)
    n = x.shape[0]
    loss_c = _check_loss(loss, xp, model)
    if kernel == "full":
        pred = kernel_prediction(model, xp, loss_c, ts, method=method, lr=lr, kernel="full",
                                 x_test=xe, chunk=chunk, solve_options=solve_options)
        Kp, traj = jnp.asarray(pred.kernel), pred.trajectory
        f, pooled_loss = pred.f_test, pred.loss
    else:
        if not isinstance(loss_c, L.Loss):
            raise ValueError("loss: kernel='one_output' goes through dynamics.solve with a "
                             "registered sslntk loss; a plain callable needs kernel='full'")
        if getattr(model, "couples_batch", False):
            raise ValueError("kernel: a batch-coupled model (BatchNorm) has no per-example "
                             "kernel; use kernel='full'")
        V.choice("method", method, list(dynamics.METHODS))
        opts = dict(solve_options or {})
        if method == "gd":
            if lr is None:
                raise ValueError("lr: method='gd' solves discrete GD and needs the learning rate")
            opts["lr"] = float(V.positive_float("lr", lr))
        elif lr is not None:
            raise ValueError(f"lr: only method='gd' takes a learning rate, got lr={lr} with "
                             f"method={method!r}")
        graphdef, params, rest = split_trainable(model)
        f0 = _f(graphdef, params, rest, xp) - _offsets(graphdef, params, rest, xp)
        f0e = _f(graphdef, params, rest, xe) - _offsets(graphdef, params, rest, xe)
        Kp = empirical_ntk(model, xp)
        Kep = empirical_ntk(model, xe, xp)
        traj = dynamics.solve(Kp, loss_c, f0, jnp.asarray(ts, f0.dtype), method=method,
                              K_test_train=Kep, f0_test=f0e, **opts)
        f, pooled_loss = np.asarray(traj.f_test), np.asarray(traj.loss)
    fe = jnp.asarray(f)
    spec = np.asarray(metrics.embedding_spectrum(fe))
    tgrid = np.asarray(traj.ts)
    st = (np.asarray(metrics.step_times(spec, tgrid)) if len(tgrid) >= 2
          else np.full(spec.shape[-1], np.nan))
    Kbar, gamma, gamma_p = _averaged(np.asarray(Kp, np.float64), n, D, f.shape[-1])
    return AugmentedPrediction(ts=tgrid, f=np.asarray(f), loss=np.asarray(jax.vmap(loss_c)(fe)),
                               spectrum=spec, step_times=st, pooled_loss=np.asarray(pooled_loss),
                               averaged_kernel=Kbar, gamma=gamma, gamma_pooled=gamma_p,
                               n_draws=D, eval_views=eval_views, trajectory=traj)


def _averaged(Kp, n, D, k):
    """From the pooled kernel `(2nD, 2nD)` (order of `pooled_views`): K̄ `(2n, 2n)` (the per-draw
    blocks averaged), `gamma` = eig(sym(K̄_ab))/n descending, and the top-k eigenvalues of the
    pooled `M = K^{1/2} Z K^{1/2} / 2nD` (= those of `Z K / 2nD`)."""
    idx = np.arange(2 * n * D).reshape(2, D, n)               # [view a|b, draw, sample]
    per = np.stack([Kp[np.ix_(idx[:, d].ravel(), idx[:, d].ravel())] for d in range(D)])
    Kbar = per.mean(0)
    Kab = Kbar[:n, n:]
    gamma = np.linalg.eigvalsh((Kab + Kab.T) / 2)[::-1] / n
    N = 2 * n * D
    w, U = np.linalg.eigh((Kp + Kp.T) / 2)
    R = (U * np.sqrt(np.clip(w, 0, None))) @ U.T             # K^{1/2}
    Z = np.roll(np.eye(N), N // 2, axis=1)                    # pairs i <-> i + nD
    gm = np.linalg.eigvalsh(R @ Z @ R / N)[::-1][:k]
    return Kbar, gamma, gm
