"""Representation metrics: spectra, rank measures, alignment/uniformity, stability, step times and
principal angles.

Conventions (`docs/concepts.md`):

- **Batched over time.** Every function takes any number of leading batch axes (time, seeds, grid
  points): `f: (..., N, k)` → `(...,)` or `(..., k)`. `f[t]` of a trajectory's `(T, 2n, k)` is one
  frame; a whole trajectory is one call.
- **Stacked views.** Functions that need the positive pairs (`alignment`, `uniformity`,
  `cross_correlation_spectrum`, `group_views`) take `(..., 2n, k)` in the order
  `[a_1..a_n, b_1..b_n]`; those that need several augmentations per sample (`stability`, `lidar`,
  `center_vector`, `sample_means`) take grouped `(..., N, K, d)`; `group_views` converts.
- **dtype-preserving, jittable.** float32 in, float32 out; every function can be called inside
  `jax.jit`/`jax.vmap`. Options that change shapes or branches (`center`, `stacked`, `normalize`,
  `fit_range`) are Python values; numeric constants (ε, δ, α, t, rtol, min_final) may be traced,
  e.g. vmapped over a sweep. Value checks (NaN/inf, full column rank, increasing times) run only on
  concrete arrays at the API boundary; shape/dtype checks always run.
- **Undefined is NaN, documented.** An entropy rank of an all-zero spectrum (e.g. the embeddings
  of an α = 0 initialisation, or a constant matrix after centring) is NaN, never 0/0 by accident:
  means are taken relative to the first sample, so a constant input centres to exact zeros.

Sources: Jha et al. 2024 (centre-vector stability of SSL representations), Simon et al. 2023
(the stepwise paper: which "embedding eigenvalues"), and the metric papers named per function.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import logsumexp, xlogy

from sslntk import _validate as V
from sslntk.losses import cross_correlation as _cc_2d

__all__ = [
    "BELOW_THRESHOLD",
    "LEARNED",
    "NO_RISE",
    "UNDEFINED",
    "Stability",
    "alignment",
    "alpha_req",
    "center_vector",
    "STEP_REASONS",
    "STEP_THRESHOLD",
    "Steps",
    "cross_correlation",
    "cross_correlation_spectrum",
    "detect_steps",
    "effective_rank",
    "embedding_spectrum",
    "group_views",
    "lidar",
    "principal_angles",
    "rankme",
    "sample_means",
    "stability",
    "step_times",
    "uniformity",
]


# ---------------------------------------------------------------------------------------------
# validation (on top of sslntk._validate; every check names the argument)


def _batched(name: str, x, *, core: str, min_rows: int = 2, finite: bool = True) -> jax.Array:
    """Float array of shape `(..., *core)`; the axis before the last (`N`) needs >= `min_rows`."""
    arr = V.as_float_array(name, x, finite=finite)
    ncore = len(core.split(","))
    if arr.ndim < ncore:
        raise ValueError(f"{name}: expected rank >= {ncore}, shape (..., {core}), got shape "
                         f"{tuple(arr.shape)}")
    if arr.shape[-1] < 1:
        raise ValueError(f"{name}: expected a last axis of size >= 1, shape (..., {core}), "
                         f"got shape {tuple(arr.shape)}")
    if arr.shape[-2] < min_rows:
        ax = core.split(",")[-2].strip()
        raise ValueError(f"{name}: expected at least {min_rows} samples along {ax} (axis -2) of "
                         f"shape (..., {core}), got shape {tuple(arr.shape)}")
    return arr


def _embeddings(name: str, f) -> jax.Array:
    """`(..., N, k)` with N >= 2."""
    return _batched(name, f, core="N, k")


def _stacked(name: str, f) -> jax.Array:
    """`(..., 2n, k)` in stacked view order with n >= 2 (as `_validate.stacked_views`, on axis -2)."""
    arr = _batched(name, f, core="2n, k")
    if arr.shape[-2] % 2 or arr.shape[-2] < 4:
        raise ValueError(f"{name}: expected stacked views [a_1..a_n, b_1..b_n] with an even "
                         f"axis -2 of size 2n >= 4, shape (..., 2n, k), got shape "
                         f"{tuple(arr.shape)}")
    return arr


def _grouped(name: str, z, *, min_views: int) -> jax.Array:
    """`(..., N, K, d)` with N >= 2 samples and K >= `min_views` views each."""
    arr = V.as_float_array(name, z)
    if arr.ndim < 3:
        raise ValueError(f"{name}: expected rank >= 3, shape (..., N, K, d) (N samples x K "
                         f"augmentations x d dims), got shape {tuple(arr.shape)}")
    N, K, d = arr.shape[-3:]
    if N < 2:
        raise ValueError(f"{name}: expected at least 2 samples N (axis -3) of shape (..., N, K, d), "
                         f"got shape {tuple(arr.shape)}")
    if K < min_views:
        raise ValueError(f"{name}: expected at least {min_views} augmentations K (axis -2) of "
                         f"shape (..., N, K, d), got shape {tuple(arr.shape)}")
    if d < 1:
        raise ValueError(f"{name}: expected d >= 1 (axis -1), got shape {tuple(arr.shape)}")
    return arr


def _flag(name: str, v) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {v!r}")
    return bool(v)


# ---------------------------------------------------------------------------------------------
# shared numerics


def _mean(x: jax.Array, axis: int) -> jax.Array:
    """Mean along `axis` (kept), taken relative to the first entry: exact for constant input, so a
    constant array centres to exact zeros (not to round-off that an entropy would call 'rank')."""
    x0 = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    return x0 + jnp.mean(x - x0, axis=axis, keepdims=True)


def _center(x: jax.Array, axis: int) -> jax.Array:
    return x - _mean(x, axis)


def _unit_rows(f: jax.Array) -> jax.Array:
    """`f / ||f||` along the last axis (rescaled first, so tiny embeddings do not underflow).
    All-zero rows stay zero, as `torch.nn.functional.normalize` leaves them."""
    m = jnp.max(jnp.abs(f), axis=-1, keepdims=True)
    g = f / jnp.where(m > 0, m, 1)
    nrm = jnp.linalg.norm(g, axis=-1, keepdims=True)
    return g / jnp.where(nrm > 0, nrm, 1)


def _pad_last(x: jax.Array, size: int) -> jax.Array:
    """Zero-pad the last axis to `size` (spectra of N < k samples have only N values)."""
    extra = size - x.shape[-1]
    return x if extra <= 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])


def _entropy_rank(values: jax.Array, eps) -> jax.Array:
    """`exp(-Σ p_i log p_i)`, `p_i = v_i / ||v||_1 + eps` over the last axis (0 log 0 = 0).

    The shared core of effective rank (eps = 0), RankMe and LiDAR. NaN where `Σ v = 0`."""
    total = jnp.sum(values, axis=-1, keepdims=True)
    ok = total > 0
    p = values / jnp.where(ok, total, 1) + eps
    h = -jnp.sum(xlogy(p, p), axis=-1)
    return jnp.where(ok[..., 0], jnp.exp(h), jnp.nan)


def _singular_values(x: jax.Array) -> jax.Array:
    return jnp.linalg.svd(x, compute_uv=False)


# The computational cores below are jitted (static options), so an eager call is one compiled
# program per input shape instead of dozens of op-by-op dispatches; inside a caller's jit they inline.


@partial(jax.jit, static_argnames=("center",))
def _covariance_spectrum(f: jax.Array, center: bool) -> jax.Array:
    x = _center(f, -2) if center else f
    ev = _singular_values(x) ** 2 / f.shape[-2]
    return _pad_last(ev, f.shape[-1])


# ---------------------------------------------------------------------------------------------
# spectra


def embedding_spectrum(f, *, center: bool = True) -> jax.Array:
    """Eigenvalues (descending) of the embedding covariance, `(..., N, k)` → `(..., k)`.

    `Σ = (1/N) Σ_i (f_i − f̄)(f_i − f̄)ᵀ` with `f̄ = (1/N) Σ_i f_i` (`center=True`, Jing et al. 2022,
    Jha et al. 2024), or the uncentred second moment `(1/N) Σ_i f_i f_iᵀ` (`center=False`). Computed as
    `σ²/N` from the singular values σ of the (centred) `(N, k)` matrix, not by `eigh` of `Σ`, so
    small eigenvalues keep their relative accuracy (a rank-r input has k − r eigenvalues at
    ~(eps·σ_max)²/N). When N < k the missing eigenvalues are exact zeros.

    This is the "embedding covariance" of the stepwise paper's ResNet experiments (Simon et al.
    2023); for the eigenvalues the stepwise theory predicts (→ 1 each), see
    `cross_correlation_spectrum` (Simon et al. 2023: the two agree only if Σ and Γ commute).
    """
    f = _embeddings("f", f)
    return _covariance_spectrum(f, _flag("center", center))


def cross_correlation(f) -> jax.Array:
    """Symmetrised, uncentred cross-view correlation, stacked views `(..., 2n, k)` → `(..., k, k)`.

    `C = (f_aᵀ f_b + f_bᵀ f_a) / (2n)` with `f_a = f[..., :n, :]`, `f_b = f[..., n:, :]` (Simon et
    al. 2023, Sec. 3; `sslntk.losses.cross_correlation` of one frame), validated like every metric
    (`f` needs an even number 2n >= 4 of rows, finite values) and batched over leading axes.

    Example:
        >>> f = np.random.default_rng(0).normal(size=(8, 3))
        >>> cross_correlation(f).shape
        (3, 3)
    """
    return _cross_correlation(_stacked("f", f))


@jax.jit
def _cross_correlation(f):
    fa, fb = _split(f)
    n2 = f.shape[-2]
    ab = jnp.swapaxes(fa, -1, -2) @ fb
    return (ab + jnp.swapaxes(ab, -1, -2)) / n2


@jax.jit
def _cc_spectrum(f):
    lead = f.shape[:-2]
    flat = f.reshape((-1,) + f.shape[-2:])
    ev = jax.vmap(lambda x: jnp.linalg.eigvalsh(_cc_2d(x))[::-1])(flat)
    return ev.reshape(lead + f.shape[-1:])


def cross_correlation_spectrum(f) -> jax.Array:
    """Eigenvalues (descending) of the stepwise theory's cross-correlation, `(..., 2n, k)` → `(..., k)`.

    `C = (f_aᵀ f_b + f_bᵀ f_a) / (2n)` (`sslntk.losses.cross_correlation`; `docs/concepts.md`;
    Simon et al. 2023: eig(C) follows the logistic
    `1/(1 + (1/c_j(0) − 1) e^{−8γ_j t})` and tends to 1 for each learned mode). Uncentred and not
    standardised (Simon et al. 2023). C is symmetric but may be indefinite: eigenvalues can be
    negative.
    """
    return _cc_spectrum(_stacked("f", f))


# ---------------------------------------------------------------------------------------------
# rank measures


def effective_rank(f, *, center: bool = False) -> jax.Array:
    """Effective rank of Roy & Vetterli (EUSIPCO 2007), `(..., N, k)` → `(...,)`.

    `erank(F) = exp(−Σ_i p_i log p_i)`, `p_i = σ_i / Σ_j σ_j`, σ the `min(N, k)` singular values of F
    (0 log 0 = 0; no ε). With `center=True` F is first centred over the N samples, which makes the
    measure blind to the mean (then `σ_i = sqrt(N λ_i)` with λ from `embedding_spectrum`).
    1 ≤ erank ≤ min(N, k); 1 for an exactly rank-one F. For i.i.d. isotropic Gaussian rows,
    erank ≈ k (1 − k/(8N)) (Marchenko–Pastur spread of σ). NaN when all σ are 0 (F = 0, or a
    constant F with `center=True`: Jha et al. 2024). RankMe (`rankme`) is this with ε = 1e-7.
    """
    return _effective_rank(_embeddings("f", f), _flag("center", center))


@partial(jax.jit, static_argnames=("center",))
def _effective_rank(f, center):
    return _entropy_rank(_singular_values(_center(f, -2) if center else f), 0.0)


def rankme(f, *, eps: float = 1e-7) -> jax.Array:
    """RankMe (Garrido, Balestriero, Najman, LeCun, ICML 2023), `(..., N, k)` → `(...,)`.

    `p_k = σ_k(Z) / ||σ(Z)||_1 + ε`, `RankMe(Z) = exp(−Σ_{k=1}^{min(N,K)} p_k log p_k)` on the raw
    embeddings, **no centring** (Jha et al. 2024; ε = 1e-7 as in common implementations, the paper's value
    is not pinned down: record it with results). RankMe is therefore sensitive to the mean: an
    isotropic N(0, I_128) batch shifted by +5 per coordinate drops from ≈ 127.8 to ≈ 52.8 (Jha
    et al. 2024); the mean-blind variant is `effective_rank(f, center=True)`. A rank-one matrix
    gives
    ≈ 1 + (min(N,k) − 1)·ε·|log ε| (1.0002 for k = 128, check 10). NaN for an all-zero matrix.
    The paper estimates it from 25,600 samples; compare only runs of the same method.
    """
    f = _embeddings("f", f)
    V.positive_float("eps", eps, allow_zero=True)
    return _rankme(f, eps)


@jax.jit
def _rankme(f, eps):
    return _entropy_rank(_singular_values(f), eps)


def alpha_req(f, *, fit_range: tuple[int, int] | None = None, rtol=None) -> jax.Array:
    """α-ReQ decay coefficient (Agrawal, Mondal, Ghosh, Richards, NeurIPS 2022), `(..., N, k)` → `(...,)`.

    Fits a power law `λ_i ∝ i^{−α}` to the eigenvalues λ_1 ≥ … ≥ λ_k of the centred embedding
    covariance (`embedding_spectrum(f)`; the paper's "eigenspectrum of the empirical feature
    covariance") by ordinary least squares of `log λ_i` on `log i`, and returns `α = −slope`.

    The fit details here are ours. `fit_range=(lo, hi)` restricts to 1-based ranks lo..hi
    inclusive (default: all k);
    the authors' library (reptrix) fits ranks 6..100 with 1/i weights, which matters for wide
    embeddings and is a different estimator. Eigenvalues at or below `rtol·λ_1` are left out of the
    fit (numerically zero: default `rtol = (max(N, k)·eps)²`, eps of the dtype, since σ_i, not λ_i,
    is accurate to ~eps·σ_1). NaN when fewer than two eigenvalues remain.
    """
    f = _embeddings("f", f)
    k = f.shape[-1]
    if k < 2:
        raise ValueError(f"f: expected k >= 2 embedding dimensions (a power law is fitted to at "
                         f"least two eigenvalues), got shape {tuple(f.shape)}")
    pair = (1, k) if fit_range is None else tuple(np.atleast_1d(np.asarray(fit_range, dtype=object)))
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 for v in pair):
        raise TypeError(f"fit_range: expected a pair of integer ranks (lo, hi), got {fit_range!r}")
    lo, hi = (int(v) for v in pair)
    if not 1 <= lo < hi <= k:
        raise ValueError(f"fit_range: expected 1 <= lo < hi <= k = {k} (1-based ranks), "
                         f"got {fit_range!r}")
    if rtol is None:
        rtol = float(max(f.shape[-2], k) * jnp.finfo(f.dtype).eps) ** 2
    V.positive_float("rtol", rtol, allow_zero=True)
    return _alpha_req(f, lo, hi, rtol)


@jax.jit
def _alpha_req(f, lo, hi, rtol):
    k = f.shape[-1]
    lam = _covariance_spectrum(f, True)
    ranks = jnp.arange(1, k + 1, dtype=f.dtype)
    w = ((ranks >= lo) & (ranks <= hi) & (lam > rtol * lam[..., :1])).astype(f.dtype)
    x = jnp.log(ranks)
    y = jnp.log(jnp.where(w > 0, lam, 1))
    cnt = jnp.sum(w, axis=-1, keepdims=True)
    safe = jnp.where(cnt > 0, cnt, 1)
    xc = x - jnp.sum(w * x, axis=-1, keepdims=True) / safe
    yc = y - jnp.sum(w * y, axis=-1, keepdims=True) / safe
    sxx = jnp.sum(w * xc * xc, axis=-1)
    slope = jnp.sum(w * xc * yc, axis=-1) / jnp.where(sxx > 0, sxx, 1)
    return jnp.where(cnt[..., 0] >= 2, -slope, jnp.nan)


def lidar(e, *, delta: float = 1e-4, eps: float = 1e-8) -> jax.Array:
    """LiDAR (Thilak et al., ICLR 2024), `e: (..., n, q, d)` → `(...,)`.

    Input: `n` source samples (the surrogate classes, n >= 2), `q` augmentations of each (q >= 2),
    `d`-dim embeddings; `group_views` turns stacked `(2n, d)` views into `(n, 2, d)`. With plug-in
    means (Jha et al. 2024):
    `μ_x = (1/q) Σ_j e_xj`, `μ = (1/n) Σ_x μ_x`, `Σ_b = (1/n) Σ_x (μ_x − μ)(μ_x − μ)ᵀ`,
    `Σ_w = (1/(nq)) Σ_x Σ_j (e_xj − μ_x)(e_xj − μ_x)ᵀ + δ I_d`,
    `Σ_lda = Σ_w^{−1/2} Σ_b Σ_w^{−1/2}` with eigenvalues λ_1..λ_d,
    `p_i = λ_i / ||λ||_1 + ε`, `LiDAR = exp(−Σ_i p_i log p_i)`.
    δ = 1e-4, ε = 1e-8 as in stable-pretraining (reptrix uses 1e-6 / 1e-7; the paper's values were
    not confirmed: record them with results). The eigenvalues are computed as the squared singular
    values of `L⁻¹ Bᵀ` (Σ_w = L Lᵀ Cholesky, Σ_b = BᵀB), which has the same spectrum.

    LiDAR ≤ min(d, n − 1) up to ε, is invariant to rescaling `e` when δ is negligible against Σ_w,
    and is ≈ d for pure isotropic noise *and* for a collapsed representation plus tiny noise (Jha et al.
    2024): never use it alone as a collapse detector. NaN for a constant input (Σ_b = 0).
    With `delta=0` Σ_w must be full rank (else NaN from the Cholesky factor).
    """
    e = _grouped("e", e, min_views=2)
    V.positive_float("delta", delta, allow_zero=True)
    V.positive_float("eps", eps, allow_zero=True)
    return _lidar(e, delta, eps)


@jax.jit
def _lidar(e, delta, eps):
    n, q, d = e.shape[-3:]
    mu_x = _mean(e, -2)                                       # (..., n, 1, d)
    within = (e - mu_x).reshape(e.shape[:-3] + (n * q, d))
    between = _center(mu_x[..., 0, :], -2) / math.sqrt(n)       # B, Σ_b = BᵀB
    sw = jnp.swapaxes(within, -1, -2) @ within / (n * q) + delta * jnp.eye(d, dtype=e.dtype)
    chol = jnp.linalg.cholesky(sw)
    x = solve_triangular(chol, jnp.swapaxes(between, -1, -2), lower=True)  # (..., d, n)
    lam = _pad_last(_singular_values(x) ** 2, d)
    return _entropy_rank(lam, eps)


# ---------------------------------------------------------------------------------------------
# alignment / uniformity (Wang & Isola, ICML 2020; Jha et al. 2024)


def _split(f):
    n = f.shape[-2] // 2
    return f[..., :n, :], f[..., n:, :]


def group_views(f) -> jax.Array:
    """Stacked views `(..., 2n, k)` `[a_1..a_n, b_1..b_n]` → grouped `(..., n, 2, k)` (`[..., i, 0]` is
    `a_i`, `[..., i, 1]` is `b_i`), the input layout of `stability`, `lidar`, `center_vector`."""
    return _group_views(_stacked("f", f))


@jax.jit
def _group_views(f):
    return jnp.stack(_split(f), axis=-2)


def alignment(f, *, alpha: float = 2.0) -> jax.Array:
    """Alignment loss of Wang & Isola (ICML 2020), stacked views `(..., 2n, k)` → `(...,)`.

    `L_align = (1/n) Σ_i ||z_{a_i} − z_{b_i}||_2^α`, `z = f / ||f||_2` (rows projected onto the unit
    sphere as the authors' code does; an all-zero row stays zero), default α = 2 (Jha et al. 2024).
    0 for exact duplicate views (to round-off). With α = 2: `mean_i z_{a_i}·z_{b_i} = 1 − L_align/2`
    (Jha et al. 2024).
    """
    f = _stacked("f", f)
    V.positive_float("alpha", alpha)
    return _alignment(f, alpha)


@jax.jit
def _alignment(f, alpha):
    za, zb = _split(_unit_rows(f))
    d2 = jnp.sum((za - zb) ** 2, axis=-1)
    return jnp.mean(d2 ** (alpha / 2), axis=-1)


def _pair_uniformity(z: jax.Array, t) -> jax.Array:
    """`log mean_{i<j} exp(−t ||z_i − z_j||²)` over the rows of `(..., M, k)`."""
    m = z.shape[-2]
    y = _center(z, -2)        # distances are shift-invariant; a collapsed batch gives exact zeros
    g = y @ jnp.swapaxes(y, -1, -2)
    sq = jnp.diagonal(g, axis1=-2, axis2=-1)
    d2 = jnp.maximum(sq[..., :, None] + sq[..., None, :] - 2 * g, 0)
    upper = jnp.triu(jnp.ones((m, m), dtype=bool), k=1)
    v = jnp.where(upper, -t * d2, -jnp.inf)
    return logsumexp(v, axis=(-2, -1)) - math.log(m * (m - 1) / 2)


def uniformity(f, *, t: float = 2.0, stacked: bool = True) -> jax.Array:
    """Uniformity loss of Wang & Isola (ICML 2020), `(..., M, k)` → `(...,)`.

    `L_uniform(t) = log mean_{i<j} exp(−t ||z_i − z_j||_2²)`, `z = f / ||f||_2`, over distinct pairs
    (`torch.pdist`, no self-pairs), default t = 2 (Jha et al. 2024). With `stacked=True` (default) `f` is
    stacked views `(..., 2n, k)` and the result is the mean of the two views' uniformities, as in
    the authors' training code (`(uniform(x) + uniform(y)) / 2`), so positive pairs are never
    counted as independent; `stacked=False` pools all M rows (e.g. test points `(m, k)`).
    0 for a collapsed batch; for z uniform on S^{k−1}, `−2t + log E[e^{2t u}]`, u = z·z'
    (−3.9375 for k = 128, −3.875 for k = 64 at t = 2, Jha et al. 2024). Memory O(M²).
    """
    V.positive_float("t", t)
    stacked = _flag("stacked", stacked)
    return _uniformity(_stacked("f", f) if stacked else _embeddings("f", f), t, stacked)


@partial(jax.jit, static_argnames=("stacked",))
def _uniformity(f, t, stacked):
    z = _unit_rows(f)
    if stacked:
        za, zb = _split(z)
        return (_pair_uniformity(za, t) + _pair_uniformity(zb, t)) / 2
    return _pair_uniformity(z, t)


# ---------------------------------------------------------------------------------------------
# stability (Jha et al. 2024: centre vector and per-sample augmentation means)


class Stability(NamedTuple):
    """Centre-vector diagnostics of Jha et al. (Jha et al. 2024), each `(...,)`.

    With `z_nk` the (L2-normalised) embedding of view k of sample n, `μ̂_n = (1/K) Σ_k z_nk`,
    `ŝ = (1/N) Σ_n μ̂_n`:

    - `center_norm`: `||ŝ||`, the centre-vector magnitude (plug-in; ≈ 1/sqrt(N) floor).
    - `center_norm_sq_u`: `||s||²_U = (1/(N(N−1))) Σ_{n≠m} μ̂_n·μ̂_m` (unbiased for `||s||²`).
    - `mean_norm`: `E_n ||μ̂_n||` (plug-in; biased up by augmentation noise, ≈ 1/sqrt(K) without
      invariance).
    - `mean_norm_sq`: `E_n ||μ̂_n||²` (plug-in).
    - `mean_norm_sq_u`: `E_n ||μ_n||²_U`, `||μ_n||²_U = (1/(K(K−1))) Σ_{k≠l} z_nk·z_nl` (unbiased;
      ≈ 0 without invariance, 1 for perfect invariance; `= mean_n z_n1·z_n2` for K = 2).
    - `ratio`: `R = ||ŝ|| / E_n ||μ̂_n||` ∈ [0, 1] (Jensen), 1 iff complete collapse.
    - `trace_between`: `tr Σ̂_b = (1/N) Σ_n ||μ̂_n − ŝ||²` (= `E||μ||² − ||s||²`, identities 3–4).
    - `trace_within`: `tr Σ̂_w = (1/(NK)) Σ_{n,k} ||z_nk − μ̂_n||²`.

    ANOVA identity (plug-in, exact): `center_norm² + trace_between + trace_within = mean ||z||²`
    (= 1 on the sphere, check 4). Triplet loss with dot-product similarity over all pairs:
    `L_tri = −(mean_norm_sq_u − center_norm_sq_u)`.
    """

    center_norm: jax.Array
    center_norm_sq_u: jax.Array
    mean_norm: jax.Array
    mean_norm_sq: jax.Array
    mean_norm_sq_u: jax.Array
    ratio: jax.Array
    trace_between: jax.Array
    trace_within: jax.Array


@partial(jax.jit, static_argnames=("normalize", "center"))
def _group_means(z, normalize, center):
    """`μ̂: (..., N, d)`, or `ŝ: (..., d)` with `center=True`."""
    mu = _mean(_unit_rows(z) if normalize else z, -2)[..., 0, :]
    return _mean(mu, -2)[..., 0, :] if center else mu


def sample_means(z, *, normalize: bool = True) -> jax.Array:
    """Per-sample expected representation over augmentations, `(..., N, K, d)` → `(..., N, d)`.

    `μ̂_n = (1/K) Σ_k g(ω_k(x_n))`, the plug-in estimate of `μ(x) = E_ω[g(ω(x))]` (Jha et al.
    2024 for the quantity; symbol μ and the plug-in estimator are ours), with
    `g = f/||f||` when `normalize=True` (the paper's space; `False` uses `z` as given, e.g. a
    method-specific space — label which, Jha et al. 2024). K >= 1.
    """
    return _group_means(_grouped("z", z, min_views=1), _flag("normalize", normalize), False)


def center_vector(z, *, normalize: bool = True) -> jax.Array:
    """Centre vector, `(..., N, K, d)` → `(..., d)`.

    `ŝ = (1/N) Σ_n μ̂_n`, the plug-in estimate of `s = E_x E_ω[g(ω(x))]` (Jha et al. 2024, the
    TL;DR's verbatim formula); `normalize` as in `sample_means`. K >= 1; with K = 1 (one view per
    point) it is the batch mean of the normalised rows. Its norm has a ≈ 1/sqrt(N) floor even for a
    perfect representation (Jha et al. 2024): compare at equal N or use `stability(...).center_norm_sq_u`.
    """
    return _group_means(_grouped("z", z, min_views=1), _flag("normalize", normalize), True)


def stability(z, *, normalize: bool = True) -> Stability:
    """Centre-vector stability diagnostics of Jha et al. 2024, `(..., N, K, d)` → `Stability` of `(...,)`.

    See `Stability` for the fields and formulas (Jha et al. 2024; the claim that SSL
    methods keep `||s||` small while `E||μ||` grows is theirs, a hypothesis to test).
    `z_nk` is the embedding of view k of sample n, N >= 2 samples and K >= 2 views (the unbiased
    estimators need two); stacked `(2n, d)` views become `(n, 2, d)` with `group_views`.
    `normalize=True` (default) projects every row onto the unit sphere first, as the paper defines
    `s` on `g = f/||f||`; with `False` the identities hold with `mean ||z||²` in place of 1.
    A fixed probe set in eval mode is the intended input (Jha et al. 2024: batch and BN effects).
    """
    return _stability(_grouped("z", z, min_views=2), _flag("normalize", normalize))


@partial(jax.jit, static_argnames=("normalize",))
def _stability(z, normalize):
    z = _unit_rows(z) if normalize else z
    N, K = z.shape[-3:-1]
    mu_k = _mean(z, -2)                                   # (..., N, 1, d)
    mu = mu_k[..., 0, :]                                  # (..., N, d)
    s = _mean(mu, -2)                                     # (..., 1, d)
    mu_sq = jnp.sum(mu**2, axis=-1)                       # (..., N)
    z_sq = jnp.sum(z**2, axis=-1)                         # (..., N, K)
    s_sq = jnp.sum(s[..., 0, :] ** 2, axis=-1)
    mean_norm = jnp.mean(jnp.sqrt(mu_sq), axis=-1)
    center_norm = jnp.sqrt(s_sq)
    return Stability(
        center_norm=center_norm,
        center_norm_sq_u=(N**2 * s_sq - jnp.sum(mu_sq, axis=-1)) / (N * (N - 1)),
        mean_norm=mean_norm,
        mean_norm_sq=jnp.mean(mu_sq, axis=-1),
        mean_norm_sq_u=jnp.mean((K**2 * mu_sq - jnp.sum(z_sq, axis=-1)) / (K * (K - 1)), axis=-1),
        ratio=center_norm / mean_norm,
        trace_between=jnp.mean(jnp.sum((mu - s) ** 2, axis=-1), axis=-1),
        trace_within=jnp.mean(jnp.sum((z - mu_k) ** 2, axis=-1), axis=(-2, -1)),
    )


# ---------------------------------------------------------------------------------------------
# step times


#: Default of `step_times(threshold=...)`: half the value 1 that every learned eigenvalue of the
#: Barlow Twins cross-correlation C reaches (C → I, Simon et al. 2023, Sec. 4), in the units of
#: the spectrum.
STEP_THRESHOLD = 0.5

# Reason codes of `Steps.reason` (index into `STEP_REASONS`).
#: the mode crossed: its step time is finite
LEARNED = 0
#: not learned: the final value is below the threshold
BELOW_THRESHOLD = 1
#: not learned: at or above half its final value from the first saved time (no step seen)
NO_RISE = 2
#: undefined: the final value is not finite
UNDEFINED = 3
STEP_REASONS = (
    "learned",
    "not learned: final value below the threshold",
    "not learned: at or above half its final value from the first saved time (no step in the "
    "window)",
    "undefined: non-finite final value",
)


class Steps(NamedTuple):
    """Step detection of `detect_steps`, each `(..., k)`.

    - `times`: when mode j first reaches half its final value (interpolated), NaN where the mode is
      not learned (`reason != LEARNED`).
    - `learned`: bool, `reason == LEARNED`.
    - `reason`: int codes, `STEP_REASONS[code]` says why a time is NaN.
    - `final`: the final value `F_j` the level `F_j / 2` derives from.
    """

    times: jax.Array
    learned: jax.Array
    reason: jax.Array
    final: jax.Array

    def reasons(self, threshold: float | None = None) -> np.ndarray:
        """The reason of every mode as text, an object array of the shape of `times`
        (`threshold`, when given, is quoted in the "below the threshold" text)."""
        codes = np.asarray(self.reason)
        text = list(STEP_REASONS)
        if threshold is not None:
            text[BELOW_THRESHOLD] = f"not learned: final value below the threshold {threshold:g}"
        return np.vectorize(lambda c: text[int(c)], otypes=[object])(codes) if codes.ndim else \
            np.array(text[int(codes)], dtype=object)


def detect_steps(spectra, ts, *, threshold: float = STEP_THRESHOLD) -> Steps:
    """Step time of each mode, and whether (and why not) it was learned, `spectra: (..., T, k)`,
    `ts: (T,)` → `Steps` of `(..., k)`.

    For mode j with final value `F_j = λ_j(t_{T−1})`, the step time is the first time at which
    `λ_j(t) >= F_j / 2`, linearly interpolated between the two saved times that bracket it:
    `t = t_{i−1} + (F_j/2 − λ_{i−1}) / (λ_i − λ_{i−1}) · (t_i − t_{i−1})`. For the logistic
    `c_j(t) = 1/(1 + (1/c_j(0) − 1) e^{−8γ_j t})` of the stepwise theory this is its 1/2-crossing
    `ln(1/c_j(0) − 1)/(8γ_j)` (Simon et al. 2023, Sec. 4) when `F_j ≈ 1`.

    A mode is *learned* (a finite time) only when it steps inside the window; otherwise the time
    is NaN and `reason` says why (`STEP_REASONS`):
    - `BELOW_THRESHOLD`: `F_j < threshold` (default `STEP_THRESHOLD` = 0.5, in the units of the
      spectrum: half the value 1 of a learned eigenvalue of the Barlow Twins cross-correlation;
      for a spectrum of another scale, e.g. an embedding covariance, pass one in its units, such
      as `0.5 * spectra[-1].max()`, or 0 to accept every positive final value);
    - `NO_RISE`: the mode is already at or above `F_j / 2` at `ts[0]` (it never crosses: no step
      inside the window);
    - `UNDEFINED`: `F_j` non-finite (only possible inside `jax.jit`, where values are not checked).
    `spectra` must be finite (NaN/inf are refused on concrete input: a NaN would silently move the
    crossing), `ts` finite, >= 0 and strictly increasing, T >= 2.

    Example:
        >>> ts = np.linspace(0.0, 10.0, 101)
        >>> c = 1 / (1 + (1 / 1e-6 - 1) * np.exp(-8 * np.array([1.0, 1e-3]) * ts[:, None]))
        >>> s = detect_steps(c, ts)
        >>> bool(s.learned[0]), bool(s.learned[1]), s.reasons()[1]
        (True, False, 'not learned: final value below the threshold')
    """
    spectra = _batched("spectra", spectra, core="T, k")
    ts = V.as_float_array("ts", ts, ndim=1)
    T = spectra.shape[-2]
    if ts.shape[0] != T:
        raise ValueError(f"ts: expected shape (T,) = ({T},) to match spectra (..., T, k), got "
                         f"shape {tuple(ts.shape)}")
    if V.is_concrete(ts):
        t = np.asarray(ts)
        if not (np.all(t >= 0) and np.all(np.diff(t) > 0)):
            raise ValueError(f"ts: expected times >= 0 and strictly increasing, got {t}")
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(
            threshold, (int, float, np.integer, np.floating, jax.Array)):
        raise TypeError(f"threshold: expected a number (the final value a learned mode reaches "
                        f"at least), got {threshold!r}")
    if not isinstance(threshold, jax.Array) and not np.isfinite(float(threshold)):
        raise ValueError(f"threshold: expected a finite number, got {threshold!r}")
    dtype = jnp.result_type(spectra.dtype, ts.dtype)
    return _detect_steps(spectra.astype(dtype), ts.astype(dtype), threshold)


def step_times(spectra, ts, *, threshold: float = STEP_THRESHOLD) -> jax.Array:
    """`detect_steps(spectra, ts, threshold=threshold).times`: `(..., T, k)` → `(..., k)`, the time
    each mode first reaches half its final value, NaN for a mode that is not learned (see
    `detect_steps` for the threshold, its default and the reasons). The step time of the stepwise
    theory (Simon et al. 2023) read off any saved spectrum (eig C, an embedding covariance)."""
    return detect_steps(spectra, ts, threshold=threshold).times


@jax.jit
def _detect_steps(s, ts, threshold):
    final = s[..., -1, :]                                  # (..., k)
    level = final / 2
    reached = s >= level[..., None, :]
    i = jnp.argmax(reached, axis=-2)                       # first reaching index, (..., k)
    prev = jnp.maximum(i - 1, 0)
    s_i = jnp.take_along_axis(s, i[..., None, :], axis=-2)[..., 0, :]
    s_p = jnp.take_along_axis(s, prev[..., None, :], axis=-2)[..., 0, :]
    t_i, t_p = ts[i], ts[prev]
    # s_p < level <= s_i whenever i > 0, so the denominator is > 0
    denom = jnp.where(s_i > s_p, s_i - s_p, 1)
    t = t_p + (level - s_p) / denom * (t_i - t_p)
    reason = jnp.where(~jnp.isfinite(final), UNDEFINED,
                       jnp.where(final < threshold, BELOW_THRESHOLD,
                                 jnp.where(i == 0, NO_RISE, LEARNED)))
    learned = reason == LEARNED
    return Steps(times=jnp.where(learned, t, jnp.nan), learned=learned, reason=reason,
                 final=final)


# ---------------------------------------------------------------------------------------------
# principal angles


def _check_full_rank(name: str, x: jax.Array) -> None:
    if not V.is_concrete(x):
        return
    s = np.linalg.svd(np.asarray(x), compute_uv=False)
    tol = max(x.shape[-2:]) * np.finfo(s.dtype).eps
    if s.size and np.any(s[..., -1] <= tol * s[..., 0]):
        raise ValueError(f"{name}: expected full column rank (independent columns), got "
                         f"smallest/largest singular value <= {tol:.2g} in shape {tuple(x.shape)}")


def principal_angles(a, b) -> jax.Array:
    """Principal angles between the column spaces of `a: (..., N, p)` and `b: (..., N, q)`, in radians,
    ascending, `(..., min(p, q))`. Leading axes broadcast (one fixed subspace vs a trajectory).

    Björck & Golub (1973) with both cosines and sines (Knyazev & Argentati 2002): orthonormal
    bases `Q_a, Q_b` by QR; with q <= p (else a and b swap, angles are symmetric),
    `cos θ_i` = singular values of `Q_aᵀ Q_b` (descending), `sin θ_i` = singular values of
    `Q_b − Q_a (Q_aᵀ Q_b)` (ascending), and `θ_i = atan2(sin θ_i, cos θ_i)`. The arccos of the
    cosines alone loses all accuracy below ~1e-8 rad; the sines keep relative accuracy for tiny
    angles and the cosines near π/2. Used for "max principal angle < 1e-6 rad" (Esser et al.)
    and subspace-error scalings (Simon et al. 2023).

    Both inputs need full column rank (checked on concrete input; a rank-deficient basis has no
    well-defined orthonormal basis from QR) and p, q <= N; same dtype.
    """
    a = _batched("a", a, core="N, p", min_rows=1)
    b = _batched("b", b, core="N, q", min_rows=1)
    V.same_dtype(a=a, b=b)
    if a.shape[-2] != b.shape[-2]:
        raise ValueError(f"a, b: expected the same number of rows N (axis -2), got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError as err:
        raise ValueError(f"a, b: leading (batch) axes must broadcast, got shapes {tuple(a.shape)} "
                         f"and {tuple(b.shape)}") from err
    for name, x in (("a", a), ("b", b)):
        if x.shape[-1] > x.shape[-2]:
            raise ValueError(f"{name}: expected at most N columns (a basis of a subspace of R^N), "
                             f"got shape {tuple(x.shape)}")
        _check_full_rank(name, x)
    return _principal_angles(a, b)


@jax.jit
def _principal_angles(a, b):
    if b.shape[-1] > a.shape[-1]:
        a, b = b, a
    qa = jnp.linalg.qr(a)[0]
    qb = jnp.linalg.qr(b)[0]
    m = jnp.swapaxes(qa, -1, -2) @ qb                       # (..., p, q)
    cos = _singular_values(m)                               # descending
    sin = _singular_values(qb - qa @ m)[..., ::-1]          # ascending
    return jnp.arctan2(sin, cos)
