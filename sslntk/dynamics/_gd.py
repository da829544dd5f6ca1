"""Discrete full-batch gradient descent in the kernel regime (what a finite network does).

    f_{s+1} = f_s − lr · K ∇_f L(f_s),      t = lr · s                     (DESIGN.md "Time")
    I_{s+1} = I_s + lr · ∇_f L(f_s)  (test points only),   f_test,s = f0_test − K_test_train I_s

Output times: each requested `t` is rounded to the nearest step `s = round(t / lr)`;
`Trajectory.ts` holds the times actually reached, `s · lr` (a warning is issued when some `t` is
not a multiple of `lr` within 1e-6 steps). The loop is a `lax.scan` of static length (reverse-mode
differentiable): `max(s)` steps when `ts` and `lr` are concrete, else `max_steps` (then required),
with updates after the last requested step skipped.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk._progress import Progress
from sslntk.dynamics import _common as C
from sslntk.dynamics._trajectory import MAX_STEPS, NONFINITE, SUCCESS, Trajectory

_BARS: list = []   # the open `Progress` of the running solve_gd call (host side)


def _report(step, total):
    if _BARS:
        _BARS[-1].set(int(step))


@functools.partial(jax.jit, static_argnames=("n_total", "progress"))
def _core(K, loss, f0, lr, steps, K_tx, f0_test, *, n_total, progress):
    has_test = K_tx is not None
    T = steps.shape[0]
    s_last = steps[-1]
    grad = jax.grad(loss)
    every = max(1, n_total // 100)

    def save(carry, st):
        f, I, out_f, out_I, ptr = carry[:5]
        hit = (ptr < T) & (steps[jnp.minimum(ptr, T - 1)] == st)
        i = jnp.minimum(ptr, T - 1)
        out_f = out_f.at[i].set(jnp.where(hit, f, out_f[i]))
        if has_test:
            out_I = out_I.at[i].set(jnp.where(hit, I, out_I[i]))
        ptr = jnp.where(hit, jnp.searchsorted(steps, st, side="right"), ptr)
        return (f, I, out_f, out_I, ptr) + carry[5:]

    def update(f, I):
        g = grad(f)
        f = f - lr * C.mm(K, g)
        return f, (I + lr * g if has_test else I)

    def body(carry, st):
        carry = save(carry, st)
        f, I, out_f, out_I, ptr, bad_at = carry
        if progress:
            jax.lax.cond(st % every == 0, lambda: jax.debug.callback(_report, st, s_last),
                         lambda: None)
        f, I = jax.lax.cond(st < s_last, update, lambda f, I: (f, I), f, I)
        ok = jnp.all(jnp.isfinite(f))
        bad_at = jnp.where((bad_at < 0) & ~ok & (st < s_last), st + 1, bad_at)
        return (f, I, out_f, out_I, ptr, bad_at), None

    I0 = jnp.zeros_like(f0) if has_test else jnp.zeros((), f0.dtype)
    out_f = jnp.full((T,) + f0.shape, jnp.nan, f0.dtype)
    out_I = jnp.full((T,) + f0.shape, jnp.nan, f0.dtype) if has_test else I0
    carry = (f0, I0, out_f, out_I, jnp.zeros((), steps.dtype), jnp.full((), -1, steps.dtype))
    carry, _ = jax.lax.scan(body, carry, jnp.arange(n_total, dtype=steps.dtype))
    carry = save(carry, jnp.asarray(n_total, steps.dtype))
    f, I, out_f, out_I, ptr, bad_at = carry
    first = jnp.searchsorted(steps, steps, side="left")   # duplicates share one saved slot
    fs = out_f[first]
    reached = steps <= n_total
    f_test = None
    if has_test:
        f_test = f0_test[None] - jnp.einsum("mi,tik->tmk", K_tx, out_I[first],
                                            precision=C.HIGHEST)
    done = jnp.minimum(s_last, n_total)
    status = jnp.where(bad_at >= 0, NONFINITE, jnp.where(s_last > n_total, MAX_STEPS, SUCCESS))
    n_steps = jnp.where(bad_at >= 0, bad_at, done)
    return C.finish("gd", loss, steps.astype(f0.dtype) * lr, fs, status, n_steps, f_test=f_test,
                    reached=reached)


def solve_gd(K, loss, f0, ts, *, K_test_train=None, f0_test=None, progress=False, lr=None,
             max_steps=None) -> Trajectory:
    """Full-batch kernel-regime gradient descent with learning rate `lr` (see module docstring).

    Options:
      lr: learning rate (required; no stable default exists for every loss — BT λ = 1 near its
        minimum is stable for lr < 1/(4γ_1) and agrees with the flow to ~2·lr·γ_1 relative in step
        times, γ_1 the top eigenvalue of M = K^{1/2} Z K^{1/2}/2n, stepwise digest check 3).
      max_steps: step budget. Optional when `ts` and `lr` are concrete (then the loop runs exactly
        `round(ts[-1]/lr)` steps; if given and smaller, the run stops there with status MAX_STEPS);
        required when either is traced (the scan length must be static).
    Status: NONFINITE as soon as f has a NaN/inf (n_steps = the step that produced it; later saved
    values are the iteration's own NaN/inf), MAX_STEPS when the budget ends before `ts[-1]` (NaN at
    the times not reached), else SUCCESS.
    """
    if lr is None:
        raise ValueError("lr: method 'gd' needs a learning rate, e.g. solve(..., method='gd', "
                         "lr=1e-3); t = lr·steps (stable for BT λ=1 when lr < 1/(4γ_1), "
                         "γ_1 = top eigenvalue of K^{1/2} Z K^{1/2}/2n)")
    V.positive_float("lr", lr)
    if max_steps is not None:
        max_steps = V.positive_int("max_steps", max_steps, minimum=0)
    dtype = f0.dtype
    lr_arr = jnp.asarray(lr, dtype)
    if V.is_concrete(ts) and V.is_concrete(lr_arr):
        x = np.asarray(ts, np.float64) / float(lr)
        steps_np = np.rint(x).astype(np.int64)
        off = float(np.max(np.abs(x - steps_np)))
        if off > 1e-6:
            warnings.warn(f"method 'gd': ts are not multiples of lr={float(lr):g} (up to "
                          f"{off:.3g} steps off); rounded to the nearest step, Trajectory.ts holds "
                          f"the times reached", stacklevel=3)
        s_max = int(steps_np[-1])
        n_total = s_max if max_steps is None else min(s_max, max_steps)
        steps = jnp.asarray(steps_np, jnp.int32 if s_max < 2**31 - 1 else jnp.int64)
    else:
        if max_steps is None:
            raise ValueError("max_steps: method 'gd' with traced ts or lr (inside jit/vmap/grad) "
                             "needs a static max_steps=<int> (the scan length); or close over "
                             "concrete ts and lr")
        n_total = max_steps
        steps = jnp.rint(jnp.asarray(ts) / lr_arr).astype(jnp.int32)
    if not progress:
        return _core(K, loss, f0, lr_arr, steps, K_test_train, f0_test, n_total=n_total,
                     progress=False)
    with Progress(n_total, "gd solve", unit="step") as bar:
        _BARS.append(bar)
        try:
            traj = jax.block_until_ready(_core(K, loss, f0, lr_arr, steps, K_test_train, f0_test,
                                               n_total=n_total, progress=True))
            bar.set(n_total)
        finally:
            _BARS.remove(bar)
    return traj
