"""Shared pieces of the kernel-regime solvers: input validation at the public entry (`solve`,
`solve_many`), the diffrax driver (status mapping, non-finite detection, optional retraction), the
loss along a trajectory and the assembly of a `Trajectory`.

Solver contract (every `Solver` subclass of this package):

    solver.solve(K, method, state0, ts, *, K_test_train=None, progress=False) -> Trajectory

`sslntk.dynamics.solve` validates with `validate_inputs` once before dispatching, so solvers
receive `K (2n, 2n)`, a `sslntk.methods.Method`, its initial `State` (`f (2n, k)`, and `f_test
(m, k)` when `K_test_train (m, 2n)` is given), `ts (T,)` (sorted, ≥ 0, K's dtype), all of one
floating dtype; they trust them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _sharding
from sslntk import _validate as V
from sslntk import methods as _methods
from sslntk.dynamics import _rk
from sslntk.dynamics._solver import INTEGRATORS, check_integrator
from sslntk.dynamics._trajectory import FAILED, MAX_STEPS, NONFINITE, SUCCESS, Trajectory

HIGHEST = jax.lax.Precision.HIGHEST


def mm(a, b, layout=None):
    """Matrix product at full float32 precision on accelerators (no TF32/bf16 passes); with a
    `_sharding.RowLayout` (row-sharded `a`) a sharded product whose result is
    replicated (`_sharding.row_matmul`)."""
    if layout is not None:
        return _sharding.row_matmul(a, b, layout, precision=HIGHEST)
    return jnp.matmul(a, b, precision=HIGHEST)


# Methods that accept a row-sharded K (their K-products are sharded; the others need dense K work).
SHARDED_METHODS = ("eigen", "ode")


# ----------------------------------------------------------------------------------------------
# Validation


class Inputs(NamedTuple):
    K: jax.Array
    method: Any               # a sslntk.methods.Method
    state0: Any               # its initial sslntk.methods.State
    ts: jax.Array
    K_test_train: jax.Array | None


def check_psd(K: jax.Array, name: str = "K") -> float | None:
    """The PSD rule of every sslntk entry point (`sslntk._validate.psd_kernel`: a few block
    Lanczos steps, O(N²), no dense decomposition); returns the estimate of λ_min (None when
    traced)."""
    return V.psd_kernel(name, K)


def validate_inputs(K, loss, f0, ts, K_test_train=None, f0_test=None, *,
                    check_psd_: bool = True) -> Inputs:
    """Check and convert the common solver inputs once (see module docstring); clear errors
    otherwise. `loss`: any method (`sslntk.methods.as_method`); `f0`: `(2n, k)` or an initial
    `State` built by the method (its `f_test` is then the test start)."""
    method = _methods.as_method(loss)
    K = square(K)
    state0 = f0 if isinstance(f0, _methods.State) else None
    if state0 is not None:
        if f0_test is not None:
            raise ValueError("f0_test: expected None when f0 is a State (its f_test is the start "
                             "at the test points)")
        f0, f0_test = state0.f, state0.f_test
    layout = _sharding.layout_of(K)
    if layout is not None:
        for nm, x in (("f0", f0), ("K_test_train", K_test_train), ("f0_test", f0_test)):
            _sharding.check_same_mesh(nm, x, layout)
    f0 = V.stacked_views("f0", f0, ndim=2)
    if f0.shape[0] != K.shape[0]:
        raise ValueError(f"f0: expected shape (2n, k) = ({K.shape[0]}, k) to match K "
                         f"{tuple(K.shape)}, got {tuple(f0.shape)}")
    if f0.shape[1] < 1:
        raise ValueError(f"f0: expected k >= 1 embedding dimensions, shape (2n, k), got "
                         f"{tuple(f0.shape)} (k = 0: nothing to learn)")
    K_test_train, f0_test = V.check_test_pair(K_test_train, f0_test, K.shape[0], f0.shape[1])
    V.same_dtype(K=K, f0=f0, K_test_train=K_test_train, f0_test=f0_test)
    ts = times(ts, K.dtype)
    if check_psd_:
        check_psd(K)
    if layout is not None:   # the small arrays live replicated on K's mesh
        f0, ts, K_test_train, f0_test = (_sharding.place(x, layout)
                                         for x in (f0, ts, K_test_train, f0_test))
    if state0 is None:
        state0 = method.init(f0, f0_test=f0_test)
    else:
        state0 = dataclasses.replace(state0, f=f0, f_test=f0_test)
    return Inputs(K, method, state0, ts, K_test_train)


def square(K) -> jax.Array:
    """`K` as a checked square symmetric kernel (`_validate.square_kernel`)."""
    return V.square_kernel("K", K)


@functools.partial(jax.jit, static_argnames=("layout",))
def _diag(K, *, layout):
    return _sharding.row_diagonal(K, layout)


def times(ts, dtype) -> jax.Array:
    """`ts` as a checked non-empty, finite, non-decreasing `(T,)` array of times ≥ 0 in `dtype`."""
    if ts is None or isinstance(ts, (str, bytes)):
        raise TypeError(f"ts: expected a 1-D array of times, got {ts!r}")
    arr = jnp.asarray(ts)
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)) \
            or arr.dtype == jnp.bool_:
        raise TypeError(f"ts: expected real times, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"ts: expected a non-empty 1-D array of times, got shape "
                         f"{tuple(arr.shape)}")
    arr = arr.astype(dtype)
    if V.is_concrete(arr):
        a = np.asarray(arr)
        if not np.all(np.isfinite(a)):
            raise ValueError("ts: expected finite times, got NaN/inf")
        if a[0] < 0:
            raise ValueError(f"ts: expected times >= 0 (t = 0 is f0), got ts[0] = {a[0]}")
        if np.any(np.diff(a) < 0):
            i = int(np.argmax(np.diff(a) < 0))
            raise ValueError(f"ts: expected non-decreasing times, got ts[{i}] = {a[i]} > "
                             f"ts[{i + 1}] = {a[i + 1]}")
    return arr


def default_rtol(dtype) -> float:
    """Default relative tolerance: 1e-8 in float64, 1e-5 in float32 (see `_ode` for the choice)."""
    return 1e-8 if jnp.dtype(dtype) == jnp.float64 else 1e-5


# ----------------------------------------------------------------------------------------------
# diffrax driver

def make_solver(solver) -> diffrax.AbstractSolver:
    """A diffrax solver from a name in `INTEGRATORS` or an `AbstractAdaptiveSolver` instance."""
    if isinstance(solver, str):
        V.choice("integrator", solver, list(INTEGRATORS))
        return INTEGRATORS[solver]()
    check_integrator(solver)
    return solver


class _Retracted(diffrax.AbstractAdaptiveSolver, diffrax.AbstractWrappedSolver):
    """Wraps an adaptive solver and maps every accepted-or-not step end point `y1` back onto a
    manifold with `retract` (error estimates are the wrapped solver's). The first stage is always
    re-evaluated (`made_jump=True`) so FSAL methods never reuse a derivative taken off the manifold.
    A projection of an O(h^{p+1})-accurate point onto the manifold moves it by at most its distance
    to the manifold, so the local order of the wrapped method is kept (Hairer–Lubich–Wanner,
    Geometric Numerical Integration, §IV.4, "projection methods")."""

    solver: diffrax.AbstractSolver
    retract: Any = eqx.field(static=True)

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, y_error, dense_info, solver_state, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state, True)
        return self.retract(y1), y_error, dense_info, solver_state, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


def all_finite(tree) -> jax.Array:
    """True when every leaf of `tree` is finite (scalar bool)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


class Integrated(NamedTuple):
    ys: Any               # pytree, leading axis T; NaN at times not reached or after a blow-up
    status: jax.Array     # SUCCESS / MAX_STEPS / NONFINITE / FAILED (values checked later too)
    n_steps: jax.Array    # accepted steps
    reached: jax.Array    # (T,) bool: reached with a finite vector field


def integrate(vector_field, y0, ts, args, *, solver, rtol, atol, dt0, max_steps, pcoeff, icoeff,
              adjoint, progress: bool | str, retract=None, norm=None) -> Integrated:
    """Integrate `dy/dt = vector_field(t, y, args)` from t = 0 and save at `ts`: with `_rk.run`
    when it runs the integrator under `adjoint` exactly as diffrax would (explicit tableaux under
    `ForwardMode` / `RecursiveCheckpointAdjoint`), else `diffrax.diffeqsolve`.

    Non-finite detection: the vector field is guarded. When any entry of `vector_field(t, y)` is
    NaN/inf the derivative is replaced by 0 and a scalar flag (extra state, d(flag)/dt = 1) rises.
    The frozen state then has a zero error estimate, so the adaptive steps grow geometrically and
    the solve ends within a few dozen steps instead of shrinking dt until `max_steps` (a diffrax
    `Event` would stop at once but adds ~1 s of tracing to every compilation). Saved values with
    flag > 0 become NaN and the status NONFINITE.
    Status: diffrax `successful` → SUCCESS (NONFINITE if the flag rose), `max_steps_reached` →
    MAX_STEPS, anything else (e.g. implicit-solver divergence) → FAILED. `throw=False` throughout.
    `norm`: the step controller's error norm over the state pytree `(y, flag)` (default RMS).
    `progress`: False, True or a label: one `sslntk._progress` bar for the solve (percent of
    `ts[-1]`), or one line at its end when stderr is not a terminal.
    """
    dtype = jax.tree_util.tree_leaves(y0)[0].dtype

    def guarded(t, y, args):
        state, _ = y
        dy = vector_field(t, state, args)
        ok = all_finite(dy)
        dy = jax.tree_util.tree_map(lambda x: jnp.where(ok, x, jnp.zeros_like(x)), dy)
        return dy, jnp.where(ok, 0.0, 1.0).astype(dtype)

    inner = make_solver(solver)
    controller = diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=pcoeff, icoeff=icoeff,
                                       **({} if norm is None else {"norm": norm}))
    if progress:
        from sslntk._progress import progress_meter

        meter = progress_meter(progress if isinstance(progress, str) else "ode solve")
    else:
        meter = None
    y0 = (y0, jnp.zeros((), dtype))
    if retract is not None:
        retract_state = lambda y: (retract(y[0]), y[1])
    if _rk.runs(inner, adjoint):
        # the same steps as diffeqsolve's, traced in a fraction of the time (`_rk`)
        r = _rk.run(lambda t, y: guarded(t, y, args), y0, ts, solver=inner,
                    controller=controller, dt0=dt0, max_steps=max_steps, adjoint=adjoint,
                    meter=meter, retract=None if retract is None else retract_state)
        (ys, flag), n_steps, saved = r.ys, r.n_steps, r.reached
        failed = result_max_steps = ~r.finished      # the loop's only way to stop early
    else:
        if retract is not None:
            inner = _Retracted(inner, retract_state)
            if isinstance(adjoint, diffrax.ForwardMode):
                # ForwardMode's loop cannot rewrite the retracting wrapper: the checkpointed one
                adjoint = diffrax.RecursiveCheckpointAdjoint()
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(guarded), inner, t0=jnp.zeros((), ts.dtype), t1=ts[-1], dt0=dt0,
            y0=y0, args=args, saveat=diffrax.SaveAt(ts=ts), stepsize_controller=controller,
            max_steps=max_steps, adjoint=adjoint, throw=False,
            progress_meter=diffrax.NoProgressMeter() if meter is None else meter)
        (ys, flag), n_steps = sol.ys, sol.stats["num_accepted_steps"]
        saved = jnp.isfinite(sol.ts)
        failed = sol.result != diffrax.RESULTS.successful
        result_max_steps = sol.result == diffrax.RESULTS.max_steps_reached
    blown = flag > 0
    reached = saved & ~blown
    status = jnp.where(~failed, jnp.where(jnp.any(blown), NONFINITE, SUCCESS),
                       jnp.where(result_max_steps, MAX_STEPS, FAILED))
    ys = jax.tree_util.tree_map(lambda y: nan_unreached(y, reached), ys)
    return Integrated(ys, status, n_steps, reached)


def nan_unreached(y: jax.Array, reached: jax.Array) -> jax.Array:
    mask = reached.reshape(reached.shape + (1,) * (y.ndim - 1))
    return jnp.where(mask, y, jnp.nan)


def atol_scale(f0: jax.Array) -> jax.Array:
    """`RMS(f0)` floored at the dtype's sqrt(tiny): the default `atol = rtol · atol_scale(f0)`.
    Absolute errors scale with the initial embedding, so a small initialisation (α ≪ 1) is
    integrated to the same relative accuracy in its early, exponential phase as later on."""
    return jnp.maximum(jnp.sqrt(jnp.mean(f0**2)), jnp.finfo(f0.dtype).tiny ** 0.5)


def ode_defaults(f0: jax.Array, rtol, atol):
    """Resolve default tolerances: `rtol=None` → `default_rtol`, `atol=None` → `rtol·atol_scale(f0)`."""
    if rtol is None:
        rtol = default_rtol(f0.dtype)
    if atol is None:
        atol = rtol * atol_scale(f0)
    return rtol, atol


def default_adjoint(arrays) -> diffrax.AbstractAdjoint:
    """diffrax's adjoint for a solve of the pytree `arrays` (every array the solve reads) when the
    user chose none. Reverse-mode `jax.grad` through the solve needs the checkpointed loop
    (`RecursiveCheckpointAdjoint`), but it can only happen while the inputs are traced: a call on
    concrete arrays cannot be differentiated afterwards, so it runs `diffrax.ForwardMode()` — the
    same steps in a plain `while` loop, which JAX traces and lowers faster (eigen solver,
    2n = 2048, CPU, fresh processes: 0.60–0.76 s against 0.75–1.09 s; XLA's compile itself about
    the same, 1.5–1.8 s against 1.6–1.9 s; identical loss and step count). Tracing and lowering
    are paid by every first call in a process, even when the compiled program is cached."""
    traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(arrays))
    return diffrax.RecursiveCheckpointAdjoint() if traced else diffrax.ForwardMode()


def diffrax_settings(f0, *, atol_scale, solver, rtol, atol, dt0, max_steps, pcoeff, icoeff,
                     adjoint, progress, arrays) -> tuple[dict, dict]:
    """Validate the options shared by the diffrax-based solvers (`ode`, `constrained`) and split
    them into traced arrays (`rtol`, `atol`, `dt0`, `pcoeff`, `icoeff`: changing them does not
    recompile) and static ones (`solver`, `max_steps`, `adjoint`, `progress`, `has_dt0`).
    `atol=None` → `rtol · atol_scale`; `adjoint=None` → `default_adjoint((f0, arrays))`
    (`arrays`: every other array the solve reads)."""
    max_steps = V.positive_int("max_steps", max_steps)
    rtol = default_rtol(f0.dtype) if rtol is None else V.positive_float("rtol", rtol)
    atol = rtol * atol_scale if atol is None else V.positive_float("atol", atol)
    if dt0 is not None:
        V.positive_float("dt0", dt0)
    make_solver(solver)  # validates the name
    as_t = lambda x: jnp.asarray(x, f0.dtype)
    traced = dict(rtol=as_t(rtol), atol=as_t(atol), dt0=as_t(0.0 if dt0 is None else dt0),
                  pcoeff=as_t(pcoeff), icoeff=as_t(icoeff))
    static = dict(solver=solver, max_steps=max_steps, progress=bool(progress),
                  adjoint=default_adjoint((f0, arrays)) if adjoint is None else adjoint,
                  has_dt0=dt0 is not None)
    return traced, static


# ----------------------------------------------------------------------------------------------
# Trajectory assembly


def loss_along(method, states) -> jax.Array:
    """The method's loss at every saved state (leading axis T), `(T,)`."""
    return jax.vmap(method.loss)(states)


def finish(solver: str, method, ts, states, status, n_steps, *, reached=None, bound=None,
           L=None) -> Trajectory:
    """Evaluate the loss along `states` (a `State` with leading axis T; unless `L (T,)` is given),
    turn non-finite reached values into NONFINITE, build the Trajectory."""
    if L is None:
        L = loss_along(method, states)
    if reached is None:
        reached = jnp.ones(ts.shape, bool)
    vals = [v for v in jax.tree_util.tree_leaves(states)] + [L[:, None]]
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v.reshape(v.shape[0], -1)) | ~reached[:, None])
                                for v in vals]))
    status = jnp.where((status == SUCCESS) & ~finite, NONFINITE, status).astype(jnp.int32)
    return Trajectory(ts=ts, f=states.f, loss=L, status=status,
                      n_steps=jnp.asarray(n_steps, jnp.int32), f_test=states.f_test, bound=bound,
                      method=solver, aux=states.aux, aux_test=states.aux_test)


def with_method(traj: Trajectory, solver: str, reason: str = "") -> Trajectory:
    """`traj` recording the solver's name and why it ran."""
    if traj.method == solver and traj.reason == reason:
        return traj
    return dataclasses.replace(traj, method=solver, reason=reason)
