"""Function-space (kernel-regime) BYOL / SimSiam / DirectPred / kernel predictor (sslntk.methods)
against Tian, Chen & Ganguli (ICML 2021): the linear-network ODEs of Lemma 1 (same system for
K = X Xᵀ), the balance law (Thm 1) in RKHS form, closed-form growth rates of the linearised flow,
the EMA time mapping, and DirectPred's predictor shape.

References: `sslntk.theory.noncontrastive` (Lemma 1 integrated separately), numpy/scipy linear
algebra (eigendecompositions of the linearised operator), exact linear ODE solutions. The ODEs are
integrated by the library's ode solver (Dopri8) and the discrete runs by its gd solver, on the
methods' own `vector_field` / `step` (sslntk.dynamics.solve). float64 (conftest).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import dynamics
from sslntk import methods as M
from sslntk.theory import noncontrastive as T


def _ode(method, state0, K, ts, *, rtol=1e-10, atol=1e-12, K_test_train=None,
         max_steps=200_000):
    """The library's ode solver (Dopri8) on the method; the Trajectory carries f, aux, f_test,
    aux_test over time."""
    tr = dynamics.solve(jnp.asarray(K), method, state0, jnp.asarray(ts, dtype=jnp.float64),
                        solver=dynamics.Ode(integrator="dopri8", rtol=rtol, atol=atol,
                                            max_steps=max_steps),
                        K_test_train=None if K_test_train is None else jnp.asarray(K_test_train))
    assert tr.ok, tr.status_message
    return tr


def _gd(method, state0, K, lr, steps):
    """The library's gd solver: `steps` discrete steps of the method (its own `step`)."""
    tr = dynamics.solve(jnp.asarray(K), method, state0, jnp.array([0.0, steps * lr]),
                        solver="gd", lr=lr)
    assert tr.ok, tr.status_message
    return _at(tr, -1)


def _at(tr, i):
    """The method's State at saved time i of a Trajectory."""
    pick = lambda x: None if x is None else jax.tree_util.tree_map(lambda a: a[i], x)  # noqa: E731
    return M.State(f=tr.f[i], aux=pick(tr.aux), f_test=pick(tr.f_test), aux_test=pick(tr.aux_test))


def _swap(x):
    n = x.shape[-2] // 2
    return np.concatenate([x[..., n:, :], x[..., :n, :]], axis=-2)


def _rbf_views(seed, n=30, d=5, noise=0.5):
    r = np.random.default_rng(seed)
    a = r.normal(size=(n, d))
    b = a + noise * r.normal(size=(n, d))
    X = np.concatenate([a, b])
    D = np.sum((X[:, None] - X[None]) ** 2, axis=-1)
    return np.exp(-D / (2 * d))   # RBF with bandwidth² = d


def _kernel(seed, const=0.5, ridge=0.05, n=30):
    K = _rbf_views(seed, n) + const + ridge * np.eye(2 * n)
    return K


def sqrtm_psd(K):
    lam, U = np.linalg.eigh(K)
    return (U * np.sqrt(np.clip(lam, 0, None))) @ U.T


def _Z(N):
    n = N // 2
    return np.block([[np.zeros((n, n)), np.eye(n)], [np.eye(n), np.zeros((n, n))]])


# ---------------------------------------------------------------------------------------------
# Lemma 1 / Thm 1 in function space


def _check1(seed=0):
    r = np.random.default_rng(seed)
    X = r.normal(size=(40, 6))
    W0, Wp0, Wa0 = (0.3 * r.normal(size=s) for s in ((4, 6), (4, 4), (4, 6)))
    return X, W0, Wp0, Wa0


def test_function_space_byol_equals_tian_lemma1_for_linear_kernel():
    """Tian Lemma 1 (alpha_p = 2, beta = 0.4, eta = eta_p = 0.05; n = 20, m = 6, k = 4, T = 30):
    the Euclidean BYOL method on K = X Xᵀ from f = X W₀ᵀ, f_ξ = X W_aᵀ is the linear network
    with Σ_s = XᵀX/N, Σ_d = XᵀZX/N (theory.simulate_linear): max_t ‖X Wᵀ − f‖/‖f‖ and the W_p
    difference below 1e-8 (the systems are algebraically identical; both integrators at rtol
    1e-11, so only they set the error — ~1e-11 in an independent numpy run). The RKHS balance law
    `fᵀK⁺f − W_pᵀW_p/alpha_p = e^{−2 eta t} C₀` (Thm 1) holds along it to 1e-9 of ‖C₀‖."""
    X, W0, Wp0, Wa0 = _check1()
    K = X @ X.T
    ts = np.linspace(0.0, 30.0, 16)
    m = M.BYOL(ema=0.4, alpha_p=2.0, eta=0.05)
    s0 = m.init(jnp.asarray(X @ W0.T), target0=jnp.asarray(X @ Wa0.T),
                predictor0=jnp.asarray(Wp0))
    ys = _ode(m, s0, K, ts, rtol=1e-11, atol=1e-13)
    Ss, Sd = T.view_moments(X)
    lin = T.simulate_linear(T.LinearSSL(Ss, Sd, alpha_p=2.0, beta=0.4, eta=0.05),
                            T.LinearState(*(jnp.asarray(a) for a in (W0, Wp0, Wa0))),
                            jnp.asarray(ts), rtol=1e-11, atol=1e-13)
    f_lin = np.einsum("nm,tkm->tnk", X, np.asarray(lin.W))
    err_f = np.max(np.linalg.norm(f_lin - np.asarray(ys.f), axis=(1, 2))
                   / np.linalg.norm(np.asarray(ys.f), axis=(1, 2)))
    err_p = np.max(np.linalg.norm(np.asarray(lin.W_p) - np.asarray(ys.aux["W_p"]), axis=(1, 2)))
    assert err_f < 1e-8 and err_p < 1e-8
    G = np.stack([np.asarray(M.rkhs_gram(K, f)) for f in np.asarray(ys.f)])
    Wp = np.asarray(ys.aux["W_p"])
    C0 = G[0] - Wp0.T @ Wp0 / 2.0
    res = G - np.einsum("tji,tjk->tik", Wp, Wp) / 2.0 - np.exp(-0.1 * ts)[:, None, None] * C0
    assert np.max(np.linalg.norm(res, axis=(1, 2))) / np.linalg.norm(C0) < 1e-9


# ---------------------------------------------------------------------------------------------
# growth with a predictor, no growth without (docs/theory/asymmetric.md, kernel regime)


def test_frozen_predictor_growth_rate_is_top_eigenvalue_of_linearised_operator():
    """With W_p frozen at 0.5 I, Euclidean SimSiam is linear: `df/dt = (0.5/N) K (Z − 0.5 I) f`.
    The component of f along the top left eigenvector of that operator grows at exactly its top
    eigenvalue, which equals the top eigenvalue of `0.5 K^{1/2}(Z − 0.5)K^{1/2}/N` (similar
    matrices); measured over t ∈ [0, 20] to 1e-6 relative (integrator rtol 1e-11)."""
    K = _kernel(0)
    N = K.shape[0]
    Z = _Z(N)
    Kh = sqrtm_psd(K)
    lam_sym = np.linalg.eigvalsh(0.5 * Kh @ (Z - 0.5 * np.eye(N)) @ Kh / N)[-1]
    A = 0.5 * K @ (Z - 0.5 * np.eye(N)) / N
    ev, W = np.linalg.eig(A.T)    # left eigenvectors of A
    i = np.argmax(ev.real)
    w = W[:, i].real
    assert abs(ev[i].real - lam_sym) < 1e-12 * max(1.0, abs(lam_sym))
    f0 = 1e-3 * np.linalg.cholesky(K) @ np.random.default_rng(1).normal(size=(N, 3))
    m = M.SimSiam(predictor="fixed", p0=0.5)
    ys = _ode(m, m.init(jnp.asarray(f0)), K, [0.0, 20.0], rtol=1e-11, atol=1e-14)
    u0, u1 = w @ f0, w @ np.asarray(ys.f[-1])
    rate = np.log(np.abs(u1) / np.abs(u0)) / 20.0
    np.testing.assert_allclose(rate, lam_sym, rtol=1e-6)
    assert lam_sym > 0


@pytest.mark.parametrize("alpha_p", [1.0, 4.0])
@pytest.mark.slow
def test_trained_predictor_learns_invariant_modes_with_balanced_gram(alpha_p):
    """Euclidean SimSiam, trained predictor from W_p(0) = 0.5 I and a tiny f0 (1e-3·chol(K)ξ),
    eta = 0, to t = 1500 (Tian Thm 1 in RKHS form, docs/theory/asymmetric.md): ‖f‖ grows more
    than 100-fold; every
    eigenvalue of W_p ends at +1 (exactly invariant features: f W_pᵀ = Z f) and every eigenvalue
    of G = fᵀK⁺f at (1 − 0.5²)/alpha_p (the balance law with G(0) ≈ 0), both to 1e-3; and f ends
    invariant (‖f − Zf‖/‖f‖ < 1e-2)."""
    K = _kernel(0)
    N = K.shape[0]
    f0 = 1e-3 * np.linalg.cholesky(K) @ np.random.default_rng(1).normal(size=(N, 3))
    m = M.SimSiam(alpha_p=alpha_p, p0=0.5)
    ys = _ode(m, m.init(jnp.asarray(f0)), K, [0.0, 1500.0], rtol=1e-9, atol=1e-12)
    f = np.asarray(ys.f[-1])
    assert np.linalg.norm(f) > 100 * np.linalg.norm(f0)
    np.testing.assert_allclose(np.linalg.eigvals(np.asarray(ys.aux["W_p"][-1])).real, 1.0,
                               atol=1e-3)
    G = np.asarray(M.rkhs_gram(K, f))
    np.testing.assert_allclose(np.linalg.eigvalsh(G), 0.75 / alpha_p, atol=1e-3)
    assert np.linalg.norm(f - _swap(f)) / np.linalg.norm(f) < 1e-2


@pytest.mark.slow
def test_no_predictor_learns_nothing_with_full_rank_kernel():
    """No predictor (W_p = I, stop-gradient), full-rank K, eta = 0 (Tian's remark
    after Thm 2): the flow is `df/dt = −(2/N) K P₋ f`, so `tr fᵀK⁻¹f` never increases and f tends
    to the invariant part of f0, `f0 − K P₋(P₋KP₋)⁺P₋ f0`, with the gap shrinking over time;
    with eta = 0.01 f decays to below 1e-6 of its start by t = 2000."""
    K = _kernel(2)
    N = K.shape[0]
    f0 = 0.1 * np.linalg.cholesky(K) @ np.random.default_rng(3).normal(size=(N, 3))
    Pm = (np.eye(N) - _Z(N)) / 2
    limit = f0 - K @ Pm @ np.linalg.pinv(Pm @ K @ Pm) @ Pm @ f0
    ts = np.array([0.0, 50.0, 200.0, 500.0, 2000.0])
    m = M.SimSiam(predictor="identity")
    ys = _ode(m, m.init(jnp.asarray(f0)), K, ts, rtol=1e-10, atol=1e-13)
    Kinv = np.linalg.inv(K)
    rk = [np.trace(f.T @ Kinv @ f) for f in np.asarray(ys.f)]
    assert np.all(np.diff(rk) <= 1e-10 * rk[0])
    gaps = [np.linalg.norm(f - limit) / np.linalg.norm(limit) for f in np.asarray(ys.f)]
    assert np.all(np.diff(gaps) < 0) and gaps[-1] < 0.1 * gaps[1]
    md = M.SimSiam(predictor="identity", eta=0.01)
    yd = _ode(md, md.init(jnp.asarray(f0)), K, [0.0, 2000.0], rtol=1e-10, atol=1e-16)
    assert np.linalg.norm(np.asarray(yd.f[-1])) < 1e-6 * np.linalg.norm(f0)


def test_top_growth_function_is_the_centre_mode_for_relu_like_kernels():
    """docs/theory/asymmetric.md (kernel regime): for `0.5 K^{1/2}(Z − 0.5)K^{1/2}/N` with
    K = RBF + 0.05 I and
    RBF + 0.5 + 0.05 I, the top growth function `K^{1/2} v_top` is nearly constant (cosine with
    1 above 0.9), lies in the invariant sector (fraction > 0.99) and grows faster than the second
    mode: the Euclidean predictor methods learn the mean embedding (the centre s) first."""
    for const in (0.0, 0.5):
        K = _kernel(0, const=const)
        N = K.shape[0]
        Kh = sqrtm_psd(K)
        lam, V = np.linalg.eigh(0.5 * Kh @ (_Z(N) - 0.5 * np.eye(N)) @ Kh / N)
        u = Kh @ V[:, -1]
        cos = abs(u.sum()) / (np.linalg.norm(u) * np.sqrt(N))
        inv = np.linalg.norm((u + _swap(u[:, None])[:, 0]) / 2) ** 2 / np.linalg.norm(u) ** 2
        assert cos > 0.9 and inv > 0.99 and lam[-1] > 2 * lam[-2] > 0


# ---------------------------------------------------------------------------------------------
# not a gradient flow; DirectPred vs the trained predictor (docs/theory/asymmetric.md)


def _parabola_run(seed=3, t_end=6.0, predictor="trained"):
    K = _kernel(seed)
    N = K.shape[0]
    f0 = 0.05 * np.linalg.cholesky(K) @ np.random.default_rng(seed).normal(size=(N, 3))
    G0 = np.asarray(M.rkhs_gram(K, f0))
    Wp0 = sqrtm_psd(2.0 * G0)   # on the parabola: balance constant C = 0
    m = M.SimSiam(alpha_p=2.0, eta=0.01, predictor=predictor)
    ts = np.linspace(0.0, t_end, 31)
    ys = _ode(m, m.init(jnp.asarray(f0), predictor0=jnp.asarray(Wp0)), K, ts)
    return K, m, ys


@pytest.mark.slow
def test_loss_rises_so_the_flow_is_not_a_gradient_flow():
    """docs/theory/asymmetric.md: SimSiam (Euclidean, alpha_p = 2, eta = 0.01, parabola start) moves
    through K against a stop-gradient target, so its loss is not a Lyapunov function: it more
    than doubles; with the predictor fixed at I (a gradient flow of ‖f − Zf‖²/4n) the loss never
    increases."""
    K, m, ys = _parabola_run()
    L = np.array([float(m.loss(_at(ys, i))) for i in range(len(ys.f))])
    assert L.max() > 2 * L[0]
    K2, m2, ys2 = _parabola_run(predictor="identity")
    L2 = np.array([float(m2.loss(_at(ys2, i))) for i in range(len(ys2.f))])
    assert np.all(np.diff(L2) <= 1e-12 * L2[0])


def test_trained_predictor_is_kernel_consistent_root_and_not_directpred_shape():
    """docs/theory/asymmetric.md, same run to t = 30: with a balanced start and eta_p = eta the
    trained W_p stays on `W_pᵀW_p = alpha_p G` (to 1e-9, Tian Thm 1 with C = 0) and is close to
    the kernel-consistent predictor `(alpha_p G)^{1/2}`: exactly `W_p = Q (alpha_p G)^{1/2}` with
    Q orthogonal (polar factor, to 1e-8), and Q near I (relative distance < 5e-2: only W_p's
    small antisymmetric part rotates it; 2.5e-2 on this kernel draw, 5e-3 on another);
    DirectPred's shape `c·C_s^{1/2}` (best c) misses W_p by more than 10% for this kernel."""
    K, m, ys = _parabola_run(t_end=30.0)
    f, Wp = np.asarray(ys.f[-1]), np.asarray(ys.aux["W_p"][-1])
    G = np.asarray(M.rkhs_gram(K, f))
    scale = np.linalg.norm(Wp.T @ Wp)
    assert np.linalg.norm(Wp.T @ Wp - 2.0 * G) < 1e-9 * max(scale, 1.0)
    root = sqrtm_psd(2.0 * G)
    Q = Wp @ np.linalg.inv(root)
    assert np.linalg.norm(Q.T @ Q - np.eye(3)) < 1e-8
    assert np.linalg.norm(Wp - root) / np.linalg.norm(Wp) < 5e-2
    Cs_h = sqrtm_psd(f.T @ f / f.shape[0])
    c = np.sum(Wp * Cs_h) / np.sum(Cs_h * Cs_h)
    assert np.linalg.norm(Wp - c * Cs_h) / np.linalg.norm(Wp) > 0.1
    # and the KernelPredictor method carries that Gram exactly: its W_p = (alpha_p G)^{1/2}
    kp = M.KernelPredictor(alpha_p=2.0, eta=0.01)
    s = kp.init(jnp.asarray(f), gram0=jnp.asarray(G))
    np.testing.assert_allclose(kp.predictor_of(s), root, atol=1e-10)


def test_kernel_predictor_gram_follows_rkhs_gram_exactly_in_discrete_steps():
    """The kernel predictor updates G = fᵀK⁺f without seeing K⁺: in the ODE by
    `dG/dt = −(gᵀf + fᵀg) − 2 eta G`, in a GD step exactly; after 200 steps (lr 0.05) G equals
    `rkhs_gram(K, f)` recomputed from scratch to 1e-10 relative."""
    K = _kernel(4)
    N = K.shape[0]
    f0 = 0.1 * np.linalg.cholesky(K) @ np.random.default_rng(4).normal(size=(N, 3))
    kp = M.KernelPredictor(alpha_p=2.0, eta=0.01)
    s = _gd(kp, kp.init(jnp.asarray(f0), gram0=M.rkhs_gram(K, f0)), K, 0.05, 200)
    G_ref = np.asarray(M.rkhs_gram(K, s.f))
    np.testing.assert_allclose(s.aux["G"], G_ref, rtol=1e-10, atol=1e-12 * np.abs(G_ref).max())


def test_directpred_discrete_step_overwrites_predictor_every_freq_steps():
    """DirectPred (Tian Sec. 5; luckmatters byol_trainer.py): `F̂ ← rho F̂ + (1 − rho) C_s` every
    step (rho = 1 − lr·corr_rate = 0.3), the predictor `D(F̂)` replaced only every `freq` steps:
    with freq = 3 it is unchanged after steps 1-2 and equals D(F̂₃) after step 3; its
    eigenvalues are `max(sqrt(s_j/s_max) + eps, 1e-4)` (theory.directpred_predictor, code form)."""
    K = _kernel(5)
    N = K.shape[0]
    f0 = 0.1 * np.linalg.cholesky(K) @ np.random.default_rng(5).normal(size=(N, 3))
    dp = M.DirectPred(eps=0.1, corr_rate=0.7 / 0.03, freq=3, ema=0.4)
    s = dp.init(jnp.asarray(f0))
    op = M.KernelOp(jnp.asarray(K))
    W_first = dp.predictor_of(s)
    F = np.asarray(f0.T @ f0 / N)
    for i in range(3):
        f_before = np.asarray(s.f)
        s = dp.step(s, 0.03, op)
        F = 0.3 * F + 0.7 * f_before.T @ f_before / N
        if i < 2:
            np.testing.assert_allclose(dp.predictor_of(s), W_first, atol=1e-14)
    np.testing.assert_allclose(s.aux["F_hat"], F, rtol=1e-12)
    np.testing.assert_allclose(dp.predictor_of(s), T.directpred_predictor(F, eps=0.1),
                               atol=1e-12)


# ---------------------------------------------------------------------------------------------
# time mapping of the EMA (docs/theory/asymmetric.md)


@pytest.mark.slow
def test_discrete_steps_with_per_step_ema_converge_to_ode_at_first_order():
    """docs/theory/asymmetric.md (time mapping): Euclidean BYOL by discrete steps in the official
    order (online
    step, then the EMA with the new online function, m = 1 − lr·beta) against the ODE with
    beta = (1 − m)/lr = 0.4, at t = 10: the error falls ~10x per decade of lr (first order;
    ratio 8-12 asserted), lr 1e-2 (m = 0.996) vs 1e-3 (m = 0.9996)."""
    K = _kernel(6, n=10)
    N = K.shape[0]
    f0 = 0.3 * np.linalg.cholesky(K) @ np.random.default_rng(6).normal(size=(N, 3))
    m = M.BYOL(ema=M.EMARate.from_momentum(0.996, lr=1e-2), alpha_p=2.0, eta=0.01)
    s0 = m.init(jnp.asarray(f0))
    ref = _ode(m, s0, K, [0.0, 10.0], rtol=1e-12, atol=1e-14)
    errs = []
    for lr in (1e-2, 1e-3):
        s = _gd(m, s0, K, lr, int(round(10.0 / lr)))
        errs.append(np.linalg.norm(np.asarray(s.f) - np.asarray(ref.f[-1]))
                    / np.linalg.norm(np.asarray(ref.f[-1])))
    assert 8.0 < errs[0] / errs[1] < 12.0


# ---------------------------------------------------------------------------------------------
# cosine forms, target init, test points, validation


@pytest.mark.slow
def test_cosine_forms_use_the_official_losses_and_conserve_row_norms_for_identity_kernel():
    """The cosine forms are the official losses of the online predictions against the partner
    target (methods.byol_loss / simsiam_loss); with W_p fixed and K = I the cosine force is
    orthogonal to each row of f (docs/theory/asymmetric.md), so row norms are conserved along the flow (to the
    integrator's 1e-9)."""
    r = np.random.default_rng(7)
    f0 = r.normal(size=(8, 3))
    Wp = np.eye(3) + 0.2 * r.normal(size=(3, 3))
    for kind, loss in (("byol", M.byol_loss), ("simsiam", M.simsiam_loss)):
        m = (M.BYOL(ema=0.3, form="cosine", predictor="fixed") if kind == "byol"
             else M.SimSiam(form="cosine", predictor="fixed"))
        s = m.init(jnp.asarray(f0), predictor0=jnp.asarray(Wp))
        np.testing.assert_allclose(float(m.loss(s)), float(loss(f0 @ Wp.T, f0)), rtol=1e-12)
    m = M.SimSiam(form="cosine", predictor="fixed")
    ys = _ode(m, m.init(jnp.asarray(f0), predictor0=jnp.asarray(np.eye(3))), np.eye(8),
              [0.0, 5.0])
    np.testing.assert_allclose(np.linalg.norm(np.asarray(ys.f[-1]), axis=1),
                               np.linalg.norm(f0, axis=1), rtol=1e-9)


def test_test_points_follow_the_kernel_regime_prediction():
    """Test points of a kernel-regime run: with K over training ∪ test points, the method run on
    all points and the method run on the training points with the test block carried along
    (K_test,train) give the same test-point function and target (to the integrator's 1e-9):
    the online force is computed on training points only, so the full run is restricted to them
    by zeroing the test rows' force."""
    Kfull = _kernel(8, n=6)    # 12 points: 8 training + 4 test rows
    idx_tr, idx_te = np.arange(8), np.arange(8, 12)
    K = Kfull[np.ix_(idx_tr, idx_tr)]
    Kt = Kfull[np.ix_(idx_te, idx_tr)]
    r = np.random.default_rng(8)
    f0, ft0 = 0.3 * r.normal(size=(8, 2)), 0.3 * r.normal(size=(4, 2))
    m = M.BYOL(ema=0.5, alpha_p=2.0, eta=0.02)
    ys = _ode(m, m.init(jnp.asarray(f0), f0_test=jnp.asarray(ft0)), K, [0.0, 3.0],
              K_test_train=Kt)
    # reference: the closed form f_test(t) = e^{−eta t} f_test(0) − K_te,tr ∫ e^{−eta(t−s)} g ds,
    # with ∫ obtained from the training trajectory via f = e^{−eta t} f0 − K ∫ ... (K invertible)
    f_end = np.asarray(ys.f[-1])
    integral = np.linalg.solve(K, np.exp(-0.02 * 3.0) * f0 - f_end)
    ft_ref = np.exp(-0.02 * 3.0) * ft0 - Kt @ integral
    np.testing.assert_allclose(np.asarray(ys.f_test[-1]), ft_ref, rtol=1e-8, atol=1e-10)
    assert ys.aux_test.shape == (2, 4, 2)


def test_target_initialisations_and_validation():
    f0 = jnp.asarray(np.random.default_rng(9).normal(size=(6, 2)))
    assert np.allclose(M.BYOL(target_init="copy").init(f0).aux["target"], f0)
    assert np.allclose(M.BYOL(target_init="zero").init(f0).aux["target"], 0.0)
    ind = M.BYOL(target_init="independent")
    with pytest.raises(ValueError, match="target0"):
        ind.init(f0)
    assert np.allclose(ind.init(f0, target0=2 * f0).aux["target"], 2 * f0)
    with pytest.raises(ValueError, match="target_init"):
        M.BYOL(target_init="random")
    with pytest.raises(ValueError, match="stop_gradient"):
        M.Predictive(ema=0.4, stop_gradient=False)
    with pytest.raises(ValueError, match="alpha_p"):
        M.SimSiam(alpha_p=-1.0)
    with pytest.raises(ValueError, match="gram0"):
        M.KernelPredictor().init(f0)
    with pytest.raises(ValueError, match="ema"):
        M.BYOL(ema=None)
    with pytest.raises(ValueError, match="f0"):
        M.SimSiam().init(jnp.ones((3, 2)))


def _byol_table5_runs(lr=0.01, t_end=200.0):
    """Cosine BYOL under BYOL's Table-5 conditions (official loss, target kept with the cosine
    momentum schedule from tau_base = 0.99, weight decay ~0), without / with the trained
    predictor, on two kernels of the same 20 pairs of 6-d views: the rank-6 linear kernel
    K = X Xᵀ/6 (a linear network: fewer features than views) and a full-rank RBF + 0.05 I
    kernel. Returns {(kernel, predictor): final RankMe}."""
    from sslntk import metrics

    rng = np.random.default_rng(0)
    n, m, k = 20, 6, 4
    a = rng.normal(size=(n, m))
    X = np.concatenate([a + 0.5 * rng.normal(size=(n, m)), a + 0.5 * rng.normal(size=(n, m))])
    Ks = {"linear": X @ X.T / m,
          "full_rank": np.exp(-np.sum((X[:, None] - X[None]) ** 2, -1) / (2 * m))
          + 0.05 * np.eye(2 * n)}
    out = {}
    for name, K in Ks.items():
        K = jnp.asarray(K)
        f0 = (jnp.asarray(X @ (0.3 * rng.normal(size=(k, m))).T) if name == "linear" else
              0.3 * jnp.linalg.cholesky(K) @ jnp.asarray(rng.normal(size=(2 * n, k))))
        for pred in ("identity", "trained") if name == "linear" else ("identity",):
            meth = M.BYOL(ema=M.EMARate.from_momentum(0.99, lr=lr, t_end=t_end),
                          predictor=pred, form="cosine")
            tr = dynamics.solve(K, meth, meth.init(f0), jnp.asarray([0.0, t_end]), solver="gd",
                                lr=lr)
            assert tr.ok
            out[name, pred] = (float(metrics.rankme(tr.f[0])), float(metrics.rankme(tr.f[-1])))
    return out


@pytest.mark.slow   # 3 runs of 20000 gd steps: ~5 s on 2 shared cores
def test_byol_without_predictor_collapses_only_when_the_kernel_cannot_interpolate_pairs():
    """BYOL Table 5 (Grill et al. 2020: no predictor, target kept → 0.2% top-1) in sslntk: the
    cosine loss without a predictor is minimised by making each pair's embeddings parallel. A
    rank-6 linear kernel (a linear network with fewer features than the 40 views) can do that
    only by aligning every embedding with one direction: RankMe 3.4 → 1.0 (rank-one collapse)
    by t = 200 (lr 0.01: BYOL's per-step momentum 0.99 is the rate 1 per unit t), while the
    trained predictor keeps it (RankMe > 3). A full-rank kernel makes each pair parallel on its
    own, so the random initial spread survives (RankMe stays > 2.5 of 4): why the kernel-regime
    BYOL without predictor is not collapsed (docs/theory/asymmetric.md)."""
    r = _byol_table5_runs()
    assert r["linear", "identity"][0] > 3.0 and r["linear", "identity"][1] < 1.1
    assert r["linear", "trained"][1] > 3.0
    assert r["full_rank", "identity"][1] > 2.5
