"""Full kernel-regime ODE (the reference solver, `Ode`), integrated with diffrax.

Any method (`sslntk.methods.Method`): its whole state is integrated,

    d state/dt = method.vector_field(t, state, apply_K),      state(0) = method.init(f0)

with `apply_K(g) = K g` and `apply_K.test(g) = K_test_train g`; for a gradient flow this is
`df/dt = −K ∇_f L(f)` and `df_test/dt = −K_test_train ∇_f L(f)` (no K⁻¹ anywhere). Time is in
units of learning-rate × steps.

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

Tsit5 is the default `integrator`: within 7% of the fewest RHS evaluations on the stiffer spectrum, cheap to
compile (~4 s cpu), and its per-step cost O(n²k) scales to 2n in the thousands. Dopri8 needs half
the evaluations on well-separated spectra at tight tolerance (`solver="dopri8"`); Kvaerno5 is
2–4× more evaluations plus a Jacobian per step here and is kept only for strongly stiff small
problems. Non-smooth losses (VICReg's variance hinge) can enter a sliding mode at the kink, where
every adaptive solver crawls; use the `GD` solver there.

Gradients: `adjoint=diffrax.RecursiveCheckpointAdjoint()` (the default whenever the inputs are
traced, e.g. under `jax.grad`; a call on concrete arrays, which nothing can differentiate
afterwards, runs `diffrax.ForwardMode()`: `_common.default_adjoint`) differentiates the
discretised solve exactly (discretise-then-optimise; binomial checkpointing with log(max_steps)
checkpoints of the state, O(n log n) backward time for n steps), so `jax.grad` of any scalar
outcome w.r.t. K, f0 (hence α) and the loss constants works; it requires a finite `max_steps`.
`diffrax.DirectAdjoint()` also allows forward mode; `BacksolveAdjoint` is not exact.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from sslntk import _sharding
from sslntk import methods as _methods
from sslntk.dynamics import _common as C
from sslntk.dynamics._solver import DEFAULT_MAX_STEPS, DiffraxOptions, Solver
from sslntk.dynamics._trajectory import Trajectory

__all__ = ["Ode", "solve_ode", "DEFAULT_MAX_STEPS"]


@functools.partial(jax.jit, static_argnames=("solver", "max_steps", "adjoint", "progress",
                                             "has_dt0", "layout"))
def _core(K, method, state0, ts, K_tx, rtol, atol, dt0, pcoeff, icoeff, *, solver, max_steps,
          adjoint, progress, has_dt0, layout=None):
    op = _methods.KernelOp(K, K_tx, layout)   # row-sharded K: sharded products, replicated result

    def vf(t, y, args):
        meth, op_ = args
        return meth.vector_field(t, y, op_)

    out = C.integrate(vf, state0, ts, (method, op), solver=solver, rtol=rtol, atol=atol,
                      dt0=dt0 if has_dt0 else None, max_steps=max_steps, pcoeff=pcoeff,
                      icoeff=icoeff, adjoint=adjoint, progress=progress)
    return C.finish("ode", method, ts, out.ys, out.status, out.n_steps, reached=out.reached)


@dataclasses.dataclass(frozen=True)
class Ode(DiffraxOptions, Solver):
    """Integrate any method's vector field with diffrax (adaptive steps): the reference solver.

    Options (`DiffraxOptions`): `integrator` ("tsit5"), `rtol`, `atol` (default
    `rtol·RMS(f0)`), `dt0`, `max_steps` (100_000), `pcoeff`, `icoeff`, `adjoint`.
    Saved at exactly `ts` (`SaveAt(ts=...)`, dense interpolation between steps); `n_steps` is the
    number of accepted steps. A row-sharded K stays sharded: each right-hand side applies K with
    one sharded product (`sslntk._sharding.row_matmul`), the state is replicated.

        >>> import jax.numpy as jnp
        >>> from sslntk import dynamics, losses
        >>> K = jnp.eye(4); f0 = 0.1 * jnp.arange(8.0).reshape(4, 2) - 0.3
        >>> tr = Ode(rtol=1e-6).solve(K, losses.get("barlow_twins"), f0, jnp.array([0.0, 1.0]))
        >>> tr.f.shape
        (2, 4, 2)
    """

    name = "ode"
    sharded = True

    def solve(self, K, method, state0, ts, *, K_test_train=None, progress=False) -> Trajectory:
        state0 = _methods.as_state(state0)
        traced, static = C.diffrax_settings(
            state0.f, atol_scale=C.atol_scale(state0.f), progress=progress,
            arrays=(K, method, state0, ts, K_test_train), **self.diffrax_kwargs())
        return _core(K, method, state0, ts, K_test_train, **traced, **static,
                     layout=_sharding.layout_of(K))


def solve_ode(K, loss, f0, ts, *, K_test_train=None, f0_test=None, progress=False,
              **options) -> Trajectory:
    """Validate the inputs (no PSD check) and run `Ode(**options)` (`solver=` is accepted for
    `integrator=`)."""
    if "solver" in options:
        options["integrator"] = options.pop("solver")
    inp = C.validate_inputs(K, loss, f0, ts, K_test_train, f0_test, check_psd_=False)
    return Ode.from_options(**options).solve(inp.K, inp.method, inp.state0, inp.ts,
                                             K_test_train=inp.K_test_train, progress=progress)
