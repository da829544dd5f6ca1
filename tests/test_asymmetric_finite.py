"""Finite-width BYOL / SimSiam / DirectPred / DINO / SwAV (sslntk.finite.train_method, MethodRule):
a linearised network trained by the rule IS the function-space method stepped with the network's
own output-space empirical NTK (exact in the lazy limit: the target network's output is then the
EMA of the online outputs), and real networks approach that prediction as width grows.

Reference: the function-space method's own `step` with `finite.output_space_ntk` (an independent
path: no network, no optax). float64 (conftest).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import finite, kernels
from sslntk import methods as M

F64 = jnp.float64


def _views(n=8, d=4, seed=1):
    x = jax.random.normal(jax.random.key(seed), (2 * n, d), F64)
    return x.at[n:].set(x[:n] + 0.3 * jax.random.normal(jax.random.key(seed + 1), (n, d), F64))


def _net(width, k=2, seed=0, alpha=0.3):
    return finite.network(kernels.mlp(1, "erf"), width, k, key=jax.random.key(seed), in_shape=(4,),
                          dtype=F64, alpha=alpha)


_METHODS = {
    "simsiam": (M.SimSiam(alpha_p=2.0, p0=0.5), {}),
    "byol_cosine": (M.BYOL(ema=M.EMARate.from_momentum(0.99, lr=0.2, t_end=8.0), form="cosine"),
                    {}),
    "directpred": (M.DirectPred(ema=0.5, eps=0.1, corr_rate=2.0, freq=2), {}),
    "dino": (M.DINO(ema=0.5, center_rate=2.0, teacher_temp=0.05, warmup_teacher_temp=0.04,
                    warmup_time=2.0), {}),
    "swav": (M.SwAV(n_prototypes=4, prototype_rate=1.0, freeze_time=1.0), {}),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n in ("swav", "directpred", "byol_cosine") else n
                                  for n in _METHODS])
def test_linearised_network_equals_function_space_method_with_its_ntk(name):
    """For a linearised network (`finite.linearize`), training by `train_method` (optax GD on Jᵀg,
    target network by parameter EMA, predictor / centre / prototypes by the method's own step)
    equals `finite.method_prediction` (the method's function-space steps with the full
    output-space NTK) at every saved step: the two paths share only the method object, and agree
    to round-off (1e-10 relative over 40 steps of float64)."""
    method, init = _METHODS[name]
    x = _views()
    net = _net(64, k=4 if name == "dino" else 2)
    lr, steps = 0.2, 40
    key = jax.random.key(5)
    r = finite.train_method(finite.linearize(net), x, method, lr=lr, steps=steps, key=key,
                            ts=np.linspace(0.0, lr * steps, 5), progress=False, check_lr=False,
                            init_options=init)
    assert r.ok
    ts, f = finite.method_prediction(net, x, method, lr=lr, steps=steps, save_every=10, key=key,
                                     init_options=init)
    np.testing.assert_allclose(r.ts, ts, rtol=1e-12)
    dev = np.asarray(finite.relative_deviation(jnp.asarray(r.f), f))
    assert np.max(dev) < 1e-10
    assert float(jnp.linalg.norm(f[-1] - f[0])) > 1e-3 * float(jnp.linalg.norm(f[0]))   # moved


@pytest.mark.slow
def test_networks_approach_their_own_ntk_prediction_as_width_grows():
    """SimSiam (Euclidean, trained predictor, t = 200 through the growth of the first learned
    mode: ‖f‖ more than doubles) on a one-hidden-layer erf network: the deviation of the network
    from its own output-space-NTK prediction falls with width (128 → 2048: at least 8-fold; the
    NTK moves by O(width^{-1/2}) per unit change of f, so the deviation's exponent is negative)."""
    x = _views()
    lr, steps = 0.5, 400
    method = M.SimSiam(alpha_p=1.0, p0=0.5)
    devs = []
    for width in (128, 2048):
        net = _net(width)
        r = finite.train_method(net, x, method, lr=lr, steps=steps,
                                ts=np.linspace(0.0, lr * steps, 9), progress=False,
                                check_lr=False)
        _, f = finite.method_prediction(net, x, method, lr=lr, steps=steps, save_every=50)
        assert float(jnp.linalg.norm(f[-1])) > 2 * float(jnp.linalg.norm(f[0]))
        devs.append(float(jnp.max(finite.relative_deviation(jnp.asarray(r.f), f))))
    assert devs[1] < devs[0] / 8


@pytest.mark.slow
def test_byol_simsiam_width_exponent_and_barlow_twins_comparison():
    """Width sweep (128, 512, 2048, 8192; 3 network seeds) of the deviation from the own-NTK
    prediction for SimSiam and BYOL (Euclidean, EMA rate 0.4): the fitted exponent and its 95%
    interval are negative, and at width 512 both deviations are within 2x the Barlow Twins
    figure (finite.kernel_prediction, same network, views, lr and horizon)."""
    x = _views()
    lr, steps = 0.5, 400
    widths = (128, 512, 2048, 8192)
    ts = np.linspace(0.0, lr * steps, 9)
    for method in (M.SimSiam(alpha_p=1.0, p0=0.5), M.BYOL(ema=0.4, alpha_p=1.0, p0=0.5)):
        dev = np.zeros((len(widths), 3))
        for i, w in enumerate(widths):
            for s in range(3):
                net = _net(w, seed=s)
                r = finite.train_method(net, x, method, lr=lr, steps=steps, ts=ts,
                                        progress=False, check_lr=False)
                _, f = finite.method_prediction(net, x, method, lr=lr, steps=steps,
                                                save_every=50)
                dev[i, s] = float(jnp.max(finite.relative_deviation(jnp.asarray(r.f), f)))
        fit = finite.fit_exponent(widths, dev)
        print(method.label, "exponent", fit)
        assert fit.slope < 0 and fit.ci_t[1] < 0 and fit.ci_boot[1] < 0
        net = _net(512)
        bt = finite.train(net, x, "barlow_twins", lr=0.05, steps=400, ts=ts / 10, progress=False,
                          check_lr=False)
        pred = finite.kernel_prediction(net, x, "barlow_twins", ts / 10, lr=0.05)
        bt_dev = float(jnp.max(finite.relative_deviation(jnp.asarray(bt.f), pred.f)))
        print(method.label, "dev@512", dev[1].mean(), "BT", bt_dev)
        assert dev[1].mean() < 2 * bt_dev


def test_train_method_validates_the_method():
    x = _views()
    net = _net(16)
    with pytest.raises(TypeError, match="method"):
        finite.train_method(net, x, "byol", lr=0.1, steps=1)
    with pytest.raises(ValueError, match="kernel regime only"):
        finite.train_method(net, x, M.KernelPredictor(), lr=0.1, steps=1)
    with pytest.raises(ValueError, match="target_init"):
        finite.train_method(net, x, M.BYOL(target_init="zero"), lr=0.1, steps=1)


@pytest.mark.slow   # 4 runs of 20000 steps (widths 8 and 1024): ~20 s on 2 shared cores
def test_byol_without_predictor_loses_rank_more_at_small_width():
    """BYOL Table 5 at finite width (cosine loss, target network from tau_base = 0.99 on the
    cosine schedule, no weight decay; one-hidden-layer ReLU network; 20 pairs of 6-d views, k = 4,
    lr 0.01, t = 200): without a predictor RankMe falls by more than 1 at width 8 (a network that
    cannot make every pair parallel separately aligns its embeddings: 3.16 → 1.87 measured) and by
    less than 0.8 at width 1024 (near the kernel regime, where a full-rank NTK keeps the random
    initial spread: 3.69 → 3.11); the trained predictor keeps the rank at both widths (drop
    < 0.3). docs/theory/asymmetric.md."""
    from sslntk import metrics

    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 6))
    x = jnp.asarray(np.concatenate([a + 0.5 * rng.normal(size=(20, 6)),
                                    a + 0.5 * rng.normal(size=(20, 6))]))
    lr, t_end = 0.01, 200.0
    drop = {}
    for width in (8, 1024):
        for pred in ("identity", "trained"):
            net = finite.network(kernels.mlp(1, "relu"), width, 4, key=jax.random.key(0),
                                 in_shape=(6,), dtype=F64)
            method = M.BYOL(ema=M.EMARate.from_momentum(0.99, lr=lr, t_end=t_end),
                            predictor=pred, form="cosine")
            r = finite.train_method(net, x, method, lr=lr, steps=int(t_end / lr),
                                    ts=[0.0, t_end], progress=False, check_lr=False)
            assert r.ok
            drop[width, pred] = float(metrics.rankme(r.f[0]) - metrics.rankme(r.f[-1]))
    assert drop[8, "identity"] > 1.0
    assert drop[1024, "identity"] < 0.8
    assert drop[8, "trained"] < 0.3 and drop[1024, "trained"] < 0.3
