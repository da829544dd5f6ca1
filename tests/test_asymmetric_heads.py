"""Finite-width heads of the asymmetric methods: BYOL/SimSiam's MLP predictor (`finite.MLPPredictor`,
`PredictorHeadRule`), DINO's projection head (`finite.DINOHead`, `DINOHeadRule`: centring,
teacher-temperature warm-up, EMA teacher), fresh augmentations (`train_method_augmented`) and the
non-copy target initialisations (zero, independent).

References are independent re-derivations: the network's forward by `finite.forward` on its
parameter list, the heads written out here in numpy (float64) from the official code
(facebookresearch/dino vision_transformer.py `DINOHead.forward`; main_dino.py `DINOLoss`,
`train_one_epoch`; deepmind-research byol/byol_experiment.py `_update_fn`), gradients by
`jax.grad` of those hand-written losses and SGD by hand. One optimiser step touches every quantity
once, so float64 round-off bounds the differences: 1e-10 relative is ~1e5 ulps of slack.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from sslntk import data, finite, kernels
from sslntk import methods as M

F64 = jnp.float64
ARCH = kernels.mlp(1, "erf")


def _views(n=6, d=3, seed=1):
    x = jax.random.normal(jax.random.key(seed), (2 * n, d), F64)
    return x.at[n:].set(x[:n] + 0.3 * jax.random.normal(jax.random.key(seed + 1), (n, d), F64))


def _net(width=16, k=3, seed=0):
    return finite.network(ARCH, width, k, key=jax.random.key(seed), in_shape=(3,), dtype=F64)


def _fwd(theta, x):
    return finite.forward(ARCH, theta, x)


def _theta(params_layers):
    return [(lay["W"], lay["b"]) for lay in params_layers]


def _layers(params):
    """The network's `(W, b)` pairs from its nnx.Param state (rule states hold that pytree)."""
    lay = params["layers"]
    return [(lay[i]["W"].get_value(), lay[i]["b"].get_value()) for i in sorted(lay.keys())]


def _swap(x):
    n = x.shape[0] // 2
    return jnp.concatenate([x[n:], x[:n]])


# ------------------------------------------------------------------------------------------------
# MLP predictor


def _mlp_ref(h, f, hidden):
    """ReLU(f W1 √2/√k + b1) W2/√hidden + b2 (NTK parametrisation), written out."""
    z = jnp.maximum(f @ h["W1"] * np.sqrt(2.0) / np.sqrt(f.shape[1]) + h["b1"], 0.0)
    return z @ h["W2"] / np.sqrt(hidden) + h["b2"]


def _byol_ref(p, y):
    """BYOL's loss, byol/utils/helpers.py regression_loss summed over both directions."""
    pn = p / jnp.linalg.norm(p, axis=1, keepdims=True)
    yn = y / jnp.linalg.norm(y, axis=1, keepdims=True)
    return jnp.sum((pn - _swap(jax.lax.stop_gradient(yn))) ** 2) / (p.shape[0] // 2)


def test_mlp_predictor_step_equals_hand_written_sgd_step():
    """One `train_method` step of cosine BYOL with an MLP predictor (hidden 8, alpha_p = 3, EMA
    rate 0.5) equals the hand-written step: θ' = θ − lr ∇_θ L, head' = head − 3 lr ∇_head L with
    L = BYOL's loss of q(f_θ) against the target copy, and ξ' = m ξ + (1 − m) θ', m = 1 − lr·0.5
    (float64, 1e-10 relative; byol_experiment.py order: online step, then EMA)."""
    x, net, lr = _views(), _net(), 0.3
    head = finite.MLPPredictor(hidden=8)
    method = M.BYOL(ema=0.5, alpha_p=3.0, form="cosine")
    r = finite.train_method(net, x, method, lr=lr, steps=1, head=head, head_key=jax.random.key(4),
                            ts=[0.0, lr], progress=False, check_lr=False)
    assert r.ok
    theta = net.theta
    h0 = head.init(jax.random.key(4), 3, F64)

    def loss(th, h):
        return _byol_ref(_mlp_ref(h, _fwd(th, x), 8), _fwd(theta, x))

    gth, gh = jax.jit(jax.grad(loss, argnums=(0, 1)))(theta, h0)   # one compile (eager: ~100)
    th1 = jax.tree.map(lambda a, g: a - lr * g, theta, gth)
    h1 = jax.tree.map(lambda a, g: a - 3.0 * lr * g, h0, gh)
    m = 1.0 - lr * 0.5
    xi1 = jax.tree.map(lambda a, b: m * a + (1 - m) * b, theta, th1)
    st = r.rule_state

    def close(a, b):
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)

    close(r.model.theta, th1)
    close(st["head"], h1)
    close(_layers(st["target"]), xi1)
    np.testing.assert_allclose(r.loss[0], loss(theta, h0), rtol=1e-12)
    np.testing.assert_allclose(r.f[-1], _fwd(th1, x), rtol=1e-10, atol=1e-12)


def test_mlp_predictor_trains_simsiam_with_momentum_and_records_the_head():
    """SimSiam with a standard-parametrised MLP head under optax momentum: the head's updates are
    alpha_p = 2 times the network optimiser's updates for the same gradient (the state holds
    the trained head, which moved), and the recorded loss at the end is the method's loss of
    the trained head on the trained network."""
    x, net, lr = _views(), _net(), 0.1
    head = finite.MLPPredictor(hidden=8, param="standard", bias=(False, True))   # SimSiam's
    method = M.SimSiam(alpha_p=2.0, form="cosine")
    r = finite.train_method(net, x, method, lr=lr, steps=6, head=head, optimizer="momentum",
                            ts=[0.0, 0.3, 0.6], progress=False)
    assert r.ok
    h0 = head.init(jax.random.key(0), 3, F64)
    h = r.rule_state["head"]
    assert float(jnp.linalg.norm(h["W1"] - h0["W1"])) > 1e-4
    assert "b1" not in h and "b2" in h               # no first-layer bias parameter
    f = _fwd(r.model.theta, x)
    np.testing.assert_allclose(r.loss[-1], method.prediction_loss(head.apply(h, f), f),
                               rtol=1e-10)
    assert r.loss[-1] < r.loss[0]
    # the head's optimiser: momentum followed by a scale of alpha_p
    rule = finite.PredictorHeadRule(method, lr, head, h0, finite._asymmetric._head_tx(
        "momentum", lr, 6, None, 2.0))
    g = jax.tree.map(jnp.ones_like, h0)
    u, _ = rule.head_tx.update(g, rule.head_tx.init(h0), h0)
    ref, _ = finite.make_optimizer("momentum", lr, 6).update(g, finite.make_optimizer(
        "momentum", lr, 6).init(h0), h0)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, 2.0 * b, rtol=1e-14)


def test_heads_validate_their_arguments():
    x, net = _views(), _net()
    with pytest.raises(ValueError, match="hidden"):
        finite.MLPPredictor(hidden=0)
    with pytest.raises(TypeError, match="bias"):
        finite.MLPPredictor(bias=(True,))
    with pytest.raises(ValueError, match="param"):
        finite.DINOHead(param="mup")
    with pytest.raises(TypeError, match="head"):
        finite.train_method(net, x, M.SimSiam(), lr=0.1, steps=1, head="mlp")
    with pytest.raises(ValueError, match="predictor='trained'"):
        finite.train_method(net, x, M.DirectPred(), lr=0.1, steps=1,
                            head=finite.MLPPredictor())
    with pytest.raises(ValueError, match="DINOHead goes with methods.DINO"):
        finite.train_method(net, x, M.SimSiam(), lr=0.1, steps=1, head=finite.DINOHead())
    with pytest.raises(ValueError, match="target_key"):
        finite.train_method(net, x, M.BYOL(target_init="independent"), lr=0.1, steps=1)
    with pytest.raises(ValueError, match="alpha=1"):
        finite.train_method(finite.linearize(net), x, M.BYOL(target_init="zero"), lr=0.1,
                            steps=1)


# ------------------------------------------------------------------------------------------------
# DINO head


def _dino_head_np(h, f, nlayers, param, g=None):
    """facebookresearch/dino vision_transformer.py DINOHead.forward in numpy float64: mlp
    (Linear, nn.GELU() = x·Φ(x) exact, ...), F.normalize(dim=-1, p=2, eps=1e-12), weight-normed
    last layer w = g·v/‖v‖ (norm over dim 1 of the (out, in) weight), no bias."""
    x = np.asarray(f, np.float64)
    for i in range(nlayers):
        W, b = np.asarray(h[f"W{i}"]), np.asarray(h[f"b{i}"])
        x = x @ W / (np.sqrt(W.shape[0]) if param == "ntk" else 1.0) + b
        if i < nlayers - 1:
            x = 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    v = np.asarray(h["v"])
    w = v / np.linalg.norm(v, axis=1, keepdims=True)
    if g is not None:
        w = np.asarray(g)[:, None] * w
    return x @ w.T


@pytest.mark.parametrize("param,norm_last", [("standard", True), ("ntk", False)])
def test_dino_head_forward_equals_official_forward(param, norm_last):
    """`DINOHead.apply` == the official forward re-derived in numpy (1e-12; with a trainable
    weight-norm gain set away from 1), and |logits| <= 1 with the frozen unit gain."""
    head = finite.DINOHead(hidden=12, bottleneck=5, n_prototypes=7, param=param,
                           norm_last_layer=norm_last)
    h = head.init(jax.random.key(3), 4, F64)
    if not norm_last:
        h = dict(h, g=jnp.linspace(0.5, 2.0, 7))
    f = np.random.default_rng(0).normal(size=(9, 4))
    out = head.apply(h, jnp.asarray(f))
    np.testing.assert_allclose(out, _dino_head_np(h, f, 3, param, h.get("g")), rtol=1e-12,
                               atol=1e-14)
    if norm_last:
        assert float(jnp.max(jnp.abs(out))) <= 1.0 + 1e-12
        assert "g" not in h           # frozen gain: not a parameter


def _dino_loss_ref(s, t, c, tau_s, tau_t):
    """main_dino.py DINOLoss.forward for 2 global crops: chunks of student/teacher, every
    (iq, v != iq) term −Σ q log_softmax(s_v/tau_s) averaged over the batch, then over terms."""
    n = s.shape[0] // 2
    q = jax.nn.softmax((jax.lax.stop_gradient(t) - c) / tau_t, axis=-1)
    ls = jax.nn.log_softmax(s / tau_s, axis=-1)
    terms = [jnp.mean(jnp.sum(-q[:n] * ls[n:], -1)), jnp.mean(jnp.sum(-q[n:] * ls[:n], -1))]
    return sum(terms) / 2


def test_dino_head_two_steps_equal_official_update_order():
    """Two `train_method` steps of DINO with its head (EMA teacher rate 0.5, centre rate 2,
    teacher temperature warmed from 0.04 to 0.07 over t = 0.5) equal the hand-written
    main_dino.py order per step: teacher logits; loss with the current centre at tau_t(t);
    centre ← m_c c + (1 − m_c) mean(teacher logits) (m_c = 1 − lr·2); SGD on the student's
    network and head; teacher (network and head) ← m ξ + (1 − m) θ_new (m = 1 − lr·0.5). The
    second step sees a non-zero centre and a warmed temperature (float64, 1e-10)."""
    x, net, lr = _views(), _net(), 0.2
    head = finite.DINOHead(hidden=10, bottleneck=4, n_prototypes=6)
    method = M.DINO(ema=0.5, center_rate=2.0, teacher_temp=0.07, warmup_teacher_temp=0.04,
                    warmup_time=0.5)
    r = finite.train_method(net, x, method, lr=lr, steps=2, head=head, ts=[0.0, lr, 2 * lr],
                            progress=False, check_lr=False)
    assert r.ok
    th, h = net.theta, head.init(jax.random.key(0), 3, F64)
    tth, th_h = th, h
    c = jnp.zeros(6)

    def loss(a, b, tl, c, tau_t):
        return _dino_loss_ref(head.apply(b, _fwd(a, x)), tl, c, 0.1, tau_t)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    for step in range(2):
        t = lr * step
        tau_t = 0.04 + 0.03 * min(t / 0.5, 1.0)
        tl = head.apply(th_h, _fwd(tth, x))
        if step == 1:
            np.testing.assert_allclose(r.loss[1], loss(th, h, tl, c, tau_t), rtol=1e-10)
        ga, gb = grad(th, h, tl, c, tau_t)
        c = (1 - lr * 2.0) * c + lr * 2.0 * jnp.mean(tl, axis=0)
        th = jax.tree.map(lambda a, g: a - lr * g, th, ga)
        h = jax.tree.map(lambda a, g: a - lr * g, h, gb)
        ema = lambda a, b: (1 - lr * 0.5) * a + lr * 0.5 * b   # noqa: E731  m = 1 − lr·0.5
        tth = jax.tree.map(ema, tth, th)
        th_h = jax.tree.map(ema, th_h, h)
    st = r.rule_state
    pairs = [(r.model.theta, th), (st["head"], h), (_layers(st["teacher"][0]), tth),
             (st["teacher"][1], th_h), (st["center"], c)]
    for a, b in pairs:
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-13)
    assert float(jnp.max(jnp.abs(c))) > 1e-3          # the centre was used in step 2


# ------------------------------------------------------------------------------------------------
# fresh augmentations and non-copy targets


def test_fresh_views_every_step_are_the_ones_trained_on():
    """`train_method_augmented` (SimSiam, Euclidean, frozen predictor 0.5·I, GD) takes its two
    steps on the FreshViews pairs of steps 0 and 1 (new augmentations each step): equal to
    two hand-written SGD steps on those views (1e-10), and not to two steps on the first pair."""
    src = jax.random.normal(jax.random.key(9), (6, 3), F64)
    aug = data.gaussian_noise(0.3)
    key, lr, net = jax.random.key(11), 0.2, _net()
    method = M.SimSiam(predictor="fixed", p0=0.5)
    r = finite.train_method_augmented(net, src, aug, method, key=key, lr=lr, steps=2,
                                      optimizer="gd", ts=[0.0, 2 * lr], progress=False)
    assert r.ok
    source = finite._engine.FreshViews(augment=aug)
    v0, v1 = (source.views(s, key, src, None)[0] for s in (0, 1))
    assert float(jnp.max(jnp.abs(v0 - v1))) > 0.1                # new views at step 1

    @jax.jit
    def step(th, v):
        def loss(a):
            f = _fwd(a, v)
            return jnp.sum((0.5 * f - _swap(jax.lax.stop_gradient(f))) ** 2) / (2 * f.shape[0])
        return jax.tree.map(lambda a, g: a - lr * g, th, jax.grad(loss)(th))

    fresh = step(step(net.theta, v0), v1)
    fixed = step(step(net.theta, v0), v0)
    gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in
              zip(jax.tree.leaves(fresh), jax.tree.leaves(fixed), strict=True))
    for a, b in zip(jax.tree.leaves(r.model.theta), jax.tree.leaves(fresh), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    assert gap > 1e-6


@pytest.mark.parametrize("how", ["zero", "independent"])
def test_non_copy_target_network_is_used_from_step_0(how):
    """BYOL (Euclidean, predictor 0.5·I, EMA rate 0.5) with a target network at zero parameters
    (Tian et al.'s W_a(0) = 0) or drawn independently (official BYOL, `target_key`): the loss at
    step 0 is the method's loss against THAT target's outputs (zero, or the independent
    network's), which differs from the online copy's; after one step the target parameters are
    m ξ₀ + (1 − m) θ₁ with ξ₀ the chosen start (1e-12)."""
    x, net, lr = _views(), _net(), 0.2
    method = M.BYOL(ema=0.5, target_init=how)
    other = finite.network(ARCH, 16, 3, key=jax.random.key(7), in_shape=(3,), dtype=F64)
    xi0 = ([(jnp.zeros_like(W), jnp.zeros_like(b)) for W, b in net.theta] if how == "zero"
           else other.theta)
    r = finite.train_method(net, x, method, lr=lr, steps=1, target_key=jax.random.key(7),
                            ts=[0.0, lr], progress=False, check_lr=False)
    assert r.ok
    f0, y0 = _fwd(net.theta, x), _fwd(xi0, x)
    expect = jnp.sum((0.5 * f0 - _swap(y0)) ** 2) / (2 * f0.shape[0])
    np.testing.assert_allclose(r.loss[0], expect, rtol=1e-12)
    copy = jnp.sum((0.5 * f0 - _swap(f0)) ** 2) / (2 * f0.shape[0])
    assert abs(float(expect - copy)) > 1e-3 * float(copy)
    m = 1 - lr * 0.5
    target = _layers(r.rule_state[1])
    for a, b, c in zip(jax.tree.leaves(target), jax.tree.leaves(xi0),
                       jax.tree.leaves(r.model.theta), strict=True):
        np.testing.assert_allclose(a, m * b + (1 - m) * c, rtol=1e-12, atol=1e-14)


def test_dino_last_layer_is_frozen_until_its_release_time():
    """`DINOHead(freeze_last_layer=2·lr)` (main_dino.py `cancel_gradients_last_layer`: the last
    layer's gradient is dropped, so PyTorch's optimiser skips it): over 3 AdamW steps the MLP
    body takes 3 optimiser steps but the last layer only the one after its release (its own Adam
    step count is 1, PyTorch's per-parameter step), and it moved in that step."""
    x, net, lr = _views(), _net(), 0.1
    head = finite.DINOHead(hidden=10, bottleneck=4, n_prototypes=6, freeze_last_layer=2 * lr)
    h0 = head.init(jax.random.key(0), 3, F64)
    r = finite.train_method(net, x, M.DINO(ema=0.5, center_rate=2.0), lr=lr, steps=3, head=head,
                            optimizer="adamw", ts=[0.0, 3 * lr], progress=False)
    assert r.ok

    def counts(state):
        return {int(c) for c in jax.tree.leaves(state)
                if jnp.ndim(c) == 0 and jnp.issubdtype(jnp.asarray(c).dtype, jnp.integer)}

    h, opt = r.rule_state["head"], r.rule_state["head_opt"]
    assert counts(opt["body"]) == {3} and counts(opt["last"]) == {1}
    assert float(jnp.max(jnp.abs(h["v"] - h0["v"]))) > 1e-6
    assert float(jnp.max(jnp.abs(h["W0"] - h0["W0"]))) > 1e-6
