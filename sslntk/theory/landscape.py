"""Loss landscape of linear SSL models: collapse thresholds, rank laws, imbalance — and the models.

Source: Ziyin, Lubana, Ueda, Tanaka, "What shapes the loss landscape of self-supervised
learning?", ICLR 2023 (arXiv:2210.00638). Every formula here is a derivation for the linear models
the paper studies (checked numerically in tests/test_landscape.py), not a quotation of the paper;
the paper's constants and loss normalisation may differ. The derivation in prose:
docs/theory/collapse.md ("The landscape").

Setup (Ziyin et al. 2023): centred inputs with covariance `A` (d, d), two views `x + ε_a`, `x + ε_b` with
augmentation covariance `B`, view covariance `Σ = A + B`. Models:

- **M1** (one linear layer) `f = W x`, `W: (d_out, d)`;
- **M2** (encoder + projector) `f = U W x`, `W: (h, d)`, `U: (d_out, h)`, `V = U W`.

Canonical landscape (the O(||W||⁴) expansion of dot-product InfoNCE at temperature τ
plus weight decay γ, penalty `γ Σ_l ||W_l||_F²` — optax `add_decayed_weights(2γ)`):

    L1(W)    = −Tr[W A Wᵀ]/τ + ||W Σ Wᵀ||_F²/(2τ²) + γ ||W||_F²
    L2(U, W) = −Tr[V A Vᵀ]/τ + ||V Σ Vᵀ||_F²/(2τ²) + γ (||U||_F² + ||W||_F²)

Thresholds use **unnormalised** (dot-product) logits; cosine-similarity losses have no γ-threshold
(tests/test_landscape.py). The model simulators (`simulate_m1`, `simulate_m2`, `simulate`) are small
jitted full-batch GD loops on these population losses, vmappable over a grid of (A, B, τ, γ).
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk.theory import checks as C

__all__ = [
    "view_covariance",
    "infonce_quartic",
    "spectral_loss",
    "m1_loss",
    "m2_loss",
    "M1Solution",
    "m1_solution",
    "m1_rank",
    "origin_hessian",
    "origin_type",
    "ORIGIN_TYPES",
    "m2_thresholds",
    "m2_direction_loss",
    "m2_magnitude",
    "M2Solution",
    "m2_solution",
    "pair_distance_matrix",
    "wang_isola_matrix",
    "wang_isola_loss",
    "pair_distance_rank",
    "imbalance_variance",
    "imbalance_threshold",
    "imbalance_gamma_c",
    "representation_rank",
    "GDResult",
    "simulate",
    "simulate_m1",
    "simulate_m2",
]

ORIGIN_TYPES = ("local_max", "saddle", "local_min")


# ----------------------------------------------------------------------------------------------
# validation helpers


def _cov_pair(A, B, *, pd_sigma: bool = False):
    A = C.psd("A", A, what="a PSD data covariance")
    B = C.psd("B", B, what="a PSD augmentation covariance")
    if A.shape != B.shape:
        raise ValueError(f"B: expected shape {tuple(A.shape)} (same as A), got {tuple(B.shape)}")
    V.same_dtype(A=A, B=B)
    if pd_sigma and V.is_concrete(A) and V.is_concrete(B):
        ev = np.linalg.eigvalsh(np.asarray(A + B, dtype=np.float64))
        if ev[0] <= 1e3 * float(jnp.finfo(A.dtype).eps) * max(ev[-1], 1e-300):
            raise ValueError(f"A, B: expected Σ = A + B positive definite (the whitening needs "
                             f"Σ^(-1/2)), got smallest eigenvalue {ev[0]:.3g}")
    return A, B


def _weights(name, W, d, rows=None):
    W = V.as_float_array(name, W, ndim=2)
    if W.shape[1] != d:
        raise ValueError(f"{name}: expected shape (rows, {d}) to act on d = {d} inputs, got "
                         f"{tuple(W.shape)}")
    if rows is not None and W.shape[0] != rows:
        raise ValueError(f"{name}: expected {rows} rows, got shape {tuple(W.shape)}")
    return W


def _spectrum(name, a, *, positive=False):
    a = (C.positive if positive else C.nonneg)(name, a)
    return a


def _scalars(**kw):
    out = {}
    for k, v in kw.items():
        out[k] = C.positive(k, v) if k in ("tau",) else C.nonneg(k, v)
    return out


# ----------------------------------------------------------------------------------------------
# losses (the fourth-order expansion around W = 0)


def view_covariance(A, B) -> jax.Array:
    """`Σ = A + B`: covariance of one augmented view (and of a negative) (derived)."""
    A, B = _cov_pair(A, B)
    return A + B


def _mm(X, Y):
    """`X @ Y`; for small matrices (every dim <= 16) as a fused broadcast-multiply-reduce, which XLA
    on CPU runs ~8x faster than a batched dot once vmapped over a phase-diagram grid."""
    if max(X.shape[-2:] + Y.shape[-1:]) > 16:
        return X @ Y
    return jnp.sum(X[..., :, :, None] * Y[..., None, :, :], axis=-2)


def _quad_quartic(V_, A, S, tau):
    VSV = _mm(_mm(V_, S), V_.T)
    return -jnp.sum(V_ * _mm(V_, A)) / tau + jnp.sum(VSV**2) / (2 * tau**2)


def _grad_V(V_, A, S, tau):
    """∇_V of `−Tr[VAVᵀ]/τ + ||VΣVᵀ||²/(2τ²)`: `−2VA/τ + 2(VΣVᵀ)VΣ/τ²`."""
    VS = _mm(V_, S)
    return -2 * _mm(V_, A) / tau + 2 * _mm(_mm(VS, V_.T), VS) / tau**2


def infonce_quartic(W, A, B, tau) -> jax.Array:
    """Fourth-order expansion of dot-product InfoNCE about the collapsed point, minus log N:
    `−Tr[WAWᵀ]/τ + ||WΣWᵀ||_F²/(2τ²)` (derived, leading order in 1/N). Valid only while
    `||WΣWᵀ||/τ ≪ 1` (tests/test_landscape.py: it disagrees with InfoNCE at weight scale ~0.3)."""
    A, B = _cov_pair(A, B)
    W = _weights("W", W, A.shape[0])
    tau = C.positive("tau", tau)
    return _quad_quartic(W, A, A + B, tau)


def spectral_loss(W, A, B) -> jax.Array:
    """Spectral contrastive loss (HaoChen et al. 2021) of the linear model, exact:
    `−2E[f_a·f_b] + E[(f_a·f_j)²] = −2Tr[WAWᵀ] + ||WΣWᵀ||_F²` (derived) — twice the
    InfoNCE quartic at τ = 1 (so its thresholds are those of τ = 1 with γ → γ/2)."""
    A, B = _cov_pair(A, B)
    W = _weights("W", W, A.shape[0])
    return 2 * _quad_quartic(W, A, A + B, 1.0)


@jax.jit
def _m1_loss(W, A, S, tau, gamma):
    return _quad_quartic(W, A, S, tau) + gamma * jnp.sum(W**2)


@jax.jit
def _m2_loss(U, W, A, S, tau, gamma):
    return _quad_quartic(U @ W, A, S, tau) + gamma * (jnp.sum(U**2) + jnp.sum(W**2))


def m1_loss(W, A, B, tau, gamma) -> jax.Array:
    """Canonical M1 landscape `L1(W)` (derived); `W: (d_out, d)`."""
    A, B = _cov_pair(A, B)
    W = _weights("W", W, A.shape[0])
    s = _scalars(tau=tau, gamma=gamma)
    return _m1_loss(W, A, A + B, s["tau"], s["gamma"])


def m2_loss(U, W, A, B, tau, gamma) -> jax.Array:
    """Canonical M2 landscape `L2(U, W)` (derived); `W: (h, d)`, `U: (d_out, h)`."""
    A, B = _cov_pair(A, B)
    W = _weights("W", W, A.shape[0])
    U = _weights("U", U, W.shape[0])
    s = _scalars(tau=tau, gamma=gamma)
    return _m2_loss(U, W, A, A + B, s["tau"], s["gamma"])


# ----------------------------------------------------------------------------------------------
# one layer M1


class M1Solution(NamedTuple):
    """Global minimum of the M1 landscape (derived).

    M: `(d, d)` `W*ᵀW* = τ² Σ^{−1/2} [K]_{+,d_out} Σ^{−1/2}`, `K = Σ^{−1/2}(A/τ − γI)Σ^{−1/2}`.
    W: `(d_out, d)` one minimiser (rows `τ√κ_i v_iᵀ Σ^{−1/2}`; unique up to `W → QW`).
    rank: `min(d_out, #{a_i > γτ})` (Sylvester: #positive eigenvalues of K = of A/τ − γI).
    loss: `−(τ²/2) Σ_kept κ_i²`.
    view_variances: `(d,)` eigenvalues of `W Σ Wᵀ` (augmented-view embedding covariance), descending,
        zero-padded; commuting case `τ(a_i − γτ)₊/(a_i + b_i)`.
    clean_variances: `(d,)` eigenvalues of `W A Wᵀ`, descending; commuting case
        `τ a_i (a_i − γτ)₊/(a_i + b_i)²`.
    """

    M: jax.Array
    W: jax.Array
    rank: jax.Array
    loss: jax.Array
    view_variances: jax.Array
    clean_variances: jax.Array


@partial(jax.jit, static_argnames=("d_out",))
def _m1_solution(A, B, tau, gamma, *, d_out):
    d = A.shape[0]
    Si = C.sym_sqrt(A + B, inverse=True)
    Km = Si @ (A / tau - gamma * jnp.eye(d, dtype=A.dtype)) @ Si
    kappa, Vk = jnp.linalg.eigh((Km + Km.T) / 2)
    kappa, Vk = kappa[::-1], Vk[:, ::-1]
    keep = (kappa > 0) & (jnp.arange(d) < d_out)
    kp = jnp.where(keep, kappa, 0.0)
    M = tau**2 * Si @ ((Vk * kp) @ Vk.T) @ Si
    rows = jnp.sqrt(tau**2 * kp)[:, None] * (Vk.T @ Si)          # (d, d), zero rows dropped below
    W = rows[:d_out] if d_out <= d else jnp.concatenate(
        [rows, jnp.zeros((d_out - d, d), A.dtype)])
    Ah = C.sym_sqrt(A)
    clean = jnp.linalg.eigvalsh(Ah @ M @ Ah)[::-1]
    return M1Solution(M, W, jnp.sum(keep), -(tau**2 / 2) * jnp.sum(kp**2), tau**2 * kp,
                      jnp.clip(clean, 0.0))


def m1_solution(A, B, tau, gamma, d_out: int) -> M1Solution:
    """Closed-form global minimum of the M1 landscape for any (commuting or not) A, B (derived;
    no spurious local minima, every other stationary point is a strict saddle)."""
    A, B = _cov_pair(A, B, pd_sigma=True)
    s = _scalars(tau=tau, gamma=gamma)
    d_out = V.positive_int("d_out", d_out)
    return _m1_solution(A, B, s["tau"].astype(A.dtype), s["gamma"].astype(A.dtype), d_out=d_out)


def m1_rank(a, tau, gamma, d_out: int | None = None) -> jax.Array:
    """Rank law of M1 (derived): `min(d_out, #{i : a_i > γτ})`.

    `a`: `(d,)` eigenvalues of A, or the `(d, d)` matrix A itself. Augmentation (B) never changes it
    under InfoNCE; complete collapse iff `γτ >= a_1`. Broadcasts over τ, γ (leading axes)."""
    a = jnp.linalg.eigvalsh(C.psd("a", a)) if jnp.ndim(a) == 2 else _spectrum("a", a)
    s = _scalars(tau=tau, gamma=gamma)
    thr = (s["gamma"] * s["tau"])[..., None]
    r = jnp.sum(a > thr, axis=-1)
    return r if d_out is None else jnp.minimum(r, V.positive_int("d_out", d_out))


def origin_hessian(a, tau, gamma, d_out: int) -> jax.Array:
    """Eigenvalues of the M1 Hessian at W = 0: `2(γ − a_i/τ)`, each with multiplicity d_out,
    ascending, `(d·d_out,)` (derived)."""
    a = _spectrum("a", a)
    s = _scalars(tau=tau, gamma=gamma)
    d_out = V.positive_int("d_out", d_out)
    return jnp.sort(jnp.repeat(2 * (s["gamma"] - a / s["tau"]), d_out))


def origin_type(a, tau, gamma) -> str:
    """Type of the collapsed point W = 0 of M1 (derived): `"local_max"` if `γτ < a_d`,
    `"saddle"` if `a_d < γτ < a_1`, `"local_min"` (= global minimum, complete collapse) if
    `γτ >= a_1`. Ties `γτ = a_d < a_1` count as saddle (a flat direction, not a maximum)."""
    a = np.asarray(_spectrum("a", a), dtype=np.float64)
    s = _scalars(tau=tau, gamma=gamma)
    g = float(s["gamma"]) * float(s["tau"])
    if g >= a.max():
        return "local_min"
    return "local_max" if g < a.min() else "saddle"


# ----------------------------------------------------------------------------------------------
# encoder + projector M2, commuting A, B given by their eigenvalues a, b


def m2_thresholds(a, b, tau) -> tuple[jax.Array, jax.Array]:
    """Per-direction thresholds of M2 (derived), broadcasting over a, b, τ:

    - collapse threshold (global minimum keeps direction i iff γ < γ_c):
      `γ_c = a/(3(a + b)) · sqrt(2a/(3τ))`;
    - spinodal (a non-zero local minimum exists iff γ < γ_s): `γ_s = 2a/(3(a + b)) · sqrt(a/(3τ))`.

    `γ_c/γ_s = 1/√2`; between them the uncollapsed state is metastable (hysteresis). The origin is a
    local minimum for every γ > 0."""
    a, b = _spectrum("a", a), _spectrum("b", b)
    tau = C.positive("tau", tau)
    s = a + b
    safe = jnp.where(s > 0, s, 1.0)
    gc = jnp.where(s > 0, a / (3 * safe) * jnp.sqrt(2 * a / (3 * tau)), 0.0)
    gs = jnp.where(s > 0, 2 * a / (3 * safe) * jnp.sqrt(a / (3 * tau)), 0.0)
    return gc, gs


def _g(s, a, b, tau, gamma):
    return -a * s**2 / tau + (a + b) ** 2 * s**4 / (2 * tau**2) + 2 * gamma * s


def m2_direction_loss(s, a, b, tau, gamma) -> jax.Array:
    """Per-direction M2 landscape at a balanced point with singular value s of V along direction i:
    `g(s) = −a s²/τ + (a + b)² s⁴/(2τ²) + 2γ s` (derived; the penalty `γ(||U||² + ||W||²)`
    equals `2γ||V||_*` at balance)."""
    s = C.nonneg("s", s)
    a, b = _spectrum("a", a), _spectrum("b", b)
    p = _scalars(tau=tau, gamma=gamma)
    return _g(s, a, b, p["tau"], p["gamma"])


def _magnitude(a, b, tau, gamma):
    # largest positive root of (a+b)² s³/τ² − a s/τ + γ = 0 (trigonometric form of the cubic
    # t³ + P t + Q = 0, P = −aτ/(a+b)², Q = γτ²/(a+b)²); 0 when no such root (γ >= γ_s).
    s2 = jnp.where(a + b > 0, (a + b) ** 2, 1.0)
    P = -a * tau / s2
    Q = gamma * tau**2 / s2
    r = jnp.sqrt(jnp.clip(-P / 3, 0.0))
    arg = jnp.where(r > 0, -Q / (2 * jnp.where(r > 0, r, 1.0) ** 3), -2.0)
    ok = (arg >= -1.0) & (a > 0)
    root = 2 * r * jnp.cos(jnp.arccos(jnp.clip(arg, -1.0, 1.0)) / 3)
    return jnp.where(ok, root, 0.0)


def m2_magnitude(a, b, tau, gamma) -> jax.Array:
    """Learned singular value s* of V along each direction: the largest positive root of
    `(a + b)² s³/τ² − a s/τ + γ = 0` where it exists (γ < γ_s: the non-zero local minimum), else 0
    (derived). Embedding-variance eigenvalue `s*²(a + b)`. Broadcasts."""
    a, b = _spectrum("a", a), _spectrum("b", b)
    p = _scalars(tau=tau, gamma=gamma)
    return _magnitude(a, b, p["tau"], p["gamma"])


class M2Solution(NamedTuple):
    """M2 prediction for commuting A, B (derived); arrays are per direction `(d,)`.

    s: singular values of V at the non-zero local minimum (0 where none, γ >= γ_s).
    kept: bool, direction i present at the global minimum (γ < γ_c and within the rank cap).
    metastable: bool, the non-zero local minimum exists (γ < γ_s; reached from a large init).
    rank: global-minimum rank `min(d_out, h, #{γ < γ_c,i})`; ties under the cap keep the most
        negative `g_i(s_i*)`.
    metastable_rank: rank of the state reached from a large balanced initialisation,
        `min(d_out, h, #{γ < γ_s,i})` (small init + γ > 0 stays at 0).
    loss: global minimum `Σ_kept g_i(s_i*)`.
    view_variances: `s_i*²(a_i + b_i)` on kept directions, else 0.
    """

    s: jax.Array
    kept: jax.Array
    metastable: jax.Array
    rank: jax.Array
    metastable_rank: jax.Array
    loss: jax.Array
    view_variances: jax.Array


@partial(jax.jit, static_argnames=("cap",))
def _m2_solution(a, b, tau, gamma, *, cap):
    s = _magnitude(a, b, tau, gamma)
    g = jnp.where(s > 0, _g(s, a, b, tau, gamma), 0.0)
    neg = g < 0
    order = jnp.argsort(jnp.where(neg, g, jnp.inf), axis=-1)          # most negative first
    rank_of = jnp.argsort(order, axis=-1)
    kept = neg & (rank_of < cap)
    meta = s > 0
    return M2Solution(s, kept, meta, jnp.sum(kept, -1), jnp.minimum(jnp.sum(meta, -1), cap),
                      jnp.sum(jnp.where(kept, g, 0.0), -1),
                      jnp.where(kept, s**2 * (a + b), 0.0))


def m2_solution(a, b, tau, gamma, d_out: int | None = None, h: int | None = None) -> M2Solution:
    """Closed-form M2 prediction per direction for commuting A = diag(a), B = diag(b)
    (derived). Non-commuting A, B have no closed form: simulate with `simulate_m2`.
    `a`, `b`: `(..., d)`; τ, γ broadcast against the leading axes."""
    a, b = _spectrum("a", a), _spectrum("b", b)
    p = _scalars(tau=tau, gamma=gamma)
    d = jnp.shape(a)[-1] if jnp.ndim(a) else 1
    caps = [V.positive_int(nm, v) for nm, v in (("d_out", d_out), ("h", h)) if v is not None]
    cap = min([d] + caps)
    a, b = jnp.broadcast_arrays(jnp.atleast_1d(a), jnp.atleast_1d(b))
    tau_, gam_ = p["tau"][..., None], p["gamma"][..., None]
    return _m2_solution(a, b, tau_, gam_, cap=cap)


# ----------------------------------------------------------------------------------------------
# pair-distance losses


def pair_distance_matrix(A, B, c_plus, c_minus) -> jax.Array:
    """Effective quadratic matrix of the pair-distance family
    `E[l₊(||f_a − f_b||²)] + E[l₋(||f_a − f_j||²)]`: `A_eff = c₋A − (c₊ − c₋)B` with `c₊ = l₊'(0)`,
    `c₋ = −l₋'(0)`; the quadratic part of the loss is `−2Tr[W A_eff Wᵀ]` (derived).
    Augmentation enters the collapse threshold unless `c₊ = c₋`. A_eff may be indefinite."""
    A, B = _cov_pair(A, B)
    cp, cm = C.positive("c_plus", c_plus), C.positive("c_minus", c_minus)
    return cm * A - (cp - cm) * B


def wang_isola_matrix(A, B, lam_t) -> jax.Array:
    """`A_eff = λt A − (1 − λt) B` of Wang–Isola alignment (α = 2) + λ·uniformity(t)
    (derived): `c₊ = 1`, `c₋ = λt`. At γ = 0 direction i collapses iff `b_i/a_i >= λt/(1 − λt)`."""
    return pair_distance_matrix(A, B, 1.0, lam_t)


def wang_isola_loss(W, A, B, lam, t, gamma=0.0) -> jax.Array:
    """Population Wang–Isola loss of the linear model on Gaussian data, exact (derived here from
    the model of Ziyin et al. 2023; derived here):

        E||f_a − f_b||² + λ log E exp(−t||f_a − f_j||²) + γ||W||²
          = 2Tr[W B Wᵀ] − (λ/2) log det(I + 4t W Σ Wᵀ) + γ||W||_F²

    (`x_a − x_b ~ N(0, 2B)`, `x_a − x_j ~ N(0, 2Σ)`). Its quadratic part is `−2Tr[W A_eff Wᵀ]`
    with `A_eff = wang_isola_matrix(A, B, λt)`."""
    A, B = _cov_pair(A, B)
    W = _weights("W", W, A.shape[0])
    lam, t = C.positive("lam", lam), C.positive("t", t)
    gamma = C.nonneg("gamma", gamma)
    return _wang_isola(W, A, B, lam, t, gamma)


@jax.jit
def _wang_isola(W, A, B, lam, t, gamma):
    k = W.shape[0]
    S = A + B
    _, logdet = jnp.linalg.slogdet(jnp.eye(k, dtype=W.dtype) + 4 * t * W @ S @ W.T)
    return 2 * jnp.sum(W * (W @ B)) - lam / 2 * logdet + gamma * jnp.sum(W**2)


def pair_distance_rank(A_eff, gamma=0.0, d_out: int | None = None) -> jax.Array:
    """Rank law under a pair-distance loss with quadratic part `−2Tr[W A_eff Wᵀ]` and penalty
    `γ||W||²`: `min(d_out, #{eig(A_eff) > γ/2})` — the number of unstable directions of the origin
    (derived: "#{eigenvalues of A_eff > γτ}" with the family's normalisation τ = 1/2).
    It is the rank of the global minimum for the quartic landscape and for losses convex in the
    embedding variance such as `wang_isola_loss`."""
    A_eff = C.symmetric("A_eff", A_eff)
    gamma = C.nonneg("gamma", gamma)
    r = jnp.sum(jnp.linalg.eigvalsh(A_eff) > gamma / 2)
    return r if d_out is None else jnp.minimum(r, V.positive_int("d_out", d_out))


# ----------------------------------------------------------------------------------------------
# imbalance


def imbalance_variance(p, delta2, sigma_w2) -> jax.Array:
    """Variance along the class-separating direction of a two-class mixture with fractions p, 1 − p,
    squared mean gap δ² and within-class variance σ_w²: `a_e = σ_w² + p(1 − p)δ²`
    (derived)."""
    p = C.nonneg("p", p)
    if V.is_concrete(p) and np.any(np.asarray(p) > 1):
        raise ValueError(f"p: expected class fractions in [0, 1], got max {np.max(p)}")
    return C.nonneg("sigma_w2", sigma_w2) + p * (1 - p) * C.nonneg("delta2", delta2)


def imbalance_threshold(delta2, sigma_w2, gamma, tau=1.0) -> jax.Array:
    """Minority fraction below which the class direction collapses in M1 (derived):
    `p* = (1 − sqrt(1 − 4(γτ − σ_w²)/δ²))/2`; 0 when `γτ <= σ_w²` (always kept), NaN when
    `4(γτ − σ_w²) > δ²` (collapsed at every p, even balanced)."""
    d2 = C.positive("delta2", delta2)
    sw = C.nonneg("sigma_w2", sigma_w2)
    s = _scalars(tau=tau, gamma=gamma)
    x = 4 * (s["gamma"] * s["tau"] - sw) / d2
    return jnp.where(x <= 0, 0.0, jnp.where(x > 1, jnp.nan, (1 - jnp.sqrt(jnp.clip(1 - x, 0))) / 2))


def imbalance_gamma_c(p, delta2, sigma_w2, b, tau=1.0) -> jax.Array:
    """M2 collapse threshold γ_c of the class direction at minority fraction p (derived):
    `m2_thresholds(a_e(p), b, τ)[0]`."""
    return m2_thresholds(imbalance_variance(p, delta2, sigma_w2), b, tau)[0]


# ----------------------------------------------------------------------------------------------
# rank measurement


def representation_rank(cov, *, rtol: float = 1e-6, scale=None) -> jax.Array:
    """Numerical rank of an embedding covariance `cov: (..., k, k)` (e.g. `W Σ Wᵀ`): the number of
    eigenvalues above `rtol · scale` (a relative threshold on the covariance
    spectrum). `scale` defaults to the largest eigenvalue; pass a problem scale (τ for the
    landscape models, whose embedding variances are at most τ) so that a completely collapsed
    representation counts as rank 0. Batched over leading axes."""
    cov = V.as_float_array("cov", cov)
    if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f"cov: expected (..., k, k) covariances, got shape {tuple(cov.shape)}")
    rtol = C.positive("rtol", rtol)
    ev = jnp.linalg.eigvalsh((cov + jnp.swapaxes(cov, -1, -2)) / 2)
    ref = jnp.max(ev, axis=-1) if scale is None else C.positive("scale", scale)
    return jnp.sum(ev > (rtol * ref)[..., None], axis=-1)


# ----------------------------------------------------------------------------------------------
# simulators: full-batch GD on the population landscapes


class GDResult(NamedTuple):
    """Final state of a GD run. params: the weights (a tuple for M2: (U, W)); loss: final loss;
    grad_norm: final gradient norm (convergence: < 1e-10 in float64); steps: number of
    steps taken. Batched over any vmapped axes."""

    params: object
    loss: jax.Array
    grad_norm: jax.Array
    steps: jax.Array


def _gd_core(loss_fn, params, lr, steps, grad_fn=None, warmup=(0, 0.0)):
    """GD for `steps` steps; the first `warmup[0]` steps use the rate `warmup[1]` (a large init is
    stiff: the quartic term)."""
    g = jax.grad(loss_fn) if grad_fn is None else grad_fn

    def body(i, p):
        eta = jnp.where(i < warmup[0], warmup[1], lr)
        return jax.tree.map(lambda x, d: x - eta * d, p, g(p))

    params = jax.lax.fori_loop(0, steps, body, params)
    grad = g(params)
    gn = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(grad)))
    return GDResult(params, loss_fn(params), gn, steps)


def _m1_grad(W, A, S, tau, gamma):
    return _grad_V(W, A, S, tau) + 2 * gamma * W


def _m2_grad(p, A, S, tau, gamma):
    U, W = p
    GV = _grad_V(_mm(U, W), A, S, tau)
    return (_mm(GV, W.T) + 2 * gamma * U, _mm(U.T, GV) + 2 * gamma * W)


def gd_m1_steps(W0, A, S, tau, gamma, lr, steps):
    """GD on L1 with the hand-written gradient (tested against autodiff); vmappable."""
    return _gd_core(lambda W: _m1_loss(W, A, S, tau, gamma), W0, lr, steps,
                    lambda W: _m1_grad(W, A, S, tau, gamma))


def gd_m2_steps(p0, A, S, tau, gamma, lr, steps, warmup=(0, 0.0)):
    return _gd_core(lambda p: _m2_loss(p[0], p[1], A, S, tau, gamma), p0, lr, steps,
                    lambda p: _m2_grad(p, A, S, tau, gamma), warmup)


def _checked(res: GDResult, who: str, lr) -> GDResult:
    """Outside jit: a GD run whose loss or gradient is not finite diverged (lr too large for the
    curvature); warn instead of handing back NaN silently."""
    if not (V.is_concrete(res.loss) and V.is_concrete(res.grad_norm)):
        return res
    ok = np.isfinite(np.asarray(res.loss)) & np.isfinite(np.asarray(res.grad_norm))
    if not ok.all():
        warnings.warn(f"{who}: GD diverged (loss or gradient not finite in {int((~ok).sum())} of "
                      f"{ok.size} runs) at lr = {np.asarray(lr).max():.3g}; reduce lr (stable for "
                      f"lr·curvature < 2)", RuntimeWarning, stacklevel=3)
    return res


_gd_m1_jit = jax.jit(gd_m1_steps)      # `steps` is traced: new step counts do not recompile
_gd_m2_jit = jax.jit(gd_m2_steps)


@partial(jax.jit, static_argnames=("loss_fn",))
def _gd_jit(loss_fn, params, args, lr, steps):
    return _gd_core(lambda p: loss_fn(p, *args), params, lr, steps)


def simulate(loss_fn, params, args, lr, steps: int) -> GDResult:
    """Full-batch GD `p ← p − lr ∇_p loss_fn(p, *args)` for `steps` steps (one jitted
    `fori_loop`); time = lr × steps. `loss_fn` must be a hashable pure function (module-level);
    `jax.vmap` over `params`/`args`/`lr` works. Use `simulate_m1`/`simulate_m2` for the canonical
    landscapes."""
    steps = V.positive_int("steps", steps)
    lr = C.positive("lr", lr)
    return _checked(_gd_jit(loss_fn, params, tuple(args), lr, steps), "simulate", lr)


def simulate_m1(A, B, tau, gamma, W0, lr, steps: int) -> GDResult:
    """GD on the M1 landscape from `W0: (d_out, d)` (the M1 model), with the analytic gradient
    `−2WA/τ + 2(WΣWᵀ)WΣ/τ² + 2γW` (checked against autodiff by the closed-form tests). Traceable:
    `jax.vmap(lambda g: simulate_m1(A, B, τ, g, W0, lr, steps))(gammas)` runs a sweep in one call;
    `sslntk.phase` does whole grids. Stable for `lr · ||Hessian||` < 2 (curvature at the minimum
    <= 4a_1/τ; lr 0.002–0.01 works for the test problems). Called outside jit, a diverged run (loss or
    gradient not finite: lr too large) warns (RuntimeWarning) instead of returning NaN silently."""
    A, B = _cov_pair(A, B)
    W0 = _weights("W0", W0, A.shape[0])
    V.same_dtype(A=A, B=B, W0=W0)
    s = _scalars(tau=tau, gamma=gamma)
    steps = V.positive_int("steps", steps)
    lr = C.positive("lr", lr)
    return _checked(_gd_m1_jit(W0, A, A + B, s["tau"], s["gamma"], lr, steps), "simulate_m1", lr)


def simulate_m2(A, B, tau, gamma, U0, W0, lr, steps: int) -> GDResult:
    """GD on the M2 landscape from `(U0: (d_out, h), W0: (h, d))` (the M2 model); params of the
    result are `(U, W)`. A small init with γ > 0 stays collapsed; a large one reaches the
    metastable branch (hysteresis). Like `simulate_m1`, a diverged run (non-finite loss or
    gradient) warns outside jit (RuntimeWarning)."""
    A, B = _cov_pair(A, B)
    W0 = _weights("W0", W0, A.shape[0])
    U0 = _weights("U0", U0, W0.shape[0])
    V.same_dtype(A=A, B=B, W0=W0, U0=U0)
    s = _scalars(tau=tau, gamma=gamma)
    steps = V.positive_int("steps", steps)
    lr = C.positive("lr", lr)
    return _checked(_gd_m2_jit((U0, W0), A, A + B, s["tau"], s["gamma"], lr, steps),
                    "simulate_m2", lr)
