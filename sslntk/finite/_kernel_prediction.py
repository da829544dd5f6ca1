"""The kernel-regime prediction of ANY Flax model from its own empirical NTK at init.

`kernel_prediction(model, views, loss, ts, ...)` linearises the model in its parameters at the
current point θ₀ and solves the resulting function-space dynamics with `sslntk.dynamics.solve`
from the model's own initial embeddings `f₀ = model(views)`:

    dF/dt = −Θ ∇_F L(F),    F = vec(f) ∈ R^{2n·k} (row-major: index i·k + o),

with the FULL output-space tangent kernel `Θ[(i,o),(j,p)] = Σ_θ ∂f_o(x_i)/∂θ · ∂f_p(x_j)/∂θ`
(`(2n·k, 2n·k)`, over the model's `nnx.Param`s), because every SSL loss couples the k outputs
(through C) and a finite network's Θ has cross-output terms of order width^-1/2. With
`kernel="one_output"` the one-output kernel `K = (1/k) Σ_o Θ[(·,o),(·,o)]` (sslntk's kernel
convention, `docs/concepts.md`; = `empirical_ntk`) is used instead, `df/dt = −K ∇_f L`, which
is exact only when `Θ = K ⊗ I_k`; `cross_output` reports how far from that the model is. Time t = lr·steps
(`docs/concepts.md`); with `method="gd"` and the training lr the prediction is the model's own linearisation
trained by GD, so the deviation from the trained network is the kernel's motion only. For a μP model the
kernel is `Θ = J S Jᵀ` with S its per-group SGD learning-rate factors (`_param`), the kernel of GD as `train`
runs it.

Θ is built without materialising the Jacobian: column r is `J (Jᵀ e_r)` (one VJP + one JVP of the
whole batch), so it also holds for models that couple a batch (BatchNorm). Cost: 2n·k JVP/VJP pairs.

`kernel_drift(model0, models, views)`: `‖Θ_t − Θ_0‖_F / ‖Θ_0‖_F` and the kernel alignment
`A(Θ_t, Θ_0) = ⟨Θ_t, Θ_0⟩_F / (‖Θ_t‖_F ‖Θ_0‖_F)` (Cristianini et al. 2002), plus the alignment of
the one-output kernel with the embedding Gram `A(K_t, f_t f_tᵀ)` (how much the kernel has turned
towards the learned features).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sslntk import _validate as V
from sslntk import dynamics
from sslntk import losses as L
from sslntk._status import Outcome
from sslntk.finite._inputs import check_loss, stacked_inputs, test_inputs
from sslntk.finite._param import gd_scales
from sslntk.finite._state import offsets, split_trainable, trainable_output

KERNELS = ("full", "one_output")


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class WrappedLoss(L.Loss):
    """Base of the internal wrappers that reshape embeddings before the loss: a registered loss
    keeps its constants as pytree leaves (`L.Loss.__call__` on the reshaped f); a plain callable
    rides along as the static `fn`. Neither has a moment form (the solver takes the general path)."""

    fn: object = dataclasses.field(default=None, metadata=dict(static=True))

    def _inner(self, f):
        return self.fn(f) if self.fn is not None else L.Loss.__call__(self, f)

    def _inner_repr(self) -> str:
        return repr(self.fn) if self.fn is not None else L.Loss.__repr__(self)

    @property
    def cross_moment_only(self) -> bool:
        return False

    @property
    def has_moment_form(self) -> bool:
        return False


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class _OutputSpaceLoss(WrappedLoss):
    """`L̃(F) = L(F.reshape(−1, k))` for the output-space solve (`F: (2n·k, 1)`); internal."""

    k: int = dataclasses.field(default=1, metadata=dict(static=True))

    def __call__(self, F):
        return self._inner(F.reshape(-1, self.k))

    def __repr__(self) -> str:
        return f"OutputSpace({self._inner_repr()}, k={self.k})"


def wrap_loss(cls, loss, **static):
    """`cls` (a `WrappedLoss`) around a registered loss (its constants kept) or a callable."""
    if isinstance(loss, L.Loss):
        return cls(constants=loss.constants, name=loss.name, options=loss.options, **static)
    fn = loss.func if isinstance(loss, jax.tree_util.Partial) else loss
    return cls(constants={}, fn=fn, **static)


def _wrap(loss, k):
    return wrap_loss(_OutputSpaceLoss, loss, k=k)


def _kernels(graphdef, params, rest, x, xt, chunk, scales=None):
    """Θ (Nk, Nk) and, with test points, Θ_tx (mk, Nk), column by column (`J S Jᵀ e_r`, S the
    per-parameter learning-rate factors `scales` (a pytree like params) or I)."""
    fwd = lambda p: trainable_output(graphdef, p, rest, x).reshape(-1)  # noqa: E731
    out, vjp = jax.vjp(fwd, params)
    Nk = out.shape[0]

    @jax.jit
    def cols(E):
        def one(e):
            (ct,) = vjp(e)
            if scales is not None:
                ct = jax.tree.map(lambda a, s: a * s, ct, scales)
            c = jax.jvp(fwd, (params,), (ct,))[1]
            ct_ = None if xt is None else jax.jvp(
                lambda p: trainable_output(graphdef, p, rest, xt).reshape(-1), (params,), (ct,))[1]
            return c, ct_
        return jax.vmap(one)(E)

    eye = jnp.eye(Nk, dtype=out.dtype)
    blocks, tblocks = [], []
    for s in range(0, Nk, chunk):
        c, ct = cols(eye[s:s + chunk])
        blocks.append(np.asarray(c))
        if xt is not None:
            tblocks.append(np.asarray(ct))
    Th = np.concatenate(blocks).T
    Th = (Th + Th.T) / 2
    Ttx = None if xt is None else np.concatenate(tblocks).T
    return Th, Ttx


@dataclass(frozen=True)
class KernelPrediction(Outcome):
    """What `kernel_prediction` returns.

    ts (T,): the solver's times (t = lr·steps); f (T, 2n, k): predicted embeddings; loss (T,);
    f_test (T, m, k) or None; f0 (2n, k): the model's own initial embeddings; theta (2n·k, 2n·k):
    the full output-space NTK at init (row-major (i, o) index); kernel (2n, 2n): its one-output
    trace `(1/k) Σ_o Θ_oo`; cross_output: `‖Θ − K ⊗ I_k‖_F / ‖Θ‖_F` (0 when Θ ∝ I_k);
    which: "full" or "one_output"; trajectory: the `dynamics.Trajectory` (status, method).
    `status` is the trajectory's; `ok`, `status_name`, `raise_if_failed()` come from `Outcome`.
    """

    ts: np.ndarray
    f: np.ndarray
    loss: np.ndarray
    f_test: np.ndarray | None
    f0: np.ndarray
    theta: np.ndarray
    kernel: np.ndarray
    cross_output: float
    which: str
    trajectory: object

    outcome_label = "finite.kernel_prediction"

    @property
    def status(self):
        """The kernel solve's status code (`sslntk._status.Status`; `trajectory.status`)."""
        return np.asarray(self.trajectory.status)


def output_space_ntk(model, x, x_test=None, *, chunk: int = 64):
    """The full output-space empirical NTK of `model` at its current parameters.

    x: stacked inputs `(N, *in_shape)` (or `Views`). Returns `Θ (N·k, N·k)` (row-major `(i, o)`
    index) and, with `x_test (m, *in_shape)`, `Θ_tx (m·k, N·k)` (else None); numpy arrays in the
    model's dtype. Works for batch-coupled models (BatchNorm): Θ is the kernel of the batch map.
    """
    x = stacked_inputs(x, model)
    xt = test_inputs(x_test, x, model)
    chunk = V.positive_int("chunk", chunk)
    graphdef, params, rest = split_trainable(model)
    if not jax.tree.leaves(params):
        raise ValueError("model: has no trainable nnx.Param variables")
    return _kernels(graphdef, params, rest, x, xt, chunk)


def _one_output(Th, N, k):
    T4 = Th.reshape(N, k, N, k)
    K = np.einsum("iojo->ij", T4) / k
    full = np.kron(K, np.eye(k)).reshape(N, k, N, k)
    cross = float(np.linalg.norm(T4 - full) / np.linalg.norm(T4))
    return K, cross


def solve_opts(method, lr, solve_options) -> dict:
    """`dynamics.solve` options: `method` checked, `lr` required for (and only for) "gd"."""
    V.choice("method", method, list(dynamics.METHODS))
    opts = dict(solve_options or {})
    if method == "gd":
        if lr is None:
            raise ValueError("lr: method='gd' solves discrete GD and needs the learning rate")
        opts["lr"] = float(V.positive_float("lr", lr))
    elif lr is not None:
        raise ValueError(f"lr: only method='gd' takes a learning rate, got lr={lr} with "
                         f"method={method!r}")
    return opts


def kernel_prediction(model, views, loss, ts, *, method: str = "gd", lr: float | None = None,
                      kernel: str = "full", x_test=None, chunk: int = 64,
                      solve_options: dict | None = None) -> KernelPrediction:
    """Kernel-regime prediction of `model`'s training from its own empirical NTK at init.

    Args:
      model: any Flax NNX module `(N, *in_shape) → (N, k)` (a `finite.network`, a ResNet with
        BatchNorm, your own); its `nnx.Param`s define the tangent kernel; f₀ = `model(views)`.
      views: `Views` (single draw) or stacked inputs `(2n, *in_shape)`.
      loss: `sslntk.losses.Loss`, a loss name, or a callable `loss(f: (2n, k)) -> scalar`.
      ts: `(T,)` times, t = lr·steps. method: a `dynamics.solve` method ("gd" at `lr`, the
        finite-step counterpart of full-batch GD training; "ode": the gradient flow).
      lr: learning rate for method="gd" (required there). kernel: "full" (output-space Θ) or
        "one_output" (`K ⊗ I_k`). x_test: held-out inputs `(m, *in_shape)` predicted too.
      chunk: kernel columns per compiled call. solve_options: extra `dynamics.solve` options.
    """
    if not isinstance(model, nnx.Module) or not callable(model):
        raise TypeError(f"model: expected a callable flax.nnx.Module, got {type(model).__name__}")
    x = stacked_inputs(views, model)
    xt = test_inputs(x_test, x, model)
    loss_c = check_loss(loss, x, model)
    V.choice("kernel", kernel, KERNELS)
    opts = solve_opts(method, lr, solve_options)
    graphdef, params, rest = split_trainable(model)
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("model: has no trainable nnx.Param variables")
    f0 = jnp.asarray(trainable_output(graphdef, params, rest, x) - offsets(graphdef, params, rest, x))
    N, k = f0.shape
    f0t = None if xt is None else jnp.asarray(trainable_output(graphdef, params, rest, xt)
                                              - offsets(graphdef, params, rest, xt))
    scales = gd_scales(model, params)   # GD with μP's per-group factors: Θ = J S Jᵀ
    Th, Ttx = _kernels(graphdef, params, rest, x, xt, V.positive_int("chunk", chunk), scales)
    K, cross = _one_output(Th, N, k)
    ts_a = jnp.asarray(ts, f0.dtype)
    if kernel == "full":
        lw = _wrap(loss_c, k)
        kw = {} if xt is None else dict(K_test_train=jnp.asarray(Ttx),
                                        f0_test=f0t.reshape(-1, 1))
        traj = dynamics.solve(jnp.asarray(Th), lw, f0.reshape(-1, 1), ts_a, method=method,
                              **kw, **opts)
        f = np.asarray(traj.f).reshape(-1, N, k)
        ft = None if xt is None else np.asarray(traj.f_test).reshape(-1, xt.shape[0], k)
    else:
        if not isinstance(loss_c, L.Loss):
            raise ValueError("loss: kernel='one_output' goes through dynamics.solve with a "
                             "registered sslntk loss; a plain callable needs kernel='full'")
        kw = {} if xt is None else dict(
            K_test_train=jnp.asarray(np.einsum("aobo->ab", Ttx.reshape(xt.shape[0], k, N, k)) / k),
            f0_test=f0t)
        traj = dynamics.solve(jnp.asarray(K), loss_c, f0, ts_a, method=method, **kw, **opts)
        f = np.asarray(traj.f)
        ft = None if xt is None else np.asarray(traj.f_test)
    return KernelPrediction(ts=np.asarray(traj.ts), f=f, loss=np.asarray(traj.loss), f_test=ft,
                            f0=np.asarray(f0), theta=Th, kernel=K, cross_output=cross,
                            which=kernel, trajectory=traj)


def kernel_alignment(A, B) -> float:
    """`⟨A, B⟩_F / (‖A‖_F ‖B‖_F)` for two same-shaped matrices (1 when proportional)."""
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    if A.shape != B.shape or A.ndim != 2:
        raise ValueError(f"A, B: expected two matrices of one shape, got {A.shape} and {B.shape}")
    return float(np.sum(A * B) / (np.linalg.norm(A) * np.linalg.norm(B)))


@dataclass(frozen=True)
class KernelMotion:
    """drift (T,): ‖Θ_t − Θ_0‖_F/‖Θ_0‖_F; alignment (T,): A(Θ_t, Θ_0); alignment_embedding (T,):
    A(K_t, f_t f_tᵀ) of the one-output kernel with the embedding Gram."""

    drift: np.ndarray
    alignment: np.ndarray
    alignment_embedding: np.ndarray


def kernel_drift(model0, models, views, *, chunk: int = 64) -> KernelMotion:
    """Kernel motion of trained `models` (a sequence, e.g. the model at several times) against
    `model0` (the init) on `views`: full output-space NTKs (see `output_space_ntk`)."""
    models = list(models)
    if not models:
        raise ValueError("models: expected at least one trained model")
    x = stacked_inputs(views, model0)
    T0, _ = output_space_ntk(model0, x, chunk=chunk)
    drift, al, ale = [], [], []
    for m in models:
        Tt, _ = output_space_ntk(m, x, chunk=chunk)
        f = np.asarray(m(x))
        N, k = f.shape
        Kt, _ = _one_output(Tt, N, k)
        drift.append(np.linalg.norm(Tt - T0) / np.linalg.norm(T0))
        al.append(kernel_alignment(Tt, T0))
        ale.append(kernel_alignment(Kt, f @ f.T))
    return KernelMotion(np.array(drift), np.array(al), np.array(ale))
