"""One adaptive loop for diffrax's explicit Runge–Kutta tableaux, without `diffrax.diffeqsolve`.

`diffeqsolve` is general (SDEs, events, dense output, many adjoints), and pays for it while JAX
traces: it checks the term against the solver, traces its step body twice to find static values,
and traces the vector field in each of those passes. Tracing is paid by the first call in every
process, even with a warm compilation cache. Measured on a 2-core CPU (Tsit5, a trivial field on a
`(1, 32, 16)` state, 4 fresh traces each): `diffeqsolve` 0.22–0.32 s to trace and 0.08–0.23 s to
lower, `run` 0.06–0.08 s and 0.05–0.06 s; the eigen solver's first call at 2n = 2048 went from a
median of 2.03 s to 1.72 s.

For the case the kernel-regime solvers use — an ODE, explicit tableau, PID step control, output at
given times — `run` is the same algorithm written out once:

* the step is the tableau's (`solver.tableau`: stages `c`, `a_lower`, `b_sol`, `b_error`, first
  same as last reused when `fsal`), with stage increments `k_i = h·f(t + c_i h, y + Σ_j a_ij k_j)`
  computed in a `lax.scan` over the stages, so the vector field is traced once per loop body;
* the error control is the controller's (`diffrax.PIDController`: its `rtol`, `atol`, `pcoeff`,
  `icoeff`, `norm`, `safety`, `factormin`, `factormax`; no `dcoeff`/`dtmin`/`dtmax`), applied to
  `y_err / (atol + rtol·max(|y₀|, |y₁|))`, with a NaN in `y_err` read as a rejected step;
* the first step, when not given, is 0.01, as `diffeqsolve` takes it;
* the saved values are the solver's own interpolant (`solver.interpolation_cls`) evaluated at
  every `ts` inside an accepted step, and the end point snaps to `t1` within 100 ULPs.

The loop is `equinox.internal.while_loop`, `kind="lax"` (forward mode; what `diffrax.ForwardMode`
runs) or `kind="checkpointed"` (reverse mode, binomial checkpointing; what
`diffrax.RecursiveCheckpointAdjoint` runs), with the saved values as in-place buffers.
`retract` projects every step's end point back onto a manifold (the constrained solver), as
diffrax's retracting solver wrapper in `_common` does. `tests/test_rk.py` checks that every
explicit integrator, with and without a retraction, takes the same steps as `diffeqsolve` and
saves the same values to round-off, and that gradients agree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import diffrax
import equinox.internal as eqxi
import jax
import jax.numpy as jnp

__all__ = ["EXPLICIT", "Run", "run", "runs"]

#: diffrax's adaptive explicit tableau solvers that `run` drives (their `step` is the generic
#: Runge–Kutta step, which `run` writes out; a subclass could override it, so types are exact).
EXPLICIT = (diffrax.Tsit5, diffrax.Dopri5, diffrax.Dopri8, diffrax.Bosh3, diffrax.Heun)


class Run(NamedTuple):
    ys: Any                # pytree like y0 with a leading (T,) axis; NaN where not reached
    reached: jax.Array     # (T,) bool: saved (the loop got past ts[i])
    finished: jax.Array    # bool: the loop reached ts[-1] within max_steps
    n_steps: jax.Array     # accepted steps
    n_rejected: jax.Array  # rejected steps


def runs(solver, adjoint) -> bool:
    """Whether `run` integrates with `solver` under `adjoint` exactly as `diffeqsolve` would:
    one of `EXPLICIT` (exact type), under `ForwardMode` or `RecursiveCheckpointAdjoint`."""
    return type(solver) in EXPLICIT and isinstance(
        adjoint, (diffrax.ForwardMode, diffrax.RecursiveCheckpointAdjoint))


def _tmap(f, *trees):
    return jax.tree_util.tree_map(f, *trees)


def _dot(coeffs, ks):
    """`Σ_i coeffs[i] · ks[i]` for every leaf of `ks` (leading stage axis)."""
    return _tmap(lambda k: jnp.tensordot(coeffs.astype(k.dtype), k, axes=1), ks)


def run(vf, y0, ts, *, solver, controller: diffrax.PIDController, dt0, max_steps: int,
        adjoint, meter=None, retract=None) -> Run:
    """Integrate `dy/dt = vf(t, y)` from `t = 0` to `ts[-1]` and save at `ts` (`(T,)`, sorted).

    Args:
      vf: `(t, y) -> dy/dt`, `y` a pytree of floating arrays.
      y0: the initial state.
      ts: `(T,)` save times, `0 ≤ ts[0] ≤ … ≤ ts[-1]`.
      solver: an instance of one of `EXPLICIT` (its tableau and interpolant are used).
      controller: a `diffrax.PIDController` (its tolerances, coefficients, norm and factors).
      dt0: the first step, or None for 0.01 (as `diffeqsolve`).
      max_steps: the bound on accepted plus rejected steps.
      adjoint: `diffrax.ForwardMode()` (a plain loop) or `diffrax.RecursiveCheckpointAdjoint()`
        (a checkpointed loop that `jax.grad` can go through; its `checkpoints` are used).
      meter: a diffrax progress meter (`init`/`step`/`close`), or None.
      retract: None, or `y -> y` mapping every step's end point back onto a manifold (projection
        method, Hairer–Lubich–Wanner, Geometric Numerical Integration, §IV.4). The error estimate
        and the interpolant stay the unprojected step's, and the first stage is evaluated afresh
        at every (projected) start point instead of reusing the last stage of the step before.
    """
    tab = solver.tableau
    dtype = jax.tree_util.tree_leaves(y0)[0].dtype
    tdt = ts.dtype
    s = len(tab.b_sol)
    # the stage matrix, zero-padded: row i holds a_ij for j < i (row 0: the first stage)
    rows = [[0.0] * s] + [list(a) + [0.0] * (s - len(a)) for a in tab.a_lower]
    A = jnp.asarray(rows, dtype)
    c = jnp.asarray([0.0] + list(tab.c), tdt)
    b_sol, b_err = jnp.asarray(tab.b_sol, dtype), jnp.asarray(tab.b_error, dtype)
    fsal = bool(tab.fsal) and retract is None     # a projected end point has no stage to reuse
    first = 1 if fsal else 0
    term = diffrax.ODETerm(lambda t, y, args: vf(t, y))
    error_order = solver.error_order(term)
    rtol, atol, norm = controller.rtol, controller.atol, controller.norm
    t0 = jnp.zeros((), tdt)
    t1 = ts[-1]
    T = ts.shape[0]

    def step(t, y, h, f0):
        """One step from (t, y) of size h; `f0 = f(t, y)` when `fsal`. Returns y1, y_err, the
        stage increments (s, …) and f(t + h, y1) (the last stage, when `fsal`)."""
        ks = _tmap(lambda x: jnp.zeros((s,) + x.shape, x.dtype), y)
        if fsal:
            ks = _tmap(lambda k, f: k.at[0].set(f * h.astype(f.dtype)), ks, f0)

        def stage(carry, i):
            ks, _ = carry
            yi = _tmap(lambda x, d: x + d, y, _dot(A[i], ks))
            fi = vf(t + c[i] * h, yi)
            ks = _tmap(lambda k, f: k.at[i].set(f * h.astype(f.dtype)), ks, fi)
            return (ks, fi), None

        (ks, f_last), _ = jax.lax.scan(stage, (ks, f0), jnp.arange(first, s))
        y1 = _tmap(lambda x, d: x + d, y, _dot(b_sol, ks))
        return y1, _dot(b_err, ks), ks, f_last

    def error(y, y1, y_err):
        def scaled(a, b, e):
            b = jnp.where(jnp.any(jnp.isnan(b)), a, b)
            return e / (atol + jnp.maximum(jnp.abs(a), jnp.abs(b)) * rtol)
        return norm(_tmap(scaled, y, y1, y_err))

    # dt0=None starts at 0.01, as diffeqsolve does (its PIDController only chooses a first step
    # from the tolerances for a bare ODETerm, and diffeqsolve hands it a wrapped one); the
    # controller grows a step by up to `factormax` = 10 per accepted step
    dt0 = jnp.asarray(0.01 if dt0 is None else dt0, tdt)
    f0 = vf(t0, y0) if fsal else y0         # not fsal: a placeholder of y's structure
    tnext = jnp.minimum(t0 + dt0, t1)
    # a step ending within 100 ULPs of t1 snaps to t1 (as diffrax; one loop, not 100 unrolled
    # `nextafter`s); the floor only feeds a comparison, so it carries no gradient
    t1_floor = jax.lax.fori_loop(0, 100, lambda _, t: jnp.nextafter(t, jnp.asarray(-jnp.inf, tdt)),
                                 jax.lax.stop_gradient(t1))

    one = jnp.ones((), dtype)
    coeff1 = (controller.icoeff + controller.pcoeff) / error_order
    coeff2 = -controller.pcoeff / error_order
    checkpointed = isinstance(adjoint, diffrax.RecursiveCheckpointAdjoint)
    kind = "checkpointed" if checkpointed else "lax"
    checkpoints = adjoint.checkpoints if checkpointed else None
    out0 = _tmap(lambda x: jnp.full((T,) + x.shape, jnp.nan, x.dtype), y0)
    meter_state = None if meter is None else meter.init()

    def cond(st):
        return st[0] < t1

    def body(st):
        tprev, tnext, y, f0, inv_prev, out, j, n_ok, n_bad, mstate = st
        h = tnext - tprev
        y1, y_err, ks, f1 = step(tprev, y, h, f0)
        y_end = y1 if retract is None else retract(y1)
        y_err = _tmap(lambda e: jnp.where(jnp.isnan(e), jnp.inf, e), y_err)
        err = error(y, y_end, y_err)
        keep = err < 1
        inv = jax.lax.stop_gradient(1 / jnp.asarray(err))
        factor = jnp.clip(controller.safety * inv**coeff1 * inv_prev**coeff2,
                          jnp.where(keep, 1, controller.factormin),
                          jnp.where(keep, controller.factormax, controller.safety))
        factor = jax.lax.stop_gradient(factor)
        inv = jnp.where((inv == 0) | jnp.isinf(inv), 1, inv)
        tp = jnp.where(keep, tnext, tprev)
        tn = tp + h * factor.astype(tdt)
        tp = jnp.minimum(tp, t1)
        tn = jnp.where(tn > t1_floor, jnp.where(keep, t1, tp + 0.5 * (t1 - tp)), tn)

        interp = solver.interpolation_cls(t0=tprev, t1=tnext, y0=y, y1=y1, k=ks)

        def save_cond(sv):
            _, i = sv
            return keep & (i < T) & (ts[jnp.minimum(i, T - 1)] <= tnext)

        def save_body(sv):
            o, i = sv
            yi = interp.evaluate(ts[i])
            return _tmap(lambda v, b: b.at[i].set(v), yi, o), i + 1

        out, j = eqxi.while_loop(save_cond, save_body, (out, j), max_steps=T,
                                 buffers=lambda sv: sv[0], kind=kind, checkpoints=T)
        sel = lambda a, b: _tmap(lambda u, v: jnp.where(keep, u, v), a, b)
        if meter is not None:
            mstate = meter.step(mstate, tp / t1)
        return (tp, tn, sel(y_end, y), sel(f1, f0) if fsal else f0,
                jnp.where(keep, inv, inv_prev), out, j, n_ok + keep, n_bad + (~keep), mstate)

    init = (t0, tnext, y0, f0, one, out0, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32), meter_state)
    final = eqxi.while_loop(cond, body, init, max_steps=max_steps, buffers=lambda st: st[5],
                            kind=kind, checkpoints=checkpoints)
    if meter is not None:
        meter.close(final[9])
    tend, _, _, _, _, ys, j, n_ok, n_bad, _ = final
    reached = jnp.arange(T) < j
    return Run(ys, reached, tend >= t1, n_ok, n_bad)
