"""Closed-form Barlow Twins (theory form, λ = 1) kernel gradient flow: the stepwise solution
(`ClosedForm`; Simon et al. 2023, `docs/theory/stepwise.md`).

    traj = ClosedForm(corrections=True).solve(K, method, state0, ts, K_test_train=None)

The method must have the structure `stepwise_form` (Barlow Twins in its theory form) with λ = 1;
any other method is refused with an error naming it.

One dense eigendecomposition of the contrastive problem ``(Z K / 2n) a = γ a``, ``aᵀ K a = 1``
(`sslntk.theory.contrastive_modes`, all N = 2n modes), then the curves at any times in
closed form (no time stepping; cost O(N³) once + O(T N² k)). Theory and derivations:
`sslntk.theory.stepwise` and Simon et al. (2023), §3–§6.

What it returns (``f (T, 2n, k)``, ``f_test``, ``loss``), with ``P0 = Aᵀ f0`` the mode coefficients of
``f0`` and ``f0 = E P0 + f_null`` (``E = K A``; ``f_null`` is the part of f0 in the null space of K,
zero for a positive-definite K):

    f(t)      = f_null + E P̃(t) Qᵀ                     (P̃, Q from `stepwise.lifted_coefficients`)
    f_test(t) = f0_test + K_test_train A (P̃(t) Qᵀ − P0)   (the kernel-regime test prediction
                                                          f0_test + K_tx K⁻¹ (f(t) − f0))
    loss(t)   = barlow_twins(f(t))

* **Aligned initialisation** (``Aᵀ f0`` has orthogonal columns supported on the top-k modes,
  i.e. ``W(0) = U S(0) V_kᵀ`` of Simon et al. 2023, §3): exact at every time (the logistic
  solution; ``bound = 0``).
  Aligned on other modes S (a top-k mode missing from f0) is not exact: ``bound = inf`` flags it.
* **Random / general initialisation**: the QR-effective aligned staircase (Simon et al. §4) for the top-k
  directions, every other component of f0 propagated with the exact linear propagator of that
  staircase (so the α^gap contamination by lower modes that the flat minima keep, Simon et al. §4, is
  predicted to first order), plus the first-order frame rotation of the learned pairs and a
  second-order renormalisation of the diagonal (`stepwise.lifted_coefficients`, steps (i)–(iii)).
  Exact as α → 0; ``f(0) = f0`` exactly. Neglected: the back-reaction of the off-diagonal
  components on the logistic staircase. ``Trajectory.bound`` (scalar) is the error estimate
  ``ε = max_{j≠i} (final relative size of component j along direction i)`` (≈ α^{(γ_i−γ_j)/γ_i}
  for the nearest learned pair, the O(α^gap) of Simon et al. §4; 0 for an aligned init) plus
  ``‖f_null‖/‖f_final‖``. Measured (whole trajectories vs float64 RK4 / diffrax):
  Ref-A, α = 1e-2…1e-8 × 3 seeds: Gram error ≤ 0.35 ε, eig(C) ≤ 0.46 ε, loss ≤ 0.33 ε;
  feature kernel (tests) α = 1e-6: Gram 5.4e-4, eig(C) 1.0e-4 for ε = 1.4e-2; RBF kernel
  α = 1e-8: Gram 1.1e-3 for ε = 4.1e-2. An estimate, not a rigorous bound. Near-degenerate
  top-k eigenvalues (γ_j/γ_i → 1) make ε → O(1): the closed form is then only qualitative.
* ``f0_test=None`` with ``K_test_train`` given: f0 is taken to lie in the RKHS span of the training
  views (``f0_test = K_tx K⁻¹ f0``, the A-space model of Simon et al. §6).

Status: SUCCESS; NONFINITE when a value is not finite; FAILED when a traced λ is not 1 or when
the lift is outside its validity (`stepwise.LiftedCoefficients.valid` False, or ``bound`` ≥ 1 or
not finite): a lower mode's component grows as large as a learned direction (the QR-effective
``c0_i = γ_i R_ii²`` is tiny and a mode j with γ_j ≈ γ_i grows by ``c0_i^{−γ_j/2γ_i}``), a top-k
mode is missing from f0 (bound = inf), or the frozen null-space part of f0 is as large as the final
embedding. Measured before this check (erf-MLP NTK, 2n = 300, α = 1e-3): ε = 3.6–3.7
with the loss at 97–281 after the staircase (the ODE reaches 0) reported as "success". Called
outside jit, a failure also warns (RuntimeWarning) with the reason and ε; use the 'ode' solver.
``n_steps = 1`` (one eigendecomposition). Jittable, vmappable over f0 (hence α) and K,
differentiable w.r.t. f0/α and K (eigh derivatives: needs a non-degenerate contrastive spectrum).
Precision: the K^{-1/2} reduction loses ~cond(K)·eps; in float32 keep cond(K) ≲ 1e4 (tests:
float32 vs float64 Gram difference 7e-6 at cond(K) ~ 1e3).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp

from sslntk import _validate as V
from sslntk import methods as _methods
from sslntk.dynamics import _common as C
from sslntk.dynamics._solver import Solver
from sslntk.dynamics._trajectory import FAILED, SUCCESS, Trajectory
from sslntk.theory import staircase as _sw

__all__ = ["ClosedForm", "solve_closed_form"]

_HI = jax.lax.Precision.HIGHEST


def _check_method(method) -> None:
    form = _methods.require(method, "stepwise_form", "closed_form",
                            "it solves Barlow Twins (theory form) with lam = 1 only; use the "
                            "'ode' or 'eigen' solver")
    lam = form.lam
    if V.is_concrete(lam) and (jnp.ndim(lam) != 0 or float(lam) != 1.0):
        raise ValueError(f"method: solver 'closed_form' solves Barlow Twins with lam = 1 only (the "
                         f"rotation-invariant case of the stepwise theory), got "
                         f"{_methods.method_label(method)} with lam = {jnp.asarray(lam).tolist()}; "
                         f"use the 'ode' or 'eigen' solver")


@dataclasses.dataclass(frozen=True)
class ClosedForm(Solver):
    """Stepwise closed form of Barlow Twins (λ = 1) kernel gradient flow (module docstring).

    Options:
      corrections: the frame rotation and diagonal renormalisation of
        `stepwise.lifted_coefficients` (default True; False gives the bare propagated lift).
    Needs `k <= 2n`. With `K_test_train` and a `State` whose `f_test` is None, f0 is taken to lie
    in the RKHS span of the training views (`f0_test = K_tx K⁻¹ f0`).
    """

    corrections: bool = True
    name = "closed_form"

    def check(self, method, state0) -> None:
        _check_method(method)
        N, k = state0.f.shape
        if k > N:
            raise ValueError(f"f0: expected (2n, k) with k <= 2n (one mode per output at most), "
                             f"got {tuple(state0.f.shape)}")

    def solve(self, K, method, state0, ts, *, K_test_train=None, progress=False) -> Trajectory:
        del progress    # nothing to report: no time stepping
        state0 = _methods.as_state(state0)
        self.check(method, state0)
        traj = _core(K, method, state0.f, ts, K_test_train, state0.f_test,
                     corrections=bool(self.corrections))
        _warn_if_invalid(traj)
        return traj


def solve_closed_form(K, loss, f0, ts, *, K_test_train=None, f0_test=None, progress=False,
                      corrections: bool = True) -> Trajectory:
    """Validate and run `ClosedForm(corrections)` (`f0_test` may be omitted with
    `K_test_train`: f0 is then taken in the RKHS span of the training views)."""
    given = f0_test is not None
    if K_test_train is not None and not given:
        f0_test = jnp.zeros((jnp.shape(K_test_train)[0], jnp.shape(f0)[1]), jnp.asarray(f0).dtype)
    inp = C.validate_inputs(K, loss, f0, ts, K_test_train, f0_test, check_psd_=False)
    state0 = inp.state0 if given else dataclasses.replace(inp.state0, f_test=None)
    return ClosedForm(corrections).solve(inp.K, inp.method, state0, inp.ts,
                                         K_test_train=inp.K_test_train, progress=progress)


def _warn_if_invalid(traj: Trajectory) -> None:
    """Outside jit: say why a closed form FAILED (the status code alone cannot)."""
    if not (V.is_concrete(traj.status) and V.is_concrete(traj.bound)) \
            or isinstance(traj.status, jax.core.Tracer) or int(traj.status) != FAILED:
        return
    warnings.warn(
        f"closed_form: the stepwise closed form is outside its validity (estimated relative error "
        f"bound = {float(traj.bound):.3g}; it needs bound < 1): a component it treats to first "
        f"order (a lower mode competing with a learned direction, a top-k mode missing from f0, "
        f"or f0 outside range(K)) ends as large as the learned embedding, so its curves are "
        f"meaningless here; status FAILED. Use the 'ode' or 'eigen' solver.", RuntimeWarning,
        stacklevel=3)


@functools.partial(jax.jit, static_argnames=("corrections",))
def _core(K, method, f0, ts, K_tx, f0_test, *, corrections):
    N, k = f0.shape
    gam, A, E = _sw.contrastive_modes(K, N)
    P0 = jnp.matmul(A.T, f0, precision=_HI)                                  # (N, k)
    f_null = f0 - jnp.matmul(E, P0, precision=_HI)
    # ‖e_j‖ on the training views: ε weighs each neglected component by its size in f (§ lift)
    lift = _sw.lifted_coefficients(P0, gam, ts, corrections=corrections,
                                   mode_norms=jnp.linalg.norm(E, axis=0))
    PQ = jnp.einsum("tji,oi->tjo", lift.P, lift.init.Q, precision=_HI)       # (T, N, k)
    fs = f_null[None] + jnp.einsum("nj,tjo->tno", E, PQ, precision=_HI)
    f_test = None
    if K_tx is not None:
        KA = jnp.matmul(K_tx, A, precision=_HI)
        base = jnp.zeros((K_tx.shape[0], k), f0.dtype) if f0_test is None else \
            f0_test - jnp.matmul(KA, P0, precision=_HI)
        f_test = base[None] + jnp.einsum("mj,tjo->tmo", KA, PQ, precision=_HI)
    # error estimate: lift's ε plus the frozen null-space part relative to the final embedding size
    gk = gam[:k]
    w = jnp.where(gk > 0, 1.0 / jnp.sqrt(jnp.where(gk > 0, gk, 1.0)), 0.0)
    scale = jnp.linalg.norm(E[:, :k] * w)
    null_rel = jnp.linalg.norm(f_null) / jnp.maximum(scale, jnp.finfo(f0.dtype).tiny)
    bound = jax.lax.stop_gradient(lift.estimate + null_rel)
    lam = method.stepwise_form.lam
    valid = lift.valid & jnp.isfinite(bound) & (bound < 1.0)
    status = jnp.where((jnp.asarray(lam) == 1.0) & valid, SUCCESS, FAILED)
    return C.finish("closed_form", method, ts, _methods.State(f=fs, f_test=f_test), status, 1,
                    bound=bound)
