"""Discrete full-batch gradient descent in the kernel regime (`GD`: what a finite network does).

Any method: `state_{s+1} = method.step(state_s, lr, apply_K)`, `t = lr · s` (units of
learning-rate × steps). The default step is explicit Euler; for a gradient flow

    f_{s+1} = f_s − lr · K ∇_f L(f_s),      f_test,s+1 = f_test,s − lr · K_test_train ∇_f L(f_s)

Output times: each requested `t` is rounded to the nearest step `s = round(t / lr)`;
`Trajectory.ts` holds the times actually reached, `s · lr` (a warning is issued when some `t` is
not a multiple of `lr` within 1e-6 steps). The loop is a `lax.scan` of static length (reverse-mode
differentiable): `max(s)` steps when `ts` and `lr` are concrete, else `max_steps` (then required),
with updates after the last requested step skipped.

Status (the rules of `sslntk._status`, shared with finite-width training): NONFINITE as soon as the
state or the loss has a NaN/inf, DIVERGED as soon as `|loss| > DIVERGE_FACTOR · max(1, |loss(0)|)`
(finite but exploding); `n_steps` is then the step that produced it (the iteration goes on, so later
saved values are what it produced); MAX_STEPS when the budget ends before `ts[-1]` (NaN at the
times not reached); else SUCCESS.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _status
from sslntk import _validate as V
from sslntk import methods as _methods
from sslntk._progress import Progress
from sslntk.dynamics import _common as C
from sslntk.dynamics._solver import Solver
from sslntk.dynamics._trajectory import DIVERGED, MAX_STEPS, NONFINITE, SUCCESS, Trajectory

__all__ = ["GD"]

_BARS: list = []   # the open `Progress` of the running solve_gd call (host side)


def _report(step, total):
    if _BARS:
        _BARS[-1].set(int(step))


@functools.partial(jax.jit, static_argnames=("n_total", "progress"))
def _core(K, method, state0, lr, steps, K_tx, *, n_total, progress):
    T = steps.shape[0]
    s_last = steps[-1]
    every = max(1, n_total // 100)
    op = _methods.KernelOp(K, K_tx)
    L0 = method.loss(state0)
    limit = _status.DIVERGE_FACTOR * jnp.maximum(1.0, jnp.abs(L0))

    def save(carry, st):
        state, out, ptr = carry[:3]
        hit = (ptr < T) & (steps[jnp.minimum(ptr, T - 1)] == st)
        i = jnp.minimum(ptr, T - 1)
        out = jax.tree_util.tree_map(lambda o, x: o.at[i].set(jnp.where(hit, x, o[i])), out, state)
        ptr = jnp.where(hit, jnp.searchsorted(steps, st, side="right"), ptr)
        return (state, out, ptr) + carry[3:]

    def body(carry, st):
        carry = save(carry, st)
        state, out, ptr, bad_at, code = carry
        if progress:
            jax.lax.cond(st % every == 0, lambda: jax.debug.callback(_report, st, s_last),
                         lambda: None)
        state = jax.lax.cond(st < s_last, lambda s: method.step(s, lr, op), lambda s: s, state)
        L = method.loss(state)
        finite = C.all_finite(state) & jnp.isfinite(L)
        new = (bad_at < 0) & (st < s_last) & (~finite | (jnp.abs(L) > limit))
        bad_at = jnp.where(new, st + 1, bad_at)
        code = jnp.where(new, jnp.where(finite, DIVERGED, NONFINITE), code)
        return (state, out, ptr, bad_at, code), None

    out = jax.tree_util.tree_map(lambda x: jnp.full((T,) + x.shape, jnp.nan, x.dtype), state0)
    carry = (state0, out, jnp.zeros((), steps.dtype), jnp.full((), -1, steps.dtype),
             jnp.asarray(SUCCESS, jnp.int32))
    carry, _ = jax.lax.scan(body, carry, jnp.arange(n_total, dtype=steps.dtype))
    carry = save(carry, jnp.asarray(n_total, steps.dtype))
    _, out, _, bad_at, code = carry
    first = jnp.searchsorted(steps, steps, side="left")   # duplicates share one saved slot
    states = jax.tree_util.tree_map(lambda o: o[first], out)
    reached = steps <= n_total
    done = jnp.minimum(s_last, n_total)
    status = jnp.where(bad_at >= 0, code, jnp.where(s_last > n_total, MAX_STEPS, SUCCESS))
    n_steps = jnp.where(bad_at >= 0, bad_at, done)
    return C.finish("gd", method, steps.astype(state0.f.dtype) * lr, states, status, n_steps,
                    reached=reached)


@dataclasses.dataclass(frozen=True)
class GD(Solver):
    """Full-batch kernel-regime gradient descent with learning rate `lr` (module docstring).

    Options:
      lr: learning rate (required; no stable default exists for every loss — Barlow Twins λ = 1
        near its minimum is stable for lr < 1/(4γ_1) and agrees with the flow to ~2·lr·γ_1
        relative in step times, γ_1 the top eigenvalue of M = K^{1/2} Z K^{1/2}/2n; Simon et al.
        2023, `docs/theory/stepwise.md`).
      max_steps: step budget. Optional when `ts` and `lr` are concrete (then the loop runs exactly
        `round(ts[-1]/lr)` steps; if given and smaller, the run stops there with status MAX_STEPS);
        required when either is traced (the scan length must be static).

        >>> import jax.numpy as jnp
        >>> from sslntk import losses
        >>> f0 = 0.1 * jnp.arange(8.0).reshape(4, 2) - 0.3
        >>> GD(lr=0.1).solve(jnp.eye(4), losses.get("barlow_twins"), f0, jnp.array([0.0, 1.0])).f.shape
        (2, 4, 2)
    """

    lr: object = None
    max_steps: int | None = None
    name = "gd"

    def __post_init__(self):
        if self.lr is None:
            raise ValueError("lr: solver 'gd' needs a learning rate, e.g. solve(..., 'gd', "
                             "lr=1e-3); t = lr·steps (stable for BT λ=1 when lr < 1/(4γ_1), "
                             "γ_1 = top eigenvalue of K^{1/2} Z K^{1/2}/2n)")
        V.positive_float("lr", self.lr)
        if self.max_steps is not None:
            V.positive_int("max_steps", self.max_steps, minimum=0)

    def solve(self, K, method, state0, ts, *, K_test_train=None, progress=False) -> Trajectory:
        state0 = _methods.as_state(state0)
        lr, max_steps = self.lr, self.max_steps
        dtype = state0.f.dtype
        lr_arr = jnp.asarray(lr, dtype)
        if V.is_concrete(ts) and V.is_concrete(lr_arr):
            x = np.asarray(ts, np.float64) / float(lr)
            steps_np = np.rint(x).astype(np.int64)
            off = float(np.max(np.abs(x - steps_np)))
            # ts / lr carries the round-off of the times' dtype: ~eps·(t/lr) steps in float32
            if off > max(1e-6, 16 * float(jnp.finfo(dtype).eps) * float(np.max(np.abs(x)))):
                warnings.warn(f"solver 'gd': ts are not multiples of lr={float(lr):g} (up to "
                              f"{off:.3g} steps off); rounded to the nearest step, Trajectory.ts "
                              f"holds the times reached", stacklevel=3)
            s_max = int(steps_np[-1])
            n_total = s_max if max_steps is None else min(s_max, max_steps)
            steps = jnp.asarray(steps_np, jnp.int32 if s_max < 2**31 - 1 else jnp.int64)
        else:
            if max_steps is None:
                raise ValueError("max_steps: solver 'gd' with traced ts or lr (inside "
                                 "jit/vmap/grad) needs a static max_steps=<int> (the scan "
                                 "length); or close over concrete ts and lr")
            n_total = max_steps
            steps = jnp.rint(jnp.asarray(ts) / lr_arr).astype(jnp.int32)
        if not progress:
            return _core(K, method, state0, lr_arr, steps, K_test_train, n_total=n_total,
                         progress=False)
        with Progress(n_total, "gd solve", unit="step") as bar:
            _BARS.append(bar)
            try:
                traj = jax.block_until_ready(_core(K, method, state0, lr_arr, steps, K_test_train,
                                                   n_total=n_total, progress=True))
                bar.set(n_total)
            finally:
                _BARS.remove(bar)
        return traj
