"""SwAV in the kernel regime: projections move through K against Sinkhorn codes of the other view;
prototypes move on the unit sphere by their own gradient, frozen at first (Caron et al. 2020;
main_swav.py).

State: projections `f (2n, d)`; aux: prototypes `C (P, d)` (unit rows), time `t`. With
`ẑ = f/‖f‖`, `S = ẑ Cᵀ`, codes `q_v = SK(S_v)` per view (stop-gradient):

    L = −(1/N) Σ_r ⟨q_{Zr}, log softmax(S_r/temperature)⟩      (methods.swav_loss)
    df/dt = −K ∇_f L − eta f
    dC/dt = −prototype_rate (I − c cᵀ) ∇_c L  row-wise, 0 for t < freeze_time

Discrete step (main_swav.py order): prototypes normalised; codes and loss; online step; the
prototype gradient dropped during the first `freeze_iters` iterations (313 official:
`freeze_time = 313·lr`); prototypes renormalised.

For a collapsed ẑ, Sinkhorn returns uniform codes exactly and `L >= ln P`: collapse is never a
low-loss state (docs/theory/asymmetric.md).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from sslntk import _validate as V
from sslntk.methods._asym_losses import normalize_rows, sinkhorn_log, swav_objective
from sslntk.methods._base import Method, State


class SwAV(eqx.Module, Method):
    """SwAV in function space (module docstring for the equations).

    Args:
      n_prototypes: P (official 3000; small here). temperature: 0.1. epsilon, n_iters: Sinkhorn's
        (0.05, 3). prototype_rate: prototypes' learning-rate ratio. freeze_time: prototypes frozen
        for t < freeze_time (units of t). eta: weight decay of f per unit time.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sslntk import methods
      >>> m = methods.SwAV(n_prototypes=5)
      >>> s = m.init(jax.random.normal(jax.random.key(0), (8, 4)), jax.random.key(1))
      >>> d = m.vector_field(0.0, s, methods.KernelOp(jnp.eye(8)))
    """

    temperature: Any
    epsilon: Any
    prototype_rate: Any
    freeze_time: Any
    eta: Any
    n_prototypes: int = eqx.field(static=True)
    n_iters: int = eqx.field(static=True)

    def __init__(self, *, n_prototypes=10, temperature=0.1, epsilon=0.05, n_iters=3,
                 prototype_rate=1.0, freeze_time=0.0, eta=0.0):
        self.n_prototypes = V.positive_int("n_prototypes", n_prototypes)
        self.temperature = V.positive_float("temperature", temperature)
        self.epsilon = V.positive_float("epsilon", epsilon)
        self.n_iters = V.positive_int("n_iters", n_iters, minimum=0)
        self.prototype_rate = V.positive_float("prototype_rate", prototype_rate, allow_zero=True)
        self.freeze_time = V.positive_float("freeze_time", freeze_time, allow_zero=True)
        self.eta = V.positive_float("eta", eta, allow_zero=True)

    @property
    def label(self) -> str:
        return "swav"

    @property
    def jump_times(self) -> tuple:
        """Times where the vector field jumps (the prototypes unfreeze): an adaptive ODE solver
        should end a step there (diffrax `PIDController(jump_ts=...)`)."""
        return (float(self.freeze_time),) if float(self.freeze_time) > 0 else ()

    def init(self, f0, key=None, *, f0_test=None, prototypes0=None):
        """`State` at t = 0 with unit-row prototypes: `prototypes0 (P, d)` or, from `key`, rows
        drawn from a standard Gaussian and normalised."""
        f0 = V.stacked_views("f0", f0)
        d = f0.shape[1]
        if prototypes0 is None:
            if key is None:
                raise ValueError("key: SwAV draws its initial prototypes from a jax.random key; "
                                 "pass key or prototypes0, got neither")
            V.check_key("key", key)
            C = jax.random.normal(key, (self.n_prototypes, d), f0.dtype)
        else:
            C = V.as_float_array("prototypes0", prototypes0, ndim=2)
            if C.shape != (self.n_prototypes, d):
                raise ValueError(f"prototypes0: expected shape {(self.n_prototypes, d)}, got "
                                 f"{tuple(C.shape)}")
        aux = {"t": jnp.zeros((), f0.dtype), "prototypes": normalize_rows(C)}
        return State(f=f0, aux=aux, f_test=None if f0_test is None else
                     V.as_float_array("f0_test", f0_test, ndim=2))

    def _loss(self, f, C):
        return swav_objective(f, C, self.temperature, self.epsilon, self.n_iters)

    def force(self, state: State) -> jax.Array:
        C = jax.lax.stop_gradient(state.aux["prototypes"])
        return jax.grad(self._loss)(state.f, C)

    def _prototype_rate(self, t, state: State):
        C = state.aux["prototypes"]
        gC = jax.grad(self._loss, argnums=1)(state.f, C)
        tangent = gC - jnp.sum(gC * C, axis=-1, keepdims=True) * C   # (I − c cᵀ) ∇_c, row-wise
        return jnp.where(t >= self.freeze_time, -self.prototype_rate * tangent, 0.0)

    def vector_field(self, t, state: State, apply_K) -> State:
        g = self.force(state)
        df = -apply_K(g) - self.eta * state.f
        aux = {"t": jnp.ones_like(state.aux["t"]), "prototypes": self._prototype_rate(t, state)}
        if state.f_test is None:
            return State(f=df, aux=aux)
        return State(f=df, aux=aux, f_test=-apply_K.test(g) - self.eta * state.f_test)

    def step(self, state: State, lr, apply_K) -> State:
        t = state.aux["t"]
        g = self.force(state)
        C = state.aux["prototypes"]
        gC = jax.grad(self._loss, argnums=1)(state.f, C)
        C_new = normalize_rows(C - jnp.where(t >= self.freeze_time, lr * self.prototype_rate * gC,
                                              0.0))
        f_new = (1.0 - lr * self.eta) * state.f - lr * apply_K(g)
        aux = {"t": t + lr, "prototypes": C_new}
        if state.f_test is None:
            return State(f=f_new, aux=aux)
        return State(f=f_new, aux=aux,
                     f_test=(1.0 - lr * self.eta) * state.f_test - lr * apply_K.test(g))

    def loss(self, state: State) -> jax.Array:
        return self._loss(state.f, state.aux["prototypes"])

    def codes(self, state: State) -> jax.Array:
        """Sinkhorn codes `q (2n, P)` of each view (computed per view over its own batch)."""
        n = state.f.shape[0] // 2
        S = normalize_rows(state.f) @ state.aux["prototypes"].T
        return jnp.concatenate([sinkhorn_log(S[:n], self.epsilon, self.n_iters),
                                sinkhorn_log(S[n:], self.epsilon, self.n_iters)])
