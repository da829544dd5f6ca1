"""Eigen-reduced solver, top-m eigensolvers and sweeps; the one contrastive eigenproblem and its
views; float64 (conftest).

Kernel used throughout: an explicit random-ReLU-feature kernel on paired noisy views (PSD by
construction, a decaying spectrum like an NTK's), built in numpy so these tests do not depend on
neural-tangents; `2n = 96` keeps the full-ODE reference fast.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import dynamics, linalg, losses, methods
from sslntk.dynamics import _eigen, _ode
from sslntk.dynamics._sweep import solve_many

N_SRC = 48


def _views(n=N_SRC, d=10, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * np.linspace(2.0, 0.3, d)
    a = x + noise * rng.standard_normal(x.shape)
    b = x + noise * rng.standard_normal(x.shape)
    return np.concatenate([a, b])


def _kernel(X, p=4000, seed=1):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((X.shape[1], p)) / np.sqrt(X.shape[1])
    phi = np.maximum(X @ W, 0.0) / np.sqrt(p)
    return phi @ phi.T + 0.1 * (X @ X.T) / X.shape[1]


@pytest.fixture(scope="module")
def setup():
    X = _views()
    K = _kernel(X)
    Xt = _views(8, seed=5)[:8]
    K_all = _kernel(np.concatenate([X, Xt]))
    return dict(K=jnp.asarray(K), Ktx=jnp.asarray(K_all[len(X):, :len(X)]),
                Ktt=jnp.asarray(K_all[len(X):, len(X):]))


def _f0(K, k, alpha, seed=0):
    L = np.linalg.cholesky(np.asarray(K) + 1e-9 * np.eye(K.shape[0]))
    return jnp.asarray(alpha * L @ np.random.default_rng(seed).standard_normal((K.shape[0], k)))


def _exact_contrastive(K):
    w, U = np.linalg.eigh(np.asarray(K))
    Kh = (U * np.sqrt(np.clip(w, 0, None))) @ U.T
    N = K.shape[0]
    Z = np.roll(np.eye(N), N // 2, axis=0)
    g, B = np.linalg.eigh(Kh @ Z @ Kh / N)
    return g[::-1], B[:, ::-1], Kh


def _sin_angle(P, Q):
    """Largest principal-angle sine between the column spans of P and Q."""
    qp, _ = np.linalg.qr(P)
    qq, _ = np.linalg.qr(Q)
    s = np.linalg.svd(qp.T @ qq, compute_uv=False)
    return float(np.sqrt(max(0.0, 1 - s.min() ** 2)))


# ------------------------------------------------------------------------------------------------
# Eigensolvers


def test_pair_flip_is_the_one_pair_swap():
    """`pair_flip` along rows / columns is `Z @ X` / `X @ Z` with the dense Z of numpy's own
    construction (a permutation: exact equality), and `kernels.pair_matrix` is `pair_flip(I)`."""
    from sslntk import kernels

    N = 6
    Z = np.roll(np.eye(N), N // 2, axis=0)
    X = np.arange(N * 4.0).reshape(N, 4)
    assert np.array_equal(np.asarray(linalg.pair_flip(jnp.asarray(X))), Z @ X)
    assert np.array_equal(np.asarray(linalg.pair_flip(jnp.asarray(X.T), axis=-1)), X.T @ Z)
    assert np.array_equal(np.asarray(kernels.pair_matrix(N // 2, jnp.float64)), Z)


def test_contrastive_entry_points_are_views_of_one_eigenproblem(setup):
    """`linalg.contrastive_eigenpairs`, `eigen_decomposition(kind="contrastive", method="eigh")`,
    `contrastive_eigh(method="eigh")`, `kernels.contrastive_spectrum` and
    `theory.contrastive_modes` give the same γ, A and E (same computation: equal to float64
    round-off, 1e-12 relative), and γ, B match an independent numpy float64 construction of
    `M = K^{1/2} Z K^{1/2}/2n` with a dense Z (1e-10: eigh round-off of two different
    factorisations; eigenvector signs and the round-off null space aside, compared as projectors
    on the top 10 well-separated modes)."""
    from sslntk import kernels, theory

    K = setup["K"]
    m = 10
    r = linalg.contrastive_eigenpairs(K)
    dec = linalg.eigen_decomposition(K, m, "contrastive", method="eigh", tail_iters=0)
    gam_e, A_e = linalg.contrastive_eigh(K, m, method="eigh")
    spec = kernels.contrastive_spectrum(K)
    gam_t, A_t, E_t = theory.contrastive_modes(K, m)

    def close(a, b, tol=1e-12):
        a, b = np.asarray(a), np.asarray(b)
        return np.abs(a - b).max() <= tol * np.abs(b).max()

    for gam in (dec.values, gam_e, spec.values[:m], gam_t):
        assert close(gam, r.values[:m])
    for A in (dec.vectors, A_e, spec.coef[:, :m], A_t):
        assert close(A, r.coef[:, :m])
    assert close(dec.lift, r.lift[:, :m]) and close(E_t, r.lift[:, :m])
    assert close(spec.vectors[:, :m], r.vectors[:, :m])
    g_ref, B_ref, _ = _exact_contrastive(K)
    assert close(r.values, g_ref, 1e-10)
    B = np.asarray(r.vectors[:, :m])
    assert close(B @ B.T, B_ref[:, :m] @ B_ref[:, :m].T, 1e-10)
    assert int(r.rank) == K.shape[0]                 # this K is positive definite


@pytest.mark.parametrize("method", ["eigh", "krylov", "subspace"])
def test_contrastive_eigenpairs_match_dense(setup, method):
    K = setup["K"]
    g, B, Kh = _exact_contrastive(K)
    m = 12
    d = linalg.eigen_decomposition(K, m, "contrastive", method=method, block=24,
                                   depth=6 if method == "krylov" else 60)
    # Tolerance: float64 with a 24-wide block; Krylov/subspace errors decay like
    # (γ_25/γ_12)^depth, far below 1e-8 here; 1e-8 leaves room for round-off on the smallest kept γ.
    np.testing.assert_allclose(np.asarray(d.values), g[:m], rtol=0, atol=1e-8 * g[0])
    # Generalised eigenvectors: Aᵀ K A = I, E = K A, and K^{1/2} A spans the top eigvecs of M.
    A, E = np.asarray(d.vectors), np.asarray(d.lift)
    np.testing.assert_allclose(A.T @ np.asarray(K) @ A, np.eye(m), atol=1e-9)
    np.testing.assert_allclose(E, np.asarray(K) @ A, atol=1e-9 * np.abs(E).max())
    gap = min(g[j] - g[j + 1] for j in range(m - 1))
    assert gap > 1e-4 * g[0]
    assert _sin_angle(Kh @ A, B[:, :m]) < 1e-6   # Davis–Kahan: residual/gap, both tiny here
    # tail_norm estimates ‖K − E Eᵀ‖₂ from below (power iteration on a PSD matrix).
    exact_tail = np.linalg.eigvalsh(np.asarray(K) - E @ E.T)
    assert exact_tail[0] > -1e-9 * exact_tail[-1]
    # Block power iteration converges from below; 12 iterations get within 1% here.
    assert exact_tail[-1] * (1 - 1e-2) <= float(d.tail_norm) <= exact_tail[-1] * (1 + 1e-9)


@pytest.mark.parametrize("method", ["eigh", "krylov"])
def test_kernel_eigenpairs_match_dense(setup, method):
    K = np.asarray(setup["K"])
    w, U = np.linalg.eigh(K)
    w, U = w[::-1], U[:, ::-1]
    lam, V_ = linalg.top_eigh(setup["K"], 10, method=method)
    np.testing.assert_allclose(np.asarray(lam), w[:10], rtol=1e-9)
    assert _sin_angle(np.asarray(V_), U[:, :10]) < 1e-6


def test_krylov_float32(setup):
    K32 = setup["K"].astype(jnp.float32)
    g, _, _ = _exact_contrastive(setup["K"])
    d = linalg.eigen_decomposition(K32, 12, "contrastive", method="krylov")
    assert d.values.dtype == jnp.float32
    # float32 round-off on ‖M‖ ≈ γ₁: eigenvalue errors ≲ 100·eps·γ₁.
    np.testing.assert_allclose(np.asarray(d.values), g[:12], atol=100 * 1.2e-7 * g[0])


def test_decomposition_errors(setup):
    K = setup["K"]
    with pytest.raises(ValueError, match="m: expected 1 <= m <= N"):
        linalg.eigen_decomposition(K, K.shape[0] + 1)
    with pytest.raises(ValueError, match="kind"):
        linalg.eigen_decomposition(K, 4, "pca")
    with pytest.raises(ValueError, match="method"):
        linalg.eigen_decomposition(K, 4, method="lanczos2")
    with pytest.raises(ValueError, match="even size"):
        linalg.eigen_decomposition(K[:-1, :-1], 4, "contrastive")
    with pytest.raises(ValueError, match="block"):
        linalg.eigen_decomposition(K, 8, method="krylov", block=4)
    with pytest.raises(TypeError, match="integer"):
        linalg.eigen_decomposition(K, 4.5)


# ------------------------------------------------------------------------------------------------
# Solver vs the full ODE


def _step_time(g_k, alpha):
    # Stepwise theory (Simon et al. 2023), aligned solution: t_k ≈ ln(1/c_k(0)) / (8 γ_k),
    # c_k(0) ≈ γ_k α² (f0 ~ α·N(0, K)).
    return np.log(1.0 / (g_k * alpha**2)) / (8 * g_k)


def test_bt_eigen_matches_ode_over_staircase(setup):
    K = setup["K"]
    k, alpha = 4, 1e-3
    g, _, _ = _exact_contrastive(K)
    ts = jnp.linspace(0.0, 1.5 * _step_time(g[k - 1], alpha), 120)
    f0 = _f0(K, k, alpha)
    loss = losses.get("barlow_twins")
    ref = _ode.solve_ode(K, loss, f0, ts, rtol=1e-10)
    tr = _eigen.solve_eigen(K, loss, f0, ts, rtol=1e-10)
    assert ref.ok and tr.ok and tr.method == "eigen"
    # The whole staircase is there: loss from k down to < 0.05.
    assert float(ref.loss[0]) == pytest.approx(k, abs=1e-3) and float(ref.loss[-1]) < 0.05
    # Acceptance: 1e-3 over the whole staircase, loss and embeddings.
    assert float(jnp.max(jnp.abs(tr.loss - ref.loss))) < 1e-3
    fnorm = float(jnp.max(jnp.linalg.norm(ref.f, axis=(1, 2))))
    err = jnp.linalg.norm(tr.f - ref.f, axis=(1, 2))
    assert float(jnp.max(err)) < 1e-3 * fnorm
    # The recorded bound is finite and non-decreasing.
    b = np.asarray(tr.bound)
    assert np.all(np.isfinite(b)) and np.all(np.diff(b) >= -1e-12) and b[0] == 0.0


def test_bt_test_points_match_ode(setup):
    K, Ktx = setup["K"], setup["Ktx"]
    k, alpha = 3, 1e-2
    g, _, _ = _exact_contrastive(K)
    ts = jnp.linspace(0.0, 1.2 * _step_time(g[k - 1], alpha), 40)
    f0 = _f0(K, k, alpha)
    f0t = 0.5 * alpha * jnp.ones((Ktx.shape[0], k))
    loss = losses.get("barlow_twins")
    ref = _ode.solve_ode(K, loss, f0, ts, K_test_train=Ktx, f0_test=f0t, rtol=1e-10)
    tr = _eigen.solve_eigen(K, loss, f0, ts, K_test_train=Ktx, f0_test=f0t, m=48, rtol=1e-10)
    scale = float(jnp.max(jnp.abs(ref.f_test)))
    assert float(jnp.max(jnp.abs(tr.f_test - ref.f_test))) < 1e-3 * scale


def _smooth_loss(name):
    # VICReg's hinge max(0, γ − std) has a kink at std = γ that stalls tight-tolerance adaptive
    # solvers; with γ = 4 (out of reach here) the hinge stays active and the flow is smooth.
    # A small init would also make it stiff (1/sqrt(var + 1e-4)), so VICReg runs use α = 1.
    return losses.get("vicreg", gamma=4.0) if name == "vicreg" else losses.get(name)


@pytest.mark.slow
def test_full_m_is_exact(setup):
    """m = 2n keeps every eigenpair: K_m = K, the reduced flow IS the full flow (bound = 0)."""
    K = setup["K"]
    N = K.shape[0]
    for name, alpha, T in (("barlow_twins", 0.1, 200.0), ("vicreg", 1.0, 0.5)):
        f0 = _f0(K, 2, alpha)
        loss = _smooth_loss(name)
        ts = jnp.linspace(0.0, T, 20)
        ref = _ode.solve_ode(K, loss, f0, ts, rtol=1e-11)
        tr = _eigen.solve_eigen(K, loss, f0, ts, m=N, rtol=1e-11)
        # tail_norm is round-off (1e-12 of ‖K‖); rtol 1e-11 on both solves bounds the difference.
        assert float(jnp.max(jnp.abs(tr.f - ref.f))) < 1e-7 * float(jnp.max(jnp.abs(ref.f)))
        assert float(tr.bound[-1]) < 1e-6


@pytest.mark.parametrize("name,alpha,T", [("vicreg", 1.0, 0.5), ("simclr", 0.1, 20.0)])
def test_general_losses_within_bound(setup, name, alpha, T):
    K = setup["K"]
    k = 4
    f0 = _f0(K, k, alpha)
    ts = jnp.linspace(0.0, T, 30)
    loss = _smooth_loss(name)
    ref = _ode.solve_ode(K, loss, f0, ts, rtol=1e-10)
    assert ref.ok
    for m in (8, 32):
        tr = _eigen.solve_eigen(K, loss, f0, ts, m=m, rtol=1e-10)
        assert tr.ok
        err = np.asarray(jnp.linalg.norm(tr.f - ref.f, axis=(1, 2)))
        bound = np.asarray(tr.bound)
        # ODE tolerance slack: both solves at rtol 1e-10 (relative to ‖f‖).
        slack = 1e-7 * float(jnp.max(jnp.linalg.norm(ref.f, axis=(1, 2))))
        assert np.all(err <= bound + slack), (m, err / np.maximum(bound, 1e-300))


# ------------------------------------------------------------------------------------------------
# Sweeps, jit / vmap / grad


def test_solve_many_equals_separate_solves(setup):
    K = setup["K"]
    g, _, _ = _exact_contrastive(K)
    ts = jnp.linspace(0.0, 1.2 * _step_time(g[2], 1e-3), 30)
    dec = linalg.eigen_decomposition(K, 24, "contrastive")
    f0s = jnp.stack([_f0(K, 3, a, seed=s) for s, a in [(0, 1e-3), (1, 1e-2), (2, 1e-4)]])
    loss = losses.get("barlow_twins")
    batch = solve_many(K, loss, f0s, ts, decomposition=dec, rtol=1e-9)
    assert batch.f.shape == (3, 30, K.shape[0], 3)
    # The runs are integrated jointly (shared steps, each run held to its own tolerance), so they
    # agree with separate solves to the integration accuracy (rtol 1e-9), not bit for bit.
    for i in range(3):
        one = _eigen.solve_eigen(K, loss, f0s[i], ts, decomposition=dec, rtol=1e-9)
        scale = float(jnp.max(jnp.abs(one.f)))
        np.testing.assert_allclose(np.asarray(batch.f[i]), np.asarray(one.f), rtol=1e-6,
                                   atol=1e-7 * scale)
        np.testing.assert_allclose(np.asarray(batch.loss[i]), np.asarray(one.loss), rtol=1e-6,
                                   atol=1e-9)
    # Different k (grouped by k) and different loss constants, in input order.
    f0_list = [_f0(K, 2, 1e-3, seed=3), _f0(K, 4, 1e-3, seed=4), _f0(K, 2, 1e-2, seed=5)]
    lams = [1.0, 1.0, 0.5]
    outs = solve_many(K, [losses.get("barlow_twins", lam=x) for x in lams], f0_list, ts,
                      decomposition=dec, rtol=1e-9)
    assert [o.f.shape[-1] for o in outs] == [2, 4, 2]
    for f0, lam, o in zip(f0_list, lams, outs, strict=True):
        one = _eigen.solve_eigen(K, losses.get("barlow_twins", lam=lam), f0, ts,
                                 decomposition=dec, rtol=1e-9)
        np.testing.assert_allclose(np.asarray(o.f), np.asarray(one.f), rtol=1e-6,
                                   atol=1e-7 * float(jnp.max(jnp.abs(one.f))))


@pytest.mark.slow
def test_solve_many_other_method(setup):
    K = setup["K"]
    f0s = jnp.stack([_f0(K, 2, 0.1, seed=s) for s in range(2)])
    ts = jnp.linspace(0.0, 5.0, 5)
    loss = losses.get("barlow_twins")
    batch = solve_many(K, loss, f0s, ts, method="ode", rtol=1e-9)
    one = _ode.solve_ode(K, loss, f0s[1], ts, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(batch.f[1]), np.asarray(one.f), rtol=1e-8, atol=1e-12)


@pytest.mark.slow
def test_jit_vmap_grad(setup):
    K = setup["K"]
    dec = linalg.eigen_decomposition(K, 16, "contrastive")
    z = _f0(K, 2, 1.0)
    ts = jnp.linspace(0.0, 150.0, 6)

    def final_loss(alpha, lam):
        # Mean loss over the saved times (the final loss is ~1e-19: converged, flat in α).
        tr = _eigen.solve_eigen(K, losses.get("barlow_twins", lam=lam), alpha * z, ts,
                                decomposition=dec, rtol=1e-10, max_steps=4096)
        return jnp.mean(tr.loss)

    f = jax.jit(final_loss)
    v = f(0.05, 1.0)
    assert np.isfinite(float(v))
    vm = jax.vmap(final_loss)(jnp.array([0.05, 0.02]), jnp.array([1.0, 0.7]))
    np.testing.assert_allclose(float(vm[0]), float(v), rtol=1e-9)
    g_a = jax.grad(final_loss)(0.05, 1.0)
    h = 1e-5
    fd = (final_loss(0.05 + h, 1.0) - final_loss(0.05 - h, 1.0)) / (2 * h)
    # Discretise-then-differentiate gradient vs central differences (O(h²) + solver tolerance).
    assert float(g_a) == pytest.approx(float(fd), rel=1e-4, abs=1e-8)
    g_l = jax.grad(final_loss, argnums=1)(0.05, 1.0)
    fd_l = (final_loss(0.05, 1.0 + h) - final_loss(0.05, 1.0 - h)) / (2 * h)
    assert float(g_l) == pytest.approx(float(fd_l), rel=1e-4, abs=1e-8)


@pytest.mark.slow
def test_float32_path(setup):
    K32 = setup["K"].astype(jnp.float32)
    f0 = _f0(setup["K"], 3, 1e-3).astype(jnp.float32)
    g, _, _ = _exact_contrastive(setup["K"])
    ts = jnp.linspace(0.0, 1.5 * _step_time(g[2], 1e-3), 50).astype(jnp.float32)
    loss = losses.get("barlow_twins")
    tr = _eigen.solve_eigen(K32, loss, f0, ts)
    ref = _eigen.solve_eigen(setup["K"], loss, f0.astype(jnp.float64), ts.astype(jnp.float64),
                             rtol=1e-10)
    assert tr.ok and tr.f.dtype == jnp.float32
    # float32 default rtol 1e-5: loss within 1e-3 of the float64 solve over the staircase.
    assert float(jnp.max(jnp.abs(tr.loss - ref.loss))) < 1e-3


# ------------------------------------------------------------------------------------------------
# Bad inputs and the method rule


class _WrongMomentForm(methods.GradientFlow):
    """Barlow Twins plus a term in `f_aᵀf_a` (not a function of C) that claims BT's moment form."""

    @property
    def moment_form(self):
        return methods.MomentForm(of_moment=lambda C: jnp.sum((C - jnp.eye(C.shape[0])) ** 2))


def test_a_false_moment_form_is_refused_before_the_solve(setup):
    """The eigen solver's moment path trusts `moment_form`; a method whose loss is not a function of
    C alone must be refused (naming the method) instead of being solved wrongly. The loss gap is
    ‖f_a‖²-sized here, far above the 1e3·eps tolerance; the honest loss passes the same check."""
    K = setup["K"]
    f0 = _f0(K, 4, 1e-1)
    ts = jnp.linspace(0.0, 1.0, 3)
    n = K.shape[0] // 2
    bt = losses.get("barlow_twins")
    wrong = _WrongMomentForm(lambda f: bt(f) + jnp.sum(f[:n] ** 2))
    with pytest.raises(ValueError, match="is not a function of C"):
        _eigen.solve_eigen(K, wrong, f0, ts)
    honest = _WrongMomentForm(lambda f: bt(f))
    assert _eigen.solve_eigen(K, honest, f0, ts).ok


def test_solver_errors(setup):
    K = setup["K"]
    N = K.shape[0]
    f0 = _f0(K, 4, 1e-3)
    ts = jnp.linspace(0.0, 1.0, 3)
    bt = losses.get("barlow_twins")
    with pytest.raises(ValueError, match="m <= 2n"):
        _eigen.solve_eigen(K, bt, f0, ts, m=N + 1)
    with pytest.raises(ValueError, match="m >= k"):
        _eigen.solve_eigen(K, bt, f0, ts, m=3)
    with pytest.raises(ValueError, match="cross_moment_only"):
        _eigen.solve_eigen(K, losses.get("vicreg"), f0, ts, kind="contrastive")
    dec = linalg.eigen_decomposition(K, 8)
    with pytest.raises(ValueError, match="m <= 8"):
        _eigen.solve_eigen(K, bt, f0, ts, decomposition=dec, m=12)
    other = linalg.eigen_decomposition(K[:48, :48], 8)
    with pytest.raises(ValueError, match="size N = 96"):
        _eigen.solve_eigen(K, bt, f0, ts, decomposition=other)
    with pytest.raises(TypeError, match="EigenDecomposition"):
        _eigen.solve_eigen(K, bt, f0, ts, decomposition=(1, 2))
    with pytest.raises(TypeError, match="dtype"):
        _eigen.solve_eigen(K, bt, f0, ts, decomposition=linalg.eigen_decomposition(
            K.astype(jnp.float32), 8))
    with pytest.raises(ValueError, match="f0"):
        _eigen.solve_eigen(K, bt, f0[:-2], ts)
    with pytest.raises(ValueError, match="ts"):
        _eigen.solve_eigen(K, bt, f0, -ts - 1)
    with pytest.raises(ValueError, match="loss"):
        solve_many(K, [bt, bt], jnp.stack([f0] * 3), ts)
    with pytest.raises(ValueError, match="one name"):
        solve_many(K, [bt, losses.get("vicreg")], [f0, f0], ts)
    with pytest.raises(ValueError, match="method"):
        solve_many(K, bt, jnp.stack([f0]), ts, method="fast")


def test_auto_picks_eigen_above_small_n():
    """`solve(method="auto")` on a 2n = 2·SMALL_N BT problem runs (and records) the eigen method."""
    rng = np.random.default_rng(3)
    N = 2 * dynamics.SMALL_N
    Phi = rng.normal(size=(N, 40)) / np.sqrt(40)
    K = jnp.asarray(Phi @ Phi.T + 1e-3 * np.eye(N))
    f0 = jnp.asarray(1e-3 * rng.normal(size=(N, 2)))
    tr = dynamics.solve(K, "barlow_twins", f0, jnp.linspace(0.0, 5.0, 6))
    assert tr.method == "eigen" and tr.ok


def test_grad_wrt_kernel_through_moment_path(setup):
    """d/ds of the mean BT loss for the kernel K + s·P (P PSD) through the eigen solver — the
    decomposition (exact, or K's vectors with E = (K + sP)A, where S = EᵀZE/2n is not diagonal)
    and the ODE — against central finite differences, float64."""
    K = setup["K"]
    N = K.shape[0]
    P = jnp.asarray(np.random.default_rng(5).normal(size=(N, 4)))
    P = P @ P.T / N
    f0 = _f0(K, 2, 1e-2)
    ts = jnp.linspace(0.0, 40.0, 9)

    dec0 = linalg.eigen_decomposition(K, 12, "contrastive", method="eigh", tail_iters=0)

    def mean_loss(s, exact):
        Ks = K + s * P
        if exact:   # the decomposition of K + sP itself: S stays diagonal, dS too
            dec = linalg.eigen_decomposition(Ks, 12, "contrastive", method="eigh", tail_iters=0)
        else:       # K's vectors A with E = (K + sP)A: the exact flow of E Eᵀ, dS not diagonal
            dec = dataclasses.replace(dec0, lift=Ks @ dec0.vectors)
        tr = _eigen.solve_eigen(Ks, losses.get("barlow_twins"), f0, ts, decomposition=dec,
                                rtol=1e-11, validate=False)
        return jnp.mean(tr.loss)

    h = 1e-5
    for exact in (True, False):
        g = jax.grad(mean_loss)(0.0, exact)
        fd = (mean_loss(h, exact) - mean_loss(-h, exact)) / (2 * h)
        assert np.isfinite(float(g))
        assert float(g) == pytest.approx(float(fd), rel=1e-5, abs=1e-9)


# ------------------------------------------------------------------ the PSD rule's block Krylov


def _psd_cases():
    """Kernels with their exact (float64) spectra: PSD ones, K − 2I (many negative eigenvalues),
    a tiny isolated negative eigenvalue (−1e-3·λ_max along K's bottom eigenvector, the hardest
    case for a Krylov method: it sits under the bulk near 0), one at round-off level, a rank-3
    kernel (the Krylov space breaks down after one block) and the identity (an invariant start)."""
    from sslntk import _validate

    K = _kernel(_views(n=40))                               # 2n = 80, decaying spectrum
    w, U = np.linalg.eigh(K)
    lmax = w[-1]
    u0 = U[:, 0]
    tol = _validate.psd_tolerance(80, np.float64, lmax)
    X3 = np.random.default_rng(4).standard_normal((80, 3))
    return tol, {
        "K": K,
        "K-2I": K - 2.0 * np.eye(80),
        "tiny negative": K - (w[0] + 1e-3 * lmax) * np.outer(u0, u0),
        "round-off negative": K - (w[0] + 1e-2 * tol) * np.outer(u0, u0),
        "rank 3": X3 @ X3.T,
        "identity": np.eye(80),
    }


def test_block_krylov_ritz_values_interlace_the_spectrum():
    """`_validate.ritz_values` (the PSD check's block Krylov space) against numpy's float64
    `eigvalsh`: Cauchy interlacing λ_i ≤ θ_i ≤ λ_{i+N−d} for every Ritz value (so θ_min ≥ λ_min:
    a refusal is a proof), to 1e-10·λ_max (float64 round-off of products of 80 terms, ~1e-14, with
    margin); and `psd_kernel` refuses exactly the kernels whose smallest eigenvalue is below the
    round-off tolerance, with a λ_min estimate that bounds the true one from above."""
    from sslntk import _validate

    tol, cases = _psd_cases()
    for name, K in cases.items():
        lam = np.linalg.eigvalsh(K)
        theta, d = _validate.ritz_values(jnp.asarray(K))
        n, m = len(lam), len(theta)
        slack = 1e-10 * max(abs(lam[-1]), 1.0)
        assert 1 <= m <= _validate.PSD_BLOCK * _validate.PSD_BLOCK_STEPS, name
        assert np.all(theta >= lam[:m] - slack), name
        assert np.all(theta <= lam[n - m:] + slack), name
        np.testing.assert_allclose(d, np.diag(K), rtol=0, atol=0)
        if lam[0] < -tol:
            with pytest.raises(ValueError, match="positive semi-definite") as e:
                _validate.psd_kernel("K", jnp.asarray(K))
            hi = max(theta[-1], d.max())           # the message quotes the Ritz λ_min estimate
            assert str(e.value) == str(_validate.psd_error(
                "K", theta[0], hi, _validate.psd_tolerance(n, np.float64, hi))), name
        else:
            est = _validate.psd_kernel("K", jnp.asarray(K))
            assert est >= lam[0] - slack, name
    # the hard case is resolved (not just bounded): the Krylov space finds the isolated −1e-3·λ_max
    theta, _ = _validate.ritz_values(jnp.asarray(cases["tiny negative"]))
    assert theta[0] < -0.5e-3 * np.linalg.eigvalsh(cases["K"])[-1]
