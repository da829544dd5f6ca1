"""Stepwise Barlow Twins theory (`sslntk.theory.stepwise`, module `sslntk.theory.staircase`) and the
`closed_form` solver.

Numerical checks 1–9 of the stepwise theory (Simon et al. 2023, ICML; derivations in
docs/theory/stepwise.md), in float64; the closed form
against the ODE reference (the dynamics engineer's diffrax `ode` solver, plus an independent RK4
here), gradients against central finite differences, jit/vmap, validation.

Reference spectra: Ref-A m=20, d=5; Ref-B m=12, d=3; Ref-C m=12, d=4.
The linear-model checks integrate dW/dt = −∇_W ‖WΓWᵀ − I‖² with RK4 (dt ≤ 1e-3/γ_1) or plain GD; the
kernel checks integrate df/dt = −K ∇_f L with ∇_f L from autodiff of `sslntk.losses.barlow_twins`.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import dynamics, losses
from sslntk.dynamics import _closed_form as cf
from sslntk.theory import staircase as sw

BT = losses.get("barlow_twins")

REF_A = np.array([1, .7, .5, .35, .25, .15] + list(np.linspace(.1, -.05, 14)))   # m = 20, d = 5
REF_B = np.array([1, .8, .6, .3, .2, .1] + [.05] * 6)                           # m = 12, d = 3
REF_C = np.array([1, .6, .36, .216, .1] + [.05] * 7)                             # m = 12, d = 4


def gamma_matrix(gam, seed=0):
    """Γ = Q diag(γ) Qᵀ with a random orthogonal Q (float64)."""
    m = len(gam)
    Q = np.linalg.qr(np.random.default_rng(seed).normal(size=(m, m)))[0]
    return Q @ np.diag(gam) @ Q.T, Q


# ----------------------------------------------------------------------------------------------
# Independent integrators (float64)


def _bt_linear_rhs(W, G):
    C = W @ G @ W.T
    return -4.0 * (C - jnp.eye(W.shape[0], dtype=W.dtype)) @ W @ G


@functools.partial(jax.jit, static_argnames=("dt", "nsub", "nsave"))
def rk4_linear(W0, G, *, dt, nsub, nsave):
    """RK4 for dW/dt = −4 (WΓWᵀ − I) W Γ; returns W at t = i·nsub·dt, i = 0..nsave."""

    def step(W, _):
        k1 = _bt_linear_rhs(W, G)
        k2 = _bt_linear_rhs(W + 0.5 * dt * k1, G)
        k3 = _bt_linear_rhs(W + 0.5 * dt * k2, G)
        k4 = _bt_linear_rhs(W + dt * k3, G)
        return W + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4), None

    def save(W, _):
        W, _ = jax.lax.scan(step, W, None, length=nsub)
        return W, W

    _, Ws = jax.lax.scan(save, W0, None, length=nsave)
    return jnp.concatenate([W0[None], Ws])


@functools.partial(jax.jit, static_argnames=("eta", "nsub", "nsave"))
def gd_linear(W0, G, *, eta, nsub, nsave):
    """Plain GD W ← W − η ∇L (∇L by autodiff of ‖WΓWᵀ − I‖²), saved every nsub steps."""
    grad = jax.grad(lambda W: jnp.sum((W @ G @ W.T - jnp.eye(W.shape[0])) ** 2))

    def save(W, _):
        W, _ = jax.lax.scan(lambda W, _: (W - eta * grad(W), None), W, None, length=nsub)
        return W, W

    _, Ws = jax.lax.scan(save, W0, None, length=nsave)
    return jnp.concatenate([W0[None], Ws])


@functools.partial(jax.jit, static_argnames=("dt", "nsub", "nsave"))
def rk4_kernel(f0, K, *, dt, nsub, nsave):
    """RK4 for the kernel flow df/dt = −K ∇_f L(f) (∇ by autodiff of losses.barlow_twins)."""
    rhs = lambda f: -K @ jax.grad(BT)(f)

    def step(f, _):
        k1 = rhs(f)
        k2 = rhs(f + 0.5 * dt * k1)
        k3 = rhs(f + 0.5 * dt * k2)
        k4 = rhs(f + dt * k3)
        return f + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4), None

    def save(f, _):
        f, _ = jax.lax.scan(step, f, None, length=nsub)
        return f, f

    _, fs = jax.lax.scan(save, f0, None, length=nsave)
    return jnp.concatenate([f0[None], fs])


def eig_c(Ws, G):
    """Descending eigenvalues of C = W Γ Wᵀ along a trajectory, (T, d)."""
    C = np.einsum("tkm,mn,tln->tkl", Ws, G, Ws)
    return np.linalg.eigvalsh(C)[:, ::-1]


def eig_c_f(fs):
    """Descending eigenvalues of C = fᵀ Z f / 2n along a kernel trajectory, (T, k)."""
    C = np.stack([np.asarray(losses.cross_correlation(jnp.asarray(f))) for f in fs])
    return np.linalg.eigvalsh(C)[:, ::-1]


def crossing_times(ts, c, level=0.5):
    """First time each column of c (T, d) crosses `level` (linear interpolation)."""
    out = []
    for j in range(c.shape[1]):
        i = int(np.argmax(c[:, j] >= level))
        assert c[i, j] >= level > c[i - 1, j], "no crossing in the window"
        w = (level - c[i - 1, j]) / (c[i, j] - c[i - 1, j])
        out.append(ts[i - 1] + w * (ts[i] - ts[i - 1]))
    return np.array(out)


def gram_rel_err(fa, fb):
    """Relative Frobenius error of the (rotation-invariant) Gram matrices f fᵀ, per time."""
    ga = np.einsum("...ik,...jk->...ij", fa, fa)
    gb = np.einsum("...ik,...jk->...ij", fb, fb)
    return np.linalg.norm(ga - gb, axis=(-2, -1)) / np.linalg.norm(gb, axis=(-2, -1))


def max_sine(W, Vd):
    """Largest principal-angle sine between rowspace(W) and span(Vd)."""
    Qw = np.linalg.qr(W.T)[0]
    s = np.linalg.svd(Vd.T @ Qw, compute_uv=False)
    return float(np.sqrt(max(0.0, 1.0 - np.min(s) ** 2)))


# ----------------------------------------------------------------------------------------------
# Kernels


NT = 121          # one time-grid length for all kernel solves: compiled programs are shared


def grid(t_end, num=NT):
    return jnp.linspace(0.0, t_end, num)


def feature_kernel(n=12, seed=0):
    """Linear kernel of anisotropic random features with two noisy views (PD, 2n x 2n), scaled so
    γ_1 = 1. Seed 0: γ = 1, .699, .483, .374, .209, .056, … (k = 4: ratios 1.43/1.45/1.29, gap .44)."""
    rng = np.random.default_rng(seed)
    p = 2 * n + 8
    sc = 1.6 ** (-np.arange(p) / 2)
    X = rng.normal(size=(n, p)) * sc
    Xa = X + 0.15 * rng.normal(size=X.shape) * sc
    Xb = X + 0.15 * rng.normal(size=X.shape) * sc
    Phi = np.concatenate([Xa, Xb])
    K = Phi @ Phi.T
    g = np.asarray(sw.contrastive_modes(jnp.asarray(K), 4)[0])
    return jnp.asarray(K / g[0])


def rbf_kernel(n=20, m_test=15, seed=1, noise=0.3, bw=0.7, ridge=1e-3):
    """RBF kernel on 2-D points with two noisy views each, plus test points; γ_1 scaled to 1."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 2))
    Xall = np.concatenate([X + noise * rng.normal(size=X.shape), X + noise * rng.normal(size=X.shape)])
    Xt = rng.uniform(-1, 1, size=(m_test, 2))
    k = lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * bw**2))
    K = k(Xall, Xall) + ridge * np.eye(2 * n)
    Ktx = k(Xt, Xall)
    g = float(sw.contrastive_modes(jnp.asarray(K), 2)[0][0])
    return jnp.asarray(K / g), jnp.asarray(Ktx / g)


def aligned_f0(K, k, s0, seed=0):
    """f0 = E_k diag(s0) Oᵀ: exactly aligned (orthogonal O), mode coefficients diag(s0)."""
    _, _, E = sw.contrastive_modes(K, k)
    O = np.linalg.qr(np.random.default_rng(seed).normal(size=(k, k)))[0]
    return E @ jnp.diag(jnp.asarray(s0)) @ jnp.asarray(O.T)


def random_f0(K, k, alpha, seed=0):
    """f0 ~ N(0, α² K) per output (the infinite-width small-init draw, with K as the NNGP)."""
    L = np.linalg.cholesky(np.asarray(K) + 1e-12 * np.eye(K.shape[0]))
    return jnp.asarray(alpha * L @ np.random.default_rng(seed).normal(size=(K.shape[0], k)))


# ==============================================================================================
# Check 1: loss and gradient (linear model)


def test_check1_loss_and_gradient():
    rng = np.random.default_rng(0)
    n, m, d = 30, 12, 4
    X = rng.normal(size=(n, m))
    Xp = X + 0.3 * rng.normal(size=(n, m))
    W = rng.normal(size=(d, m))
    Gam = (X.T @ Xp + Xp.T @ X) / (2 * n)
    f = jnp.asarray(np.concatenate([X, Xp]) @ W.T)
    C = np.asarray(losses.cross_correlation(f))
    # 1e-12: two float64 matrix products of O(1) numbers
    np.testing.assert_allclose(C, W @ Gam @ W.T, rtol=1e-12, atol=1e-12 * np.abs(C).max())
    Xall = jnp.asarray(np.concatenate([X, Xp]))
    g = np.asarray(jax.grad(lambda W: BT(Xall @ W.T))(jnp.asarray(W)))
    g_ref = 4 * (C - np.eye(d)) @ W @ Gam
    assert np.abs(g - g_ref).max() <= 1e-10 * np.abs(g_ref).max()


# ==============================================================================================
# Checks 2 and 3: aligned initialisation (linear model, Ref-A)


@pytest.fixture(scope="module")
def aligned_ref_a():
    G, Q = gamma_matrix(REF_A, seed=0)
    d, s0 = 5, 1e-3
    W0 = s0 * Q[:, :d].T
    dt, nsub, nsave = 1e-3, 5, 2400                       # t in [0, 12], saved every 0.005
    Ws = np.asarray(rk4_linear(jnp.asarray(W0), jnp.asarray(G), dt=dt, nsub=nsub, nsave=nsave))
    ts = np.arange(nsave + 1) * dt * nsub
    return G, Q, d, s0, W0, Ws, ts


def test_check2_aligned_logistic(aligned_ref_a):
    G, Q, d, s0, W0, Ws, ts = aligned_ref_a
    gam = REF_A[:d]
    init = sw.effective_init(W0 @ Q[:, :d], gam)
    np.testing.assert_allclose(init.c0, gam * s0**2, rtol=1e-12)
    c_pred = np.asarray(sw.logistic_c(ts[:, None], gam[None], init.c0[None]))
    err = np.abs(eig_c(Ws, G) - c_pred).max()
    assert err < 1e-8, err                    # measured 7e-12; RK4 dt=1e-3 error ~1e-12
    # the singular values follow s(0) exp(4 γ τ(t)) (effective_time), exactly
    s_pred = s0 * np.exp(4 * gam * np.asarray(sw.effective_time(ts[:, None], gam, init.c0)))
    s_num = np.linalg.norm(np.einsum("tkm,mj->tkj", Ws, Q[:, :d]), axis=1)
    assert np.abs(s_num - s_pred).max() < 1e-8 * s_pred.max()
    # the lifted coefficient trajectory reproduces W(t) itself (not only invariants): exact
    P0 = (W0 @ Q).T
    lift = sw.lifted_coefficients(P0, REF_A, ts[::100])
    W_lift = np.einsum("tji,mj,ki->tkm", lift.P, Q, lift.init.Q)
    assert np.abs(W_lift - Ws[::100]).max() < 1e-8 * np.abs(Ws).max()
    assert float(lift.estimate) < 1e-10


def test_check3_aligned_step_times(aligned_ref_a):
    G, Q, d, s0, W0, Ws, ts = aligned_ref_a
    gam = REF_A[:d]
    t_pred = np.asarray(sw.step_time(gam, gam * s0**2))
    t_num = crossing_times(ts, eig_c(Ws, G))
    assert np.abs(t_num / t_pred - 1).max() < 1e-4        # linear interpolation on a 0.005 grid
    # plain GD at learning rate η: relative error ≈ 2ηγ_j (measured 0.17 % at η = 1e-3)
    eta = 1e-3
    Wg = np.asarray(gd_linear(jnp.asarray(W0), jnp.asarray(G), eta=eta, nsub=5, nsave=2400))
    rel = np.abs(crossing_times(ts, eig_c(Wg, G)) / t_pred - 1)
    assert rel.max() < 0.003, rel
    assert rel.max() > 0.1 * 2 * eta * gam[0]           # the GD bias is real (a sanity check)


# ==============================================================================================
# Checks 4 and 5: random small initialisation (Ref-A)


@pytest.fixture(scope="module")
def random_ref_a():
    G, Q = gamma_matrix(REF_A, seed=0)
    d, seeds, alphas = 5, 3, (1e-3, 1e-4)
    rng = np.random.default_rng(1)
    W0 = np.stack([a * rng.normal(size=(d, 20)) for a in alphas for _ in range(seeds)])
    dt, nsub, nsave = 1e-3, 10, 1600                                   # t in [0, 16]
    run = jax.vmap(lambda W: rk4_linear(W, jnp.asarray(G), dt=dt, nsub=nsub, nsave=nsave))
    Ws = np.asarray(run(jnp.asarray(W0)))
    ts = np.arange(nsave + 1) * dt * nsub
    return G, Q, d, alphas, seeds, W0, Ws, ts


def test_check4_random_init_step_times(random_ref_a):
    G, Q, d, alphas, seeds, W0, Ws, ts = random_ref_a
    gam = REF_A[:d]
    for b in range(len(W0)):
        alpha = alphas[b // seeds]
        init = sw.effective_init(W0[b] @ Q[:, :d], gam)
        c_pred = np.asarray(sw.logistic_c(ts[:, None], gam, init.c0))
        ec = eig_c(Ws[b], G)
        t_num = crossing_times(ts, ec)
        t_qr = np.asarray(sw.step_time(gam, init.c0))
        t_naive = np.asarray(sw.step_time(gam, gam * alpha**2))
        if alpha <= 1e-4:
            # measured <= 0.17 % at α = 1e-4 over 8 seeds; acceptance 0.5 %
            assert np.abs(t_num / t_qr - 1).max() < 5e-3
            # the naive s(0) = α is off by O(1/ln(1/α)) (measured 5–10 %)
            assert np.abs(t_num / t_naive - 1).max() > 2 * np.abs(t_num / t_qr - 1).max()
            # t_j γ_j cluster around ln(1/α)/4 = 2.30: seed-to-seed std ~0.12 (measured), plus a
            # systematic ln(1/γ_j)/8 (0.17 for γ = 0.25): allow 0.5
            assert np.abs(t_num * gam - np.log(1 / alpha) / 4).max() < 0.5
            # whole eig(C) trajectory near the logistic curves (measured here: <= 3.0e-3)
            assert np.abs(ec - c_pred).max() < 4e-3
        else:
            # α = 1e-3: other seeds gave 4e-3; these seeds give up to 3.1e-2 (mode
            # 3 of one seed, where the QR-effective init is least accurate): check the scale only
            assert np.abs(ec - c_pred).max() < 4e-2


def test_check5_rank_growth_ordering(random_ref_a):
    G, Q, d, alphas, seeds, W0, Ws, ts = random_ref_a
    gam = REF_A[:d]
    assert np.all(gam[:-1] / gam[1:] >= 1.2)          # ordering is only checked for ratios >= 1.2
    for b in range(seeds, 2 * seeds):                 # α = 1e-4
        init = sw.effective_init(W0[b] @ Q[:, :d], gam)
        t = np.asarray(sw.step_time(gam, init.c0))
        probes = np.concatenate([[t[0] / 2], (t[:-1] + t[1:]) / 2, [t[-1] + 3]])
        ec = eig_c(Ws[b], G)
        for j, tp in enumerate(probes):
            i = int(np.argmin(np.abs(ts - tp)))
            assert int(np.sum(ec[i] > 0.5)) == j, (b, j, ec[i])
        # learned in decreasing-γ order: the eigenvector of C with eigenvalue > 0.5 that appears at
        # step j lies in the output direction of mode j (|⟨u, q_j⟩| ≈ 1)
        for j in range(d):
            i = int(np.argmin(np.abs(ts - (t[j] + 0.25 * (t[j + 1] - t[j]) if j + 1 < d
                                           else t[j] + 1))))
            C = Ws[b][i] @ G @ Ws[b][i].T
            w, U = np.linalg.eigh(C)
            u_new = U[:, np.argsort(w)[::-1][j]]
            assert abs(u_new @ np.asarray(init.Q)[:, j]) > 0.9


# ==============================================================================================
# Check 6: loss plateaus (Ref-C, GD η = 1e-3, α = 1e-6)


def test_check6_loss_plateaus():
    G, Q = gamma_matrix(REF_C, seed=2)
    d, alpha, eta = 4, 1e-6, 1e-3
    W0 = alpha * np.random.default_rng(3).normal(size=(d, 12))
    Wg = np.asarray(gd_linear(jnp.asarray(W0), jnp.asarray(G), eta=eta, nsub=50, nsave=480))
    ts = np.arange(481) * 50 * eta                                      # t in [0, 24]
    C = np.einsum("tkm,mn,tln->tkl", Wg, G, Wg)
    L = np.sum((C - np.eye(d)) ** 2, axis=(1, 2))
    gam = REF_C[:d]
    init = sw.effective_init(W0 @ Q[:, :d], gam)
    t = np.asarray(sw.step_time(gam, init.c0))
    probes = np.concatenate([[t[0] / 2], (t[:-1] + t[1:]) / 2])
    L_pred = np.asarray(sw.loss_curve(sw.logistic_c(probes[:, None], gam, init.c0)))
    for j, tp in enumerate(probes):
        i = int(np.argmin(np.abs(ts - tp)))
        assert abs(L[i] - (d - j)) < 0.02, (j, L[i])          # measured: 4.0/2.992/1.999/0.989
        assert abs(L_pred[j] - L[i]) < 0.02
    assert L[-1] < 1e-8


# ==============================================================================================
# Check 7: final linear embedding, subspace error ~ α^gap (Ref-B)


def test_check7_final_subspace_scaling():
    G, Q = gamma_matrix(REF_B, seed=4)
    d = 3
    gap = (REF_B[d - 1] - REF_B[d]) / REF_B[d - 1]                     # 0.5
    alphas = (1e-2, 1e-4, 1e-8, 1e-12)
    rng = np.random.default_rng(5)
    W0 = np.stack([a * rng.normal(size=(d, 12)) for a in alphas for _ in range(3)])
    run = jax.vmap(lambda W: rk4_linear(W, jnp.asarray(G), dt=1e-3, nsub=20000, nsave=1))
    W_end = np.asarray(run(jnp.asarray(W0)))[:, -1]                  # t = 20
    sines = []
    for b, W in enumerate(W_end):
        alpha = alphas[b // 3]
        C = W @ G @ W.T
        assert np.abs(C - np.eye(d)).max() < 1e-6
        s = max_sine(W, Q[:, :d])
        sines.append(s)
        assert s <= 3 * alpha**gap, (alpha, s)
        # the lifted closed form predicts the contamination itself (first order): same order
        lift = sw.lifted_coefficients((W0[b] @ Q).T, REF_B, jnp.asarray([60.0]))
        W_pred = np.einsum("ji,mj,ki->km", lift.P[0], Q, lift.init.Q)
        s_pred = max_sine(W_pred, Q[:, :d])
        assert abs(s_pred - s) <= 0.35 * s + 1e-12, (alpha, s, s_pred)
    # the scaling itself: each 1e4 decrease of α shrinks the sine ~100× (α^0.5)
    s = np.array(sines).reshape(4, 3).max(axis=1)
    assert np.all(s[1:] < s[:-1])


# ==============================================================================================
# Check 8: kernel spectra and the closed-form eigenfunctions


def test_check8_kernel_spectra():
    rng = np.random.default_rng(6)
    n, p, m_test = 10, 40, 7
    Phi = rng.normal(size=(2 * n, p)) / np.sqrt(p)
    Phi[n:] = Phi[:n] + 0.4 * Phi[n:]                      # correlated views
    Phit = rng.normal(size=(m_test, p)) / np.sqrt(p)
    Z = np.block([[np.zeros((n, n)), np.eye(n)], [np.eye(n), np.zeros((n, n))]])
    K = Phi @ Phi.T
    Ktx = Phit @ Phi.T
    gam, A, E = (np.asarray(x) for x in sw.contrastive_modes(jnp.asarray(K), 2 * n))
    # (a) top eigenvalues of Γ_φ = Φᵀ Z Φ / 2n (p x p) = eig of M, to 1e-10
    g_phi = np.linalg.eigvalsh(Phi.T @ Z @ Phi / (2 * n))[::-1]
    np.testing.assert_allclose(gam[:8], g_phi[:8], atol=1e-10 * abs(g_phi[0]))
    # (b) the g_j reconstruct K^Γ(x, x') = k_X(x)ᵀ Z k_X(x') / 2n on test points, to 1e-12
    KG = Ktx @ Z @ Ktx.T / (2 * n)
    gt = Ktx @ A
    rec = (gt * gam) @ gt.T
    assert np.linalg.norm(rec - KG) <= 1e-12 * np.linalg.norm(KG) * 10   # cond(K) ~ 1e2 headroom
    # (c) eigenvectors of the non-symmetric Z K / 2n, normalised by aᵀ K a = 1, give the same
    #     final embedding Gram on test points (numpy, independent of sslntk.linalg)
    d = 3
    w, Av = np.linalg.eig(Z @ K / (2 * n))
    order = np.argsort(-w.real)[:d]
    Av = Av[:, order].real
    Av = Av / np.sqrt(np.einsum("ij,ik,kj->j", Av, K, Av))
    gram_np = (Ktx @ Av) @ np.diag(1 / w.real[order]) @ (Ktx @ Av).T
    _, f_te = sw.final_embedding(jnp.asarray(K), d, K_test_train=jnp.asarray(Ktx))
    gram = np.asarray(f_te @ f_te.T)
    assert np.linalg.norm(gram - gram_np) <= 1e-12 * np.linalg.norm(gram_np) * 10
    # (d) linear-kernel consistency: K = X_all X_allᵀ + 1e-9 I reproduces xᵀ V_d Γ_d⁻¹ V_dᵀ x'
    mlin = 6
    X = rng.normal(size=(2 * n, mlin))
    X[n:] = X[:n] + 0.5 * X[n:]
    Xt = rng.normal(size=(m_test, mlin))
    Gam = X.T @ Z @ X / (2 * n)
    gl, Vl = np.linalg.eigh(Gam)
    gl, Vl = gl[::-1], Vl[:, ::-1]
    lin = Xt @ Vl[:, :d] @ np.diag(1 / gl[:d]) @ Vl[:, :d].T @ Xt.T
    Kl = X @ X.T + 1e-9 * np.eye(2 * n)
    _, f_te = sw.final_embedding(jnp.asarray(Kl), d, K_test_train=jnp.asarray(Xt @ X.T))
    assert np.abs(np.asarray(f_te @ f_te.T) - lin).max() < 1e-7     # measured 2e-10
    gk = np.asarray(sw.contrastive_modes(jnp.asarray(Kl), d)[0])
    np.testing.assert_allclose(gk, gl[:d], rtol=1e-7)


# ==============================================================================================
# Check 9 (and the closed_form solver): kernel closed form versus training


def rk4_on_grid(f0, K, t_end, nsave=120, dt_max=1e-3):
    """Float64 RK4 of the kernel flow saved on linspace(0, t_end, nsave + 1), dt <= dt_max."""
    nsub = int(np.ceil(t_end / nsave / dt_max))
    dt = t_end / nsave / nsub
    fs = rk4_kernel(f0, K, dt=dt, nsub=nsub, nsave=nsave)
    return jnp.linspace(0.0, t_end, nsave + 1), np.asarray(fs)


@pytest.fixture(scope="module")
def rbf_problem():
    """RBF kernel, n = 20, k = 3, α = 1e-8; γ ≈ 1, .52, .44, .16 (gap (γ_3 − γ_4)/γ_3 ≈ .65).
    Training: float64 RK4, dt ≤ 1e-3 = 1e-3/γ_1."""
    K, Ktx = rbf_kernel()
    k, alpha = 3, 1e-8
    gam = np.asarray(sw.contrastive_modes(K, k + 1)[0])
    f0 = random_f0(K, k, alpha, seed=7)
    res = sw.stepwise(K, f0, k, K_test_train=Ktx)
    t_end = float(np.max(res.step_times + 3 * res.step_widths))
    ts, fs = rk4_on_grid(f0, K, t_end)
    # test predictions of the A-space model (f0 in the span): f_test(t) = K_tx K⁻¹ f(t)
    fs_test = np.einsum("mi,tik->tmk", np.asarray(Ktx), np.linalg.solve(np.asarray(K), fs))
    return K, Ktx, k, alpha, gam, f0, res, ts, fs, fs_test


def test_check9_kernel_closed_form_vs_training(rbf_problem):
    K, Ktx, k, alpha, gam, f0, res, ts, fs, fs_test = rbf_problem
    gap = (gam[k - 1] - gam[k]) / gam[k - 1]
    # trained to C ≈ I
    C_end = np.asarray(losses.cross_correlation(jnp.asarray(fs[-1])))
    assert np.abs(C_end - np.eye(k)).max() < 1e-4
    # held-out Gram of the learned embedding vs the α → 0 closed form (kernel PCA of K^Γ)
    err = gram_rel_err(fs_test[-1], np.asarray(res.f_final_test))
    assert err <= 3 * alpha**gap, (err, alpha**gap)
    # step times: QR-effective within 0.5 %, and t_j γ_j ≈ ln(1/α)/4 within ~12 % (measured)
    t_num = crossing_times(np.asarray(ts), eig_c_f(fs))
    assert np.abs(t_num / np.asarray(res.step_times) - 1).max() < 5e-3
    assert np.abs(t_num * gam[:k] / (np.log(1 / alpha) / 4) - 1).max() < 0.15


def test_closed_form_random_init_vs_rk4(rbf_problem):
    K, Ktx, k, alpha, gam, f0, res, ts, fs, fs_test = rbf_problem
    tr = cf.solve_closed_form(K, BT, f0, ts, K_test_train=Ktx)   # f0_test omitted: f0 in span
    assert tr.ok and tr.method == "closed_form" and int(tr.n_steps) == 1
    bound = float(tr.bound)
    gaps = (gam[:-1] - gam[1:]) / gam[:-1]
    assert 0 < bound < 3 * alpha ** gaps.min()                        # an α^gap-type estimate
    err = gram_rel_err(np.asarray(tr.f), fs)
    assert err.max() <= bound, (err.max(), bound)
    err_t = gram_rel_err(np.asarray(tr.f_test), fs_test)
    assert err_t.max() <= bound, (err_t.max(), bound)
    assert np.abs(eig_c_f(np.asarray(tr.f)) - eig_c_f(fs)).max() <= bound
    L_ref = np.asarray(jax.vmap(BT)(jnp.asarray(fs)))
    assert np.abs(np.asarray(tr.loss) - L_ref).max() <= bound
    np.testing.assert_allclose(tr.f[0], f0, rtol=0, atol=1e-12 * float(jnp.abs(f0).max()))
    # the final embedding on test points agrees with the α → 0 kernel PCA (rotation-invariant)
    assert gram_rel_err(np.asarray(tr.f_test[-1]), np.asarray(res.f_final_test)) < 3 * bound


@pytest.mark.slow
def test_closed_form_vs_diffrax_ode_with_test_points(rbf_problem):
    """The same comparison against `dynamics.solve(method="ode")` (diffrax), test points included
    through the solver's own f0_test + K_tx ∫∇L (no K⁻¹)."""
    K, Ktx, k, alpha, gam, f0, res, ts, fs, fs_test = rbf_problem
    f0_test = Ktx @ jnp.linalg.solve(K, f0)
    ode = dynamics.solve(K, BT, f0, ts, method="ode", K_test_train=Ktx, f0_test=f0_test,
                         rtol=1e-10)
    tr = dynamics.solve(K, BT, f0, ts, method="closed_form", K_test_train=Ktx, f0_test=f0_test)
    assert ode.ok and tr.ok
    assert gram_rel_err(np.asarray(ode.f), fs).max() < 1e-6            # diffrax == RK4
    bound = float(tr.bound)
    assert gram_rel_err(np.asarray(tr.f), np.asarray(ode.f)).max() <= bound
    assert gram_rel_err(np.asarray(tr.f_test), np.asarray(ode.f_test)).max() <= bound


@pytest.fixture(scope="module")
def feature_problem():
    K = feature_kernel()
    k = 4
    gam = np.asarray(sw.contrastive_modes(K, 2 * 12)[0])
    return K, k, gam


def _compare(tr, ref, tol):
    """Rotation-invariant comparison over the whole trajectory: Gram f fᵀ (relative), eig(C)
    (absolute; they go 0 → 1), loss (relative where L > 1e-2, absolute 1e-2·tol below)."""
    g = gram_rel_err(np.asarray(tr.f), np.asarray(ref.f))
    e = np.abs(eig_c_f(np.asarray(tr.f)) - eig_c_f(np.asarray(ref.f)))
    Lr, L = np.asarray(ref.loss), np.asarray(tr.loss)
    lerr = np.abs(L - Lr) / np.maximum(Lr, 1e-2)
    assert g.max() < tol and e.max() < tol and lerr.max() < tol, (g.max(), e.max(), lerr.max())
    return g.max(), e.max(), lerr.max()


def test_closed_form_aligned_matches_ode_whole_staircase(feature_problem):
    K, k, gam = feature_problem
    f0 = aligned_f0(K, k, [1e-4, 3e-4, 2e-4, 1e-4], seed=8)
    res = sw.stepwise(K, f0, k)
    np.testing.assert_allclose(res.c0, gam[:k] * np.array([1e-4, 3e-4, 2e-4, 1e-4]) ** 2,
                               rtol=1e-9)
    t_end = float(np.max(res.step_times + 3 * res.step_widths))
    ts = grid(t_end)
    tr = dynamics.solve(K, BT, f0, ts, method="closed_form")
    assert float(tr.bound) < 1e-9
    ode = dynamics.solve(K, BT, f0, ts, method="ode", rtol=1e-10)
    assert ode.ok and tr.ok
    # all k steps learned within the window
    assert np.all(eig_c_f(np.asarray(ode.f))[-1] > 0.99)
    _compare(tr, ode, 1e-3)                      # acceptance: 1e-3; measured ~1e-8 (ODE tol)
    # the theory's predicted curves (stepwise) agree too, exactly in the aligned case
    res_t = sw.stepwise(K, f0, k, ts=ts)
    np.testing.assert_allclose(np.asarray(res_t.loss), np.asarray(ode.loss), atol=1e-6)
    np.testing.assert_allclose(np.asarray(res_t.c), eig_c_f(np.asarray(ode.f)), atol=1e-6)
    # independent float64 RK4 reference (no diffrax): same answer
    dt = 2e-3
    nsub = int(round(float(ts[1]) / dt))
    dt = float(ts[1]) / nsub
    fr = np.asarray(rk4_kernel(f0, K, dt=dt, nsub=nsub, nsave=NT - 1))
    assert gram_rel_err(np.asarray(tr.f), fr).max() < 1e-6


def test_closed_form_random_init_feature_kernel(feature_problem):
    K, k, gam = feature_problem
    for alpha, seed in ((1e-6, 9), (1e-3, 10)):
        f0 = random_f0(K, k, alpha, seed=seed)
        res = sw.stepwise(K, f0, k)
        t_end = float(np.max(res.step_times + 3 * res.step_widths))
        ts = grid(t_end)
        tr = dynamics.solve(K, BT, f0, ts, method="closed_form")
        ode = dynamics.solve(K, BT, f0, ts, method="ode", rtol=1e-10)
        bound = float(tr.bound)
        g = gram_rel_err(np.asarray(tr.f), np.asarray(ode.f)).max()
        e = np.abs(eig_c_f(np.asarray(tr.f)) - eig_c_f(np.asarray(ode.f))).max()
        lo = np.abs(np.asarray(tr.loss) - np.asarray(ode.loss)).max()
        assert max(g, e, lo) <= bound, (alpha, g, e, lo, bound)
        # the bound is an α^gap-type quantity (smallest relative gap among the top k + 1)
        gmin = ((gam[:k] - gam[1:k + 1]) / gam[:k]).min()
        assert bound < 10 * alpha**gmin


def test_fewer_positive_modes_plateau():
    """Modes with γ ≤ 0 are never learned: the loss stays on the plateau k − #(γ > 0).

    Kernel: for a positive-definite K, M = K^{1/2} Z K^{1/2}/2n is congruent to Z (Sylvester's law
    of inertia), so exactly n of its 2n eigenvalues are positive; with k > n outputs, k − n
    directions are never learned (here n = 3, k = 4: plateau 1). Dynamics: the linear model with
    only 3 positive γ among the top d = 5 (RK4) against the closed-form lift (plateau 2)."""
    K = feature_kernel(n=3, seed=3)
    n, k = 3, 4
    gam = np.asarray(sw.contrastive_modes(K, 2 * n)[0])
    assert np.sum(gam > 0) == n
    res = sw.stepwise(K, random_f0(K, k, 1e-4, seed=1), k)
    assert int(res.n_learned) == n
    assert np.all(np.isinf(np.asarray(res.step_times)[n:]))
    np.testing.assert_allclose(res.plateaus, [4, 3, 2, 1, 1])
    assert abs(float(res.loss[-1]) - 1.0) < 1e-6
    # linear model, d = 5, γ = (1, .6, .36, −.05, −.1, …)
    gl = np.array([1, .6, .36, -.05, -.1] + list(np.linspace(-.15, -.3, 15)))
    G, Q = gamma_matrix(gl, seed=5)
    W0 = 1e-4 * np.random.default_rng(6).normal(size=(5, 20))
    Ws = np.asarray(rk4_linear(jnp.asarray(W0), jnp.asarray(G), dt=1e-3, nsub=5, nsave=2400))
    ts = np.arange(2401) * 5e-3
    L = np.sum((np.einsum("tkm,mn,tln->tkl", Ws, G, Ws) - np.eye(5)) ** 2, axis=(1, 2))
    lift = sw.lifted_coefficients((W0 @ Q).T, gl, ts[::100])
    W_lift = np.einsum("tji,mj,ki->tkm", lift.P, Q, lift.init.Q)
    L_lift = np.sum((np.einsum("tkm,mn,tln->tkl", W_lift, G, W_lift) - np.eye(5)) ** 2, axis=(1, 2))
    assert abs(L[-1] - 2.0) < 1e-4 and abs(L_lift[-1] - 2.0) < 1e-4
    assert np.abs(L_lift - L[::100]).max() <= float(lift.estimate)
    t = np.asarray(sw.step_time(gl[:5], lift.init.c0))
    assert np.all(np.isfinite(t[:3])) and np.all(np.isinf(t[3:]))


# ==============================================================================================
# Gradients: step time and loss at T, w.r.t. α and a K scale, vs central finite differences


def test_gradients_match_finite_differences(feature_problem):
    K, k, gam = feature_problem
    xi = random_f0(K, k, 1.0, seed=12)
    res0 = sw.stepwise(K, 1e-4 * xi, k)
    T = float(res0.step_times[1] + 0.3 * res0.step_widths[1])     # mid-staircase: L'(T) sizable
    ts = grid(T)                                   # loss at ts[-1] = T

    def t_step(alpha, s):
        return sw.stepwise(s * K, alpha * xi, k).step_times[1]

    def loss_T(alpha, s):
        return cf.solve_closed_form(s * K, BT, alpha * xi, ts).loss[-1]

    a0, s0 = 1e-4, 1.0
    grads = {}
    for fn in (t_step, loss_T):
        ga, gs = grads[fn] = jax.grad(fn, argnums=(0, 1))(a0, s0)
        # central differences with h = 1e-4 relative: truncation ~h²·(f'''/f') ~ 1e-8, round-off
        # ~eps·|f|/(h·|f'|) ~ 1e-11 — both well below the 1e-5 tolerance
        ha, hs = 1e-4 * a0, 1e-4 * s0
        fa = (fn(a0 + ha, s0) - fn(a0 - ha, s0)) / (2 * ha)
        fs = (fn(a0, s0 + hs) - fn(a0, s0 - hs)) / (2 * hs)
        np.testing.assert_allclose(float(ga), float(fa), rtol=1e-5)
        np.testing.assert_allclose(float(gs), float(fs), rtol=1e-5)
    # analytic check of the α derivative of a step time: dt/dα = −2 / (8 γ α (1 − c0))
    c0 = float(res0.c0[1])
    np.testing.assert_allclose(float(grads[t_step][0]), -2 / (8 * gam[1] * a0 * (1 - c0)),
                               rtol=1e-8)
    # and of its K-scale derivative: γ ∝ s and c0 = γ R² ∝ s⁰ (f0 ∝ K^{1/2}-coefficients scale as
    # s^{-1/2}, γ as s): t ∝ 1/s  ⇒  dt/ds = −t
    np.testing.assert_allclose(float(grads[t_step][1]), -float(res0.step_times[1]), rtol=1e-8)


# ==============================================================================================
# jit / vmap / dtypes / validation / helpers


def test_jit_and_vmap_over_alpha(feature_problem):
    K, k, gam = feature_problem
    xi = random_f0(K, k, 1.0, seed=13)
    ts = grid(40.0)
    alphas = jnp.asarray([1e-6, 1e-4, 1e-2])
    # K passed as an argument: closed-over concrete arrays would hit the value checks of
    # sslntk._validate inside the trace
    batched = jax.jit(jax.vmap(lambda a, K: cf.solve_closed_form(K, BT, a * xi, ts),
                               in_axes=(0, None)))(alphas, K)
    assert batched.f.shape == (3, NT, 24, k) and batched.loss.shape == (3, NT)
    for i, a in enumerate(alphas):
        one = cf.solve_closed_form(K, BT, a * xi, ts)
        np.testing.assert_allclose(batched.f[i], one.f, rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(batched.bound[i], one.bound, rtol=1e-9)
    sw_b = jax.jit(jax.vmap(lambda a, K: sw.stepwise(K, a * xi, k).step_times,
                            in_axes=(0, None)))(alphas, K)
    assert np.all(np.diff(np.asarray(sw_b), axis=0) < 0)        # larger α, earlier steps


def test_float32_path(feature_problem):
    K, k, gam = feature_problem
    K32 = K + 1e-2 * jnp.eye(K.shape[0])                          # cond ~1e2 for float32
    f0 = random_f0(K32, k, 1e-3, seed=14)
    ts = grid(30.0)
    t64 = cf.solve_closed_form(K32, BT, f0, ts)
    t32 = cf.solve_closed_form(K32.astype(jnp.float32), BT, f0.astype(jnp.float32),
                               ts.astype(jnp.float32))
    assert t32.f.dtype == jnp.float32 and t32.ok
    assert gram_rel_err(np.asarray(t32.f, np.float64), np.asarray(t64.f)).max() < 1e-3
    r32 = sw.stepwise(K32.astype(jnp.float32), f0.astype(jnp.float32), k)
    r64 = sw.stepwise(K32, f0, k)
    assert r32.step_times.dtype == jnp.float32
    np.testing.assert_allclose(r32.step_times, r64.step_times, rtol=1e-3)


def test_validation_errors(feature_problem):
    K, k, gam = feature_problem
    f0 = random_f0(K, k, 1e-3)
    ts = grid(1.0)
    with pytest.raises(ValueError, match="lam = 1 only.*lam = 0.005"):
        cf.solve_closed_form(K, losses.get("barlow_twins", lam=0.005), f0, ts)
    with pytest.raises(ValueError, match="lam = 0.005"):
        dynamics.solve(K, losses.get("barlow_twins", lam=0.005), f0, ts, method="closed_form")
    other = [n for n in losses.names() if n != "barlow_twins"]
    if other:
        with pytest.raises(ValueError, match=repr(other[0])):
            cf.solve_closed_form(K, other[0], f0, ts)
    with pytest.raises(ValueError, match="f0"):
        cf.solve_closed_form(K, BT, f0[:-2], ts)
    with pytest.raises(ValueError, match="ts"):
        cf.solve_closed_form(K, BT, f0, jnp.asarray([-1.0, 0.0]))
    with pytest.raises(ValueError, match="k: expected"):
        sw.stepwise(K, f0, k + 1)
    with pytest.raises(ValueError, match="f0"):
        sw.stepwise(K, f0[:5], k)
    with pytest.raises(TypeError, match="mixed dtypes"):
        sw.stepwise(K, f0.astype(jnp.float32), k)
    with pytest.raises(ValueError, match="ts"):
        sw.stepwise(K, f0, k, ts=[-1.0, 1.0])
    with pytest.raises(ValueError, match="proj"):
        sw.effective_init(jnp.ones((2, 3)), jnp.ones(3))
    with pytest.raises(ValueError, match="K_test_train"):
        sw.stepwise(K, f0, k, K_test_train=jnp.ones((3, 5)))
    # a traced λ that is not 1 cannot raise: the status says FAILED instead
    st = jax.jit(lambda lam, K, f0: cf.solve_closed_form(
        K, losses.get("barlow_twins", lam=lam), f0, ts).status)(0.5, K, f0)
    assert int(st) == dynamics.FAILED


def test_helpers_edge_cases():
    t = jnp.asarray([0.0, 1.0, 1e3, 1e6])
    # saturates without overflow; starts at c0
    c = np.asarray(sw.logistic_c(t, 1.0, 1e-8))
    assert c[0] == pytest.approx(1e-8) and c[-1] == 1.0 and np.all(np.isfinite(c))
    # γ < 0 (c0 = γ s² < 0): decays to 0, never learned; γ = 0: constant; c0 = 0: saddle
    c = np.asarray(sw.logistic_c(t, -0.5, -0.5 * 1e-6))
    assert np.all(np.isfinite(c)) and c[0] < 0 and abs(c[-1]) < 1e-300 + 1e-12
    np.testing.assert_allclose(sw.logistic_c(t, 0.0, 0.3), 0.3)
    np.testing.assert_allclose(sw.logistic_c(t, 1.0, 0.0), 0.0)
    assert float(sw.step_time(-0.1, -1e-6)) == np.inf
    assert float(sw.step_time(0.3, 0.0)) == np.inf
    assert float(sw.step_time(0.3, 1.5)) == -np.inf
    assert float(sw.step_time(0.5, 0.5)) == 0.0
    # effective_time: τ' = 1 − c (vs autodiff), τ(∞) = −ln(c0)/(8γ), γ → 0 limit t(1 − c0)
    g, c0 = 0.7, 1e-6
    dtau = jax.vmap(jax.grad(lambda s: sw.effective_time(s, g, c0)))(jnp.asarray([0.0, 3.0, 9.0]))
    np.testing.assert_allclose(dtau, 1 - sw.logistic_c(jnp.asarray([0.0, 3.0, 9.0]), g, c0),
                               rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sw.effective_time(1e4, g, c0), -np.log(c0) / (8 * g), rtol=1e-12)
    np.testing.assert_allclose(sw.effective_time(2.0, 0.0, 0.25), 1.5)
    np.testing.assert_allclose(sw.effective_time(2.0, 1e-200, 0.25), 1.5)
    # gradients through the guarded branches stay finite
    gr = jax.grad(lambda c0: jnp.sum(sw.logistic_c(t, -0.5, c0) + sw.effective_time(t, -0.5, c0)))
    assert np.isfinite(float(gr(-1e-6)))
    gr = jax.grad(lambda g: jnp.sum(sw.step_time(g, 1e-6)))
    assert np.isfinite(float(gr(0.3)))
    assert float(sw.step_width(1.0)) == pytest.approx(np.log(81) / 8)
    # against the textbook formulas (float64, no cancellation there for these ranges), including
    # tiny c0 at large 8γt where e^{-x} is far below eps (a regression: 1 + expm1(−x) rounds to 0)
    tt = np.linspace(0.0, 40.0, 81)[:, None]
    for c0 in (1e-18, 1e-8, 0.3, 0.9):
        for g in (1.0, 0.5, 0.05):
            ref_c = 1 / (1 + (1 / c0 - 1) * np.exp(-8 * g * tt))
            ref_tau = tt - np.log1p(c0 * np.expm1(8 * g * tt)) / (8 * g)
            np.testing.assert_allclose(sw.logistic_c(tt, g, c0), ref_c, rtol=1e-12)
            np.testing.assert_allclose(sw.effective_time(tt, g, c0), ref_tau, rtol=1e-12,
                                       atol=1e-12)


# ==============================================================================================
# Long horizons (issue 15): the closed form after the staircase, float32 and float64


def _near_degenerate_f0(K, k, alpha=1e-3, seed=0):
    """f0 = E P0 with mode k's coefficient row nearly in the span of the first k − 1 rows: the
    QR-effective R_kk (hence c0_k = γ_k R_kk²) is ~1e-6 α, so mode k+1 (γ ratio 0.56 here) grows by
    c0_k^{−γ_{k+1}/2γ_k} ≈ 1e5 along direction k and ends far larger than the learned one."""
    N = K.shape[0]
    _, _, E = sw.contrastive_modes(K, N)
    P0 = alpha * np.random.default_rng(seed).normal(size=(N, k))
    P0[k - 1] = 0.5 * P0[0] - 0.3 * P0[1] + 1e-6 * P0[k - 1]
    return E @ jnp.asarray(P0)


@pytest.mark.filterwarnings("ignore:sslntk.dynamics.solve:RuntimeWarning")
def test_closed_form_outside_validity_fails_not_success(feature_problem):
    """Issue 15 repro: the lifted closed form left its first-order regime (ε ≥ 1) and returned a
    loss of 2e5 (float64) / 47 (float32) after the staircase, where the ODE reaches 1e-22, with
    status "success". Now: FAILED, with a RuntimeWarning that gives the reason."""
    K, k, _ = feature_problem
    f0 = _near_degenerate_f0(K, k)
    res = sw.stepwise(K, f0, k)
    ts = grid(10 * float(np.max(res.step_times)))
    ode = dynamics.solve(K, BT, f0, ts, method="ode", rtol=1e-10)
    assert ode.ok and float(ode.loss[-1]) < 1e-12
    for dt in (jnp.float64, jnp.float32):
        with pytest.warns(RuntimeWarning, match="outside its validity"):
            tr = dynamics.solve(K.astype(dt), BT, f0.astype(dt), ts.astype(dt),
                                method="closed_form")
        assert tr.status_name == "failed" and float(tr.bound) >= 1.0
        # the values are still returned (finite), they are just not trusted
        assert np.all(np.isfinite(np.asarray(tr.loss)))
        assert np.abs(np.asarray(tr.loss, np.float64) - np.asarray(ode.loss)).max() > 1.0
    # under jit the status alone carries it
    st = jax.jit(lambda K, f0: cf.solve_closed_form(K, BT, f0, ts).status)(K, f0)
    assert int(st) == dynamics.FAILED


# Loss tolerance of the closed form against the float64 ODE (rtol 1e-10), per dtype, on top of the
# closed form's own estimate `bound` (0 for an aligned init; measured loss errors ≤ 0.04·bound):
# float64: the ODE tolerance on an O(k) loss (measured 5e-11), 1e-8 leaves 200×;
# float32: round-off of the K^{-1/2} reduction and of C = fᵀZf/2n (measured ≤ 6e-6 on the
# feature kernel, cond(K) = 1.5e7 but the learned modes are well conditioned), 1e-4 leaves 15×.
_SLACK = {jnp.float64: 1e-8, jnp.float32: 1e-4}


def _long_horizon_check(K, k, alpha, init, dt, seed=0, horizon=10.0, allow_failed=False):
    """closed_form vs the float64 ODE over [0, horizon × last step time]: status, loss within
    bound + slack at every saved time, and monotone non-increasing up to twice that (the flow's
    loss is non-increasing, dL/dt = −‖∇L‖²_K ≤ 0; for an aligned init the closed form is exact)."""
    if init == "aligned":
        f0 = aligned_f0(K, k, alpha * np.linspace(1.0, 2.0, k), seed=seed)
    else:
        f0 = random_f0(K, k, alpha, seed=seed)
    t_last = float(np.max(sw.stepwise(K, f0, k).step_times))
    ts = grid(horizon * t_last)
    ode = dynamics.solve(K, BT, f0, ts, method="ode", rtol=1e-10)
    assert ode.ok
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if allow_failed else "error", RuntimeWarning)
        tr = dynamics.solve(K.astype(dt), BT, f0.astype(dt), ts.astype(dt), method="closed_form")
    if allow_failed and not tr.ok:
        # an honest refusal (large α, random init: ε ≥ 1), never a silent success
        assert tr.status_name == "failed" and init == "random", (tr.status_name, init)
        return None
    assert tr.ok, (tr.status_name, float(tr.bound))
    bound = float(tr.bound)
    if init == "aligned":
        assert bound < 1e-6                       # round-off of Aᵀ f0 only (float32: ~1e-7)
    L, Lr = np.asarray(tr.loss, np.float64), np.asarray(ode.loss)
    tol = bound + _SLACK[dt]
    err = np.abs(L - Lr)
    assert err.max() <= tol, (k, alpha, init, dt, err.max(), tol)
    assert np.diff(L).max() <= 2 * tol, (k, alpha, init, dt, np.diff(L).max(), tol)
    # the tail is the final plateau: 0 (all k modes learned) to within the tolerance
    assert L[-1] <= tol
    return err.max(), bound


@pytest.mark.parametrize("dt", [jnp.float64, jnp.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("init", ["aligned", "random"])
def test_closed_form_long_horizon_matches_ode(feature_problem, init, dt):
    K, k, _ = feature_problem
    _long_horizon_check(K, k, 1e-4, init, dt)


@pytest.mark.slow
@pytest.mark.parametrize("dt", [jnp.float64, jnp.float32], ids=["f64", "f32"])
def test_closed_form_long_horizon_matrix(dt):
    """Several k, α, inits, seeds and two kernels, to 30× the last step time."""
    results = []
    for K in (feature_kernel(), rbf_kernel()[0]):
        for k in (2, 3, 4):
            for alpha in (1e-2, 1e-4, 1e-7):
                for init in ("aligned", "random"):
                    for seed in (0, 1):
                        results.append(_long_horizon_check(K, k, alpha, init, dt, seed=seed,
                                                           horizon=30.0, allow_failed=True))
    # only random inits at α = 1e-2 may be refused (ε ≥ 1 there); every other case is checked
    assert sum(r is None for r in results) <= 2 * 3 * 2


def test_lift_validity_flag_and_mode_norms():
    """`lifted_coefficients.valid`: False once ε ≥ 1; `mode_norms` weighs a component by its
    size in f (min(1, ‖e_j‖/‖e_i‖)), so round-off modes of an ill-conditioned K stop dominating."""
    gam = jnp.asarray([1.0, 0.9, 0.85, 0.1])
    ts = jnp.asarray([0.0, 1e3, 1e8])
    P0 = jnp.asarray([[1e-3], [1e-4], [1e-4], [0.0]])          # ε ≈ 1e-4 · (1e-6)^{−0.45} ≈ 0.05
    lift = sw.lifted_coefficients(P0, gam, ts)
    assert bool(lift.valid) and 0 < float(lift.estimate) < 1
    P_bad = P0.at[1, 0].set(1e-2)                              # lower mode starts 10× larger
    lift = sw.lifted_coefficients(P_bad, gam, ts)
    assert not bool(lift.valid) and float(lift.estimate) >= 1
    eps_coef = float(lift.estimate)
    # the same large coefficient on a mode with a 1e-8-small footprint in f weighs 1e-8 as much
    # (ε is then set by the next component); `valid` still checks the C-share δ_i c_i < 1 of (iii)
    norms = jnp.asarray([1.0, 1e-8, 1.0, 1.0])
    lift = sw.lifted_coefficients(P_bad, gam, ts, mode_norms=norms)
    assert float(lift.estimate) < 1e-2 * eps_coef
    # larger norms never raise ε above the coefficient-space value
    lift = sw.lifted_coefficients(P_bad, gam, ts, mode_norms=jnp.asarray([1.0, 1e3, 1.0, 1.0]))
    assert float(lift.estimate) == pytest.approx(eps_coef)
    assert np.all(np.isfinite(np.asarray(lift.P)))
    with pytest.raises(ValueError, match="mode_norms"):
        sw.lifted_coefficients(P0, gam, ts, mode_norms=jnp.ones(3))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_closed_form_exactly_repeated_eigenvalues_is_honest():
    """K = I: M = Z/2n has γ = ±1/2n, each n-fold. The eigenbasis inside the degenerate space is
    arbitrary, so a random init is not aligned with it: measured loss 1.5e6 at 10× the last step
    (ODE 2e-17), reported "success" before issue 15; now FAILED. An aligned init stays exact."""
    N, k = 24, 4
    K = jnp.eye(N)
    f0 = random_f0(K, k, 1e-3, seed=1)
    ts = grid(10 * float(np.max(sw.stepwise(K, f0, k).step_times)))
    assert dynamics.solve(K, BT, f0, ts, method="closed_form").status_name == "failed"
    f0 = aligned_f0(K, k, 1e-3 * np.linspace(1.0, 2.0, k), seed=1)
    tr = dynamics.solve(K, BT, f0, ts, method="closed_form")
    res = sw.stepwise(K, f0, k, ts=ts)
    assert tr.ok
    np.testing.assert_allclose(np.asarray(tr.loss), np.asarray(res.loss), atol=1e-10)


def test_stepwise_is_a_function_and_refuses_a_non_psd_kernel_like_solve():
    """`sslntk.theory.stepwise` is a plain function (the module is `theory.staircase`), its helpers
    are re-exported from `sslntk.theory`; K − 2I (smallest eigenvalue λ_min(K) − 2 < 0) is refused
    by `stepwise` and `final_embedding` with the rule and message of `dynamics.solve`
    (`_validate.psd_error`), and the value they report is the exact smallest eigenvalue (from their
    own eigh; `.3g` formatting, compared with numpy's float64 eigvalsh)."""
    import inspect

    from sslntk import theory

    assert inspect.isfunction(theory.stepwise) and theory.stepwise is sw.stepwise
    assert theory.step_time is sw.step_time and theory.contrastive_modes is sw.contrastive_modes
    K = feature_kernel(n=6)
    f0 = random_f0(K, 2, 1e-3, seed=3)
    bad = K - 2 * jnp.eye(K.shape[0])
    head = "K: expected a positive semi-definite kernel, got smallest eigenvalue "
    with pytest.raises(ValueError) as solve_err:
        dynamics.solve(bad, BT, f0, grid(1.0, 5))
    lam_min = float(np.linalg.eigvalsh(np.asarray(bad))[0])
    for call in (lambda: theory.stepwise(bad, f0, 2), lambda: theory.final_embedding(bad, 2)):
        with pytest.raises(ValueError) as err:
            call()
        assert str(solve_err.value).startswith(head) and str(err.value).startswith(head)
        assert str(err.value).startswith(f"{head}{lam_min:.3g} (")
    assert theory.stepwise(K, f0, 2).step_times.shape == (2,)           # the PSD K still passes
