"""The official BYOL / SimSiam / DINO / SwAV losses (sslntk.methods) against float64 numpy
re-derivations of the official implementations, written loop for loop from the cited lines, and
SwAV's Sinkhorn properties (Caron et al. 2020; collapse is never a low-loss state).

Tolerances: the re-derivations compute the same float64 expressions in another order (loops,
exp-domain Sinkhorn vs log-domain), so agreement is to ~1e-13 relative; 1e-12 is asserted.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import methods as M

RNG = np.random.default_rng(0)


def _views(n=6, k=5, seed=0):
    r = np.random.default_rng(seed)
    return r.normal(size=(2 * n, k)), r.normal(size=(2 * n, k))


# ---------------------------------------------------------------------------------------------
# BYOL: google-deepmind/deepmind-research @ f5de0ed


def _np_l2_normalize(x, eps=1e-12):
    # byol/utils/helpers.py lines 74-82: x * rsqrt(max(sum(x²), eps))
    return x / np.sqrt(np.maximum(np.sum(x ** 2, axis=-1, keepdims=True), eps))


def _np_regression_loss(x, y):
    # byol/utils/helpers.py lines 109-112
    return np.sum((_np_l2_normalize(x) - _np_l2_normalize(y)) ** 2, axis=-1)


def test_byol_loss_equals_official_regression_loss():
    """byol/byol_experiment.py lines 243-250: `repr_loss = regression_loss(pred_view1,
    proj_view2) + regression_loss(pred_view2, proj_view1)`, then `jnp.mean` over the batch."""
    p, z = _views()
    n = 6
    ref = np.mean(_np_regression_loss(p[:n], z[n:]) + _np_regression_loss(p[n:], z[:n]))
    np.testing.assert_allclose(float(M.byol_loss(p, z)), ref, rtol=1e-12)


def test_byol_loss_stops_the_gradient_at_the_target():
    """The target branch gets no gradient (byol_experiment.py line 245 `jax.lax.stop_gradient`)."""
    p, z = _views()
    gz = jax.grad(lambda zz: M.byol_loss(jnp.asarray(p), zz))(jnp.asarray(z))
    assert float(jnp.max(jnp.abs(gz))) == 0.0
    gp = jax.grad(lambda pp: M.byol_loss(pp, jnp.asarray(z)))(jnp.asarray(p))
    assert float(jnp.max(jnp.abs(gp))) > 0.0


def test_byol_momentum_equals_official_target_ema():
    """byol/utils/schedules.py lines 20-24 and 46-52: `1 − (1 − base)·½(1 + cos(π min(k, K)/K))`."""
    K = 1000
    for k in (0, 1, 250, 999, 1000, 1500):
        kk = min(k, K)
        ref = 1.0 - (1.0 - 0.996) * 0.5 * (1 + np.cos(np.pi * kk / K))
        np.testing.assert_allclose(float(M.byol_momentum(k, base=0.996, total_steps=K)), ref,
                                   rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# SimSiam: facebookresearch/simsiam @ a7bc177


def _np_torch_cosine(x, y, eps=1e-8):
    # torch.nn.CosineSimilarity(dim=1, eps=1e-8) as in main_simsiam.py line 191
    nx = np.maximum(np.linalg.norm(x, axis=1), eps)
    ny = np.maximum(np.linalg.norm(y, axis=1), eps)
    return np.sum(x * y, axis=1) / (nx * ny)


def test_simsiam_loss_equals_official_negative_cosine():
    """main_simsiam.py line 295: `loss = -(criterion(p1, z2).mean() + criterion(p2, z1).mean())
    * 0.5`; and `byol_loss = 4 + 4·simsiam_loss` for the same vectors (both are 2 − 2cos per
    direction, BYOL summing the two)."""
    p, z = _views(seed=1)
    n = 6
    ref = -(_np_torch_cosine(p[:n], z[n:]).mean() + _np_torch_cosine(p[n:], z[:n]).mean()) * 0.5
    s = float(M.simsiam_loss(p, z))
    np.testing.assert_allclose(s, ref, rtol=1e-12)
    np.testing.assert_allclose(float(M.byol_loss(p, z)), 4 + 4 * s, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# DINO: facebookresearch/dino @ 7c446df


def _np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _np_dino_forward(student_output, teacher_output, center, student_temp, temp, ncrops=2):
    # main_dino.py lines 380-404 (DINOLoss.forward), loop for loop
    student_out = np.split(student_output / student_temp, ncrops)
    teacher_out = np.split(_np_softmax((teacher_output - center) / temp), 2)
    total_loss, n_loss_terms = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            loss = np.sum(-q * _np_log_softmax(student_out[v]), axis=-1)
            total_loss += loss.mean()
            n_loss_terms += 1
    return total_loss / n_loss_terms


def test_dino_loss_equals_official_centred_sharpened_cross_entropy():
    """main_dino.py lines 380-404 with two global crops, a non-zero centre, tau_s = 0.1,
    tau_t = 0.04; the centre update (lines 406-416: `c·m + mean_b(g_t)·(1 − m)`) after it."""
    s, t = _views(n=5, k=7, seed=2)
    c = RNG.normal(size=7) * 0.3
    ref = _np_dino_forward(s, t, c[None, :], 0.1, 0.04)
    np.testing.assert_allclose(float(M.dino_loss(s, t, c, student_temp=0.1, teacher_temp=0.04)),
                               ref, rtol=1e-12)
    ref_c = c * 0.9 + (np.sum(t, axis=0) / len(t)) * (1 - 0.9)
    np.testing.assert_allclose(M.dino_center(c, t, momentum=0.9), ref_c, rtol=1e-14)


def test_dino_loss_is_ln_K_for_uniform_collapse():
    """A constant teacher without sharpening contrast gives the uniform target: with equal student
    logits the loss is ln K exactly (the 'stuck at 8.3178 = ln 4096' symptom of dino#43)."""
    s = np.zeros((4, 4096))
    np.testing.assert_allclose(float(M.dino_loss(s, s)), np.log(4096), rtol=1e-14)


def test_dino_schedules_equal_official_ones():
    """main_dino.py lines 374-378 (`np.linspace(warmup, final, W)` then `final`) and utils.py
    lines 187-198 (`cosine_scheduler`, with and without a warm-up)."""
    sched = np.concatenate((np.linspace(0.04, 0.07, 30), np.ones(100 - 30) * 0.07))
    got = [float(M.dino_teacher_temperature(e, warmup=0.04, final=0.07, warmup_epochs=30))
           for e in range(100)]
    np.testing.assert_allclose(got, sched, rtol=1e-14)
    assert float(M.dino_teacher_temperature(5, warmup=0.04, final=0.07)) == 0.07   # default W=0

    def np_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                            start_warmup_value=0):
        warmup_schedule = np.array([])
        warmup_iters = warmup_epochs * niter_per_ep
        if warmup_epochs > 0:
            warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
        iters = np.arange(epochs * niter_per_ep - warmup_iters)
        schedule = final_value + 0.5 * (base_value - final_value) * (
            1 + np.cos(np.pi * iters / len(iters)))
        return np.concatenate((warmup_schedule, schedule))

    ref = np_cosine_scheduler(0.996, 1.0, 10, 7)
    got = [float(M.cosine_schedule(i, base=0.996, final=1.0, total_steps=70)) for i in range(70)]
    np.testing.assert_allclose(got, ref, rtol=1e-14)
    ref = np_cosine_scheduler(5e-4, 1e-6, 10, 7, warmup_epochs=2, start_warmup_value=0.0)
    got = [float(M.cosine_schedule(i, base=5e-4, final=1e-6, total_steps=70, warmup_steps=14))
           for i in range(70)]
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-18)


# ---------------------------------------------------------------------------------------------
# SwAV: facebookresearch/swav @ 06b1b7c


def _np_distributed_sinkhorn(out, epsilon=0.05, sinkhorn_iterations=3, world_size=1):
    # main_swav.py lines 354-376, exp domain as in the official code (float64 here)
    Q = np.exp(out / epsilon).T
    B = Q.shape[1] * world_size
    K = Q.shape[0]
    Q = Q / np.sum(Q)
    for _ in range(sinkhorn_iterations):
        Q = Q / np.sum(Q, axis=1, keepdims=True)
        Q = Q / K
        Q = Q / np.sum(Q, axis=0, keepdims=True)
        Q = Q / B
    Q = Q * B
    return Q.T


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sinkhorn_equals_official_order():
    """main_swav.py lines 354-376: the log-domain codes equal the exp-domain official ones."""
    z = _unit(RNG.normal(size=(64, 16)))
    C = _unit(RNG.normal(size=(30, 16)))
    S = z @ C.T
    np.testing.assert_allclose(M.sinkhorn(S), _np_distributed_sinkhorn(S), rtol=1e-12, atol=1e-300)


def test_sinkhorn_rows_exact_marginals_approximate_and_collapse_uniform_swav():
    """Caron et al. 2020 Sec. 3.1 with the official 3 iterations (B = 64, P = 30, d = 16, unit
    z and C, eps = 0.05): every sample's code sums to 1 (to 1e-12: the last normalisation is over
    samples); the prototype marginals `P·mean_b q` are NOT all 1 after 3 iterations (spread > 0.1;
    [0.635, 1.556] in an independent numpy run); for a collapsed z the codes are exactly uniform
    (|q − 1/P| < 1e-12) and the loss is at least ln P (ln P + KL(U‖softmax(S/τ)))."""
    z = _unit(RNG.normal(size=(64, 16)))
    C = _unit(RNG.normal(size=(30, 16)))
    q = np.asarray(M.sinkhorn(z @ C.T))
    np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-12)
    marg = 30 * q.mean(axis=0)
    assert marg.max() - marg.min() > 0.1
    zc = np.tile(z[:1], (64, 1))
    qc = np.asarray(M.sinkhorn(zc @ C.T))
    assert np.max(np.abs(qc - 1 / 30)) < 1e-12
    L = float(M.swav_loss(np.concatenate([zc, zc]), C))
    assert L >= np.log(30) - 1e-12
    # a balanced, confident assignment scores far below ln P: collapse is never a low-loss state
    Cb = np.eye(16)[:8]
    zb = np.repeat(np.eye(16)[:8], 4, axis=0)
    assert float(M.swav_loss(np.concatenate([zb, zb]), Cb)) < 0.5 * np.log(8)


def test_swav_loss_equals_official_swapped_prediction():
    """main_swav.py lines 289-315 with nmb_crops = [2], crops_for_assign = [0, 1], no queue:
    `q = sinkhorn(output[crop])`; `subloss -= mean(sum(q · log_softmax(output[v]/T)))` over
    v ≠ crop; `loss += subloss/(2 − 1)`; `loss /= 2`. Embeddings are l2-normalised before the
    prototype layer (src/resnet50.py, l2norm), prototypes unit rows (lines 277-281)."""
    n, d, P = 8, 6, 5
    f = RNG.normal(size=(2 * n, d))
    C = _unit(RNG.normal(size=(P, d)))
    output = _unit(f) @ C.T
    loss = 0.0
    for crop_id in (0, 1):
        q = _np_distributed_sinkhorn(output[n * crop_id: n * (crop_id + 1)])
        subloss = 0.0
        for v in np.delete(np.arange(2), crop_id):
            x = output[n * v: n * (v + 1)] / 0.1
            subloss -= np.mean(np.sum(q * _np_log_softmax(x), axis=1))
        loss += subloss / (2 - 1)
    loss /= 2
    np.testing.assert_allclose(float(M.swav_loss(f, C)), loss, rtol=1e-12)
    # the codes carry no gradient (computed under torch.no_grad, line 291)
    g = jax.grad(lambda ff: M.swav_loss(ff, C))(jnp.asarray(f))
    g_ref = jax.grad(lambda ff: jnp.mean(jnp.sum(
        -M.swap_views(jnp.asarray(np.concatenate([_np_distributed_sinkhorn(output[:n]),
                                                  _np_distributed_sinkhorn(output[n:])])))
        * jax.nn.log_softmax((ff / jnp.linalg.norm(ff, axis=1, keepdims=True)) @ C.T / 0.1,
                             axis=-1), axis=-1)))(jnp.asarray(f))
    np.testing.assert_allclose(g, g_ref, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# validation


def test_asymmetric_losses_validate_inputs():
    p, z = _views()
    with pytest.raises(ValueError, match="z: expected shape"):
        M.byol_loss(p, z[:, :3])
    with pytest.raises(ValueError, match="p: expected stacked views"):
        M.simsiam_loss(p[:5], z[:5])
    with pytest.raises(ValueError, match="teacher_temp"):
        M.dino_loss(p, z, teacher_temp=0.0)
    with pytest.raises(ValueError, match="center"):
        M.dino_loss(p, z, np.zeros(3))
    with pytest.raises(ValueError, match="prototypes"):
        M.swav_loss(p, np.eye(3))
    with pytest.raises(TypeError, match="scores"):
        M.sinkhorn(np.zeros((3, 2), dtype=np.int32))
    with pytest.raises(ValueError, match="momentum"):
        M.dino_center(np.zeros(5), z, momentum=1.5)
