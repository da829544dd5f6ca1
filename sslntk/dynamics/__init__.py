"""Kernel-regime training dynamics of SSL losses → `Trajectory` (DESIGN.md, "Solvers").

    traj = solve(K, loss, f0, ts, method="auto", *, K_test_train=None, f0_test=None,
                 progress=False, **options)

integrates the gradient flow `df/dt = −K ∇_f L(f)` of an SSL loss (`sslntk.losses`) on the 2n
stacked views, with `t` in units of learning-rate × steps. Methods (one signature, one `Trajectory`):

| method | module | what |
| --- | --- | --- |
| `ode` | `_ode.solve_ode` | full (2n, k) flow, diffrax adaptive (the reference) |
| `gd` | `_gd.solve_gd` | discrete GD `f ← f − lr·K ∇L(f)`, what a finite network does |
| `constrained` | `_constrained.solve_constrained` | RKHS-orthonormal (Grassmannian) flow, Esser §3 |
| `closed_form` | `_closed_form.solve_closed_form` | stepwise BT closed form (λ = 1) |
| `eigen` | `_eigen.solve_eigen` | eigen-reduced ODE on the top-m eigenpairs |

`METHODS` (name → solver function) is the one registry: `solve` dispatches through it and
`choose_method` picks from it. `method="auto"` picks one with `choose_method` and records it on
`Trajectory.method`. The other modules: `_common` (input checks, diffrax plumbing shared by the
solvers), `_trajectory` (`Trajectory` and the status codes), `_sweep` (`solve_many`: many runs, one
kernel).

Status semantics (`Trajectory.status`, int, per batch element under vmap):
  SUCCESS (0)   every requested time reached, all saved values finite;
  MAX_STEPS (1) the step budget (`max_steps`) ran out; times not reached hold NaN;
  NONFINITE (2) NaN/inf appeared in the state, its derivative or the loss; saved times after the
                blow-up hold NaN (ode/constrained) or whatever the iteration produced (gd);
  FAILED (3)    any other solver failure (e.g. implicit-solver non-convergence).
  STATIONARY (5) nothing moves: `∇_f L(f0) = 0` exactly (e.g. f0 = 0, the saddle of Barlow Twins
                at α = 0, DESIGN.md); the trajectory is the constant f0 (checked on concrete inputs).
(`sslntk._status` holds the codes, shared with `finite.train`, which adds DIVERGED (4).)
k = 0 (`f0` of shape (2n, 0)) raises ValueError. Outside jit, `solve` warns (RuntimeWarning)
when a solve did not succeed; call
`traj.raise_if_failed()` to turn that into an error.

Jit/vmap/grad: `solve` is traceable. Array arguments (K, f0, ts, test arrays) and numeric loss
constants may be traced; string/int options (`solver`, `max_steps`, loss names and string options,
`progress`) are static. Value checks (PSD, NaN, ordering) run only on concrete inputs.
"""

from __future__ import annotations

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _sharding, _status
from sslntk import _validate as V
from sslntk.dynamics import _common
from sslntk.dynamics._closed_form import solve_closed_form
from sslntk.dynamics._constrained import solve_constrained
from sslntk.dynamics._eigen import solve_eigen
from sslntk.dynamics._gd import solve_gd
from sslntk.dynamics._ode import solve_ode
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

__all__ = ["solve", "choose_method", "available_methods", "METHODS", "SMALL_N", "LARGE_N",
           "Trajectory", "SUCCESS",
           "MAX_STEPS", "NONFINITE", "FAILED", "DIVERGED", "STATIONARY", "STATUS_NAMES"]

# method -> solver `fn(K, loss, f0, ts, *, K_test_train, f0_test, progress, **options) -> Trajectory`
METHODS = {
    "ode": solve_ode,
    "gd": solve_gd,
    "constrained": solve_constrained,
    "closed_form": solve_closed_form,
    "eigen": solve_eigen,
}

_COMMON_KW = ("K_test_train", "f0_test", "progress")


def available_methods() -> list[str]:
    """The method names `solve` accepts besides "auto": the keys of `METHODS`."""
    return list(METHODS)


# Size thresholds of `choose_method` (2n = N; measured in benchmarks/bench_dynamics.py, CPU float32):
# up to SMALL_N the full ODE costs about what one top-m decomposition does and is exact; above
# LARGE_N the full ODE's O(N²k) right-hand side dominates every other cost even for losses whose
# eigen-reduction is only approximate.
SMALL_N = 256
LARGE_N = 4096
ALIGNED_RTOL = 1e-6


def choose_method(K, loss, f0, ts) -> str:
    """The method `method="auto"` uses (recorded on `Trajectory.method`), by loss and size N = 2n:

    * Barlow Twins (theory form) with a concrete λ = 1, N ≤ SMALL_N, and an ALIGNED `f0` (its mode
      coefficients `Aᵀf0` live on the top-k contrastive modes with orthogonal rows, digest §3; checked
      to `ALIGNED_RTOL` with one dense decomposition): ``closed_form``, exact at every time.
    * any loss that depends on f only through `C = fᵀZf/2n` (`cross_moment_only`: BT, kernel PCA,
      naive) with N > SMALL_N: ``eigen`` (moment path: O(m²k) per step after one top-m
      decomposition; agrees with the full ODE to ≤ 1e-3 over the whole BT staircase, tests).
    * any other loss with N > LARGE_N: ``eigen`` (kernel kind; its `Trajectory.bound` says how far
      the rank-m kernel is from K).
    * a row-sharded K (issue [H]): ``eigen`` for cross-moment-only losses or N > LARGE_N, else
      ``ode`` (the methods whose K-products are sharded, `_common.SHARDED_METHODS`).
    * otherwise ``ode`` (the reference). ``closed_form`` from a random `f0` is the α → 0
      approximation (its estimate in `Trajectory.bound`): ask for it by name.
    Traced inputs (inside jit/vmap) skip the alignment check.
    """
    from sslntk.losses import as_loss

    loss = as_loss(loss)
    N = int(K.shape[0])
    if _sharding.layout_of(K) is not None:
        # row-sharded K (issue [H]): only the methods with sharded products; no dense checks
        return "eigen" if (loss.cross_moment_only or N > LARGE_N) else "ode"
    if loss.cross_moment_only and N > SMALL_N and "eigen" in METHODS:
        return "eigen"
    if not loss.cross_moment_only and N > LARGE_N and "eigen" in METHODS:
        return "eigen"
    if loss.name == "barlow_twins" and "closed_form" in METHODS and N <= SMALL_N:
        lam = loss.constants["lam"]
        if (V.is_concrete(lam) and jnp.ndim(lam) == 0 and float(lam) == 1.0
                and V.is_concrete(K) and V.is_concrete(f0) and _aligned(K, f0)):
            return "closed_form"
    return "ode"


def _aligned(K, f0) -> bool:
    """True when `f0 = E P0` with `P0 = Aᵀf0` zero beyond the top-k modes and `P0[:k] P0[:k]ᵀ`
    diagonal (the aligned initialisation `W(0) = U S(0) V_kᵀ` of the stepwise digest §3), to
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


def _check_options(method: str, fn, options: dict) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [k for k, p in params.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in _COMMON_KW]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"method {method!r}: unknown option(s) {unknown}; valid options are "
                         f"{sorted(valid)}")


def solve(K, loss, f0, ts, method: str = "auto", *, K_test_train=None, f0_test=None,
          progress: bool = False, check_psd: bool = True, record_terms: bool = False,
          diagnostics: bool = False, collapse_threshold: float | None = None,
          **options) -> Trajectory:
    """Kernel-regime training trajectory of `loss` from `f0`, saved at times `ts`.

    Args:
      K: `(2n, 2n)` kernel over the stacked views `[a_1..a_n, b_1..b_n]` (NTK of one output),
        symmetric PSD (checked to round-off when concrete; `check_psd=False` skips the O(n³)
        eigenvalue check). A row-sharded K (`kernels.ntk(..., mesh=mesh)`, issue [H]) works with
        the "eigen" and "ode" methods: its products run where its row blocks live, the small
        arrays (f0, ts, reduced state) are replicated on its mesh, K is never gathered (the PSD
        check is then a diagonal check: no dense eigh). f0 must be unsharded or on K's mesh.
      loss: a `sslntk.losses.Loss` (`losses.get(name, **constants)`) or a registered loss name.
      f0: `(2n, k)` embeddings at t = 0, same dtype as K.
      ts: `(T,)` non-decreasing times ≥ 0 (units of learning-rate × steps); integration starts at 0.
      method: "auto" (see `choose_method`) or a key of `METHODS`.
      K_test_train, f0_test: `(m, 2n)` cross kernel and `(m, k)` test embeddings at t = 0 (both or
        neither); then `Trajectory.f_test (T, m, k)` holds the kernel-regime predictions
        `f_test(t) = f0_test − K_test_train ∫₀ᵗ ∇_f L ds` (constrained: its own flow, see there).
      progress: one progress bar for the solve (`sslntk._progress`: a tqdm bar with rate, elapsed
        and ETA on a terminal or in a notebook, one line at the end in logs).
      record_terms: also record `Trajectory.terms`, the loss's named terms at every saved time
        (`Loss.terms`, e.g. VICReg invariance / variance / covariance).
      diagnostics: also record `Trajectory.diagnostics`, collapse diagnostics over time
        (`sslntk.diagnostics.collapse`: RankMe, effective rank, centre-vector norm, ...), and warn
        (`CollapseWarning`) when the final RankMe is below `collapse_threshold` (default
        `diagnostics.COLLAPSE_RANK` = 1.5). Setting `collapse_threshold` turns diagnostics on.
      **options: method options (e.g. `rtol`, `max_steps`, `solver` for "ode"; `lr` for "gd");
        unknown ones raise `ValueError` listing the valid ones.

    Returns a `Trajectory` (`ts`, `f (T, 2n, k)`, `loss (T,)`, `status`, `n_steps`, `f_test`,
    `method`); see the module docstring for the status semantics.
    """
    V.choice("method", method, list(METHODS) + ["auto"])
    inp = _common.validate_inputs(K, loss, f0, ts, K_test_train, f0_test, check_psd_=check_psd)
    if method == "auto":
        method = choose_method(inp.K, inp.loss, inp.f0, inp.ts)
    if _sharding.layout_of(inp.K) is not None and method not in _common.SHARDED_METHODS:
        raise ValueError(f"method: {method!r} does not support a row-sharded K (its kernel work is "
                         f"dense); use one of {list(_common.SHARDED_METHODS)} or an unsharded K")
    fn = METHODS[method]
    _check_options(method, fn, options)
    traj = fn(inp.K, inp.loss, inp.f0, inp.ts, K_test_train=inp.K_test_train,
              f0_test=inp.f0_test, progress=progress, **options)
    traj = _common.with_method(traj, method)
    concrete = V.is_concrete(traj.status) and not isinstance(traj.status, jax.core.Tracer)
    if concrete and traj.ok and _stationary(inp.loss, inp.f0):
        traj = dataclasses.replace(traj, status=jnp.asarray(STATIONARY, jnp.int32))
    if record_terms:
        traj = dataclasses.replace(traj, terms=jax.vmap(inp.loss.terms)(traj.f))
    if diagnostics or collapse_threshold is not None:
        from sslntk import diagnostics as _diag

        d = _diag.collapse(traj.f)
        traj = dataclasses.replace(traj, diagnostics=d)
        if concrete and not isinstance(traj.f, jax.core.Tracer):
            _diag.check_collapse(d, threshold=collapse_threshold or _diag.COLLAPSE_RANK,
                                 k=int(inp.f0.shape[1]),
                                 where=f"sslntk.dynamics.solve (method {method!r})")
    if concrete and not traj.ok:
        _status.warn_status(f"sslntk.dynamics.solve: method {method!r}", traj.status,
                            detail=f"n_steps={jnp.asarray(traj.n_steps).tolist()}")
    return traj


def _stationary(loss, f0) -> bool:
    """True when `∇_f L(f0) = 0` exactly on a concrete `f0` (nothing can move)."""
    if not V.is_concrete(f0) or isinstance(f0, jax.core.Tracer):
        return False
    try:        # on the host: f0 may be replicated over a mesh (sharded K) that jit cannot see here
        f0 = jnp.asarray(np.asarray(f0))
    except Exception:   # not addressable from this process (multi-process): skip the check
        return False
    g = loss.grad(f0)
    return bool(jnp.all(g == 0))


from sslntk.dynamics._sweep import solve_many  # noqa: E402  (sweep API: many runs, one kernel)

__all__ += ["solve_many"]
