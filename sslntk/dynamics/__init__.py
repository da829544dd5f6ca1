"""Kernel-regime training dynamics of SSL methods → `Trajectory`.

    traj = solve(K, loss, f0, ts, solver="auto", *, K_test_train=None, f0_test=None,
                 progress=False, **options)

integrates an SSL method (`sslntk.methods`: a named loss from `sslntk.losses`, a plain callable
`f -> scalar`, or any `Method` such as one with an EMA target) on the 2n stacked views, with `t` in
units of learning-rate × steps. For a gradient flow this is `df/dt = −K ∇_f L(f)`. Solvers are
small objects (one signature, one `Trajectory`); a string is shorthand for one with its options:

| solver | object | what | needs from the method |
| --- | --- | --- | --- |
| `ode` | `Ode` | full state, diffrax adaptive (the reference) | — |
| `gd` | `GD` | discrete steps `state ← method.step(state, lr, K)`, what a finite network does | — |
| `constrained` | `Constrained` | RKHS-orthonormal (Grassmannian) flow, Esser et al. 2024 §3 | `potential` |
| `closed_form` | `ClosedForm` | Barlow Twins (λ = 1) closed form, Simon et al. 2023 | `stepwise_form` |
| `eigen` | `Eigen` | eigen-reduced ODE on the top-m eigenpairs | `potential` |

`SOLVERS` (name → solver class) is the one registry: `solve` builds from it and `choose_solver`
picks from it. `solver="auto"` picks one with `choose_solver` and records it and why on
`Trajectory.method` / `Trajectory.reason`. See `docs/how-to/choose-a-solver.md`.

Status semantics (`Trajectory.status`, an `sslntk._status.Status` code, per batch element):
  SUCCESS       every requested time reached, all saved values finite;
  MAX_STEPS     the step budget (`max_steps`) ran out; times not reached hold NaN;
  NONFINITE     NaN/inf appeared in the state, its derivative or the loss;
  FAILED        any other solver failure (e.g. implicit-solver non-convergence, closed form
                outside its validity);
  DIVERGED      (gd) the loss grew beyond `DIVERGE_FACTOR · max(1, |loss(0)|)`, finite;
  STATIONARY    nothing moves: the method's vector field vanishes at the start (e.g. f0 = 0, the
                saddle of Barlow Twins); checked on concrete inputs by `solve` and `solve_many`.
Outside jit, `solve` and `solve_many` warn (RuntimeWarning) when a run did not succeed; call
`traj.raise_if_failed()` to turn that into an error.

Validation happens once, here: shapes, dtypes, times, and positive semi-definiteness of K
(`sslntk._validate.psd_kernel`: a few block Lanczos products, O(N²); skipped for traced K) — the
solvers trust their inputs. Jit/vmap/grad: `solve` is traceable. Array arguments (K, f0, ts, test arrays)
and numeric method constants may be traced; string/int options (the solver, `max_steps`, loss
names and string options, `progress`) are static. Value checks (PSD, NaN, ordering) run only on
concrete inputs.

    >>> import jax.numpy as jnp
    >>> from sslntk import dynamics
    >>> f0 = 0.1 * jnp.arange(8.0).reshape(4, 2) - 0.3
    >>> tr = dynamics.solve(jnp.eye(4), "barlow_twins", f0, jnp.array([0.0, 1.0]), "ode")
    >>> tr.status_name, tr.method
    ('success', 'ode')
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _sharding
from sslntk import _validate as V
from sslntk import methods as _methods
from sslntk.dynamics import _common
from sslntk.dynamics._closed_form import ClosedForm
from sslntk.dynamics._constrained import Constrained
from sslntk.dynamics._eigen import Eigen
from sslntk.dynamics._gd import GD
from sslntk.dynamics._ode import Ode
from sslntk.dynamics._solver import INTEGRATORS, Solver
from sslntk.dynamics._trajectory import (
    DIVERGED,
    FAILED,
    MAX_STEPS,
    NONFINITE,
    STATIONARY,
    STATUS_NAMES,
    SUCCESS,
    Trajectory,
)

__all__ = ["solve", "solve_many", "choose_solver", "choose_method", "make_solver",
           "available_solvers", "available_methods", "SOLVERS", "METHODS", "INTEGRATORS",
           "Solver", "Ode", "GD", "Eigen", "ClosedForm", "Constrained", "SMALL_N", "LARGE_N",
           "Trajectory", "SUCCESS", "MAX_STEPS", "NONFINITE", "FAILED", "DIVERGED", "STATIONARY",
           "STATUS_NAMES"]

#: solver name -> solver class (the registry `solve` builds from and `choose_solver` picks from)
SOLVERS: dict[str, type[Solver]] = {
    "ode": Ode,
    "gd": GD,
    "constrained": Constrained,
    "closed_form": ClosedForm,
    "eigen": Eigen,
}
#: the former name of `SOLVERS` (the same dict)
METHODS = SOLVERS


def available_solvers() -> list[str]:
    """The solver names `solve` accepts besides "auto": the keys of `SOLVERS`."""
    return list(SOLVERS)


available_methods = available_solvers

# Size thresholds of `choose_solver` (2n = N; measured in benchmarks/bench_dynamics.py, CPU
# float32): up to SMALL_N the full ODE costs about what one top-m decomposition does and is exact;
# above LARGE_N the full ODE's O(N²k) right-hand side dominates every other cost even for losses
# whose eigen-reduction is only approximate.
SMALL_N = 256
LARGE_N = 4096
ALIGNED_RTOL = 1e-6


def _choose(K, method, f0) -> tuple[str, str]:
    """(solver name, reason) of the "auto" rule (see `choose_solver`)."""
    N = int(K.shape[0])
    has = lambda name: name in SOLVERS                                    # noqa: E731
    moment = getattr(method, "moment_form", None) is not None
    potential = getattr(method, "potential", None) is not None
    if not potential:
        return "ode", "the method is not the gradient flow of a function of f: the full ODE"
    if _sharding.layout_of(K) is not None:
        if has("eigen") and (moment or N > LARGE_N):
            return "eigen", "row-sharded K: the eigen reduction (sharded products)"
        return "ode", "row-sharded K: the full ODE (sharded products)"
    if moment and N > SMALL_N and has("eigen"):
        return "eigen", (f"a loss of C = fᵀZf/2n alone at 2n = {N} > SMALL_N = {SMALL_N}: the "
                         f"contrastive eigen reduction (moment path)")
    if not moment and N > LARGE_N and has("eigen"):
        return "eigen", (f"2n = {N} > LARGE_N = {LARGE_N}: the kernel eigen reduction (bound "
                         f"on Trajectory.bound)")
    form = getattr(method, "stepwise_form", None)
    if form is not None and has("closed_form") and N <= SMALL_N:
        lam = form.lam
        if (V.is_concrete(lam) and jnp.ndim(lam) == 0 and float(lam) == 1.0
                and f0 is not None and V.is_concrete(K) and V.is_concrete(f0)
                and _aligned(K, f0)):
            return "closed_form", ("Barlow Twins (λ = 1) from an aligned f0: the stepwise closed "
                                   "form is exact")
    return "ode", f"2n = {N}: the full ODE (the reference)"


def choose_solver(K, loss, f0, ts=None, **options) -> tuple[Solver, str]:
    """The solver `solver="auto"` uses and why: `(solver object with options, reason)`.

    The rule, by the structure the method offers and the size N = 2n:

    * a method that is not a gradient flow (no `potential`): ``ode``.
    * Barlow Twins (theory form, `stepwise_form`) with a concrete λ = 1, N ≤ SMALL_N, and an
      ALIGNED `f0` (its mode coefficients `Aᵀf0` live on the top-k contrastive modes with
      orthogonal rows, Simon et al. 2023 §3; checked to `ALIGNED_RTOL` with one dense
      decomposition): ``closed_form``, exact at every time.
    * a method with a `moment_form` (a loss of `C = fᵀZf/2n` alone: BT, kernel PCA, naive) with
      N > SMALL_N: ``eigen`` (moment path: O(m²k) per step after one top-m decomposition).
    * any other gradient flow with N > LARGE_N: ``eigen`` (kernel kind; its `Trajectory.bound`
      says how far the rank-m kernel is from K).
    * a row-sharded K: ``eigen`` for moment-form methods or N > LARGE_N, else ``ode``.
    * otherwise ``ode`` (the reference). ``closed_form`` from a random `f0` is the α → 0
      approximation (its estimate in `Trajectory.bound`): ask for it by name.
    Traced inputs (inside jit/vmap) skip the alignment check. `**options` go to the solver.
    """
    name, reason = _choose(K, _methods.as_method(loss), f0)
    return make_solver(name, **options), reason


def choose_method(K, loss, f0, ts=None) -> str:
    """The NAME of the solver `solver="auto"` uses (`choose_solver` gives the object and why)."""
    return _choose(K, _methods.as_method(loss), f0)[0]


def _aligned(K, f0) -> bool:
    """True when `f0 = E P0` with `P0 = Aᵀf0` zero beyond the top-k modes and `P0[:k] P0[:k]ᵀ`
    diagonal (the aligned initialisation `W(0) = U S(0) V_kᵀ` of Simon et al. 2023, §3), to
    `ALIGNED_RTOL` relative to `‖P0‖²`; a top-k mode missing from f0 is not aligned (the closed
    form flags that case with bound = inf)."""
    from sslntk.theory.staircase import contrastive_modes

    N, k = f0.shape
    if k > N // 2:
        return False
    _, A, E = contrastive_modes(K, N)
    P0 = A.T @ f0
    tot = float(jnp.sum(P0**2))
    if tot == 0.0 or float(jnp.sum((f0 - E @ P0) ** 2)) > ALIGNED_RTOL**2 * float(jnp.sum(f0**2)):
        return False
    top = P0[:k]
    G = top @ top.T
    off = float(jnp.sum((G - jnp.diag(jnp.diag(G))) ** 2)) ** 0.5
    return (float(jnp.sum(P0[k:] ** 2)) <= ALIGNED_RTOL**2 * tot and off <= ALIGNED_RTOL * tot
            and bool(jnp.all(jnp.diag(G) > ALIGNED_RTOL * tot)))


_DIFFRAX_SOLVERS = ("ode", "eigen", "constrained")


def make_solver(solver, argname: str = "solver", **options) -> Solver:
    """A solver object from a name in `SOLVERS` (with `options`) or a `Solver` (options replace
    its own). Unknown names or options raise ValueError listing the valid ones."""
    if isinstance(solver, Solver):
        return solver.replace(**options)
    if not isinstance(solver, str):
        raise TypeError(f"{argname}: expected a solver name {available_solvers()} or a "
                        f"sslntk.dynamics.Solver, got {type(solver).__name__}")
    if solver not in SOLVERS:
        V.choice(argname, solver, available_solvers())
    return SOLVERS[solver].from_options(**options)


def _solver_spec(solver, method, options: dict, default="auto") -> tuple[object, str, dict]:
    """(solver spec, its argument name, options) from the current and the former spelling
    (`method="ode"`, with the diffrax integrator then passed as `solver=`)."""
    if method is None:
        return solver, "solver", options
    if isinstance(method, str) and not isinstance(solver, Solver) and solver != default:
        if method not in _DIFFRAX_SOLVERS and method in SOLVERS:
            raise ValueError(f"solver: solver {method!r} has no integrator option, got "
                             f"solver={solver!r}")
        if isinstance(solver, str):
            V.choice("solver", solver, list(INTEGRATORS))
        options = dict(options, integrator=solver)
    return method, "method", options


def solve(K, loss, f0, ts, solver="auto", *, K_test_train=None, f0_test=None,
          progress: bool = False, check_psd: bool = True, record_terms: bool = False,
          diagnostics: bool = False, collapse_threshold: float | None = None, method=None,
          **options) -> Trajectory:
    """Kernel-regime training trajectory of an SSL method from `f0`, saved at times `ts`.

    Args:
      K: `(2n, 2n)` kernel over the stacked views `[a_1..a_n, b_1..b_n]` (NTK of one output),
        symmetric PSD (checked when concrete: symmetry to round-off, PSD with a few block Lanczos
        steps, `sslntk._validate.psd_kernel`, O(N²); `check_psd=False` skips the latter). A
        row-sharded K (`kernels.ntk(..., mesh=mesh)`) works with the "eigen" and "ode" solvers:
        its products run where its row blocks live, the small arrays are replicated on its mesh, K is never
        gathered. f0 must be unsharded or on K's mesh. A `sslntk.lowrank.LowRankKernel` (2n too
        large for a dense K: `lowrank.kernel(arch, views)`) runs the "eigen" solver on its
        certified decomposition (`lowrank.solve`).
      loss: the SSL method: a `sslntk.losses.Loss` (`losses.get(name, **constants)`), a registered
        loss name, a plain callable `f (2n, k) -> scalar` (its gradient flow), or any
        `sslntk.methods.Method`.
      f0: `(2n, k)` online function at t = 0, same dtype as K; or an initial
        `sslntk.methods.State` built by the method (`method.init(f0, key, f0_test=...)`).
      ts: `(T,)` non-decreasing times ≥ 0 (units of learning-rate × steps); integration starts at 0.
      solver: "auto" (see `choose_solver`), a name in `SOLVERS` (its options from `**options`), or
        a `Solver` object (`Ode(rtol=1e-8)`, `GD(lr=0.01)`, `Eigen(m=64)`, ...).
      K_test_train, f0_test: `(m, 2n)` cross kernel and `(m, k)` online function at test points at
        t = 0 (both or neither); then `Trajectory.f_test (T, m, k)` holds the kernel-regime
        predictions (for a gradient flow `f_test(t) = f0_test − K_test_train ∫₀ᵗ ∇_f L ds`).
      progress: one progress bar for the solve (`sslntk._progress`).
      record_terms: also record `Trajectory.terms`, the method's named terms at every saved time.
      diagnostics: also record `Trajectory.diagnostics`, collapse diagnostics over time
        (`sslntk.diagnostics.collapse`), and warn (`CollapseWarning`) when the final RankMe is
        below `collapse_threshold` (default `diagnostics.COLLAPSE_RANK` = 1.5). Setting
        `collapse_threshold` turns diagnostics on.
      method: the former name of `solver` (`method="ode"`); with it, `solver=` names the diffrax
        integrator ("tsit5", ...) as before.
      **options: solver options (e.g. `rtol`, `max_steps`, `integrator` for "ode"; `lr` for "gd";
        `m` for "eigen"); unknown ones raise `ValueError` listing the valid ones.

    Returns a `Trajectory` (`ts`, `f (T, 2n, k)`, `loss (T,)`, `status`, `n_steps`, `f_test`,
    `method` (the solver's name), `reason`, `aux`); see the module docstring for the status
    semantics.
    """
    spec, argname, options = _solver_spec(solver, method, options)
    if _is_lowrank(K):   # a kernel known only through a low-rank decomposition (sslntk.lowrank)
        return K.solve(loss, f0, ts, spec, progress=progress, K_test_train=K_test_train,
                       f0_test=f0_test, record_terms=record_terms,
                       diagnostics=diagnostics or collapse_threshold is not None, **options)
    inp = _common.validate_inputs(K, loss, f0, ts, K_test_train, f0_test, check_psd_=check_psd)
    traj = _run(inp, spec, argname, options, progress=progress)
    return _post(traj, inp, record_terms=record_terms, diagnostics=diagnostics,
                 collapse_threshold=collapse_threshold, where="sslntk.dynamics.solve")


def _is_lowrank(K) -> bool:
    if isinstance(K, (jax.Array, np.ndarray, list, tuple)):
        return False
    from sslntk.lowrank import LowRankKernel

    return isinstance(K, LowRankKernel)


def _resolve(inp: _common.Inputs, spec, argname: str, options: dict) -> tuple[Solver, str]:
    """The solver object (and why) for validated inputs; refuses an unsupported method or K."""
    reason = "requested"
    if isinstance(spec, str) and spec == "auto":
        spec, reason = _choose(inp.K, inp.method, inp.state0.f)
    if isinstance(spec, str):
        V.choice(argname, spec, available_solvers())
    cls = spec if isinstance(spec, type) else SOLVERS.get(spec, type(spec))
    if _sharding.layout_of(inp.K) is not None and not getattr(cls, "sharded", False):
        raise ValueError(f"{argname}: {getattr(cls, 'name', spec)!r} does not support a "
                         f"row-sharded K (its kernel work is dense); use one of "
                         f"{[n for n, c in SOLVERS.items() if c.sharded]} or an unsharded K")
    solver = make_solver(spec, argname, **options)
    solver.check(inp.method, inp.state0)
    return solver, reason


def _run(inp: _common.Inputs, spec, argname: str, options: dict, *, progress) -> Trajectory:
    solver, reason = _resolve(inp, spec, argname, options)
    traj = solver.solve(inp.K, inp.method, inp.state0, inp.ts, K_test_train=inp.K_test_train,
                        progress=progress)
    return _common.with_method(traj, solver.name or type(solver).__name__, reason)


def _concrete(x) -> bool:
    return all(V.is_concrete(v) and not isinstance(v, jax.core.Tracer)
               for v in jax.tree_util.tree_leaves(x))


def _post(traj: Trajectory, inp: _common.Inputs, *, record_terms: bool, diagnostics: bool,
          collapse_threshold, where: str, batched: bool = False,
          loss_batched: bool = False, stacklevel: int = 4) -> Trajectory:
    """The post-processing shared by `solve` and `solve_many`: STATIONARY, terms, collapse
    diagnostics, the one warning."""
    concrete = _concrete(traj.status)
    if concrete:
        still = stationary(inp, batched=batched, loss_batched=loss_batched)
        if still is not None:
            st = np.asarray(traj.status)
            st = np.where((st == SUCCESS) & still, STATIONARY, st).astype(np.int32)
            traj = dataclasses.replace(traj, status=jnp.asarray(st))
    if record_terms:
        terms = jax.vmap(lambda m, s: m.terms(s), in_axes=(None, 0))
        if batched:
            terms = jax.vmap(terms, in_axes=(0 if loss_batched else None, 0))
        traj = dataclasses.replace(traj, terms=terms(inp.method, _state_of(traj)))
    if diagnostics or collapse_threshold is not None:
        from sslntk import diagnostics as diag

        d = diag.collapse(traj.f)
        traj = dataclasses.replace(traj, diagnostics=d)
        if concrete and _concrete(traj.f):
            diag.check_collapse(d, threshold=collapse_threshold or diag.COLLAPSE_RANK,
                                k=int(traj.f.shape[-1]), where=f"{where} (solver {traj.method!r})")
    if concrete and not traj.ok:
        traj.warn(f"{where}: solver {traj.method!r}", stacklevel=stacklevel)
    return traj


def _state_of(traj: Trajectory) -> _methods.State:
    return _methods.State(f=traj.f, aux=traj.aux, f_test=traj.f_test, aux_test=traj.aux_test)


def stationary(inp: _common.Inputs, *, batched: bool = False, loss_batched: bool = False):
    """On concrete inputs: True (per run when `batched`) where nothing can move, i.e. the method's
    vector field vanishes at the start (for a gradient flow: `∇_f L(f0) = 0` exactly, e.g. f0 = 0
    for Barlow Twins); None when the inputs are traced or not addressable here."""
    state0, method = inp.state0, inp.method
    if not (_concrete(state0) and _concrete(method)):
        return None
    try:        # on the host: f0 may be replicated over a mesh (sharded K) that jit cannot see
        host = jax.tree_util.tree_map(np.asarray, state0)
    except Exception:   # noqa: BLE001  not addressable from this process (multi-process)
        return None
    loss_axis = 0 if batched and loss_batched else None
    if method.potential is not None:
        return np.asarray(_still_potential(method, host, batched=batched, loss_axis=loss_axis))
    op = _methods.KernelOp(inp.K, inp.K_test_train, _sharding.layout_of(inp.K))
    return np.asarray(_still_field(method, host, op, batched=batched, loss_axis=loss_axis))


@functools.partial(jax.jit, static_argnames=("batched", "loss_axis"))
def _still_potential(method, state, *, batched, loss_axis):
    def still(m, s):
        return jnp.all(jax.grad(m.potential)(s.f) == 0)
    return jax.vmap(still, in_axes=(loss_axis, 0))(method, state) if batched \
        else still(method, state)


@functools.partial(jax.jit, static_argnames=("batched", "loss_axis"))
def _still_field(method, state, op, *, batched, loss_axis):
    def still(m, s):
        d = m.vector_field(jnp.zeros((), s.f.dtype), s, op)
        return jnp.all(jnp.stack([jnp.all(x == 0) for x in jax.tree_util.tree_leaves(d)]))
    return jax.vmap(still, in_axes=(loss_axis, 0))(method, state) if batched \
        else still(method, state)


from sslntk.dynamics._sweep import solve_many  # noqa: E402  (sweep API: many runs, one kernel)
