"""sslntk.theory.landscape against the results of Ziyin et al. (2023).

References: Monte-Carlo over `sslntk.data` samples (checks 1, 2, 14), autodiff Hessians (3), full-batch
GD of the models (4–7, 9–11, 13–15; converged when ||grad|| < 1e-10), bisection (8), and the reference
tabulated numbers. float64 (conftest).
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import data, losses
from sslntk.theory import landscape as L

A4 = np.array([4.0, 2.0, 1.0, 0.5])


def _rotation(seed, d):
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))[0]


# ---------------------------------------------------------------------------------------------
# checks 1–2: the losses


def test_check1_spectral_loss_identity_monte_carlo():
    """10 batches of 5e3 spiked-model views (`sslntk.data`); `losses.get("spectral")` (plug-in
    estimator) vs the exact linear-model value −2Tr[WAWᵀ] + ||WΣWᵀ||_F², within 4 standard errors."""
    key = jax.random.PRNGKey(1)
    ds = data.load("spiked", n=50_000, key=key, spikes=(2.0, 1.0, 0.5, 0.3), sigma=0.6,
                   dtype=jnp.float64)
    v = ds.views(jax.random.PRNGKey(2))
    W = np.random.default_rng(1).normal(size=(3, 4))
    exact = float(L.spectral_loss(W, ds.A, ds.B))
    spec = losses.get("spectral")
    a, b = np.asarray(v.a).reshape(10, -1, 4), np.asarray(v.b).reshape(10, -1, 4)
    vals = [float(spec(np.concatenate([a[i], b[i]]) @ W.T)) for i in range(10)]
    mean, se = np.mean(vals), np.std(vals, ddof=1) / np.sqrt(len(vals))
    assert abs(mean - exact) <= 4 * se, (mean, se, exact)
    assert float(L.infonce_quartic(W, ds.A, ds.B, 1.0)) == pytest.approx(exact / 2, rel=1e-14)


def _infonce_mc(W, A, B, tau, seed, anchors=20_000, negatives=2048, chunk=2_000):
    """MC of dot-product InfoNCE with 1 positive + `negatives` negatives (N = negatives + 1):
    per-anchor l = −s_b + log(e^{s_b} + Σ_j e^{s_j}); returns (mean − log N, standard error)."""
    rng = np.random.default_rng(seed)
    d = A.shape[0]
    As, Bs = np.linalg.cholesky(A), np.linalg.cholesky(B)
    ls = []
    for _ in range(anchors // chunk):
        x = rng.normal(size=(chunk, d)) @ As.T
        xa = x + rng.normal(size=(chunk, d)) @ Bs.T
        xb = x + rng.normal(size=(chunk, d)) @ Bs.T
        xj = rng.normal(size=(negatives, d)) @ As.T + rng.normal(size=(negatives, d)) @ Bs.T
        fa, fb, fj = xa @ W.T, xb @ W.T, xj @ W.T
        sb = np.sum(fa * fb, 1) / tau
        allv = np.concatenate([sb[:, None], fa @ fj.T / tau], 1)
        mx = allv.max(1, keepdims=True)
        ls.append(-sb + (mx[:, 0] + np.log(np.exp(allv - mx).sum(1))))
    ls = np.concatenate(ls)
    return ls.mean() - np.log(negatives + 1), ls.std(ddof=1) / np.sqrt(ls.size)


def test_check2_infonce_expansion_small_weights_only():
    A = np.diag([2.0, 1.0, 0.5, 0.3])
    B = 0.3 * np.eye(4)
    W0 = np.random.default_rng(2).normal(size=(4, 4))
    W0 /= np.linalg.norm(W0, 2)
    small, se = _infonce_mc(0.05 * W0, A, B, 1.0, 2)
    formula = float(L.infonce_quartic(0.05 * W0, A, B, 1.0))
    assert abs(small - formula) <= max(0.02 * abs(formula), 4 * se), (small, se, formula)
    # once ||WΣWᵀ||/τ is O(1) the expansion must fail ("about 2x" at scale 0.3);
    # measured here: agrees to 1.4% at ||WΣWᵀ||_2 = 1, MC 2.86 vs formula 4.80 at 4
    Wl = 2 * W0 / np.sqrt(np.linalg.norm(W0 @ (A + B) @ W0.T, 2))      # ||WΣWᵀ||_2 = 4
    large, se_l = _infonce_mc(Wl, A, B, 1.0, 3, anchors=4_000)
    formula_l = float(L.infonce_quartic(Wl, A, B, 1.0))
    assert abs(large - formula_l) > max(0.1 * abs(formula_l), 4 * se_l), (large, formula_l)


# ---------------------------------------------------------------------------------------------
# checks 3–7: one layer M1

A3, B3, TAU3, G3 = np.array([2.0, 1.0, 0.5, 0.2]), np.array([0.3, 1.5, 0.2, 0.6]), 0.5, 0.6


def test_check3_origin_hessian():
    H = jax.hessian(lambda W: L.m1_loss(W, np.diag(A3), np.diag(B3), TAU3, G3))(jnp.zeros((2, 4)))
    ev = np.sort(np.linalg.eigvalsh(np.asarray(H).reshape(8, 8)))
    np.testing.assert_allclose(ev, [-6.8, -6.8, -2.8, -2.8, -0.8, -0.8, 0.4, 0.4], atol=1e-8)
    np.testing.assert_allclose(np.asarray(L.origin_hessian(A3, TAU3, G3, 2)), ev, atol=1e-8)


def test_check4_m1_closed_form_commuting():
    A, B = np.diag(A3), np.diag(B3)
    sol = L.m1_solution(A, B, TAU3, G3, 4)
    # the reference numbers are rounded to 6 decimals
    np.testing.assert_allclose(np.diag(np.asarray(sol.M)), [0.160681, 0.056, 0.204082, 0],
                               atol=5e-7)
    np.testing.assert_allclose(np.asarray(sol.view_variances), [0.369565, 0.142857, 0.14, 0],
                               atol=5e-7)
    assert float(sol.loss) == pytest.approx(-0.353173, abs=5e-7)
    m = TAU3 * np.clip(A3 - G3 * TAU3, 0, None) / (A3 + B3) ** 2      # commuting closed form
    np.testing.assert_allclose(np.diag(np.asarray(sol.M)), m, rtol=1e-12, atol=1e-15)
    assert int(sol.rank) == 3
    # GD from a 0.01-scale init
    W0 = 0.01 * _rotation(4, 4)
    r = L.simulate_m1(A, B, TAU3, G3, W0, 0.05, 6000)
    assert float(r.grad_norm) < 1e-10
    W = np.asarray(r.params)
    np.testing.assert_allclose(np.diag(W.T @ W), np.diag(np.asarray(sol.M)), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(np.linalg.eigvalsh(W @ (A + B) @ W.T)[::-1],
                               np.asarray(sol.view_variances), rtol=1e-6, atol=1e-12)
    assert float(r.loss) == pytest.approx(float(sol.loss), rel=1e-6)
    # the minimiser itself and the clean-input variances τ a (a − γτ)₊/(a + b)²
    Ws = np.asarray(sol.W)
    np.testing.assert_allclose(Ws.T @ Ws, np.asarray(sol.M), atol=1e-12)
    clean = TAU3 * A3 * np.clip(A3 - G3 * TAU3, 0, None) / (A3 + B3) ** 2
    np.testing.assert_allclose(np.asarray(sol.clean_variances), np.sort(clean)[::-1], atol=1e-12)


def test_check5_m1_closed_form_non_commuting():
    rng = np.random.default_rng(5)
    R = _rotation(5, 5)
    A = R @ np.diag([3.0, 2.0, 1.2, 0.6, 0.3]) @ R.T
    Bf = rng.normal(size=(5, 5))
    B = 0.3 * Bf @ Bf.T
    tau, gamma, d_out = 1.0, 0.5, 3
    sol = L.m1_solution(A, B, tau, gamma, d_out)
    r = L.simulate_m1(A, B, tau, gamma, 0.05 * rng.normal(size=(d_out, 5)), 0.02, 40000)
    assert float(r.grad_norm) < 1e-10
    W = np.asarray(r.params)
    assert np.abs(W.T @ W - np.asarray(sol.M)).max() < 1e-8
    assert float(r.loss) == pytest.approx(float(sol.loss), rel=1e-10)


@pytest.fixture(scope="module")
def rank_runs():
    """GD on M1 (a = [4, 2, 1, 0.5], τ = 1) over γ ∈ {0, .25, .75, 1.5, 3, 5}, B ∈ {I, 5I}, d_out ∈
    {4, 2}; one vmapped call per d_out."""
    gammas = np.array([0.0, 0.25, 0.75, 1.5, 3.0, 5.0])
    out = {}
    for d_out in (4, 2):
        W0 = 0.01 * np.asarray(_rotation(6, 4))[:d_out]
        for bscale in (1.0, 5.0):
            run = jax.vmap(lambda g, bs=bscale, W0=W0: L.simulate_m1(
                np.diag(A4), bs * np.eye(4), 1.0, g, W0, 0.05, 8000))(gammas)
            out[d_out, bscale] = run
    return gammas, out


def test_check6_m1_rank_law(rank_runs):
    gammas, runs = rank_runs
    for (d_out, _bscale), run in runs.items():
        assert float(jnp.max(run.grad_norm)) < 1e-10
        W = np.asarray(run.params)
        M = np.einsum("gki,gkj->gij", W, W)
        measured = np.asarray(L.representation_rank(M, scale=1.0))
        expected = np.minimum([4, 4, 3, 2, 1, 0], d_out)
        np.testing.assert_array_equal(measured, expected)
        np.testing.assert_array_equal(np.asarray(L.m1_rank(A4, 1.0, gammas, d_out)), expected)
    # γ = 0.75, B = I: m, augmented-embedding variances, minimum loss
    W = np.asarray(runs[4, 1.0].params[2])
    np.testing.assert_allclose(np.diag(W.T @ W), [0.13, 0.138889, 0.0625, 0], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(np.linalg.eigvalsh(W @ (np.diag(A4) + np.eye(4)) @ W.T)[::-1],
                               [0.65, 0.416667, 0.125, 0], rtol=1e-6, atol=1e-12)
    assert float(runs[4, 1.0].loss[2]) == pytest.approx(-0.305868, rel=1e-6)


def test_check7_origin_type_matches_gd(rank_runs):
    gammas, runs = rank_runs
    W = np.asarray(runs[4, 1.0].params)
    for g, w in zip(gammas, W, strict=True):
        kind = L.origin_type(A4, 1.0, g)
        assert kind == ("local_min" if g >= 4 else "local_max" if g < 0.5 else "saddle")
        assert (np.abs(w).max() < 1e-8) == (kind == "local_min")


# ---------------------------------------------------------------------------------------------
# checks 8–11: encoder + projector M2

GC_TABLE = {0.0: [0.54433, 0.38490, 0.27217, 0.19245], 0.5: [0.48385, 0.30792, 0.18144, 0.09623],
            1.0: [0.43546, 0.25660, 0.13608, 0.06415], 2.0: [0.36289, 0.19245, 0.09072, 0.03849]}
GS_TABLE = {0.0: [0.76980, 0.54433, 0.38490, 0.27217], 0.5: [0.68427, 0.43546, 0.25660, 0.13608],
            1.0: [0.61584, 0.36289, 0.19245, 0.09072], 2.0: [0.51320, 0.27217, 0.12830, 0.05443]}


def test_check8_m2_thresholds():
    for s2 in GC_TABLE:
        gc, gs = L.m2_thresholds(A4, s2, 1.0)
        np.testing.assert_allclose(np.asarray(gc), GC_TABLE[s2], atol=5e-6)   # table: 5 decimals
        np.testing.assert_allclose(np.asarray(gs), GS_TABLE[s2], atol=5e-6)
        a, b = A4, s2
        np.testing.assert_allclose(np.asarray(gc), a / (3 * (a + b)) * np.sqrt(2 * a / 3),
                                   rtol=1e-12)
        np.testing.assert_allclose(np.asarray(gc) / np.asarray(gs), 1 / np.sqrt(2), rtol=1e-12)
    # bisection on min_s g(s) < 0 (a = 4, b = 1, τ = 1)
    s = np.linspace(1e-4, 1.0, 200_001)
    below = lambda g: float(jnp.min(L.m2_direction_loss(s, 4.0, 1.0, 1.0, g))) < 0
    lo, hi = 0.3, 0.6
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if below(mid) else (lo, mid)
    assert lo == pytest.approx(float(L.m2_thresholds(4.0, 1.0, 1.0)[0]), abs=1e-9)
    assert lo == pytest.approx(0.435465, abs=1e-6)


@pytest.fixture(scope="module")
def m2_runs():
    """σ² = 1, τ = 1, a = [4, 2, 1, 0.5] in a rotated basis, h = d_out = d = 4. Large balanced init
    (all singular values of V = 1) and a 1e-2 init, over γ ∈ {0.15, 0.2, 0.43, 0.44}."""
    R = _rotation(9, 4)
    A, B = R @ np.diag(A4) @ R.T, np.eye(4)
    gammas = np.array([0.15, 0.2, 0.43, 0.44])
    U0, W0 = _rotation(10, 4), _rotation(11, 4)

    def run(g, scale, lr, steps):
        return L.simulate_m2(A, B, 1.0, g, scale * U0, scale * W0, lr, steps)

    large = jax.vmap(lambda g: run(g, 1.0, 0.01, 60_000))(gammas)
    # small init: t >= 30/γ for every γ >= 0.15 → 200 time units
    small = jax.vmap(lambda g: run(g, 0.1, 0.01, 20_000))(gammas)      # ||V0|| = 1e-2
    return R, A, gammas, large, small


def test_check9_m2_hysteresis(m2_runs):
    R, A, gammas, large, small = m2_runs
    U, W = (np.asarray(x) for x in large.params)
    Vm = np.einsum("gij,gjk->gik", U, W) @ R                          # eigenbasis of A
    dV = np.einsum("gij,gij->gj", Vm, Vm)                              # diag(VᵀV)
    np.testing.assert_allclose(dV[0], [0.1442, 0.18329, 0.15464, 0], rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(dV[1], [0.1385, 0.16801, 0, 0], rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(dV[2], [0.10755, 0, 0, 0], rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(dV[3], [0.10592, 0, 0, 0], rtol=1e-4, atol=1e-12)
    # the theory: metastable magnitudes and which direction is only metastable (g = +0.011)
    sol = L.m2_solution(A4, 1.0, 1.0, 0.15)
    np.testing.assert_allclose(np.asarray(sol.s) ** 2, dV[0], rtol=1e-8, atol=1e-12)
    assert list(np.asarray(sol.kept)) == [True, True, False, False]
    assert list(np.asarray(sol.metastable)) == [True, True, True, False]
    g3 = float(L.m2_direction_loss(np.asarray(sol.s)[2], 1.0, 1.0, 1.0, 0.15))
    assert g3 == pytest.approx(0.011, abs=5e-4)
    # global minimum at γ = 0.44 > γ_c,1 = 0.43546 is complete collapse; the large init is metastable
    assert int(L.m2_solution(A4, 1.0, 1.0, 0.44).rank) == 0
    assert int(L.m2_solution(A4, 1.0, 1.0, 0.44).metastable_rank) == 1
    # small init: no escape
    Us, Ws = (np.asarray(x) for x in small.params)
    Vs = np.einsum("gij,gjk->gik", Us, Ws)
    assert np.abs(np.einsum("gij,gik->gjk", Vs, Vs)).max() < 1e-10


def test_check10_m2_first_order_jump():
    gc = float(L.m2_thresholds(4.0, 1.0, 1.0)[0])
    below = float(L.m2_magnitude(4.0, 1.0, 1.0, gc * (1 - 1e-9)))
    assert below**2 == pytest.approx(2 * 4 / (3 * 25), rel=0.02)     # 0.10667
    assert below**2 == pytest.approx(0.10667, rel=0.02)
    above = float(L.m2_magnitude(4.0, 1.0, 1.0, gc * 1.01))
    assert above > 0                                                  # a local minimum still exists
    assert float(L.m2_direction_loss(above, 4.0, 1.0, 1.0, gc * 1.01)) > 0   # but 0 is global
    assert float(L.m2_direction_loss(below, 4.0, 1.0, 1.0, gc * (1 - 1e-3))) < 0
    sol_b = L.m2_solution(4.0, 1.0, 1.0, gc * 0.999)
    sol_a = L.m2_solution(4.0, 1.0, 1.0, gc * 1.001)
    # embedding variance jumps from 2aτ/(3(a + b)) to 0
    assert float(sol_b.view_variances[0]) == pytest.approx(8 / 15, rel=0.01)
    assert float(sol_a.view_variances[0]) == 0.0


def test_check11_m2_balance(m2_runs):
    _, _, gammas, large, _ = m2_runs
    assert float(jnp.max(large.grad_norm)) < 1e-10
    U, W = (np.asarray(x) for x in large.params)
    for g, u, w in zip(gammas, U, W, strict=True):
        assert np.abs(u.T @ u - w @ w.T).max() < 1e-8
        nuc = np.linalg.svd(u @ w, compute_uv=False).sum()
        assert abs(g * (np.sum(u**2) + np.sum(w**2)) - 2 * g * nuc) < 1e-8


# ---------------------------------------------------------------------------------------------
# checks 13–15: pair-distance losses, imbalance, normalised losses


def test_check13_wang_isola_threshold():
    """λt = 0.5, γ = 0: the direction with b > a collapses, the one with b < a survives."""
    A, B = np.diag([1.0, 1.0]), np.diag([1.5, 0.5])
    lam, t = 1.0, 0.5
    A_eff = np.asarray(L.wang_isola_matrix(A, B, lam * t))
    np.testing.assert_allclose(A_eff, np.diag([-0.25, 0.25]), atol=1e-15)
    assert int(L.pair_distance_rank(A_eff)) == 1
    # the quadratic part of the exact population loss is −2Tr[W A_eff Wᵀ]
    W = 1e-4 * np.random.default_rng(13).normal(size=(2, 2))
    quad = float(L.wang_isola_loss(W, A, B, lam, t))
    assert quad == pytest.approx(-2 * np.trace(W @ A_eff @ W.T), rel=1e-6)
    r = L.simulate(L.wang_isola_loss, 0.01 * _rotation(13, 2), (A, B, lam, t, 0.0), 0.05, 8_000)
    assert float(r.grad_norm) < 1e-10
    Wf = np.asarray(r.params)
    col = np.sum(Wf**2, axis=0)                                        # diag(WᵀW)
    assert col[0] < 1e-12 and col[1] > 1e-2
    assert int(L.representation_rank(Wf @ (A + B) @ Wf.T, scale=1.0)) == 1


def test_check14_imbalance_law():
    """Two-class mixture (δ² = 4, σ_w² = 0.1, M1, γτ = 0.5): the class direction collapses for
    p = 0.10 < p* = 0.1127 and survives for p = 0.125, with the empirical covariance of 40000
    samples from `data.load("gaussian_mixture")`."""
    p_star = float(L.imbalance_threshold(4.0, 0.1, 0.5, 1.0))
    assert p_star == pytest.approx(0.11270, abs=5e-6)
    np.testing.assert_allclose(np.asarray(L.imbalance_gamma_c(np.array([0.5, 0.3, 0.1, 0.05]), 4.0,
                                                              0.1, 1.0, 1.0)),
                               [0.14952, 0.12786, 0.05816, 0.03295], atol=5e-6)
    for p, survives in ((0.10, False), (0.125, True)):
        ds = data.load("gaussian_mixture", n=40_000, key=jax.random.PRNGKey(14), n_classes=2, dim=2,
                       separation=2.0, within_std=np.sqrt(0.1), weights=[p, 1 - p],
                       dtype=jnp.float64)
        x = np.asarray(ds.x)
        A = np.cov(x.T, bias=True)
        e = ds.info["means"][0] - ds.info["means"][1]
        e /= np.linalg.norm(e)
        assert float(e @ np.asarray(ds.A) @ e) == pytest.approx(
            float(L.imbalance_variance(p, 4.0, 0.1)), rel=1e-12)
        r = L.simulate_m1(A, 0.5 * np.eye(2), 1.0, 0.5, 0.01 * _rotation(14, 2), 0.2, 5000)
        W = np.asarray(r.params)
        assert ((e @ W.T @ W @ e) > 1e-6) == survives
        assert int(L.m1_rank(A, 1.0, 0.5)) == int(survives)


def _cosine_obj(W, X, gamma):
    return losses.get("simclr", temperature=0.5, similarity="cosine")(X @ W.T) + gamma * jnp.sum(W**2)


def test_check15_normalised_loss_norm_decays():
    """Cosine InfoNCE + γ||W||²: ||W||² decays like exp(−4γt) within 1% under small-step GD, at a γ
    where the unnormalised M1 theory would keep every direction (γτ < a_d)."""
    rng = np.random.default_rng(15)
    x = rng.normal(size=(32, 4)) * np.sqrt(A4)
    X = np.concatenate([x + 0.5 * rng.normal(size=x.shape), x + 0.5 * rng.normal(size=x.shape)])
    gamma, lr, steps = 0.05, 2.5e-3, 2000
    W0 = _rotation(15, 4)[:3]
    r = L.simulate(_cosine_obj, W0, (X, gamma), lr, steps)
    ratio = float(jnp.sum(r.params**2)) / np.sum(W0**2)
    assert ratio == pytest.approx(np.exp(-4 * gamma * lr * steps), rel=0.01)
    assert np.isfinite(float(r.loss))
    assert L.origin_type(A4, 0.5, gamma) == "local_max"               # unnormalised: no collapse


# ---------------------------------------------------------------------------------------------
# float32 and bad input


def test_float32_paths():
    A, B = np.diag(A3).astype(np.float32), np.diag(B3).astype(np.float32)
    sol = L.m1_solution(A, B, TAU3, G3, 4)
    assert sol.M.dtype == jnp.float32
    np.testing.assert_allclose(np.diag(np.asarray(sol.M)), [0.160681, 0.056, 0.204082, 0],
                               rtol=1e-3, atol=1e-6)
    r = L.simulate_m1(A, B, TAU3, G3, (0.01 * _rotation(4, 4)).astype(np.float32), 0.05, 3000)
    assert r.params.dtype == jnp.float32
    W = np.asarray(r.params)
    np.testing.assert_allclose(np.diag(W.T @ W), [0.160681, 0.056, 0.204082, 0], rtol=1e-3,
                               atol=1e-5)


def test_bad_inputs():
    A, B = np.diag(A4), np.eye(4)
    with pytest.raises(ValueError, match="A: expected a PSD"):
        L.m1_solution(np.diag([1.0, -1.0, 1.0, 1.0]), B, 1.0, 0.1, 2)
    with pytest.raises(ValueError, match="B: expected a PSD"):
        L.m1_loss(np.ones((2, 4)), A, -B, 1.0, 0.1)
    with pytest.raises(ValueError, match="gamma"):
        L.m1_solution(A, B, 1.0, -0.1, 2)
    with pytest.raises(ValueError, match="tau"):
        L.m2_thresholds(A4, 1.0, 0.0)
    with pytest.raises(ValueError, match="W"):
        L.m1_loss(np.ones((2, 3)), A, B, 1.0, 0.1)
    with pytest.raises(ValueError, match="B: expected shape"):
        L.m1_loss(np.ones((2, 4)), A, np.eye(3), 1.0, 0.1)
    with pytest.raises(ValueError, match="positive definite"):
        L.m1_solution(np.diag([1.0, 0.0]), np.zeros((2, 2)), 1.0, 0.1, 1)
    with pytest.raises(ValueError, match="d_out"):
        L.m1_solution(A, B, 1.0, 0.1, 0)
    with pytest.raises(ValueError, match="p"):
        L.imbalance_variance(1.5, 4.0, 0.1)
    with pytest.raises(ValueError, match="steps"):
        L.simulate_m1(A, B, 1.0, 0.1, np.ones((2, 4)), 0.01, 0)
    with pytest.raises(ValueError, match="lr"):
        L.simulate_m2(A, B, 1.0, 0.1, np.eye(4), np.eye(4), -0.01, 10)
    with pytest.raises(ValueError, match="U0"):
        L.simulate_m2(A, B, 1.0, 0.1, np.eye(3), np.eye(4), 0.01, 10)
    with pytest.raises(TypeError, match="mixed dtypes"):
        L.simulate_m1(A, B, 1.0, 0.1, np.ones((2, 4), np.float32), 0.01, 10)
    with pytest.raises(ValueError, match="finite"):
        L.m2_solution(np.array([1.0, np.nan]), 1.0, 1.0, 0.1)
    assert np.isnan(float(L.imbalance_threshold(4.0, 0.1, 2.0)))     # collapsed at every p
    assert float(L.imbalance_threshold(4.0, 0.1, 0.05)) == 0.0       # never collapses


def test_simulators_warn_when_gd_diverges():
    """Issue 15 audit: lr = 5 is far above 2/curvature (curvature ~ 4a_1/τ = 16): the GD loss is NaN;
    it used to come back silently. The converged case must stay silent."""
    A, B = np.diag([4.0, 2.0]), np.eye(2)
    with pytest.warns(RuntimeWarning, match="simulate_m1: GD diverged"):
        r = L.simulate_m1(A, B, 1.0, 0.1, 0.1 * np.eye(2), 5.0, 100)
    assert not np.isfinite(float(r.loss))
    with pytest.warns(RuntimeWarning, match="simulate_m2: GD diverged"):
        L.simulate_m2(A, B, 1.0, 0.1, np.eye(2), np.eye(2), 5.0, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = L.simulate_m1(A, B, 1.0, 0.1, 0.1 * np.eye(2), 0.01, 100)
    assert np.isfinite(float(r.loss))
