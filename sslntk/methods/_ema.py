"""EMA rates in function-space time, and the target initialisations of the asymmetric methods.

A per-step EMA `ξ ← m ξ + (1 − m) θ` at learning rate `lr` is the rate `beta = (1 − m)/lr` per
unit time `t = lr × steps` (first order in lr; docs/theory/asymmetric.md). BYOL raises `m` to 1
on a cosine (byol/utils/schedules.py `target_ema`), DINO the same way (utils.py
`cosine_scheduler(momentum_teacher, 1, ...)`): `beta(t) = beta_0 (1 + cos(π t/T))/2`.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp

from sslntk import _validate as V

TARGET_INITS = ("copy", "zero", "independent")


class EMARate(eqx.Module):
    """EMA rate `beta(t)` per unit time: constant `beta_0`, or BYOL's cosine schedule
    `beta_0 (1 + cos(π min(t, T)/T))/2` when `t_end = T` is given (the decay `m` rises to 1).

    Args:
      beta0: rate at t = 0 (`(1 − m_base)/lr`), >= 0. t_end: schedule length T, or None.

    Example:
      >>> r = EMARate.from_momentum(0.996, lr=0.01)   # beta = 0.4 per unit t
      >>> float(r(3.0))
      0.4
    """

    beta0: Any
    t_end: Any = None

    def __init__(self, beta0, t_end=None):
        V.positive_float("beta0", beta0, allow_zero=True)
        if t_end is not None:
            V.positive_float("t_end", t_end)
        self.beta0 = beta0
        self.t_end = t_end

    @classmethod
    def from_momentum(cls, momentum, *, lr, t_end=None) -> EMARate:
        """The rate of a per-step decay `momentum` at learning rate `lr`: `(1 − momentum)/lr`."""
        V.nonnegative_scalar("momentum", momentum, upper=1.0)
        V.positive_float("lr", lr)
        return cls((1.0 - momentum) / lr, t_end)

    def __call__(self, t):
        if self.t_end is None:
            return jnp.asarray(self.beta0)
        tt = jnp.minimum(t, self.t_end)
        return self.beta0 * 0.5 * (1.0 + jnp.cos(jnp.pi * tt / self.t_end))


def as_rate(name: str, v) -> EMARate:
    """An `EMARate`, or a number taken as a constant rate."""
    if isinstance(v, EMARate):
        return v
    if isinstance(v, bool) or v is None:
        raise TypeError(f"{name}: expected an EMARate or a non-negative number, got {v!r}")
    return EMARate(v)


def init_target(name: str, how: str, f0, target0):
    """The target's initial value: a copy of `f0`, zeros (Tian et al.), or an independent draw the
    caller supplies as `target0` (an independently initialised network's outputs, e.g.
    `sslntk.kernels` initial-function sampler with another key: the method never sees K)."""
    if target0 is not None:
        t0 = V.as_float_array("target0", target0, ndim=2)
        if t0.shape != f0.shape:
            raise ValueError(f"target0: expected shape {tuple(f0.shape)} (as f0), got "
                             f"{tuple(t0.shape)}")
        return t0
    if how == "copy":
        return f0
    if how == "zero":
        return jnp.zeros_like(f0)
    raise ValueError(f"target0: {name} was built with target_init='independent', which needs the "
                     f"independent network's initial outputs: call init(f0, target0=...) "
                     f"(same shape as f0), got none")


def with_test_points(state, f_new, aux_new, ft_new, ema, lr, t):
    """The stepped `State`: online `f_new (2n, k)` and aux on the views; at test points (when the
    state carries them) the online `ft_new (m, k)` and, with an EMA rate, the target following it
    by one EMA step `m·target + (1 − m)·ft_new`, `m = 1 − lr·ema(t)` (the official order: online
    step first, then the EMA update)."""
    from sslntk.methods._base import State

    if state.f_test is None:
        return State(f=f_new, aux=aux_new)
    at = None
    if ema is not None:
        m = 1.0 - lr * ema(t)
        at = m * state.aux_test + (1 - m) * ft_new
    return State(f=f_new, aux=aux_new, f_test=ft_new, aux_test=at)
