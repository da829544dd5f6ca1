"""Finite-width training of the asymmetric methods (BYOL, SimSiam, DirectPred, DINO, SwAV) with the
same method objects the kernel regime integrates (`sslntk.methods`).

`MethodRule(method, lr, aux0)` is a `finite.StepRule`: the online network is trained by the
optimiser on `Jᵀ g`, where `g = method.force(state)` is the gradient of the method's loss with
respect to the online embeddings with every auxiliary held fixed (stop-gradient); an EMA target
(BYOL) / teacher (DINO) is a target NETWORK whose parameters follow
`ξ ← m ξ + (1 − m) θ_new` after the optimiser step, `m = 1 − lr·beta(t)`; the predictor head
(`W_p (k, k)`, trained at `alpha_p × lr` by SGD, or DirectPred's), DINO's centre and SwAV's
prototypes are updated by the method's own discrete step, in the official order. In the kernel
regime (a linearised network) this is exactly the function-space method's `step` with the
network's empirical NTK, because the target network's output is then the EMA of the online outputs.

`train_method(model, views, method, lr=..., steps=...)` builds the rule from the network's own
initial embeddings `f0` (copy-initialised target network) and runs `finite.train`.

Weight decay: the function-space `eta·f` term is exact only for models linear in their parameters
with f(0) = 0; at finite width pass `optimizer_options={"weight_decay": ...}` instead (the rule
ignores `method.eta`). See docs/theory/asymmetric.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sslntk import _validate as V
from sslntk import methods as _methods
from sslntk.finite._engine import StepRule
from sslntk.finite._inputs import stacked_inputs

_TARGET_KEYS = ("target", "teacher")


class _NoKernel:
    """The kernel operator handed to `method.step` for the auxiliaries: the online step is the
    optimiser's, so the function-space update of f is discarded (zeros)."""

    def __call__(self, g):
        return jnp.zeros_like(g)

    def test(self, g):
        return None


def _target_key(aux):
    for k in _TARGET_KEYS:
        if isinstance(aux, dict) and k in aux:
            return k
    return None


@dataclasses.dataclass(frozen=True)
class MethodRule(StepRule):
    """A `finite.StepRule` running an asymmetric `sslntk.methods` method on a network.

    Attributes:
      method: a `methods.Predictive` (BYOL / SimSiam / DirectPred), `methods.DINO` or
        `methods.SwAV` (`methods.KernelPredictor` needs K⁺ and is kernel-regime only).
      lr: the training learning rate (the EMA / centre / predictor rates per unit time become
        per-step factors `1 − lr·rate`, as in the function-space `step`).
      aux0: the method's initial auxiliary state (`method.init(f0, ...).aux`); its target /
        teacher entry is replaced by a target network copied from the online one.

    State: `(optimiser state, target parameters or None, aux)`.
    """

    method: Any
    lr: float
    aux0: Any

    def __repr__(self):   # the checkpoint fingerprint: the method and its constants
        return f"MethodRule({self.method!r}, lr={self.lr!r})"

    def init(self, params, tx):
        aux = dict(self.aux0)
        key = _target_key(aux)
        target = None
        if key is not None:
            aux.pop(key)
            target = params       # copy-initialised target network
        return tx.init(params), target, aux

    def _state(self, params, target, aux, embed):
        f = embed(params)
        full = dict(aux)
        key = _target_key(self.aux0)
        if key is not None:
            full[key] = jax.lax.stop_gradient(embed(target))
        return _methods.State(f=f, aux=full)

    def update(self, params, state, embed, tx, step):
        opt, target, aux = state
        st = self._state(params, target, aux, embed)
        g = jax.lax.stop_gradient(self.method.force(st))
        _, vjp = jax.vjp(embed, params)
        (grads,) = vjp(g)                       # Jᵀ g: the online gradient with aux fixed
        u, opt = tx.update(grads, opt, params)
        params_new = optax.apply_updates(params, u)
        new = self.method.step(st, self.lr, _NoKernel()).aux
        key = _target_key(self.aux0)
        if key is not None:
            new = dict(new)
            new.pop(key)
            m = 1.0 - self.lr * self.method.ema(aux["t"])
            target = jax.tree.map(lambda a, b: m * a + (1 - m) * b, target, params_new)
        return params_new, (opt, target, new)

    def value(self, params, state, embed):
        _, target, aux = state
        return self.method.loss(self._state(params, target, aux, embed))


def train_method(model, views, method, *, lr: float, steps: int, key=None, init_options=None,
                 **train_options):
    """Train `model` with an asymmetric `method` (BYOL, SimSiam, DirectPred, DINO, SwAV) by
    `finite.train`; the method's auxiliaries start from the network's own initial embeddings
    `f0 = model(views)` (`method.init(f0, key, **init_options)`), the target network is a copy.

    Args:
      model: a `finite.network(...)` / `finite.linearize(...)`.
      views: stacked inputs `(2n, ...)` or `Views`.
      method: a `sslntk.methods` asymmetric method.
      lr, steps: as `finite.train` (t = lr·steps). key: for the method's init (SwAV prototypes).
      init_options: extra `method.init` keywords (e.g. `predictor0`).
      train_options: passed to `finite.train` (ts, optimizer, optimizer_options, progress, ...).

    Returns: the `finite.TrainResult`; `rule_state = (optimiser state, target parameters, aux)`.

    Example:
      >>> import jax
      >>> from sslntk import finite, kernels, methods
      >>> m = finite.network(kernels.mlp(1, "erf"), 64, 2, key=jax.random.key(0), in_shape=(3,))
      >>> x = jax.random.normal(jax.random.key(1), (8, 3))
      >>> r = finite.train_method(m, x, methods.SimSiam(), lr=0.1, steps=5, progress=False)
    """
    from sslntk.finite._train import train

    if not isinstance(method, _methods.Method):
        raise TypeError(f"method: expected a sslntk.methods method (BYOL, SimSiam, DirectPred, "
                        f"DINO, SwAV), got {type(method).__name__}")
    if getattr(method, "predictor", None) == "kernel":
        raise ValueError("method: the kernel-consistent predictor needs the kernel's "
                         "pseudo-inverse and runs in the kernel regime only; got "
                         f"{method.label}")
    if getattr(method, "target_init", getattr(method, "teacher_init", "copy")) != "copy":
        raise ValueError("method: finite-width training copies the target network at init "
                         "(target_init='copy'); got another initialisation")
    V.positive_float("lr", lr)
    x = stacked_inputs(views, model)
    f0 = jnp.asarray(model(x))
    state0 = method.init(f0, key, **(init_options or {}))
    rule = MethodRule(method, float(lr), state0.aux)
    return train(model, x, rule, lr=lr, steps=steps, **train_options)


class OutputSpaceKernelOp:
    """`apply_K` for a method's `step` / `vector_field` from the full output-space empirical NTK
    `Θ (N·k, N·k)` (row-major `(i, o)`, `finite.output_space_ntk`): `g (N, k) ↦ Θ vec(g)`. At
    finite width the k outputs' kernels differ and couple, so this, not the one-output `K ⊗ I`,
    is the network's own kernel-regime operator (a linearised network trained by `MethodRule`
    equals the method's steps with it to round-off)."""

    def __init__(self, theta, theta_test=None):
        self.theta = jnp.asarray(theta)
        self.theta_test = None if theta_test is None else jnp.asarray(theta_test)

    def __call__(self, g):
        N, k = g.shape
        return (self.theta @ g.reshape(-1)).reshape(N, k)

    def test(self, g):
        if self.theta_test is None:
            return None
        return (self.theta_test @ g.reshape(-1)).reshape(-1, g.shape[1])


def method_prediction(model, views, method, *, lr: float, steps: int, save_every: int = 1,
                      key=None, init_options=None):
    """Kernel-regime prediction of `train_method(model, views, method, lr, steps)` from the
    network's own output-space empirical NTK at init: `steps` discrete steps of `method.step`
    with `OutputSpaceKernelOp(Θ)` from `f0 = model(views)`, the same order and rates as the
    network's training (full-batch gradient descent, `optimizer="gd"`).

    Returns `(ts (S,), f (S, N, k))` at steps `0, save_every, 2·save_every, …, steps`
    (`ts = lr·step`).

    Example:
      >>> import jax
      >>> from sslntk import finite, kernels, methods
      >>> m = finite.network(kernels.mlp(1, "erf"), 64, 2, key=jax.random.key(0), in_shape=(3,))
      >>> x = jax.random.normal(jax.random.key(1), (8, 3))
      >>> ts, f = finite.method_prediction(m, x, methods.SimSiam(), lr=0.1, steps=10)
    """
    from sslntk.finite._kernel_prediction import output_space_ntk

    V.positive_float("lr", lr)
    steps = V.positive_int("steps", steps, minimum=0)
    save_every = V.positive_int("save_every", save_every)
    x = stacked_inputs(views, model)
    f0 = jnp.asarray(model(x))
    theta, _ = output_space_ntk(model, x)
    op = OutputSpaceKernelOp(jnp.asarray(theta, f0.dtype))
    state = method.init(f0, key, **(init_options or {}))

    def chunk(s, _):
        s = jax.lax.fori_loop(0, save_every, lambda i, st: method.step(st, lr, op), s)
        return s, s.f

    n_save = steps // save_every
    _, fs = jax.lax.scan(chunk, state, None, length=n_save)
    f = jnp.concatenate([f0[None], fs])
    ts = lr * save_every * jnp.arange(n_save + 1, dtype=f0.dtype)
    return ts, f


__all__ = ["MethodRule", "train_method", "OutputSpaceKernelOp", "method_prediction"]
