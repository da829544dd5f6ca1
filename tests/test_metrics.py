"""Tests for sslntk.metrics (float64 unless stated; conftest enables x64).

References: closed forms on constructed embeddings, explicit numpy / scipy computations, and the
numbered acceptance checks for the metrics of Jha et al. 2024 ("Jha check n"). Each
tolerance says why it is what it is.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from scipy import special

from sslntk import losses
from sslntk import metrics as M

F64_EXACT = 1e-12   # algebraic identities in float64: a few hundred ulps of O(1) quantities


def rng(seed=0):
    return np.random.default_rng(seed)


def sphere(r, shape):
    x = r.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def centred_orthonormal(r, N, k):
    """(N, k) with orthonormal columns, each orthogonal to the all-ones vector (zero column mean)."""
    x = r.standard_normal((N, k))
    x -= x.mean(0)
    return np.linalg.qr(x)[0]


def with_covariance(r, N, lam, mean=None, dim=None):
    """`(N, dim)` embeddings whose centred covariance (1/N) Σ (f−f̄)(f−f̄)ᵀ has eigenvalues exactly
    `lam` (and dim − len(lam) zeros) in random orthonormal directions."""
    k = len(lam)
    dim = k if dim is None else dim
    u = centred_orthonormal(r, N, k)
    v = scipy.linalg.qr(r.standard_normal((dim, dim)))[0][:, :k]
    f = np.sqrt(N) * (u * np.sqrt(lam)) @ v.T
    return f if mean is None else f + mean


def uniform_sphere_uniformity(d, t=2.0):
    """Exact L_uniform(t) for z uniform on S^{d−1}: −2t + log E[e^{2t u}], u = z·z', with
    E[e^{a u}] = Γ(d/2) (2/a)^{d/2−1} I_{d/2−1}(a)."""
    a, nu = 2 * t, d / 2 - 1
    return -2 * t + special.gammaln(nu + 1) + nu * np.log(2 / a) + np.log(special.ive(nu, a)) + a


# ---------------------------------------------------------------------------------------------
# embedding_spectrum / cross_correlation_spectrum


def test_embedding_spectrum_exact_covariance_and_mean_shift():
    r = rng(0)
    lam = np.array([3.0, 1.0, 0.5, 0.1, 1e-3, 1e-6])
    f = with_covariance(r, 50, lam)
    np.testing.assert_allclose(M.embedding_spectrum(f), lam, rtol=1e-10)
    # a mean shift leaves the centred spectrum unchanged (to round-off of the shifted data)
    shift = 7.0 * r.standard_normal(6)
    np.testing.assert_allclose(M.embedding_spectrum(f + shift), lam, rtol=1e-8)
    # the uncentred second moment sees the mean: eig(Σ + m mᵀ)
    ref = np.linalg.eigvalsh((f.T @ f) / 50 + np.outer(shift, shift))[::-1]
    got = M.embedding_spectrum(f + shift, center=False)
    np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_embedding_spectrum_vs_numpy_and_padding():
    f = rng(1).standard_normal((30, 7)) + 2.0
    ref = np.sort(np.linalg.eigvalsh(np.cov(f.T, bias=True)))[::-1]
    np.testing.assert_allclose(M.embedding_spectrum(f), ref, rtol=1e-10)
    # N < k: only N − 1 nonzero centred eigenvalues, the rest are exact zeros (padded to k)
    g = rng(2).standard_normal((3, 8))
    ev = M.embedding_spectrum(g)
    assert ev.shape == (8,)
    assert np.all(np.asarray(ev[2:]) <= 1e-28) and np.all(np.asarray(ev[:2]) > 0.01)


def test_embedding_spectrum_rank_k_and_marchenko_pastur():
    """Jha check 17."""
    r = rng(3)
    d, N = 64, 2000
    for k in (1, 4, 16):
        f = r.standard_normal((N, k)) @ r.standard_normal((k, d))
        ev = np.asarray(M.embedding_spectrum(f))
        assert np.sum(ev > 1e-8 * ev[0]) == k
        ev32 = np.asarray(M.embedding_spectrum(jnp.asarray(f, jnp.float32)))
        assert ev32.dtype == np.float32 and np.sum(ev32 > 1e-5 * ev32[0]) == k
    ev = np.asarray(M.embedding_spectrum(r.standard_normal((N, d))))
    c = d / N
    lo, hi = (1 - np.sqrt(c)) ** 2, (1 + np.sqrt(c)) ** 2
    assert ev.min() >= 0.9 * lo and ev.max() <= 1.1 * hi   # 10% edge slack at finite N (reference value)


def test_cross_correlation_spectrum_matches_theory():
    """C from embeddings equals W Γ Wᵀ for a linear model (Simon et al. 2023)."""
    r = rng(4)
    n, m, k = 20, 9, 4
    xa, xb = r.standard_normal((n, m)), r.standard_normal((n, m))
    w = r.standard_normal((k, m))
    f = np.concatenate([xa @ w.T, xb @ w.T])
    gamma = (xa.T @ xb + xb.T @ xa) / (2 * n)
    ref = np.linalg.eigvalsh(w @ gamma @ w.T)[::-1]
    got = M.cross_correlation_spectrum(f)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    np.testing.assert_allclose(got, np.linalg.eigvalsh(np.asarray(losses.cross_correlation(f)))[::-1],
                               rtol=1e-12, atol=1e-14)
    assert np.all(np.diff(np.asarray(got)) <= 0)
    # negative views give a negative eigenvalue (C is indefinite in general)
    g = np.concatenate([xa @ w.T, -xa @ w.T])
    assert float(M.cross_correlation_spectrum(g)[0]) <= 1e-12


# ---------------------------------------------------------------------------------------------
# effective_rank / rankme


def test_effective_rank_known_values():
    r = rng(5)
    # rank one: 1 (remaining singular values are round-off, ~1e-16 relative)
    a = r.standard_normal((200, 1)) @ r.standard_normal((1, 16))
    assert abs(float(M.effective_rank(a)) - 1) < 1e-10
    # r equal singular values: exactly r, also after rotation and rescaling
    for k in (1, 3, 8):
        f = 3.0 * centred_orthonormal(r, 100, k) @ scipy.linalg.qr(r.standard_normal((16, 16)))[0][:k]
        np.testing.assert_allclose(M.effective_rank(f), k, rtol=1e-10)
        np.testing.assert_allclose(M.effective_rank(f, center=True), k, rtol=1e-10)
    # isotropic Gaussian N x k: erank ≈ k (1 − k/(8N)) (Marchenko–Pastur: Var(λ) = k/N, so
    # Var(σ/σ̄) ≈ k/(4N) and the entropy loses half of it). Over 20 seeds at N = 4000, k = 32 the
    # mean matched this to 1e-3 and the seed-to-seed sd was 0.002: 0.02 is ~10 sd.
    N, k = 4000, 32
    iso = r.standard_normal((N, k))
    assert abs(float(M.effective_rank(iso)) - k * (1 - k / (8 * N))) < 0.02
    # centring makes it blind to a mean shift (the uncentred value drops, cf. Jha check 12)
    np.testing.assert_allclose(M.effective_rank(iso + 5.0, center=True),
                               M.effective_rank(iso, center=True), rtol=1e-10)
    assert float(M.effective_rank(iso + 5.0)) < 0.5 * k


def test_effective_rank_degenerate_is_nan():
    """Jha check 13: a constant matrix after centring has all singular values 0 → NaN."""
    const = np.full((10, 5), 0.1)
    assert np.isnan(float(M.effective_rank(const, center=True)))
    assert abs(float(M.effective_rank(const)) - 1) < 1e-10      # uncentred: rank one
    assert np.isnan(float(M.effective_rank(np.zeros((10, 5)))))
    assert np.isnan(float(M.rankme(np.zeros((10, 5)))))
    np.testing.assert_array_equal(M.embedding_spectrum(const), np.zeros(5))


def test_rankme_isotropic_gaussian():
    """Jha check 9 (d = 128): reference values 123.7 (N = 512), 127.2 (2,560), 127.8 (10,000), quoted
    to one decimal; seed-to-seed sd is ~0.01, so ±0.15. And > 0.97 d once N >= 20 d."""
    d = 128
    for N, ref in ((512, 123.7), (2560, 127.2), (10000, 127.8)):
        z = rng(N).standard_normal((N, d))
        v = float(M.rankme(z))
        assert abs(v - ref) < 0.15, (N, v)
        if N >= 20 * d:
            assert v > 0.97 * d
        if N == 10000:
            # Jha check 12: RankMe is uncentred, so a +5 mean shift drops it to ≈ 52.8 (±0.5:
            # the one-decimal reference value; an analytic estimate with σ_1 = 5 sqrt(N d) gives 53.0)
            assert abs(float(M.rankme(z + 5.0)) - 52.8) < 0.5


def test_rankme_rank_one_and_rank_k():
    """Jha checks 10 and 11."""
    r = rng(6)
    d, eps = 128, 1e-7
    # ε on the 127 null directions: p_1 = 1 + ε, p_i = ε → exp(−(1+ε)log(1+ε) − 127 ε log ε)
    expect = np.exp(-(1 + eps) * np.log1p(eps) - (d - 1) * eps * np.log(eps))
    rank1 = r.standard_normal((512, 1)) @ r.standard_normal((1, d))
    for z in (rank1, np.full((512, d), 0.3)):
        v = float(M.rankme(z))
        assert abs(v - 1) < 1e-3
        np.testing.assert_allclose(v, expect, rtol=1e-8)     # 1.0002
    # rank k, equal variances in a random k-subspace: k within 0.2% (reference; its sampled data had a
    # Marchenko–Pastur deficit ≈ k/(8N), which test_rankme_isotropic_gaussian covers). Constructed
    # with exactly equal singular values, the only deviation is the ε mass: p = 1/k + ε on k
    # directions and ε on the d − k null ones.
    basis = scipy.linalg.qr(r.standard_normal((d, d)))[0]
    for k in (1, 4, 16, 64):
        exact = centred_orthonormal(r, 256, k) @ basis[:, :k].T
        v = float(M.rankme(exact))
        assert abs(v - k) < 2e-3 * k
        p = 1 / k + eps
        np.testing.assert_allclose(v, np.exp(-k * p * np.log(p) - (d - k) * eps * np.log(eps)),
                                   rtol=1e-8)


# ---------------------------------------------------------------------------------------------
# alpha_req


def test_alpha_req_recovers_exponent():
    r = rng(7)
    k = 32
    for alpha in (0.5, 1.0, 2.0, 3.0):
        lam = np.arange(1, k + 1, dtype=float) ** -alpha
        f = with_covariance(r, 200, lam, mean=r.standard_normal(k))
        np.testing.assert_allclose(M.alpha_req(f), alpha, rtol=1e-9)
        np.testing.assert_allclose(M.alpha_req(f, fit_range=(3, 20)), alpha, rtol=1e-9)
    # sampled N(0, diag(i^−α)), N = 4000, top 16 ranks: over 10 seeds the error was <= 0.018
    # (sd 0.006; finite-N Marchenko–Pastur distortion grows toward the tail): 0.05 is ~8 sd.
    lam = np.arange(1, k + 1, dtype=float) ** -1.5
    g = r.standard_normal((4000, k)) * np.sqrt(lam)
    assert abs(float(M.alpha_req(g, fit_range=(1, 16))) - 1.5) < 0.05


def test_alpha_req_skips_null_eigenvalues_and_degenerate():
    r = rng(8)
    # rank 10 in 16 dims: eigenvalues i^−1 for i <= 10, then 6 at round-off (~1e-32), left out
    f = with_covariance(r, 100, np.arange(1, 11, dtype=float) ** -1.0, dim=16)
    assert float(M.embedding_spectrum(f)[10]) < 1e-25
    np.testing.assert_allclose(M.alpha_req(f), 1.0, rtol=1e-9)
    assert np.isnan(float(M.alpha_req(np.full((20, 4), 2.0))))
    with pytest.raises(ValueError, match="fit_range"):
        M.alpha_req(f, fit_range=(0, 5))
    with pytest.raises(ValueError, match="fit_range"):
        M.alpha_req(f, fit_range=(5, 17))
    with pytest.raises(TypeError, match="fit_range"):
        M.alpha_req(f, fit_range=(1.0, 5))
    # one embedding dimension: the error names f, not the fit_range that was never passed
    # (found by the long hypothesis profile of tests/test_properties.py)
    with pytest.raises(ValueError, match=r"f: expected k >= 2 embedding dimensions"):
        M.alpha_req(np.ones((5, 1)))


# ---------------------------------------------------------------------------------------------
# lidar


def lidar_reference(e, delta, eps):
    """Jha et al. 2024 written out literally in numpy (Σ_w^{−1/2} by eigh)."""
    n, q, d = e.shape
    mu_x = e.mean(1)
    mu = mu_x.mean(0)
    sb = (mu_x - mu).T @ (mu_x - mu) / n
    w = (e - mu_x[:, None]).reshape(n * q, d)
    sw = w.T @ w / (n * q) + delta * np.eye(d)
    ev, u = np.linalg.eigh(sw)
    isq = (u / np.sqrt(ev)) @ u.T
    lam = np.linalg.eigvalsh(isq @ sb @ isq)
    p = lam / np.abs(lam).sum() + eps
    return np.exp(-np.sum(p * np.log(p)))


def test_lidar_matches_reference_formula():
    r = rng(9)
    e = r.standard_normal((40, 5, 6)) @ np.diag([3, 2, 1, 0.5, 0.2, 0.1]) + r.standard_normal(6)
    for delta, eps in ((1e-4, 1e-8), (1e-6, 1e-7), (0.0, 0.0)):
        np.testing.assert_allclose(M.lidar(e, delta=delta, eps=eps), lidar_reference(e, delta, eps),
                                   rtol=1e-9)


def _class_data(r, n, q, d, k, noise):
    """n class means N(0, I_k) in a random k-dim subspace of R^d, q views each with isotropic noise."""
    basis = np.linalg.qr(r.standard_normal((d, k)))[0]
    means = r.standard_normal((n, k)) @ basis.T
    return means[:, None, :] + noise * r.standard_normal((n, q, d))


def test_lidar_class_subspace():
    """Jha check 14 (δ = 1e-4, ε = 1e-8, n = 1000, q = 50, d = 64, noise 0.1): ≈ 1.12, 4.11, 15.93,
    61.95 for k = 1, 4, 16, 64. Over 3 seeds the values varied by <= 0.1 (at k = 64): 1% holds them."""
    r = rng(30)
    for k, ref in ((1, 1.12), (4, 4.11), (16, 15.93), (64, 61.95)):
        v = float(M.lidar(_class_data(r, 1000, 50, 64, k, 0.1)))
        assert abs(v - ref) < 0.01 * ref, (k, v)


def test_lidar_noise_collapse_scale_and_constant():
    """Jha checks 15 and 16."""
    r = rng(31)
    n, q, d = 1000, 50, 64
    noise = r.standard_normal((n, q, d))
    # pure isotropic noise and a collapsed representation with tiny noise both give ≈ d (62.0,
    # 61.9 in the reference; the Wishart spread of Σ_b at d/n = 0.064 costs ≈ d²/(2n) = 2): LiDAR is
    # not a collapse detector. 1% as in check 14.
    assert abs(float(M.lidar(noise)) - 62.0) < 0.62
    assert abs(float(M.lidar(0.7 + 1e-3 * noise)) - 61.9) < 0.62
    # scale invariance: exact with δ = 0, and up to δ/σ_w² with the default δ
    e = _class_data(r, 40, 5, 6, 2, 0.1)
    np.testing.assert_allclose(M.lidar(1e3 * e, delta=0.0), M.lidar(e, delta=0.0), rtol=1e-10)
    np.testing.assert_allclose(M.lidar(1e3 * e), M.lidar(10 * e), rtol=1e-3)
    # exactly constant input: Σ_b = 0 → NaN (not a 0/0 that looks like a rank)
    assert np.isnan(float(M.lidar(np.full((40, 5, 6), 0.3))))
    # bounded by min(d, n − 1) (up to the ε mass)
    small = r.standard_normal((5, 4, 16))
    assert float(M.lidar(small)) <= 4 + 1e-3


# ---------------------------------------------------------------------------------------------
# alignment / uniformity


def test_alignment_known_values():
    r = rng(10)
    a = r.standard_normal((50, 8))
    # exact duplicates: zero up to float64 round-off squared (current XLA CPU vectorises rows
    # differently, so two equal rows may normalise 1 ulp apart: d² ~ 1e-33)
    assert float(M.alignment(np.concatenate([a, a]))) < 1e-28
    assert float(M.alignment(np.concatenate([a, 3.0 * a]))) < 1e-28    # scale is normalised away
    b = r.standard_normal((50, 8))
    f = np.concatenate([a, b])
    za, zb = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    for alpha in (1.0, 2.0, 3.0):
        ref = np.mean(np.linalg.norm(za - zb, axis=1) ** alpha)
        np.testing.assert_allclose(M.alignment(f, alpha=alpha), ref, rtol=F64_EXACT)
    # antipodal views: ||z_a − z_b|| = 2
    np.testing.assert_allclose(M.alignment(np.concatenate([a, -a])), 4.0, rtol=F64_EXACT)


def test_uniformity_reference_and_collapse():
    r = rng(11)
    x = r.standard_normal((40, 6))
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    iu = np.triu_indices(40, 1)
    d2 = np.sum((z[:, None] - z[None]) ** 2, -1)[iu]
    for t in (0.5, 2.0, 10.0):
        ref = np.log(np.mean(np.exp(-t * d2)))
        np.testing.assert_allclose(M.uniformity(x, t=t, stacked=False), ref, rtol=F64_EXACT)
    halves = (M.uniformity(x[:20], stacked=False) + M.uniformity(x[20:], stacked=False)) / 2
    np.testing.assert_allclose(M.uniformity(x), halves, rtol=F64_EXACT)
    # Jha check 18: collapsed gives 0 exactly (any scale, any t)
    c = np.tile(r.standard_normal(6), (40, 1))
    assert float(M.uniformity(c)) == 0.0
    assert float(M.uniformity(2.5 * c, t=7.0, stacked=False)) == 0.0


def test_uniformity_uniform_sphere():
    """Jha check 18: −3.93753 on S^127, −3.8752 on S^63 (exact, Bessel form). The pair average of
    3000 points is a degenerate U-statistic (its first projection is constant by symmetry), sd ≈
    sd(e^{4u}) / sqrt(#pairs) ≈ 0.36/2121 ≈ 2e-4 for d = 128: 1e-3 is 5 sd."""
    np.testing.assert_allclose(uniform_sphere_uniformity(128), -3.93753, atol=1e-5)
    np.testing.assert_allclose(uniform_sphere_uniformity(64), -3.8752, atol=1e-4)
    r = rng(12)
    z = sphere(r, (3000, 128))
    assert abs(float(M.uniformity(z, stacked=False)) - uniform_sphere_uniformity(128)) < 1e-3


def test_uniformity_jensen_bound():
    """Jha check 19: L_uniform(2) >= −4 (1 − m), m = (N² ||ŝ||² − N)/(N(N − 1)), for mean shifts
    taking ||s||² from ~1/N to ~0.99."""
    r = rng(13)
    N, d = 40, 6
    c = sphere(r, d)
    for shift in (0.0, 0.3, 1.0, 3.0, 10.0):
        z = sphere(r, (N, d)) + shift * c
        s = np.asarray(M.center_vector(z[:, None, :]))
        m = (N**2 * s @ s - N) / (N * (N - 1))
        assert float(M.uniformity(z, stacked=False)) >= -4 * (1 - m) - 1e-12


# ---------------------------------------------------------------------------------------------
# stability (Jha et al. 2024)


def test_stability_complete_collapse():
    """Jha check 1."""
    c = sphere(rng(14), 10)
    st = M.stability(np.tile(5.0 * c, (50, 3, 1)))
    for v in (st.center_norm, st.mean_norm, st.ratio, st.mean_norm_sq_u, st.center_norm_sq_u):
        np.testing.assert_allclose(v, 1.0, atol=1e-6)
    # zero up to float64 round-off squared (equal rows may be normalised 1 ulp apart by XLA CPU)
    assert float(st.trace_between) < 1e-28 and float(st.trace_within) < 1e-28


def test_stability_invariant_uniform_vs_no_invariance():
    """Jha checks 2 and 3 (N = 2000, d = 128)."""
    r = rng(15)
    N, d = 2000, 128
    u = sphere(r, (N, 1, d))
    inv = M.stability(np.repeat(u, 4, axis=1))
    np.testing.assert_allclose(inv.mean_norm, 1.0, rtol=F64_EXACT)
    np.testing.assert_allclose(inv.mean_norm_sq_u, 1.0, rtol=F64_EXACT)
    # ||ŝ||² ~ χ²_d/(dN): sd of ||ŝ|| sqrt(N) is sqrt(1/(2d)) ≈ 0.06 (a reference run got 0.93): ±0.3 is 5 sd
    assert abs(float(inv.center_norm) * np.sqrt(N) - 1) < 0.3
    assert abs(float(inv.ratio) * np.sqrt(N) - 1) < 0.3
    assert float(inv.trace_within) < 1e-28
    np.testing.assert_allclose(inv.trace_between, 1 - float(inv.center_norm) ** 2, rtol=F64_EXACT)
    # no invariance: 4 i.i.d. uniform views per sample
    noinv = M.stability(sphere(r, (N, 4, d)))
    # plug-in E||μ̂|| ≈ 1/sqrt(K) = 0.5 (biased); the K-view average of d-dim noise has relative
    # norm sd ~ 1/sqrt(2 d) per sample and N = 2000 samples: ±0.01 is generous
    assert abs(float(noinv.mean_norm) - 0.5) < 0.01
    # U-statistic ≈ 0: sd = (1/sqrt d)/sqrt(6)/sqrt(N) ≈ 8e-4 (a reference run got -4e-4): 5e-3 is 6 sd
    assert abs(float(noinv.mean_norm_sq_u)) < 5e-3
    # the estimator tells the two apart; the plug-in ratio R alone does not (both ~0.02-0.05)
    assert float(inv.mean_norm_sq_u) - float(noinv.mean_norm_sq_u) > 0.9
    assert float(noinv.ratio) < 0.1 and float(inv.ratio) < 0.1


@pytest.mark.parametrize("dtype, tol", [(jnp.float64, 1e-12), (jnp.float32, 1e-6)])
def test_stability_anova_identity(dtype, tol):
    """Jha check 4: ||ŝ||² + tr Σ̂_b + tr Σ̂_w = 1 with plug-in 1/N, 1/(NK) normalisations."""
    r = rng(16)
    for z in (r.standard_normal((50, 3, 10)), r.standard_normal((50, 3, 10)) + 2.0):
        st = M.stability(jnp.asarray(z, dtype))
        assert st.center_norm.dtype == dtype
        total = st.center_norm**2 + st.trace_between + st.trace_within
        np.testing.assert_allclose(total, 1.0, atol=tol)
    # unnormalised: the identity holds with mean ||z||² in place of 1
    z = r.standard_normal((50, 3, 10))
    st = M.stability(z, normalize=False)
    np.testing.assert_allclose(st.center_norm**2 + st.trace_between + st.trace_within,
                               np.mean(np.sum(z**2, -1)), rtol=F64_EXACT)


def test_stability_alignment_link_and_u_statistics():
    """Jha check 5 (K = 2: mean z_n1·z_n2 = 1 − L_align(2)/2) and the U-statistics written out."""
    r = rng(17)
    f = r.standard_normal((2 * 25, 7))
    z = np.asarray(M.group_views(f))
    np.testing.assert_array_equal(z[:, 0], f[:25])
    np.testing.assert_array_equal(z[:, 1], f[25:])
    st = M.stability(z)
    np.testing.assert_allclose(st.mean_norm_sq_u, 1 - float(M.alignment(f)) / 2, rtol=F64_EXACT)
    # explicit pair sums
    g = r.standard_normal((50, 3, 10))
    u = g / np.linalg.norm(g, axis=-1, keepdims=True)
    N, K = 50, 3
    mu = u.mean(1)
    mu_u = np.mean([sum(u[n, k] @ u[n, l] for k in range(K) for l in range(K) if k != l)
                    / (K * (K - 1)) for n in range(N)])
    s_u = sum(mu[n] @ mu[m] for n in range(N) for m in range(N) if n != m) / (N * (N - 1))
    st = M.stability(g)
    np.testing.assert_allclose(st.mean_norm_sq_u, mu_u, rtol=F64_EXACT)
    np.testing.assert_allclose(st.center_norm_sq_u, s_u, rtol=1e-10)
    np.testing.assert_allclose(st.mean_norm, np.mean(np.linalg.norm(mu, axis=1)), rtol=F64_EXACT)
    np.testing.assert_allclose(st.center_norm, np.linalg.norm(mu.mean(0)), rtol=F64_EXACT)
    np.testing.assert_allclose(M.sample_means(g), mu, rtol=F64_EXACT)
    np.testing.assert_allclose(M.center_vector(g), mu.mean(0), rtol=F64_EXACT)
    # Jha check 8 (the part about these estimators): the dot-product triplet loss over all
    # anchor/positive and anchor/negative pairs equals −(E||μ||²_U − ||s||²_U)
    pos = np.mean([u[n, k] @ u[n, l] for n in range(N) for k in range(K) for l in range(K) if k != l])
    neg = np.mean([u[n, k] @ u[m, l] for n in range(N) for m in range(N) if n != m
                   for k in range(K) for l in range(K)])
    np.testing.assert_allclose(-pos + neg, -(st.mean_norm_sq_u - st.center_norm_sq_u),
                               rtol=1e-10)


def test_stability_near_collapse_flagged():
    """Jha check 6: views normalize(3c + u_n + 0.05 noise) give R ≈ 0.945, ||s|| ≈ 0.93 (±0.02:
    with N = 2000 samples both are averages of bounded terms, sampling sd < 1e-3); R > 0.5 flags
    it while the invariant uniform case (check 2) stays unflagged."""
    r = rng(18)
    N, K, d = 2000, 4, 128
    c = sphere(r, d)
    u = sphere(r, (N, 1, d))
    st = M.stability(3 * c + u + 0.05 * r.standard_normal((N, K, d)))
    assert abs(float(st.ratio) - 0.945) < 0.02
    assert abs(float(st.center_norm) - 0.93) < 0.02
    assert float(st.ratio) > 0.5
    assert float(M.stability(np.repeat(u, K, axis=1)).ratio) < 0.5


# ---------------------------------------------------------------------------------------------
# step_times


def logistic(t, gamma, c0):
    return 1 / (1 + (1 / c0 - 1) * np.exp(-8 * gamma * t))


def test_step_times_logistic():
    """Crossing of half the *final* value of c_j(t) = 1/(1 + (1/c0 − 1) e^{−8γt}) (Simon et al. 2023:):
    t* = ln((1/c0 − 1)/(2/c_end − 1))/(8γ). Linear interpolation error is (dt²/8)|c''|/|c'|, and
    c'' ≈ 0 at the inflection point near c = 1/2: with dt = 2.5e-3 it is < 1e-8 relative here."""
    gammas = np.array([1.0, 0.6, 0.36, 0.2])
    c0 = np.array([1e-6, 1e-6, 1e-4, 1e-8])
    ts = np.linspace(0, 30, 12001)
    spectra = logistic(ts[:, None], gammas, c0)
    c_end = spectra[-1]
    expect = np.log((1 / c0 - 1) / (2 / c_end - 1)) / (8 * gammas)
    got = M.step_times(spectra, ts)
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    # the level is half the final value: close to the 1/2-crossing ln(1/c0 − 1)/(8γ) when c_end ≈ 1
    np.testing.assert_allclose(got[:2], np.log(1 / c0[:2] - 1) / (8 * gammas[:2]), rtol=1e-6)
    # coarse grid: still bracketed by the two saved times around the crossing
    coarse = ts[::400]
    tc = np.asarray(M.step_times(spectra[::400], coarse))
    for j in range(4):
        i = np.searchsorted(coarse, expect[j])
        assert coarse[i - 1] <= tc[j] <= coarse[i]


def test_step_times_edge_cases():
    ts = np.arange(5.0)
    s = np.array([
        [0.0, 0.0, 0.5, 1e-9, 0.0],
        [0.1, 0.0, 0.8, 1e-9, 0.2],
        [0.5, 0.0, 1.0, 1e-9, 0.6],
        [1.0, 0.0, 1.2, 1e-9, 1.0],
        [1.0, 0.0, 1.0, 1e-9, 1.0],
    ])
    s[:, 1] = -np.arange(5.0)          # decays to a negative final value: never learned
    d = M.detect_steps(s, ts)
    got = np.asarray(d.times)
    np.testing.assert_allclose(got[0], 2.0)                      # reaches F/2 = 0.5 at t = 2
    np.testing.assert_allclose(got[4], 1.75)                     # 0.2 → 0.6 crosses 0.5 at 1.75
    assert np.isnan(got[1]) and int(d.reason[1]) == M.BELOW_THRESHOLD
    assert np.isnan(got[2]) and int(d.reason[2]) == M.NO_RISE    # already >= F/2 at ts[0]
    assert np.isnan(got[3]) and int(d.reason[3]) == M.BELOW_THRESHOLD   # flat, noise level
    assert list(np.asarray(d.learned)) == [True, False, False, False, True]
    r = d.reasons(threshold=0.5)
    assert r[0] == "learned" and r[1].startswith("not learned: final value below the threshold 0.5")
    assert "no step in the window" in r[2]
    # threshold 0: every mode that rises through half its final value counts, even at 1e-9 scale
    tiny = np.array([[0.0], [1e-10], [1e-9]])
    assert np.asarray(M.step_times(tiny, [0.0, 1.0, 2.0], threshold=0.0))[0] == pytest.approx(1 + 4 / 9)
    assert np.isnan(np.asarray(M.step_times(tiny, [0.0, 1.0, 2.0]))[0])
    # all-zero mode: not learned (never crosses a positive level)
    assert np.isnan(np.asarray(M.step_times(np.zeros((3, 2)), [0.0, 1.0, 2.0]))[0])


def test_step_times_validation():
    s = np.ones((4, 2))
    with pytest.raises(ValueError, match="ts: expected times >= 0 and strictly increasing"):
        M.step_times(s, [0.0, 2.0, 1.0, 3.0])
    with pytest.raises(ValueError, match="ts: expected times >= 0"):
        M.step_times(s, [-1.0, 0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"ts: expected shape \(T,\) = \(4,\)"):
        M.step_times(s, [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="ts: expected finite"):
        M.step_times(s, [0.0, 1.0, 2.0, np.nan])
    with pytest.raises(ValueError, match="spectra: expected at least 2 samples along T"):
        M.step_times(np.ones((1, 2)), [0.0])
    with pytest.raises(ValueError, match="spectra: expected finite values, got 1 NaN/inf"):
        M.step_times(np.array([[0.0, 0.0], [np.nan, 0.5], [1.0, 1.0], [1.0, 1.0]]),
                     [0.0, 1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="threshold: expected a number"):
        M.step_times(s, [0.0, 1.0, 2.0, 3.0], threshold="half")
    with pytest.raises(ValueError, match="threshold: expected a finite number"):
        M.step_times(s, [0.0, 1.0, 2.0, 3.0], threshold=float("nan"))


# ---------------------------------------------------------------------------------------------
# principal_angles


def test_principal_angles_vs_scipy():
    r = rng(19)
    for p, q in ((3, 3), (2, 5), (5, 2), (1, 4)):
        a, b = r.standard_normal((12, p)), r.standard_normal((12, q))
        ref = np.sort(scipy.linalg.subspace_angles(a, b))
        got = np.asarray(M.principal_angles(a, b))
        assert got.shape == (min(p, q),)
        np.testing.assert_allclose(got, ref, atol=1e-12)
        assert np.all(np.diff(got) >= 0)
    # same subspace, different bases: all angles 0
    a = r.standard_normal((12, 3))
    np.testing.assert_allclose(M.principal_angles(a, a @ r.standard_normal((3, 3))), 0, atol=1e-14)


def test_principal_angles_tiny_and_near_right_angles():
    """Constructed subspaces with known angles: b_i = cos θ_i e_i + sin θ_i e_{p+i}, both bases
    mixed by well-conditioned (cond <= 3) p×p matrices and rotated by a random orthogonal N×N.
    Round-off in building them moves the subspaces by ~1e-16·cond, so 1e-8 rad angles are known to
    ~1e-8 relative; required: relative 1e-6."""
    r = rng(20)
    N, p = 20, 6
    theta = np.array([1e-8, 3e-8, 1e-6, 1e-3, 0.7, np.pi / 2 - 1e-9])
    e = np.eye(N)
    a0 = e[:, :p]
    b0 = e[:, :p] * np.cos(theta) + e[:, p:2 * p] * np.sin(theta)
    rot = scipy.linalg.qr(r.standard_normal((N, N)))[0]

    def mix():
        return scipy.linalg.qr(r.standard_normal((p, p)))[0] @ np.diag(np.linspace(1, 3, p))

    a, b = rot @ a0 @ mix(), rot @ b0 @ mix()
    got = np.asarray(M.principal_angles(a, b))
    np.testing.assert_allclose(got, theta, rtol=1e-6)
    np.testing.assert_allclose(M.principal_angles(b, a), theta, rtol=1e-6)
    # arccos of the cosines alone cannot do this (it returns 0 or ~1.5e-8 for 1e-8)
    naive = np.arccos(np.clip(scipy.linalg.svdvals(scipy.linalg.orth(a).T @ scipy.linalg.orth(b)),
                              -1, 1))[::-1]
    assert abs(naive[0] - 1e-8) > 1e-2 * 1e-8


def test_principal_angles_broadcast_and_validation():
    r = rng(21)
    ref = r.standard_normal((10, 2))
    traj = r.standard_normal((4, 10, 3))
    got = M.principal_angles(ref, traj)
    assert got.shape == (4, 2)
    for t in range(4):
        np.testing.assert_allclose(got[t], M.principal_angles(ref, traj[t]), atol=1e-14)
    with pytest.raises(ValueError, match="same number of rows N"):
        M.principal_angles(ref, r.standard_normal((9, 2)))
    with pytest.raises(ValueError, match="full column rank"):
        M.principal_angles(np.c_[ref, ref[:, :1]], ref)
    with pytest.raises(ValueError, match="at most N columns"):
        M.principal_angles(r.standard_normal((3, 4)), r.standard_normal((3, 2)))
    with pytest.raises(TypeError, match="mixed dtypes"):
        M.principal_angles(ref, jnp.asarray(ref, jnp.float32))
    with pytest.raises(ValueError, match="must broadcast"):
        M.principal_angles(r.standard_normal((3, 10, 2)), traj)


# ---------------------------------------------------------------------------------------------
# batching, jit, dtypes, bad inputs (all public functions)

R = rng(99)
EMB = R.standard_normal((3, 12, 5)) + 0.3          # (T, 2n, k), n = 6
GROUPED = R.standard_normal((3, 8, 4, 5))          # (T, N, K, d)
SPECTRA = np.cumsum(np.abs(R.standard_normal((3, 10, 4))), axis=1)  # (T', T, k), increasing
TS = np.linspace(0.0, 4.5, 10)
BASIS_B = R.standard_normal((3, 12, 2))

CASES = {
    "embedding_spectrum": (lambda x: M.embedding_spectrum(x), EMB),
    "embedding_spectrum_raw": (lambda x: M.embedding_spectrum(x, center=False), EMB),
    "cross_correlation_spectrum": (M.cross_correlation_spectrum, EMB),
    "cross_correlation": (M.cross_correlation, EMB),
    "effective_rank": (M.effective_rank, EMB),
    "effective_rank_centred": (lambda x: M.effective_rank(x, center=True), EMB),
    "rankme": (M.rankme, EMB),
    "alpha_req": (M.alpha_req, EMB),
    "lidar": (M.lidar, GROUPED),
    "alignment": (M.alignment, EMB),
    "uniformity": (M.uniformity, EMB),
    "uniformity_pooled": (lambda x: M.uniformity(x, stacked=False), EMB),
    "group_views": (M.group_views, EMB),
    "sample_means": (M.sample_means, GROUPED),
    "center_vector": (M.center_vector, GROUPED),
    "stability": (M.stability, GROUPED),
    "step_times": (lambda x: M.step_times(x, TS), SPECTRA),
    "detect_steps": (lambda x: M.detect_steps(x, TS).times, SPECTRA),
    "principal_angles": (lambda x: M.principal_angles(x, BASIS_B), EMB),
}


def _leaves_close(a, b, rtol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-13)


def _frame(name, x, t):
    if name == "principal_angles":
        return M.principal_angles(x[t], BASIS_B[t])
    return CASES[name][0](x[t])


@pytest.mark.parametrize("name", sorted(CASES))
def test_batched_equals_loop(name):
    fn, x = CASES[name]
    loop = [_frame(name, x, t) for t in range(len(x))]
    _leaves_close(fn(x), jax.tree.map(lambda *v: jnp.stack(v), *loop), 1e-10)


def test_jit_all_with_two_leading_axes():
    """Every metric inside one jitted program, on inputs with two leading axes (2, T, ...), equals
    the eager batched result on (T, ...) repeated (one compilation for all of them)."""
    run_all = jax.jit(lambda xs: {n: CASES[n][0](xs[n]) for n in CASES})
    out = run_all({n: np.stack([x, x]) for n, (_, x) in CASES.items()})
    for name, (fn, x) in CASES.items():
        _leaves_close(out[name], jax.tree.map(lambda v: jnp.stack([v, v]), fn(x)), 1e-10)


def test_float32_preserved():
    """float32 in → float32 out for every metric (traced shapes/dtypes: nothing to compile)."""
    for name, (fn, x) in CASES.items():
        x32 = jnp.asarray(x, jnp.float32)
        if name == "principal_angles":
            out = jax.eval_shape(M.principal_angles, x32, jnp.asarray(BASIS_B, jnp.float32))
        elif name == "step_times":
            out = jax.eval_shape(M.step_times, x32, jnp.asarray(TS, jnp.float32))
        elif name == "detect_steps":
            out = jax.eval_shape(lambda s, t: M.detect_steps(s, t).times, x32,
                                 jnp.asarray(TS, jnp.float32))
        else:
            out = jax.eval_shape(fn, x32)
        for leaf in jax.tree.leaves(out):
            assert leaf.dtype == jnp.float32, name
    # and for real on two of them (SVD and Cholesky paths)
    assert M.rankme(jnp.asarray(EMB, jnp.float32)).dtype == jnp.float32
    assert M.lidar(jnp.asarray(GROUPED, jnp.float32)).dtype == jnp.float32


def test_jit_with_options_and_vmap():
    f = EMB
    jitted = jax.jit(M.rankme, static_argnames=())
    np.testing.assert_allclose(jitted(f, eps=1e-5), M.rankme(f, eps=1e-5), rtol=1e-12)
    # traced constants (a sweep over t without recompiling per value)
    ts = jnp.array([0.5, 2.0, 4.0])
    swept = jax.vmap(lambda t: M.uniformity(f[0], t=t))(ts)
    np.testing.assert_allclose(swept, [M.uniformity(f[0], t=float(t)) for t in ts], rtol=1e-12)
    # jit skips the concrete value checks (NaN passes through instead of raising)
    assert np.isnan(float(jax.jit(M.rankme)(jnp.full((4, 3), jnp.nan))))


EMB_FUNCS = {
    "embedding_spectrum": M.embedding_spectrum,
    "effective_rank": M.effective_rank,
    "rankme": M.rankme,
    "alpha_req": M.alpha_req,
    "uniformity_pooled": lambda x: M.uniformity(x, stacked=False),
}
STACKED_FUNCS = {
    "cross_correlation_spectrum": M.cross_correlation_spectrum,
    "alignment": M.alignment,
    "uniformity": M.uniformity,
    "group_views": M.group_views,
}
GROUPED_FUNCS = {"lidar": M.lidar, "stability": M.stability, "sample_means": M.sample_means,
                 "center_vector": M.center_vector}


@pytest.mark.parametrize("name", sorted({**EMB_FUNCS, **STACKED_FUNCS}))
def test_bad_embeddings_raise(name):
    fn = {**EMB_FUNCS, **STACKED_FUNCS}[name]
    good = R.standard_normal((8, 3))
    bad = good.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="f: expected finite values, got 1 NaN/inf"):
        fn(bad)
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="f: expected finite values"):
        fn(bad)
    with pytest.raises(ValueError, match=r"f: expected rank >= 2"):
        fn(good[0])
    with pytest.raises(ValueError, match="f: expected at least 2 samples"):
        fn(good[:1])
    with pytest.raises(TypeError, match="f: expected a floating dtype"):
        fn(np.ones((8, 3), dtype=np.int32))
    with pytest.raises(TypeError, match="f: expected an array, got None"):
        fn(None)


@pytest.mark.parametrize("name", sorted(STACKED_FUNCS))
def test_bad_stacked_views_raise(name):
    fn = STACKED_FUNCS[name]
    with pytest.raises(ValueError, match=r"f: expected stacked views .* even axis -2 of size 2n >= 4"):
        fn(R.standard_normal((7, 3)))
    with pytest.raises(ValueError, match=r"f: expected stacked views"):
        fn(R.standard_normal((2, 3)))


@pytest.mark.parametrize("name", sorted(GROUPED_FUNCS))
def test_bad_grouped_raise(name):
    fn = GROUPED_FUNCS[name]
    good = R.standard_normal((5, 3, 4))
    bad = good.copy()
    bad[0, 0, 0] = np.nan
    arg = "e" if name == "lidar" else "z"
    with pytest.raises(ValueError, match=f"{arg}: expected finite values"):
        fn(bad)
    with pytest.raises(ValueError, match=f"{arg}: expected rank >= 3"):
        fn(good[0])
    with pytest.raises(ValueError, match=f"{arg}: expected at least 2 samples N"):
        fn(good[:1])
    if name in ("lidar", "stability"):
        with pytest.raises(ValueError, match=f"{arg}: expected at least 2 augmentations K"):
            fn(good[:, :1])
    else:   # K = 1 is fine for plain means
        assert fn(good[:, :1]).shape[-1] == 4


def test_bad_options_raise():
    f = R.standard_normal((8, 3))
    with pytest.raises(ValueError, match="eps: expected a finite number >= 0"):
        M.rankme(f, eps=-1.0)
    with pytest.raises(ValueError, match="alpha: expected a finite number > 0"):
        M.alignment(f, alpha=0.0)
    with pytest.raises(ValueError, match="t: expected a finite number > 0"):
        M.uniformity(f, t=-2.0)
    with pytest.raises(ValueError, match="delta: expected a finite number >= 0"):
        M.lidar(GROUPED[0], delta=-1e-4)
    with pytest.raises(TypeError, match="center: expected True or False"):
        M.embedding_spectrum(f, center="yes")
    with pytest.raises(TypeError, match="normalize: expected True or False"):
        M.stability(GROUPED[0], normalize=1)


def test_public_api_documented():
    """Every public function states its formula source and shapes in its docstring."""
    for name in set(M.__all__) - NOT_FUNCTIONS:
        doc = getattr(M, name).__doc__ or ""
        assert "(..." in doc or name == "Stability", name
        assert any(tag in doc for tag in ("Jha", "stepwise", "Simon", "Roy", "Garrido", "Agrawal",
                                          "Thilak", "Wang & Isola", "Björck", "Stacked")), name
    assert "(..." in M.Steps.__doc__ and M.STEP_REASONS[M.LEARNED] == "learned"


# constants and result types in __all__ (documented with the function that returns them)
NOT_FUNCTIONS = {"Steps", "STEP_REASONS", "STEP_THRESHOLD", "LEARNED", "BELOW_THRESHOLD",
                 "NO_RISE", "UNDEFINED"}


def test_every_public_function_is_batch_jit_and_dtype_tested():
    covered = {n.removesuffix("_raw").removesuffix("_centred").removesuffix("_pooled") for n in CASES}
    assert set(M.__all__) - {"Stability"} - NOT_FUNCTIONS <= covered
