"""Full kernel-regime ODE (the reference solver), integrated with diffrax.

    df/dt = −K ∇_f L(f),      f(0) = f0                                    (DESIGN.md "Time")
    dI/dt = ∇_f L(f),         I(0) = 0       (only with test points)
    f_test(t) = f0_test − K_test_train I(t)                              (no K⁻¹ anywhere)

Solver choice (default `solver="tsit5"`, diffrax's I-controller (pcoeff 0, icoeff 1), rtol 1e-8
in float64 / 1e-5 in float32, atol = rtol·RMS(f0)). The BT staircase spans 1/γ_1 … ln(1/α)/γ_k.
After mode j has saturated it sits in a stable equilibrium with rate 8γ_j, so an explicit method's
step is bounded by ~3.3/(8γ_1) while the run lasts ~ln(1/α)/(4γ_k): the explicit step count grows
like ln(1/α)·γ_1/γ_k — mild stiffness. An implicit method (Kvaerno5) removes that bound but needs a
dense (2nk × 2nk) Jacobian and LU per step, O((nk)³), and a long compilation.
Measured (benchmarks/bench_ode_solvers.py: float64, CPU, BT λ = 1, 2n = 48, k = 4, α = 1e-6,
rtol 1e-8, whole staircase; RHS evaluations = stages × accepted steps; shared, loaded 2-core machine):

    spectrum            solver              steps   RHS evals   Gram error vs Dopri8@1e-11
    γ_1/γ_k = 4         tsit5               350     2100        1.2e-10
                        dopri5              350     2100        1.2e-10
                        dopri8              82      984         9.0e-11
                        tsit5, PI(0.3,0.4)  389     2334        3.3e-11
                        kvaerno5            1207    8449 (+Jacobians; 273 s, 200 s cpu to compile)
    γ_1/γ_k = 60        tsit5               846     5076        2.4e-10
                        dopri5              884     5304        1.0e-10
                        dopri8              452     5424        2.0e-11
                        tsit5, PI(0.3,0.4)  873     5238        3.3e-11
                        kvaerno5            1322    9254 (+Jacobians; 254 s)  3.0e-7

Tsit5 is the default: within 7% of the fewest RHS evaluations on the stiffer spectrum, cheap to
compile (~4 s cpu), and its per-step cost O(n²k) scales to 2n in the thousands. Dopri8 needs half
the evaluations on well-separated spectra at tight tolerance (`solver="dopri8"`); Kvaerno5 is
2–4× more evaluations plus a Jacobian per step here and is kept only for strongly stiff small
problems. Non-smooth losses (VICReg's variance hinge) can enter a sliding mode at the kink, where
every adaptive solver crawls; use `method="gd"` there.

Gradients: `adjoint=diffrax.RecursiveCheckpointAdjoint()` (the default) differentiates the
discretised solve exactly (discretise-then-optimise; binomial checkpointing with log(max_steps)
checkpoints of the state, O(n log n) backward time for n steps), so `jax.grad` of any scalar
outcome w.r.t. K, f0 (hence α) and the loss constants works; it requires a finite `max_steps`.
`diffrax.DirectAdjoint()` also allows forward mode; `BacksolveAdjoint` is not exact.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sslntk import _sharding
from sslntk.dynamics import _common as C
from sslntk.dynamics._trajectory import Trajectory

DEFAULT_MAX_STEPS = 100_000


@functools.partial(jax.jit, static_argnames=("solver", "max_steps", "adjoint", "progress",
                                             "has_dt0", "layout"))
def _core(K, loss, f0, ts, K_tx, f0_test, rtol, atol, dt0, pcoeff, icoeff, *, solver, max_steps,
          adjoint, progress, has_dt0, layout=None):
    has_test = K_tx is not None

    def vf(t, y, args):
        K, loss_ = args
        if has_test:
            f, _ = y
        else:
            f = y
        g = jax.grad(loss_)(f)
        df = -C.mm(K, g, layout)   # row-sharded K: sharded product, replicated df
        return (df, g) if has_test else df

    y0 = (f0, jnp.zeros_like(f0)) if has_test else f0
    out = C.integrate(vf, y0, ts, (K, loss), solver=solver, rtol=rtol, atol=atol,
                      dt0=dt0 if has_dt0 else None, max_steps=max_steps, pcoeff=pcoeff,
                      icoeff=icoeff, adjoint=adjoint, progress=progress)
    if has_test:
        fs, Is = out.ys
        f_test = f0_test[None] - jnp.einsum("mi,tik->tmk", K_tx, Is, precision=C.HIGHEST)
    else:
        fs, f_test = out.ys, None
    return C.finish("ode", loss, ts, fs, out.status, out.n_steps, f_test=f_test,
                    reached=out.reached)


def solve_ode(K, loss, f0, ts, *, K_test_train=None, f0_test=None, progress=False,
              solver="tsit5", rtol=None, atol=None, dt0=None, max_steps=DEFAULT_MAX_STEPS,
              pcoeff=0.0, icoeff=1.0, adjoint=None) -> Trajectory:
    """Integrate the kernel gradient flow `df/dt = −K ∇_f L(f)` with diffrax (adaptive steps).

    Options:
      solver: a name in `_common.SOLVERS` ("tsit5" default, "dopri5", "dopri8", "bosh3", "heun",
        "kvaerno3/4/5") or an adaptive diffrax solver instance.
      rtol, atol: PID controller tolerances on the state (f, and I when test points are given);
        defaults rtol = 1e-8 (float64) / 1e-5 (float32), atol = rtol·RMS(f0).
      dt0: initial step (None: diffrax chooses from the tolerances).
      max_steps: solver step budget (default 100_000); running out gives status MAX_STEPS and NaN
        at the times not reached.
      pcoeff, icoeff: PID coefficients (defaults 0, 1: the classic I-controller).
      adjoint: diffrax adjoint (default `RecursiveCheckpointAdjoint()`).
    Saved at exactly `ts` (`SaveAt(ts=...)`, dense interpolation between steps). `n_steps` is the
    number of accepted steps. Inputs are assumed validated (`sslntk.dynamics.solve` does it).
    A row-sharded K (issue [H]) stays sharded: each right-hand side is one sharded product
    `K @ ∇L` (`_sharding.row_matmul`), the state `f` is replicated.
    """
    traced, static = C.diffrax_settings(
        f0, atol_scale=C.atol_scale(f0), solver=solver, rtol=rtol, atol=atol, dt0=dt0,
        max_steps=max_steps, pcoeff=pcoeff, icoeff=icoeff, adjoint=adjoint, progress=progress)
    return _core(K, loss, f0, ts, K_test_train, f0_test, **traced, **static,
                 layout=_sharding.layout_of(K))
