"""The kernel-side counterpart of `train_augmented`: training on fresh augmentations every step,
predicted from the model's own empirical NTK through the augmentation-averaged kernel.

Why this is the right kernel problem. `train_augmented` takes, at step s, one gradient step on
`L(f(views_s))` with views drawn anew. With a small learning rate the steps average the draws
(stochastic approximation), so in the kernel regime the network follows the gradient flow of the
EXPECTED loss `E_ω L(f(views_ω))`. Its Monte-Carlo estimate over D draws is the draw-averaged loss
`(1/D) Σ_d L(f(views_d))` of the pooled 2nD views `[a¹..a^D, b¹..b^D]`, whose gradient is the
average step gradient; the prediction is the ordinary kernel dynamics (`dynamics.solve`,
time t = lr·steps, `docs/concepts.md`) of that loss on the pooled views, from the model's own initial
embeddings there, read out on the fixed evaluation views through `Θ(eval, pooled)`
(`average="loss"`, the default). `average="moments"` instead treats the pooled views as n·D
positive pairs of one batch, `L(C̄)` with `C̄ = (1/D) Σ_d C_d`: it drops the draw-to-draw
fluctuation of the moments, `E‖C_ω − I‖² = ‖C̄ − I‖² + E‖C_ω − C̄‖²` for Barlow Twins, which at
finite n measurably speeds up the later modes (see the tests: digits n = 128, the second step of a
linearised network trained on fresh views comes 16 % earlier than `L(C̄)` predicts, independent of
the learning rate). A minibatch of B < n sources per step would need the same average over
B-subsets; the prediction assumes full batches of the n sources. Momentum or Adam change the clock
(plain SGD/GD is the comparison).

The augmentation-averaged kernel itself: `K̄ = (1/D) Σ_d K(views_d)` `(2n, 2n)`. Its cross block
is the Gram matrix of the augmentation-mean features, `K̄_ab[i, j] = E φ(a_i)·φ(b_j) = μ_i·μ_j`
(a and b drawn independently given the source, so the views' cross moment, the population limit
of the matrix Γ of Simon et al. 2023, is `E[x x'ᵀ] = E μ μᵀ` with μ the augmentation mean), so
in the D → ∞ limit the eigenvalues of Barlow Twins' `M = K^{1/2} Z K^{1/2}/2n` (Simon et al. 2023, kernelised
setting: `γ_j`, the rates at which the modes are learned) are those of `sym(K̄_ab)/n`, returned as
`gamma`. With a finite D the pooled problem still carries the draws' own noise terms (a bias of
order 1/D in the γ's), which `gamma_pooled` (the top eigenvalues of the pooled `M`) shows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk import data, dynamics, metrics
from sslntk import losses as L
from sslntk._status import Outcome
from sslntk.finite._augtrain import check_eval_views, check_source_samples
from sslntk.finite._inputs import check_loss, check_model
from sslntk.finite._kernel_prediction import (
    KERNELS,
    WrappedLoss,
    kernel_prediction,
    solve_opts,
    wrap_loss,
)
from sslntk.finite._ntk import empirical_ntk
from sslntk.finite._state import embeddings, split_trainable

AVERAGES = ("loss", "moments")


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class _DrawAveragedLoss(WrappedLoss):
    """`(1/D) Σ_d L(f_d)` over the D draws of pooled embeddings `(2nD, k)` (order of
    `pooled_views`): draw d is rows `[d·n, (d+1)·n)` (views a) and `nD + [d·n, (d+1)·n)` (views b).
    Internal."""

    n: int = dataclasses.field(default=2, metadata=dict(static=True))
    D: int = dataclasses.field(default=1, metadata=dict(static=True))

    def __call__(self, f):
        a, b = f[: self.n * self.D], f[self.n * self.D:]
        fd = jnp.concatenate([a.reshape(self.D, self.n, -1), b.reshape(self.D, self.n, -1)], 1)
        return jnp.mean(jax.vmap(self._inner)(fd))

    def __repr__(self) -> str:
        return f"DrawAveraged({self._inner_repr()}, n={self.n}, D={self.D})"


def _draw_averaged(loss, n, D):
    return wrap_loss(_DrawAveragedLoss, loss, n=n, D=D)


@dataclass(frozen=True)
class AugmentedPrediction(Outcome):
    """What `augmented_kernel_prediction` returns (arrays on the solver's `ts`).

    ts (T,); f (T, 2m, k): predicted embeddings of the evaluation views; loss (T,): the loss of
    those; spectrum (T, k): their covariance eigenvalues (`metrics.embedding_spectrum`, as
    `train_augmented` records them); cc_spectrum (T, k): eigenvalues of their cross-correlation
    `C` (`metrics.cross_correlation_spectrum`, the quantity Barlow Twins drives to 1);
    step_times (k,): `metrics.step_times` of the covariance spectrum (as `train_augmented`);
    pooled_loss (T,): the loss of the pooled views (the problem that is solved); averaged_kernel
    (2n, 2n): `K̄ = (1/D) Σ_d K(views_d)`, one-output empirical NTK; gamma (n,): eigenvalues of
    `sym(K̄_ab)/n`, descending (module docstring); gamma_pooled (k,): top eigenvalues of the pooled
    `M = K^{1/2} Z K^{1/2} / 2nD`; n_draws; eval_views; trajectory: the `dynamics.Trajectory`.
    `status` is the trajectory's; `ok`, `status_name`, `raise_if_failed()` come from `Outcome`.
    """

    ts: np.ndarray
    f: np.ndarray
    loss: np.ndarray
    spectrum: np.ndarray
    cc_spectrum: np.ndarray
    step_times: np.ndarray
    pooled_loss: np.ndarray
    averaged_kernel: np.ndarray
    gamma: np.ndarray
    gamma_pooled: np.ndarray
    n_draws: int
    eval_views: data.Views
    trajectory: object

    outcome_label = "finite.augmented_kernel_prediction"

    @property
    def status(self):
        """The kernel solve's status code (`sslntk._status.Status`; `trajectory.status`)."""
        return np.asarray(self.trajectory.status)


def pooled_views(x, augment, key, n_draws: int) -> jax.Array:
    """`(2nD, *in_shape)`: D draws of `data.make_views(x, augment, key, n_draws=D)` pooled as n·D
    positive pairs, `[a¹_1..a¹_n, .., a^D_1..a^D_n, b¹_1..b¹_n, .., b^D_1..b^D_n]`."""
    v = data.make_views(x, augment, key, n_draws=n_draws)
    a, b = (v.a, v.b) if v.has_draws else (v.a[None], v.b[None])
    return jnp.concatenate([a.reshape(-1, *a.shape[2:]), b.reshape(-1, *b.shape[2:])])


def augmented_kernel_prediction(model, x, augment, loss, ts, *, key, n_draws: int = 16,
                                eval_views=None, method: str = "ode", lr: float | None = None,
                                kernel: str = "full", average: str = "loss",
                                chunk: int = 64,
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
      kernel: "full" (the output-space Θ of `kernel_prediction`, 2nD·k JVP/VJP pairs) or
        "one_output" (`K ⊗ I_k` by the Jacobian-contraction `empirical_ntk`: cheap for large 2nD,
        not for batch-coupled models, and blind to the cross-output terms of Θ, which seed the
        later modes: measured on digits n = 128, NTK MLP width 256, k = 3, near-fixed views, the
        second BT step of the linearised network came at t = 18.5, "full" predicted 18.5 and
        "one_output" 22.6).
      average: "loss" (the draw-averaged loss, the expected loss of fresh-view training) or
        "moments" (`L` of the pooled moments; module docstring).
      chunk, solve_options: as `kernel_prediction`.
    """
    check_model(model)
    x = check_source_samples(x, model)
    V.check_key("key", key)
    D = V.positive_int("n_draws", n_draws)
    V.choice("kernel", kernel, KERNELS)
    V.choice("average", average, AVERAGES)
    eval_views, xe = check_eval_views(eval_views, x, augment, key)
    xp = pooled_views(x, augment, key, D)
    n = x.shape[0]
    loss_c = check_loss(loss, xe, model)
    solved = _draw_averaged(loss_c, n, D) if average == "loss" else loss_c
    if kernel == "full":
        pred = kernel_prediction(model, xp, (lambda f: solved(f)) if average == "loss" else solved,
                                 ts, method=method, lr=lr, kernel="full",
                                 x_test=xe, chunk=chunk, solve_options=solve_options)
        Kp, traj = jnp.asarray(pred.kernel), pred.trajectory
        f, pooled_loss = pred.f_test, pred.loss
    else:
        if not isinstance(loss_c, L.Loss) and average == "moments":
            raise ValueError("loss: kernel='one_output' goes through dynamics.solve with a "
                             "registered sslntk loss; a plain callable needs kernel='full'")
        if getattr(model, "couples_batch", False):
            raise ValueError("kernel: a batch-coupled model (BatchNorm) has no per-example "
                             "kernel; use kernel='full'")
        opts = solve_opts(method, lr, solve_options)
        graphdef, params, rest = split_trainable(model)
        f0 = embeddings(graphdef, params, rest, xp)
        f0e = embeddings(graphdef, params, rest, xe)
        Kp = empirical_ntk(model, xp)
        Kep = empirical_ntk(model, xe, xp)
        traj = dynamics.solve(Kp, solved, f0, jnp.asarray(ts, f0.dtype), method=method,
                              K_test_train=Kep, f0_test=f0e, **opts)
        f, pooled_loss = np.asarray(traj.f_test), np.asarray(traj.loss)
    fe = jnp.asarray(f)
    spec = np.asarray(metrics.embedding_spectrum(fe))
    tgrid = np.asarray(traj.ts)
    st = (np.asarray(metrics.step_times(spec, tgrid)) if len(tgrid) >= 2
          else np.full(spec.shape[-1], np.nan))
    Kbar, gamma, gamma_p = _averaged(np.asarray(Kp, np.float64), n, D, f.shape[-1])
    return AugmentedPrediction(ts=tgrid, f=np.asarray(f), loss=np.asarray(jax.vmap(loss_c)(fe)),
                               spectrum=spec, step_times=st,
                               cc_spectrum=np.asarray(metrics.cross_correlation_spectrum(fe)),
                               pooled_loss=np.asarray(pooled_loss),
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
