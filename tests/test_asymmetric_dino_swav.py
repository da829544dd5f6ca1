"""Function-space DINO and SwAV (sslntk.methods) against the collapse modes of Caron et al. 2021
(DINO Sec. 5.3: no centring → one class; no sharpening → uniform; both → clusters), the
small-logit linearisation (eigenvalues of the linear operator), and SwAV's exact anti-collapse
property (uniform Sinkhorn codes on a collapsed embedding, Caron et al. 2020).

Classification thresholds, not seed-specific magnitudes, are asserted (other random streams give
other numbers). Runs by the library's ode and gd solvers. float64 (conftest).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import dynamics
from sslntk import methods as M


def _ode(method, state0, K, ts, *, rtol=1e-7, atol=1e-10, max_steps=400_000):
    """The library's ode solver (Dopri5) on the method."""
    tr = dynamics.solve(jnp.asarray(K), method, state0, jnp.asarray(ts, dtype=jnp.float64),
                        solver=dynamics.Ode(integrator="dopri5", rtol=rtol, atol=atol,
                                            max_steps=max_steps))
    assert tr.ok, tr.status_message
    return tr


def _kernel(seed, n=20, d=5, const=1.0):
    r = np.random.default_rng(seed)
    a = r.normal(size=(n, d))
    X = np.concatenate([a, a + 0.5 * r.normal(size=(n, d))])
    D = np.sum((X[:, None] - X[None]) ** 2, axis=-1)
    return np.exp(-D / (2 * d)) + const


def _last(tr):
    return M.State(f=tr.f[-1], aux=jax.tree_util.tree_map(lambda a: a[-1], tr.aux))


# ---------------------------------------------------------------------------------------------
# DINO


_CASES = {  # name: (DINO options, assertion on (h, h_bar, top))
    "centre_sharpened": (dict(teacher_temp=0.04), "clusters"),
    "no_centre": (dict(teacher_temp=0.04, centering="none"), "one_class"),
    "no_sharpening": (dict(teacher_temp=0.1), "uniform"),
}


@pytest.mark.parametrize("case", list(_CASES))
def test_dino_collapse_modes_match_dino_sec53(case):
    """DINO Sec. 5.3 in the kernel regime (K = RBF + 1, n = 20, k = 8, f0 = 0.05·chol(K)ξ, teacher
    copied, tau_s = 0.1, beta = 0.5, beta_c = 5, t = 60): centring + sharpening gives one-hot
    per-sample targets with balanced classes (batch-mean entropy h̄ > 1.5 of ln 8 = 2.08, top-class
    share < 0.5: clustering, not collapse); without centring the targets are one-hot too but a
    dominant class takes a large share (h̄ < 0.6 ln k, top share > 3/k: the constant mode of K
    wins, docs/theory/asymmetric.md — whether it takes every sample depends on the draw, 0.45-1.0 over seeds
    here); without sharpening (tau_t = tau_s) the targets go uniform (h > 0.9 ln k)."""
    K = _kernel(0)
    N, k = K.shape[0], 8
    f0 = 0.05 * np.linalg.cholesky(K) @ np.random.default_rng(1).normal(size=(N, k))
    opts, kind = _CASES[case]
    m = M.DINO(ema=0.5, center_rate=5.0, student_temp=0.1, **opts)
    d = m.diagnostics(_last(_ode(m, m.init(jnp.asarray(f0)), K, [0.0, 60.0])))
    h, hb, top = float(d["entropy"]), float(d["batch_entropy"]), float(d["top_share"])
    if kind == "clusters":
        assert hb > 1.5 and top < 0.5 and h < 0.5
    elif kind == "one_class":
        assert h < 0.05 and hb < 0.6 * np.log(k) and top > 3.0 / k
    else:
        assert h > 0.9 * np.log(k)


@pytest.mark.parametrize("teacher_temp,centering", [(0.04, True), (0.04, False), (0.08, True),
                                                    (0.1, True)])
@pytest.mark.slow
def test_dino_small_logit_growth_equals_linear_operator_eigenvalue(teacher_temp, centering):
    """docs/theory/asymmetric.md (DINO linearisation): with teacher = student (stop-gradient)
    and the instantaneous centre,
    small logits follow `df/dt = A f Π` (`methods.dino_linear_operator`). From 1e-6 logits the
    component of fΠ along A's top left eigenvector grows at A's top eigenvalue (relative error
    < 5%, the nonlinear remainder at ~1e-5 logits is far smaller); at tau_t = tau_s nothing grows
    (rate < 0.01), and without centring the top rate is the constant mode's, far above the
    centred one."""
    K = _kernel(2)
    N, k = K.shape[0], 8
    A = np.asarray(M.dino_linear_operator(K, k, student_temp=0.1, teacher_temp=teacher_temp,
                                          centering=centering))
    ev, W = np.linalg.eig(A.T)
    i = np.argmax(ev.real)
    lam, w = ev[i].real, W[:, i].real
    f0 = 1e-6 * np.random.default_rng(3).normal(size=(N, k))
    m = M.DINO(ema=None, teacher_temp=teacher_temp, student_temp=0.1,
               centering="instant" if centering else "none")
    T = 3.0 / lam if lam > 0.05 else 5.0
    ys = _ode(m, m.init(jnp.asarray(f0)), K, [0.0, T], rtol=1e-10, atol=1e-18)
    Pi = np.eye(k) - 1.0 / k
    u0, u1 = w @ f0 @ Pi, w @ np.asarray(ys.f[-1]) @ Pi
    rate = np.log(np.linalg.norm(u1) / np.linalg.norm(u0)) / T
    if teacher_temp == 0.1:
        assert abs(lam) < 0.01 and abs(rate) < 0.01
    else:
        assert lam > 0 and abs(rate - lam) < 0.05 * lam
    if not centering:
        Ac = np.asarray(M.dino_linear_operator(K, k, teacher_temp=0.04))
        assert lam > 5 * np.max(np.linalg.eigvals(Ac).real)


def test_dino_discrete_step_follows_official_order():
    """main_dino.py: the loss uses the current centre; the centre moves from the current teacher
    (`c·m_c + mean(g_t)·(1 − m_c)`, before the step); the student steps; the teacher EMA uses the
    new student. One step re-derived by hand with numpy (1e-12)."""
    K = _kernel(4, n=4)
    N, k = K.shape[0], 3
    r = np.random.default_rng(4)
    f0, t0, c0 = r.normal(size=(N, k)), r.normal(size=(N, k)), 0.1 * r.normal(size=k)
    m = M.DINO(ema=0.5, center_rate=5.0, teacher_temp=0.04)
    s = m.init(jnp.asarray(f0), target0=jnp.asarray(t0), center0=jnp.asarray(c0))
    lr = 0.02
    s1 = m.step(s, lr, M.KernelOp(jnp.asarray(K)))
    g = np.asarray(jax.grad(lambda f: M.dino_loss(f, t0, c0, teacher_temp=0.04))(f0))
    f1 = f0 - lr * K @ g
    c1 = (1 - lr * 5.0) * c0 + lr * 5.0 * t0.mean(axis=0)
    t1 = (1 - lr * 0.5) * t0 + lr * 0.5 * f1
    np.testing.assert_allclose(s1.f, f1, rtol=1e-12)
    np.testing.assert_allclose(s1.aux["center"], c1, rtol=1e-12)
    np.testing.assert_allclose(s1.aux["teacher"], t1, rtol=1e-12)


def test_dino_teacher_temperature_warmup_and_cosine_momentum():
    """The teacher temperature rises linearly from warmup_teacher_temp to teacher_temp over
    warmup_time and stays; `EMARate.from_momentum(m, lr, t_end)` is the cosine schedule of the
    decay to 1 (byol_momentum in function-space time: beta(t) = (1 − m(t))/lr)."""
    m = M.DINO(teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_time=3.0)
    np.testing.assert_allclose([float(m.teacher_temperature(t)) for t in (0.0, 1.5, 3.0, 9.0)],
                               [0.04, 0.055, 0.07, 0.07], rtol=1e-14)
    r = M.EMARate.from_momentum(0.996, lr=0.01, t_end=10.0)
    for step in (0, 250, 700, 1000, 1200):
        m_k = float(M.byol_momentum(step, base=0.996, total_steps=1000))
        np.testing.assert_allclose(float(r(step * 0.01)), (1 - m_k) / 0.01, rtol=1e-12,
                                   atol=1e-14)


# ---------------------------------------------------------------------------------------------
# SwAV


@pytest.mark.slow
def test_swav_collapsed_state_has_uniform_codes_and_loss_at_least_ln_P():
    """Caron et al. 2020 / docs/theory/asymmetric.md: for a collapsed embedding (every row the same) the
    per-view Sinkhorn codes are exactly uniform (|q − 1/P| < 1e-12) and the method's loss is at
    least ln P; a training run of the method from a generic start ends well below ln P with
    balanced codes (batch-mean code entropy > 0.8 ln P)."""
    P, d, n = 6, 4, 12
    m = M.SwAV(n_prototypes=P, prototype_rate=1.0, freeze_time=0.5)
    r = np.random.default_rng(5)
    fc = np.tile(r.normal(size=(1, d)), (2 * n, 1))
    sc = m.init(jnp.asarray(fc), jax.random.key(0))
    np.testing.assert_allclose(m.codes(sc), 1.0 / P, atol=1e-12)
    assert float(m.loss(sc)) >= np.log(P) - 1e-12
    K = _kernel(6, n=n, d=d, const=0.2)
    s0 = m.init(jnp.asarray(r.normal(size=(2 * n, d))), jax.random.key(1))
    # prototypes frozen for the first 0.5/lr = 50 gd steps (only renormalised: round-off), moving
    # after
    gd = dynamics.solve(jnp.asarray(K), m, s0, jnp.array([0.0, 0.49, 0.6]), solver="gd", lr=0.01)
    np.testing.assert_allclose(gd.aux["prototypes"][1], gd.aux["prototypes"][0], atol=1e-14)
    assert float(jnp.max(jnp.abs(gd.aux["prototypes"][2] - gd.aux["prototypes"][0]))) > 1e-6
    ys = _ode(m, s0, K, [0.0, 20.0])
    s_end = _last(ys)
    # unit rows throughout (the flow is tangent to the sphere)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(s_end.aux["prototypes"]), axis=1), 1.0,
                               atol=1e-6)
    assert float(m.loss(s_end)) < 0.5 * np.log(P)
    q = np.asarray(m.codes(s_end)).mean(axis=0)
    assert -np.sum(q * np.log(q)) > 0.8 * np.log(P)


def test_dino_and_swav_validate_inputs():
    with pytest.raises(ValueError, match="centering"):
        M.DINO(centering="batch")
    with pytest.raises(ValueError, match="teacher_temp"):
        M.DINO(teacher_temp=0.0)
    with pytest.raises(ValueError, match="key"):
        M.SwAV(n_prototypes=3).init(jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="prototypes0"):
        M.SwAV(n_prototypes=3).init(jnp.ones((4, 2)), prototypes0=jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="n_classes"):
        M.dino_linear_operator(jnp.eye(4), 0)
