"""Stepwise Barlow Twins: the exactly solvable kernel/linear model of Simon et al. (ICML 2023).

Simon, Knutins, Ziyin, Geisz, Fetterman & Albrecht, "On the stepwise nature of self-supervised
learning", ICML 2023: Barlow Twins (off-diagonal weight λ = 1) gradient flow from a small
initialisation learns one eigendirection at a time, with logistic steps whose times are set by the
eigenvalues of the cross-view correlation; the result kernelises. The formulas here are re-derived
for this library's conventions (prefactors follow from the loss and the flow below; each is checked
numerically in tests/test_stepwise.py) and written out in ``docs/theory/stepwise.md``. Notation:
``γ_j`` are the eigenvalues of the contrastive matrix (the paper writes λ_j); ``λ`` is the Barlow
Twins off-diagonal weight, which must be 1 for this closed form.

Model. Stacked views ``[a_1..a_n, b_1..b_n]`` (N = 2n), kernel ``K (N, N)`` of one output
(``docs/concepts.md``), embeddings ``f (N, k)``, ``C = fᵀ Z f / 2n``, ``L = ‖C − I‖_F²`` (BT theory
form, λ = 1), kernel gradient flow ``df/dt = −K ∇_f L = −(2/n) K Z f (C − I)``.

**Reduction to the linear model.** Put ``f = K^{1/2} h``. Then ``dh/dt = −4 M h (C − I)`` and
``C = hᵀ M h`` with ``M = K^{1/2} Z K^{1/2} / 2n``: the paper's linear model with ``W = hᵀ`` and
the feature cross-correlation ``Γ = M``. Let ``M = Σ_j γ_j b_j b_jᵀ`` (descending) and
``a_j = K^{-1/2} b_j`` — equivalently ``(Z K / 2n) a_j = γ_j a_j`` with ``a_jᵀ K a_j = 1``
(`sslntk.linalg.contrastive_eigenpairs`, the one solver of this eigenproblem). The eigenfunctions
``g_j(x) = a_jᵀ k_X(x)`` take the values ``e_j = K a_j`` on the training views, and

    f(t) = Σ_j e_j p_j(t)ᵀ,      p_j = a_jᵀ f = (W V)_{:, j}        (mode coefficients, (N, k))

so the linear model's ``W(0) V_d`` is ``(A_kᵀ f0)ᵀ = f0ᵀ A_k`` (``A_k = [a_1..a_k]``), and every
linear-model formula holds with ``γ_j = eig(M)``. A component of ``f0`` outside ``range(K)`` is
frozen by the flow (``df/dt ∈ range K``); it is not representable here and is reported by
`sslntk.dynamics`' closed form as part of its error estimate.

**Aligned solution (exact).** If ``W(0) V = U diag(s(0)) E_Sᵀ`` (orthogonal ``U``, modes in a set S,
zero elsewhere), then with ``c_j = γ_j s_j²``

    c_j(t) = 1 / (1 + (1/c_j(0) − 1) e^{−8 γ_j t}),        s_j(t) = s_j(0) exp(4 γ_j τ_j(t)),
    τ_j(t) = ∫₀ᵗ (1 − c_j) = t − ln(1 + c_j(0) (e^{8γ_j t} − 1)) / (8 γ_j)       (`effective_time`),
    t_j = ln(1/c_j(0) − 1) / (8 γ_j)   (c_j = 1/2; ≈ ln(1/α)/(4 γ_j) for s_j(0) = α),
    L(t) = Σ_j (1 − c_j(t))²           (plateaus k, k−1, …; modes with γ_j ≤ 0 are never learned).

**Random small initialisation (QR-effective).** ``W(0) V_k = Q R`` (Gram–Schmidt of the mode columns
in decreasing γ); ``s_j,eff = R_jj`` (signed), ``U ≈ Q``, ``c_j(0) = γ_j R_jj²``
(`effective_init`). This is the α → 0 limit; the step times it predicts are within 0.5 % at
α ≤ 1e-4 (tests/test_stepwise.py).

**Final embedding (α → 0).** ``f(x) = k_X(x)ᵀ A_k Γ_k^{-1/2} Uᵀ`` — kernel PCA of the contrastive
kernel ``K^Γ(x, x') = k_X(x)ᵀ Z k_X(x') / 2n`` in the RKHS geometry of K (`final_embedding`); on
the training views ``E_k Γ_k^{-1/2} Uᵀ`` with ``E_k = K A_k``.

**Lifted trajectory (`lifted_coefficients`, used by the ``closed_form`` solver).** Every mode
coefficient obeys ``dp_j/dt = −4 γ_j (C − I) p_j``; given ``C(t) = Q diag(c(t)) Qᵀ`` its exact
propagator is ``Q diag(exp(4 γ_j τ_i(t))) Qᵀ``. The lift propagates every component of ``f0`` (all N
modes, in the output frame Q) with it, plus a first-order frame rotation for the learned pairs and a
diagonal renormalisation; see `lifted_coefficients` for what is exact and what is approximate.

The eigenproblem is `sslntk.linalg.contrastive_eigenpairs` (dense, traceable); see
`contrastive_modes`. `stepwise` and `final_embedding` refuse a kernel that is not positive
semi-definite with the rule and message of `sslntk.dynamics.solve`, from the eigenvalues of K that
this decomposition computes anyway.

All functions are pure and jittable, accept float32/float64 (computations in the input dtype) and are
differentiable (w.r.t. α = scale of f0 and K) away from degenerate spectra.

    >>> import jax, jax.numpy as jnp
    >>> from sslntk import theory
    >>> K = jnp.eye(8) + 0.5 * jnp.roll(jnp.eye(8), 4, axis=1) + 0.5 * jnp.roll(jnp.eye(8), 4, 0)
    >>> f0 = 1e-3 * jax.random.normal(jax.random.PRNGKey(0), (8, 2))
    >>> theory.stepwise(K, f0, 2).step_times.shape
    (2,)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk import linalg

__all__ = [
    "StepwiseResult",
    "EffectiveInit",
    "LiftedCoefficients",
    "stepwise",
    "logistic_c",
    "effective_time",
    "step_time",
    "step_width",
    "effective_init",
    "lifted_coefficients",
    "final_embedding",
    "loss_curve",
    "contrastive_modes",
    "default_times",
]

_LN81 = math.log(81.0)
_HI = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------
# Per-mode closed forms (broadcasting, any shapes)


def _logistic_parts(t, gamma, c0):
    """``(c(t), τ(t))`` of the logistic mode, without overflow or cancellation for any t ≥ 0.

    With ``x = 8 γ t``: for ``x > 0``, ``D = c0 + (1 − c0) e^{−x}``, ``c = c0 / D``,
    ``τ = −ln D / (8 γ)``; for ``x ≤ 0`` (γ < 0 with ``c0 = γ s² ≤ 0``), ``E = 1 + c0 expm1(x)``,
    ``c = c0 eˣ / E``, ``τ = t − ln E / (8 γ)``; ``τ = t (1 − c0)`` for γ = 0. ``D, E > 0`` for every
    consistent pair (c0 ≥ 0 with γ ≥ 0, or c0 ≤ 0 with γ ≤ 0); unselected branches get safe
    arguments so that `jnp.where` leaks no NaN gradients."""
    t, gamma, c0 = jnp.broadcast_arrays(*map(jnp.asarray, (t, gamma, c0)))
    dtype = jnp.result_type(t, gamma, c0, float)
    t, gamma, c0 = (a.astype(dtype) for a in (t, gamma, c0))
    fi = jnp.finfo(dtype)
    zero = gamma == 0
    g = jnp.where(zero, 1.0, gamma)
    x = 8.0 * g * t
    pos = x > 0
    # x > 0 (em = e^{-x} − 1 ∈ (−1, 0]); the `where`s keep each branch's argument in its domain
    xp = jnp.where(pos, x, 0.0)
    em = jnp.expm1(-xp)
    D = jnp.maximum(c0 + (1.0 - c0) * jnp.exp(-xp), fi.tiny)       # not 1 + em: cancellation
    near1 = D > 0.5
    lnD = jnp.where(near1, jnp.log1p(jnp.maximum((1.0 - c0) * em, -0.5)), jnp.log(D))
    c_pos = c0 / D
    tau_pos = -lnD / (8.0 * g)
    # x <= 0: E = 1 + c0 (e^x − 1)
    xn = jnp.where(pos, 0.0, x)
    E_m1 = jnp.maximum(c0 * jnp.expm1(xn), -1.0 + fi.eps)
    c_neg = c0 * jnp.exp(xn) / (1.0 + E_m1)
    tau_neg = t - jnp.log1p(E_m1) / (8.0 * g)
    c = jnp.where(zero, c0, jnp.where(pos, c_pos, c_neg))
    tau = jnp.where(zero, t * (1.0 - c0), jnp.where(pos, tau_pos, tau_neg))
    return c, tau


@jax.jit
def logistic_c(t, gamma, c0):
    """Embedding eigenvalue of an aligned mode, ``c(t) = 1 / (1 + (1/c0 − 1) e^{−8 γ t})`` (aligned solution).

    Solves ``dc/dt = 8 γ c (1 − c)``, ``c(0) = c0``. Broadcasts ``t``, ``gamma`` and ``c0``. Stable for
    any t ≥ 0 (no overflow), for ``c0 = 0`` (stays 0: a saddle), for ``γ < 0`` (with ``c0 = γ s² ≤ 0``
    the mode decays to 0; it is never learned) and for ``γ = 0`` (constant).
    """
    return _logistic_parts(t, gamma, c0)[0]


@jax.jit
def effective_time(t, gamma, c0):
    """``τ(t) = ∫₀ᵗ (1 − c(s)) ds = t − ln(1 + c0 (e^{8γt} − 1)) / (8 γ)`` for the logistic ``c``.

    The time an aligned mode has spent "below saturation": its singular value is
    ``s(t) = s(0) exp(4 γ τ(t))``, and any component ``p`` of another mode ``j`` lying in the same
    output direction evolves as ``p(t) = p(0) exp(4 γ_j τ(t))`` (exact, given this ``c``). As
    ``t → ∞`` (γ > 0): ``τ → −ln(c0)/(8 γ)``. For ``γ = 0``: ``τ = t (1 − c0)``.
    """
    return _logistic_parts(t, gamma, c0)[1]


@jax.jit
def step_time(gamma, c0):
    """Time at which an aligned mode crosses ``c = 1/2``: ``t = ln(1/c0 − 1) / (8 γ)`` (aligned solution).

    ``+inf`` when the mode is never learned (``γ ≤ 0`` or ``c0 ≤ 0``); ``−inf`` when it starts at or
    above saturation (``c0 ≥ 1``); negative for ``1/2 < c0 < 1`` (crossed before t = 0). With
    ``s(0) = α → 0``: ``t ≈ ln(1/(γ α²)) / (8 γ) ≈ ln(1/α) / (4 γ)``.
    """
    gamma, c0 = jnp.broadcast_arrays(*map(jnp.asarray, (gamma, c0)))
    learn = (gamma > 0) & (c0 > 0) & (c0 < 1)
    g = jnp.where(learn, gamma, 1.0)
    c = jnp.where(learn, c0, 0.25)
    t = jnp.log(1.0 / c - 1.0) / (8.0 * g)
    never = (gamma <= 0) | (c0 <= 0)
    return jnp.where(learn, t, jnp.where(never, jnp.inf, -jnp.inf))


@jax.jit
def step_width(gamma):
    """10 %→90 % rise time of a learned mode, ``ln(81) / (8 γ)`` (independent of c0); inf for γ ≤ 0."""
    gamma = jnp.asarray(gamma)
    pos = gamma > 0
    return jnp.where(pos, _LN81 / (8.0 * jnp.where(pos, gamma, 1.0)), jnp.inf)


@jax.jit
def loss_curve(c):
    """Predicted BT loss ``L = Σ_j (1 − c_j)²`` from embedding eigenvalues ``c (..., k)``."""
    return jnp.sum((1.0 - c) ** 2, axis=-1)


# ----------------------------------------------------------------------------------------------
# Effective (QR) initialisation


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class EffectiveInit:
    """QR-effective aligned initial condition (small random initialisation, module docstring).

    Attributes:
      c0: ``(k,)`` effective initial embedding eigenvalues ``γ_j R_jj²``.
      s0: ``(k,)`` signed effective singular values ``R_jj``.
      Q: ``(k_out, k)`` output frame (Gram–Schmidt of the mode columns, decreasing γ).
      R: ``(k, k)`` upper-triangular factor, ``W(0) V_k = Q R``.
    """

    c0: jax.Array
    s0: jax.Array
    Q: jax.Array
    R: jax.Array

    @property
    def rotation(self) -> jax.Array:
        """The output rotation ``U`` (``(k_out, k)``): ``Q diag(sign R_jj)``, so that ``s_j > 0``."""
        sgn = jnp.where(self.s0 < 0, -1.0, 1.0).astype(self.Q.dtype)
        return self.Q * sgn


def effective_init(proj, gammas) -> EffectiveInit:
    """QR-effective initial values (small random initialisation, generalised to function space).

    Args:
      proj: ``(k_out, k)`` the projection of the initialisation on the top-k eigendirections, ordered
        by decreasing γ: ``W(0) V_k`` in the linear model (``V_k`` = top-k eigenvectors of Γ), or
        ``f0ᵀ A_k`` in the kernel model (``A_k`` from `contrastive_modes`; = ``(Bᵀ K^{-1/2} f0)ᵀ``).
        Requires ``k <= k_out``.
      gammas: ``(k,)`` the matching eigenvalues (descending).

    Returns:
      `EffectiveInit` with ``proj = Q R`` (reduced QR), ``s0 = diag R`` and ``c0 = γ s0²``. For an
      aligned initialisation (orthogonal columns) ``R`` is diagonal and the result is exact.
    """
    proj = V.as_float_array("proj", proj, ndim=2)
    gammas = V.as_float_array("gammas", gammas, ndim=1)
    k_out, k = proj.shape
    if k > k_out:
        raise ValueError(f"proj: expected shape (k_out, k) with k <= k_out (no more learned modes "
                         f"than outputs), got {tuple(proj.shape)}")
    if gammas.shape != (k,):
        raise ValueError(f"gammas: expected shape ({k},) to match proj {tuple(proj.shape)}, got "
                         f"{tuple(gammas.shape)}")
    return _effective_init(proj, gammas)


@jax.jit
def _effective_init(proj, gammas):
    Q, R = jnp.linalg.qr(proj, mode="reduced")
    s0 = jnp.diagonal(R)
    return EffectiveInit(c0=gammas * s0**2, s0=s0, Q=Q, R=R)


# ----------------------------------------------------------------------------------------------
# The contrastive eigenproblem (delegated: sslntk.linalg owns it)


def contrastive_modes(K, m: int):
    """Top-``m`` contrastive eigenpairs ``(γ (m,), A (N, m), E (N, m))``, descending, with
    ``(Z K / 2n) A = A diag(γ)``, ``Aᵀ K A = I`` and ``E = K A`` (eigenfunction values on the training
    views). A view of `sslntk.linalg.contrastive_eigenpairs` (dense ``eigh``, the one solver of the
    eigenproblem ``M = K^{1/2} Z K^{1/2} / 2n``); K is trusted to be PSD (`stepwise` checks it).

        >>> import jax.numpy as jnp
        >>> gam, A, E = contrastive_modes(jnp.eye(4), 2)
        >>> [round(float(g), 3) for g in gam]
        [0.25, 0.25]
    """
    # always all N pairs (the dense eigh computes them anyway): one compilation per kernel size
    r = linalg.contrastive_eigenpairs(K)
    return r.values[:m], r.coef[:, :m], r.lift[:, :m]


def _checked_modes(K, m: int):
    """`contrastive_modes` plus the PSD rule of `sslntk.dynamics.solve` (`_validate.psd_error`),
    applied to the eigenvalues of K that the dense decomposition computes anyway (no second
    decomposition); skipped for traced K (under jit/vmap values are unknown)."""
    r = linalg.contrastive_eigenpairs(K)
    lam = r.kernel_values
    if V.is_concrete(lam):
        lo, hi = float(lam[-1]), float(lam[0])
        tol = V.psd_tolerance(K.shape[0], K.dtype, hi)
        if not np.isfinite(lo) or lo < -tol:
            raise V.psd_error("K", lo, hi, tol)         # exact, from the eigendecomposition
    return r.values[:m], r.coef[:, :m], r.lift[:, :m]


# ----------------------------------------------------------------------------------------------
# Lifted trajectory of all mode coefficients


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class LiftedCoefficients:
    """Mode-coefficient trajectory in the output frame Q (see `lifted_coefficients`).

    Attributes:
      P: ``(T, N, k)`` coefficients ``P[t, j, i]`` of mode j along output direction ``q_i``; the
        embedding is ``f(t) = E P[t] Qᵀ`` (kernel) or ``W(t) = Q P[t]ᵀ Vᵀ`` (linear model).
      init: the `EffectiveInit` (Q, R, c0, s0) of the top-k block.
      c: ``(T, k)`` logistic embedding eigenvalues of the QR-effective aligned trajectory.
      estimate: scalar, estimated relative error of rotation-invariant quantities (0 when aligned).
      valid: bool scalar, the lift is inside its first-order regime: ``estimate < 1`` (finite) and
        the diagonal renormalisation (iii) stays in range (``δ_i c_i < 1`` at every time). Outside
        it the neglected components end as large as the learned ones and the curves are not even
        qualitative (measured: loss 97 instead of 0 at ε = 3.6); `sslntk.dynamics`' closed form
        then reports FAILED.
    """

    P: jax.Array
    init: EffectiveInit
    c: jax.Array
    estimate: jax.Array
    valid: jax.Array


def lifted_coefficients(P0, gammas, ts, *, corrections: bool = True,
                        mode_norms=None) -> LiftedCoefficients:
    """Closed-form trajectory of ALL mode coefficients from a QR-effective aligned staircase.

    Args:
      P0: ``(N, k)`` initial mode coefficients, one row per eigenmode in DECREASING γ order
        (``Aᵀ f0`` in the kernel model, ``(W(0) V)ᵀ`` in the linear model); ``k <= N`` outputs.
      gammas: ``(N,)`` eigenvalues, descending.
      ts: ``(T,)`` times.
      corrections: apply the first-order frame rotation (ii) and the second-order diagonal
        renormalisation (iii) below (default True; False gives the bare propagated lift (i)).
      mode_norms: optional ``(N,)`` norms of the modes where the result is used (``‖e_j‖ = ‖K a_j‖``
        on the training views in the kernel model); ``estimate`` then weighs the component of
        mode j along direction i by ``min(1, ‖e_j‖/‖e_i‖)``. Default None: coefficient (RKHS)
        norms, as in the linear model. Without it, round-off modes of an ill-conditioned K
        (``‖e_j‖ ~ 1e-7``, coefficients ~1e7 × larger than their effect on f) dominate ε
        (measured ε = 195 for a lift accurate to 1e-4).

    Construction. ``P0[:k]ᵀ = Q R`` (`effective_init`); in the frame Q, ``P̃0 = P0 Q`` and its top block
    is ``Rᵀ`` (lower triangular: mode j has components along ``q_1..q_j`` only). With
    ``c_i(t)`` = logistic(γ_i, c0_i = γ_i R_ii²) and ``τ_i`` = `effective_time`:

      (i)   ``P̃[j, i](t) = P̃0[j, i] · exp(4 γ_j τ_i(t))`` for every mode j ≥ i (all N modes) — the exact
            propagator of ``dp_j/dt = −4 γ_j (C − I) p_j`` when ``C(t) = Q diag(c(t)) Qᵀ``. The
            diagonal gives the aligned solution ``s_i(t)``; the lower modes give the α^gap
            contamination of a random initialisation (they grow as ``e^{4γ_j t}`` while
            ``C ≈ 0`` and freeze at ``P̃0[j, i] c0_i^{−γ_j / 2γ_i}`` once direction i has
            saturated; γ_j ≤ 0 modes decay).
      (ii)  frame rotation, for learned pairs ``j < i <= k`` (mode j learned first, direction i
            later): ``P̃[j, i](t) = −γ_i P̃[i, j] s_i s_j |_0^t`` (``s = diag P̃``). This is the
            quasi-static solution of ``C_ji = 0``: the off-diagonal penalty rotates the earlier
            mode to stay Γ-orthogonal to the later one (relaxation rate 4 γ_j c_j ≫ the later
            mode's). Without it the early components of mode i along ``q_j`` leave a spurious
            ``C_ji ≠ 0`` (Gram errors ~10× larger, final loss ≠ 0).
      (iii) diagonal renormalisation: ``s_i ← s_i √((1 − δ_i c_i) / (1 − δ_i(0) c_i(0)))`` with
            ``δ_i = Σ_{j≠i} γ_j P̃[j, i]²`` the other modes' share of ``C_ii``; then
            ``C_ii = c_i + δ_i (1 − c_i²)`` saturates at exactly 1 as the true flow does
            (halves the loss and eig(C) errors).

    Exactness. If the initialisation is aligned (``P̃0`` has no off-diagonal entries: orthogonal
    columns in the top-k block and no other modes) (ii) and (iii) vanish and the result is the
    exact aligned solution at every time; ``f(0) = f0`` always. Otherwise the off-diagonal
    components are treated to first order in their size and their back-reaction on the logistic
    staircase is neglected. ``estimate`` is their final relative size,
    ``ε = max_{j ≠ i, γ_i > 0} |P̃0[j, i]| c0_i^{−γ_j / 2γ_i} √γ_i`` (≈ α^{(γ_i − γ_j)/γ_i} for the
    nearest pair; the O(α^gap) subspace error of a random start), ``inf`` when a positive-γ
    direction has ``c0 = 0``. Measured on the linear model with the spectrum `REF_A` of
    tests/test_stepwise.py (float64 RK4; α = 1e-2, 1e-3, 1e-4, 1e-6, 1e-8 × 3 seeds, whole
    trajectory):
    relative Frobenius error of the embedding Gram ≤ 0.35 ε (≈ 0.07 ε for α ≤ 1e-4), eig(C) error
    ≤ 0.46 ε, loss error ≤ 0.33 ε; the errors scale like ε (first order, small constant).
    ``estimate`` is an empirical error estimate, not a rigorous bound. ``valid`` is False when
    ``estimate ≥ 1`` (or not finite) or the renormalisation (iii) leaves its range; the curves are
    then meaningless (a lower mode's component outgrows the learned one: with ``c0_i = γ_i R_ii²``
    tiny, a mode j with γ_j ≈ γ_i grows by ``c0_i^{−γ_j/2γ_i}`` along direction i).

    Numerics: the logistic ``c_i`` and ``τ_i`` never form ``e^{8γt}`` (`logistic_c`), and the
    propagator exponent ``4 γ_j τ_i ≤ −(γ_j/2γ_i) ln c0_i`` is bounded in t, so every t ≥ 0 is
    finite in float32 and float64; ``c0`` underflowing to 0 (``γ α² < tiny``) gives ε = inf.
    """
    P0 = V.as_float_array("P0", P0, ndim=2)
    gammas = V.as_float_array("gammas", gammas, ndim=1)
    ts = V.as_float_array("ts", jnp.asarray(ts, P0.dtype), ndim=1)
    N, k = P0.shape
    if gammas.shape != (N,):
        raise ValueError(f"gammas: expected shape ({N},) to match P0 {tuple(P0.shape)}, got "
                         f"{tuple(gammas.shape)}")
    if k > N:
        raise ValueError(f"P0: expected (N, k) with k <= N, got {tuple(P0.shape)}")
    if mode_norms is not None:
        mode_norms = V.as_float_array("mode_norms", jnp.asarray(mode_norms, P0.dtype), ndim=1)
        if mode_norms.shape != (N,):
            raise ValueError(f"mode_norms: expected shape ({N},) to match P0 {tuple(P0.shape)}, "
                             f"got {tuple(mode_norms.shape)}")
    return _lift(P0, gammas, ts, corrections=bool(corrections), mode_norms=mode_norms)


@functools.partial(jax.jit, static_argnames=("corrections",))
def _lift(P0, gammas, ts, *, corrections: bool, mode_norms=None):
    N, k = P0.shape
    gk = gammas[:k]
    init = _effective_init(P0[:k].T, gk)
    Pt0 = jnp.matmul(P0, init.Q, precision=_HI)                          # (N, k)
    tau = effective_time(ts[:, None], gk[None, :], init.c0[None, :])      # (T, k)
    keep = jnp.arange(N)[:, None] >= jnp.arange(k)[None, :]               # mode j >= direction i
    expo = jnp.where(keep[None], 4.0 * gammas[None, :, None] * tau[:, None, :], 0.0)
    P = jnp.where(keep[None], Pt0[None] * jnp.exp(expo), 0.0)             # (T, N, k)
    c = logistic_c(ts[:, None], gk[None, :], init.c0[None, :])
    in_range = jnp.asarray(True)
    if corrections:
        if k > 1:
            P = P.at[:, :k, :].add(_frame_rotation(P[:, :k, :], gk)
                                   - _frame_rotation(Pt0[None, :k, :], gk))
        diag = jnp.eye(N, k, dtype=bool)
        delta = jnp.einsum("tji,j->ti", jnp.where(diag[None], 0.0, P) ** 2, gammas,
                           precision=_HI)
        delta0 = jnp.einsum("ji,j->i", jnp.where(diag, 0.0, Pt0) ** 2, gammas, precision=_HI)
        floor = jnp.finfo(P.dtype).eps
        num, den = 1.0 - delta * c, 1.0 - delta0 * init.c0
        # (iii) needs C_ii = c_i + δ_i (1 − c_i²) ≤ 1 reachable, i.e. δ_i c_i < 1
        in_range = jax.lax.stop_gradient(jnp.all(num > floor) & jnp.all(den > floor))
        fac = jnp.sqrt(jnp.maximum(num, floor) / jnp.maximum(den, floor))
        P = jnp.where(diag[None], P * fac[:, None, :], P)
    est = _estimate(Pt0, gammas, init.c0, mode_norms)
    valid = jnp.isfinite(est) & (est < 1.0) & in_range
    return LiftedCoefficients(P=P, init=init, c=c, estimate=est, valid=valid)


def _frame_rotation(Pk, gk):
    """``B[t, j, i] = −γ_i Pk[t, i, j] s_i s_j`` for ``j < i`` (zero elsewhere); ``s = diag Pk``."""
    k = gk.shape[0]
    s = jnp.diagonal(Pk, axis1=-2, axis2=-1)                              # (T, k)
    a_T = jnp.swapaxes(Pk, -1, -2)                                        # [t, j, i] = Pk[t, i, j]
    B = -gk[None, None, :] * a_T * s[:, None, :] * s[:, :, None]
    upper = jnp.arange(k)[:, None] < jnp.arange(k)[None, :]
    return jnp.where(upper[None], B, 0.0)


def _estimate(Pt0, gammas, c0, mode_norms=None):
    """ε of `lifted_coefficients` (stop-gradient: a diagnostic, not a differentiable output)."""
    Pt0, gammas, c0 = map(jax.lax.stop_gradient, (Pt0, gammas, c0))
    N, k = Pt0.shape
    gi = gammas[:k]
    learned = (gi > 0) & (c0 > 0)
    ci = jnp.where(learned, c0, 0.5)
    g = jnp.where(learned, gi, 1.0)
    # final growth exp(4 γ_j τ_i(∞)) = c0_i^{-γ_j/(2 γ_i)}, in logs to avoid overflow
    log_growth = -gammas[:, None] / (2.0 * g[None, :]) * jnp.log(ci)[None, :]
    rows = jnp.arange(N)[:, None]
    cols = jnp.arange(k)[None, :]
    off = (rows > cols) & learned[None, :]
    tiny = jnp.finfo(Pt0.dtype).tiny
    logv = jnp.log(jnp.maximum(jnp.abs(Pt0), tiny)) + log_growth + 0.5 * jnp.log(g)[None, :]
    if mode_norms is not None:
        # weight min(1, ‖e_j‖/‖e_i‖): the component's size where it is used, never above ε_RKHS
        ln = jnp.log(jnp.maximum(jax.lax.stop_gradient(mode_norms), tiny))
        logv = logv + jnp.minimum(0.0, ln[:, None] - ln[None, :k])
    logv = jnp.where(off, logv, -jnp.inf)
    eps = jnp.exp(jnp.max(logv))
    # A direction that can never saturate (γ_i > 0 with c0_i = 0) makes the estimate meaningless.
    degenerate = jnp.any((gi > 0) & (c0 <= 0))
    return jnp.where(degenerate, jnp.inf, eps)


# ----------------------------------------------------------------------------------------------
# Final embedding (kernel PCA of the contrastive kernel)


def final_embedding(K, k: int, *, K_test_train=None, rotation=None):
    """α → 0 final embedding of BT (λ = 1) gradient flow (Simon et al. 2023), kernel PCA of ``K^Γ``.

    ``f(x) = k_X(x)ᵀ A_k Γ_k^{-1/2} Uᵀ`` (test points) and ``E_k Γ_k^{-1/2} Uᵀ`` (training views);
    modes with ``γ_j ≤ 0`` are never learned and contribute 0. ``U`` (``rotation``, ``(k_out, k)``
    orthonormal columns) is set by the initialisation and not identifiable (the loss is rotation
    invariant); default ``I_k``. Compare rotation-invariant quantities (Gram matrices).

    Returns ``(f_train (N, k_out), f_test (m, k_out) or None)``.
    """
    K = V.square_kernel("K", K)
    k = V.positive_int("k", k)
    N = K.shape[0]
    if k > N:
        raise ValueError(f"k: expected 1 <= k <= N = {N}, got {k}")
    gam, A, E = _checked_modes(K, k)
    if K_test_train is not None:
        K_test_train = _cross_kernel(K_test_train, N)
    return _final(gam, A, E, K_test_train, rotation)


def _final(gam, A, E, K_tx, rotation):
    pos = gam > 0
    w = jnp.where(pos, 1.0 / jnp.sqrt(jnp.where(pos, gam, 1.0)), 0.0)
    Rt = jnp.eye(gam.shape[0], dtype=E.dtype) if rotation is None else rotation.T
    f_tr = jnp.matmul(E * w, Rt, precision=_HI)
    f_te = None if K_tx is None else jnp.matmul(jnp.matmul(K_tx, A, precision=_HI) * w, Rt,
                                                precision=_HI)
    return f_tr, f_te


def _cross_kernel(K_tx, N):
    K_tx = V.as_float_array("K_test_train", K_tx, ndim=2)
    if K_tx.shape[1] != N:
        raise ValueError(f"K_test_train: expected shape (m, 2n) = (m, {N}), got "
                         f"{tuple(K_tx.shape)}")
    return K_tx


# ----------------------------------------------------------------------------------------------
# The stepwise prediction


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class StepwiseResult:
    """Stepwise (α → 0 / QR-effective) prediction for BT (λ = 1) kernel gradient flow.

    Attributes:
      gammas: ``(k,)`` top-k eigenvalues of ``M = K^{1/2} Z K^{1/2}/2n`` (descending).
      gamma_next: scalar ``γ_{k+1}`` (``−inf`` when k = N); the final-subspace gap is
        ``(γ_k − γ_{k+1}) / γ_k`` (`relative_gap`).
      c0: ``(k,)`` QR-effective initial embedding eigenvalues ``γ_j R_jj²``.
      s0: ``(k,)`` signed effective initial singular values ``R_jj``.
      rotation: ``(k_out, k)`` output rotation ``U = Q diag(sign R_jj)``.
      step_times: ``(k,)`` ``ln(1/c0_j − 1) / (8 γ_j)`` (inf when never learned).
      step_widths: ``(k,)`` 10–90 % rise times ``ln 81 / (8 γ_j)``.
      n_learned: int scalar, number of modes with γ_j > 0 (and c0_j > 0) among the top k.
      ts: ``(T,)`` times of the curves (given, or a default grid over the whole staircase).
      c: ``(T, k)`` predicted eigenvalues of C (logistic curves).
      loss: ``(T,)`` predicted loss ``Σ_j (1 − c_j)² + (k_out − k)``.
      plateaus: ``(k+1,)`` ideal plateau values ``k_out − min(j, n_learned)``, j = 0..k (the loss
        between step j and step j+1 as α → 0).
      f_final: ``(N, k_out)`` final embedding of the training views (α → 0; kernel PCA).
      f_final_test: ``(m, k_out)`` final embedding of test points, or None.
      modes: ``(N, k)`` eigenfunction values on the training views, ``E_k = K A_k``.
    """

    gammas: jax.Array
    gamma_next: jax.Array
    c0: jax.Array
    s0: jax.Array
    rotation: jax.Array
    step_times: jax.Array
    step_widths: jax.Array
    n_learned: jax.Array
    ts: jax.Array
    c: jax.Array
    loss: jax.Array
    plateaus: jax.Array
    f_final: jax.Array
    f_final_test: jax.Array | None = None
    modes: jax.Array | None = None

    @property
    def relative_gap(self) -> jax.Array:
        """``(γ_k − γ_{k+1}) / γ_k``: the final subspace is within ~α^gap of the top-k one."""
        return (self.gammas[-1] - self.gamma_next) / self.gammas[-1]


def default_times(step_times, gammas, num: int = 256):
    """A time grid ``[0, t_end]`` covering the whole staircase: ``t_end = max_j (t_j + 3 ln81/8γ_j)``
    over learned modes (each c_j is then within ~1e-5 of 1); ``1/|γ_1|`` if none is learned."""
    fin = jnp.isfinite(step_times) & (gammas > 0)
    ends = jnp.where(fin, step_times + 3.0 * step_width(gammas), -jnp.inf)
    t_end = jnp.max(ends)
    fallback = 1.0 / jnp.maximum(jnp.abs(gammas[0]), jnp.finfo(gammas.dtype).tiny)
    t_end = jnp.where(jnp.isfinite(t_end) & (t_end > 0), t_end, fallback)
    return jnp.linspace(0.0, 1.0, num, dtype=gammas.dtype) * t_end


def stepwise(K, f0, k: int | None = None, *, ts=None, K_test_train=None) -> StepwiseResult:
    """Stepwise theory of BT (λ = 1) kernel gradient flow from ``f0`` (Simon et al. 2023, ICML).

    Args:
      K: ``(2n, 2n)`` kernel over stacked views ``[a_1..a_n, b_1..b_n]``, positive semi-definite
        (the reduction uses ``K^{+1/2}``; null directions below round-off are dropped). A K with an
        eigenvalue below ``−max(N, 10)·eps·λ_max`` is refused with the message of
        `sslntk.dynamics.solve` (checked on the eigenvalues this function computes anyway).
      f0: ``(2n, k_out)`` initial embeddings (e.g. ``α · g_θ₀(X)``, or a draw of
        ``kernels.initial_function(K_nngp, k, α, key)``).
      k: number of modes to predict, ``1 <= k <= k_out`` (default ``k_out``). With ``k < k_out`` the
        curves are valid only up to step k+1 (the loss counts the other directions as c = 0).
      ts: ``(T,)`` times ≥ 0 for the curves (default: 256 points over the whole staircase).
      K_test_train: ``(m, 2n)`` cross kernel; then ``f_final_test`` is the final embedding there.

    Returns a `StepwiseResult`. The initial values come from the QR construction (module
    docstring) applied to ``f0ᵀ A_k = W(0) V_k``; exact for an aligned initialisation, the α → 0
    limit otherwise (step times within 0.5 % at α ≤ 1e-4). Times are in units of
    learning-rate × steps of the flow ``df/dt = −K ∇_f L``. See ``docs/theory/stepwise.md``.

    Example (two positive pairs per mode; ``sslntk.theory.stepwise`` is this function):

        >>> import jax, jax.numpy as jnp
        >>> from sslntk import theory
        >>> K = jnp.eye(8) + 0.5 * (jnp.roll(jnp.eye(8), 4, 0) + jnp.roll(jnp.eye(8), 4, 1))
        >>> f0 = 1e-3 * jax.random.normal(jax.random.PRNGKey(0), (8, 2))
        >>> res = theory.stepwise(K, f0, 2)
        >>> res.loss.shape, res.plateaus.tolist()
        ((256,), [2.0, 1.0, 0.0])
    """
    K = V.square_kernel("K", K)
    N = K.shape[0]
    if N % 2 or N < 4:
        raise ValueError(f"K: expected stacked views with an even size 2n >= 4, got {tuple(K.shape)}")
    f0 = V.stacked_views("f0", f0, ndim=2)
    if f0.shape[0] != N:
        raise ValueError(f"f0: expected shape (2n, k) = ({N}, k) to match K {tuple(K.shape)}, got "
                         f"{tuple(f0.shape)}")
    k_out = f0.shape[1]
    k = k_out if k is None else V.positive_int("k", k)
    if k > k_out or k > N:
        raise ValueError(f"k: expected 1 <= k <= min(k_out, 2n) = {min(k_out, N)} (one mode per "
                         f"output dimension at most), got {k}")
    if K_test_train is not None:
        K_test_train = _cross_kernel(K_test_train, N)
    V.same_dtype(K=K, f0=f0, K_test_train=K_test_train)
    if ts is not None:
        ts = V.as_float_array("ts", jnp.asarray(ts, K.dtype), ndim=1)
        if V.is_concrete(ts) and ts.size and np.any(np.asarray(ts) < 0):
            raise ValueError(f"ts: expected times >= 0, got min {np.min(ts)}")
    m = min(k + 1, N)
    gam, A, E = _checked_modes(K, m)
    return _stepwise(gam, A, E, f0, ts, K_test_train, k=k)


@functools.partial(jax.jit, static_argnames=("k",))
def _stepwise(gam, A, E, f0, ts, K_tx, *, k):
    k_out = f0.shape[1]
    gk = gam[:k]
    gnext = gam[k] if gam.shape[0] > k else jnp.asarray(-jnp.inf, gam.dtype)
    init = _effective_init(jnp.matmul(f0.T, A[:, :k], precision=_HI), gk)
    t_step = step_time(gk, init.c0)
    if ts is None:
        ts = default_times(t_step, gk)
    c = logistic_c(ts[:, None], gk[None, :], init.c0[None, :])
    loss = loss_curve(c) + (k_out - k)
    learned = (gk > 0) & (init.c0 > 0)
    n_learned = jnp.sum(learned).astype(jnp.int32)
    plateaus = (k_out - jnp.minimum(jnp.arange(k + 1), n_learned)).astype(gam.dtype)
    rot = init.rotation
    f_tr, f_te = _final(gk, A[:, :k], E[:, :k], K_tx, rot)
    return StepwiseResult(gammas=gk, gamma_next=gnext, c0=init.c0, s0=init.s0, rotation=rot,
                          step_times=t_step, step_widths=step_width(gk), n_learned=n_learned,
                          ts=ts, c=c, loss=loss, plateaus=plateaus, f_final=f_tr, f_final_test=f_te,
                          modes=E[:, :k])

