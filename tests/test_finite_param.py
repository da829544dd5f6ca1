"""Parametrisations (NTK / standard / μP), the pre-activation ResNet, projector heads, optimisers.

References: the parametrisation tables in `sslntk/finite/_param.py` (Tensor Programs V Table 3)
checked through their consequences: standard = NTK at init and after rescaled GD, μP = standard at
the base width, the μP coordinate check (TP5 §"coordinate check"), and optax itself.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sslntk import finite, kernels, losses

F64 = jnp.float64
X = jax.random.normal(jax.random.key(3), (16, 8), F64)
Y = jax.random.normal(jax.random.key(4), (16, 4), F64)


def mse(f):
    """A regression loss with O(1) gradient at f = 0 (every SSL loss has a saddle at f = 0)."""
    return jnp.mean(jnp.sum((f - Y) ** 2, -1))


def test_param_validation():
    arch = kernels.mlp(2)
    with pytest.raises(ValueError, match="param"):
        finite.network(arch, 8, 2, key=jax.random.key(0), param="muP")
    with pytest.raises(ValueError, match="base_width"):
        finite.network(arch, 8, 2, key=jax.random.key(0), base_width=32)
    with pytest.raises(ValueError, match="projector"):
        finite.network(arch, 8, 2, key=jax.random.key(0), projector=-1)
    with pytest.raises(ValueError, match="norm"):
        finite.resnet(2, norm="group")
    with pytest.raises(ValueError, match="blocks"):
        finite.resnet(0)
    m = finite.network(arch, 8, 2, key=jax.random.key(0), param="mup", in_shape=(8,), dtype=F64)
    with pytest.raises(ValueError, match="LARS|lars"):
        finite.train(m, X, "barlow_twins", lr=0.1, steps=1, optimizer="lars", progress=False)
    with pytest.raises(ValueError, match="neural-tangents"):
        finite.to_nt_params(m)
    with pytest.raises(TypeError, match="arch"):
        kernels.ntk(finite.resnet(1), jnp.ones((4, 5, 5, 1)))


@pytest.mark.parametrize("arch,shape", [(kernels.mlp(2, "erf", W_std=1.3, b_std=0.2), (8,)),
                                        (kernels.cnn(1, "relu", b_std=0.1), (5, 5, 2))])
def test_standard_is_ntk_with_per_layer_learning_rates(arch, shape):
    """Same draws → same function at init; one GD step on the standard parameters with per-layer
    learning rate lr·c² (c = the NTK multiplier W_std/√fan_in, b_std for the bias) is the NTK GD
    step (θ_std = c·θ_ntk, so ∇_std = ∇_ntk/c)."""
    x = jax.random.normal(jax.random.key(1), (6, *shape), F64)
    kw = dict(key=jax.random.key(2), in_shape=shape, dtype=F64)
    ntk = finite.network(arch, 16, 3, **kw)
    std = finite.network(arch, 16, 3, param="standard", **kw)
    np.testing.assert_allclose(std(x), ntk(x), rtol=1e-12, atol=1e-13)
    loss = losses.get("vicreg")
    lr = 0.01

    def step(param, th, scales):
        g = jax.grad(lambda t: loss(finite.forward(arch, t, x, param=param)))(th)
        return [(W - lr * s[0] * gW, b - lr * s[1] * gb)
                for (W, b), (gW, gb), s in zip(th, g, scales, strict=True)]

    cs = [(arch.W_std / np.prod(W.shape[:-1]) ** 0.5, arch.b_std) for W, _ in ntk.theta]
    th_n = step("ntk", ntk.theta, [(1.0, 1.0)] * len(cs))
    th_s = step("standard", std.theta, [(c[0] ** 2, c[1] ** 2) for c in cs])
    np.testing.assert_allclose(finite.forward(arch, th_s, x, param="standard"),
                               finite.forward(arch, th_n, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("opt", ["gd", "momentum", "adam"])
def test_mup_equals_standard_at_base_width(opt):
    """At width = base_width every μP factor is 1, so training matches the standard one exactly;
    away from it the readout init std is W_std·√base/fan_in."""
    arch = kernels.mlp(2, "relu", W_std=2**0.5)
    kw = dict(key=jax.random.key(5), in_shape=(8,), dtype=F64)
    mup = finite.network(arch, 32, 4, param="mup", base_width=32, **kw)
    std = finite.network(arch, 32, 4, param="standard", **kw)
    t = dict(lr=1e-3, steps=3, optimizer=opt, progress=False, check_lr=False)
    np.testing.assert_allclose(finite.train(mup, X, mse, **t).f, finite.train(std, X, mse, **t).f,
                               rtol=1e-12, atol=1e-13)
    wide = finite.network(arch, 128, 4, param="mup", base_width=32, **kw)
    W_out = wide.theta[-1][0]
    ref = finite.network(arch, 128, 4, param="ntk", **kw).theta[-1][0]   # the N(0, 1) draws
    np.testing.assert_allclose(W_out, ref * 2**0.5 * 32**0.5 / 128, rtol=1e-12)


def test_mup_learning_rate_groups():
    """The optax wiring: μP factors per group (TP5 Table 3 relative to the base width)."""
    arch = kernels.mlp(2)
    m = finite.network(arch, 256, 3, key=jax.random.key(0), in_shape=(8,), param="mup",
                       base_width=64, dtype=F64)
    x = jnp.ones((4, 8), F64)
    r = finite.train(m, x, mse_small, lr=1.0, steps=1, optimizer="gd", progress=False,
                     check_lr=False)
    g = jax.grad(lambda th: mse_small(finite.forward(arch, th, x, param="mup")))(m.theta)
    factors = [(4.0, 4.0), (1.0, 4.0), (0.25, 1.0)]   # input, hidden, output; r = 256/64 = 4
    for (W1, b1), (W0, b0), (gW, gb), (fW, fb) in zip(r.model.theta, m.theta, g, factors,
                                                      strict=True):
        np.testing.assert_allclose(W0 - W1, fW * gW, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(b0 - b1, fb * gb, rtol=1e-10, atol=1e-14)


def mse_small(f):
    return jnp.mean((f - 1.0) ** 2)


def _coord_slopes(param, opt="gd", loss=mse, alpha=0.0, lr=2e-3, widths=(64, 256, 1024), seeds=1):
    arch = kernels.mlp(3, "relu", W_std=2**0.5)
    c = finite.coord_check(arch, X, loss, widths, param=param, lr=lr, steps=3, seeds=seeds,
                           optimizer=opt, alpha=alpha)
    print(f"\n{param} {opt}: per-layer slopes {np.round(c.slopes, 3).tolist()}")
    return c.slopes


def test_mup_coordinate_check():
    """Issue [J] acceptance: after 3 SGD steps the per-coordinate change of every hidden layer's
    activations is width-independent under μP (log-log slope within ±0.1 over widths 64-1024) and
    falls like width^-1/2 under NTK (within ±0.1). α = 0 (f₀ = 0 at every width) so that the first
    gradients do not carry the O(√(base/width)) initial function (with α = 1 and SGD, the measured
    μP slopes are −0.19 to −0.34: the finite-width correction of f₀ at the base width, which μP
    only removes asymptotically; Adam's normalised updates do not see it, see the slow test).
    Measured (float64): μP [0.02, −0.01, 0.03], NTK [−0.48, −0.49, −0.48]."""
    mup = _coord_slopes("mup")
    ntk = _coord_slopes("ntk")
    assert np.all(np.abs(mup) < 0.1)
    assert np.all(np.abs(ntk + 0.5) < 0.1)


@pytest.mark.slow
def test_mup_coordinate_check_full():
    """Five widths × two seeds, SGD from f₀ = 0 and Adam with VICReg from the full init (α = 1).
    Measured: μP SGD [0.02, 0.01, 0.05], NTK SGD [−0.48, −0.47, −0.44], μP Adam VICReg
    [−0.05, −0.07, −0.07]; standard parametrisation with SGD diverges / grows (slopes ≈ +1)."""
    w = (64, 128, 256, 512, 1024)
    assert np.all(np.abs(_coord_slopes("mup", widths=w, seeds=2)) < 0.1)
    assert np.all(np.abs(_coord_slopes("ntk", widths=w, seeds=2) + 0.5) < 0.1)
    adam = _coord_slopes("mup", "adam", losses.get("vicreg", eps=1e-8), 1.0, 1e-3, w, 2)
    assert np.all(np.abs(adam) < 0.1)


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
def test_resnet(norm):
    arch = finite.resnet(2, norm=norm)
    x = jax.random.normal(jax.random.key(0), (6, 5, 5, 2), F64)
    m = finite.network(arch, 8, 3, key=jax.random.key(1), in_shape=(5, 5, 2), dtype=F64,
                       projector=1)
    f = m(x)
    assert f.shape == (6, 3) and np.all(np.isfinite(f))
    n_norm = 0 if norm is None else 2 * 2 + 1 + 1
    assert m.roles.count("norm") == n_norm and m.roles[0] == "input" and m.roles[-1] == "output"
    assert len(m.hidden(x)) == 2 + 1                   # 2 blocks + 1 projector layer
    # BatchNorm couples the batch; LayerNorm and no norm act per example
    f_sub = m(x[:3])
    same = np.allclose(f_sub, f[:3], rtol=1e-12, atol=1e-12)
    assert same == (norm != "batch") and m.couples_batch == (norm == "batch")
    if norm == "batch":
        with pytest.raises(ValueError, match="BatchNorm"):
            finite.empirical_ntk(m, x)
    else:
        K = finite.empirical_ntk(m, x)
        assert K.shape == (6, 6) and float(jnp.min(jnp.linalg.eigvalsh(K))) > -1e-10
    r = finite.train(m, x, "vicreg", lr=1e-2, steps=3, optimizer="adamw", progress=False,
                     optimizer_options=dict(weight_decay=1e-4))
    assert r.ok and float(r.loss[-1]) < float(r.loss[0])


def test_make_optimizer_matches_optax():
    params = {"w": jnp.arange(4.0)}
    g = {"w": jnp.array([0.1, -0.2, 0.3, 0.4])}
    for name, opts, ref in [
        ("momentum", dict(momentum=0.8, weight_decay=0.1),
         optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.1, momentum=0.8))),
        ("adamw", dict(weight_decay=0.01), optax.adamw(0.1, weight_decay=0.01)),
        ("lars", dict(momentum=0.9), optax.lars(0.1, momentum=0.9)),
    ]:
        tx = finite.make_optimizer(name, 0.1, 10, **opts)
        a, b = tx.init(params), ref.init(params)
        for _ in range(3):
            ua, a = tx.update(g, a, params)
            ub, b = ref.update(g, b, params)
            np.testing.assert_allclose(ua["w"], ub["w"], rtol=1e-6)
    sched = finite.learning_rate(1.0, 100, warmup_steps=10, schedule="cosine")
    assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1.0) < 1e-6
    assert abs(float(sched(55)) - 0.5) < 1e-6 and float(sched(100)) < 1e-6
    with pytest.raises(ValueError, match="momentum"):
        finite.make_optimizer("adam", 0.1, 10, momentum=0.9)
    with pytest.raises(ValueError, match="warmup_steps"):
        finite.learning_rate(1.0, 10, warmup_steps=20)
    with pytest.raises(ValueError, match="schedule"):
        finite.learning_rate(1.0, 10, schedule="linear")


# ------------------------------------------------------------------------------------------------
# practitioners' training: fresh augmentations each step, schedules, checkpoints


def _aug_setup():
    x = jax.random.normal(jax.random.key(8), (12, 6), F64)
    m = finite.network(kernels.mlp(1, "erf"), 32, 3, key=jax.random.key(9), in_shape=(6,),
                       dtype=F64, alpha=0.5)
    return x, m


def test_train_augmented_matches_a_plain_optax_loop(tmp_path):
    """Every step draws new views (documented key scheme) and takes one optax step: the same loop
    written out by hand gives the same parameters; a resumed run is bit-identical."""
    from sslntk import data
    x, m = _aug_setup()
    aug = data.gaussian_noise(0.3)
    key = jax.random.key(11)
    opts = dict(schedule="cosine", warmup_steps=2, weight_decay=1e-3, momentum=0.9)
    kw = dict(key=key, lr=0.05, steps=8, optimizer="momentum", batch_size=6,
              optimizer_options=opts, ts=0.05 * np.array([0, 4, 8]), progress=False)
    r = finite.train_augmented(m, x, aug, "barlow_twins", **kw)
    assert r.ok and r.f.shape == (3, 24, 3) and r.spectrum.shape == (3, 3)
    assert np.all(np.diff(r.spectrum[-1]) <= 1e-12) and np.all(r.step_seconds[1:] > 0)
    # by hand: optax chain, the offset (1 − α)·g_θ₀ on each step's new views
    tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(
        optax.warmup_cosine_decay_schedule(0.0, 0.05, 2, 8), momentum=0.9))
    th, th0 = m.theta, m.theta0
    arch = m.arch
    state = tx.init(th)
    loss = losses.get("barlow_twins")
    for s in range(8):
        ks = jax.random.fold_in(key, s)
        xb = x[jax.random.choice(jax.random.fold_in(ks, 0), 12, (6,), replace=False)]
        ka, kb = jax.random.split(jax.random.fold_in(ks, 1))
        v = jnp.concatenate([aug(ka, xb), aug(kb, xb)])
        g = jax.grad(lambda t, v=v: loss(finite.forward(arch, t, v)
                                         - 0.5 * finite.forward(arch, th0, v)))(th)
        u, state = tx.update(g, state, th)
        th = optax.apply_updates(th, u)
    for (W, b), (W1, b1) in zip(th, r.model.theta, strict=True):
        np.testing.assert_allclose(W1, W, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b1, b, rtol=1e-10, atol=1e-12)
    # the records are on the fixed evaluation views
    np.testing.assert_allclose(r.f[-1], r.model(r.eval_views.stacked), rtol=1e-12, atol=1e-12)
    # checkpoint: interrupted after the first save point, resumed → identical
    ck = tmp_path / "aug.npz"
    calls = []

    class Stop(Exception):
        pass

    from sslntk import _io
    orig = _io.atomic_write_npz

    def write_then_stop(path, **arrays):
        orig(path, **arrays)
        calls.append(1)
        if len(calls) == 2:
            raise Stop

    _io.atomic_write_npz = write_then_stop
    try:
        with pytest.raises(Stop):
            finite.train_augmented(m, x, aug, "barlow_twins", checkpoint=ck, **kw)
    finally:
        _io.atomic_write_npz = orig
    r2 = finite.train_augmented(m, x, aug, "barlow_twins", checkpoint=ck, **kw)
    np.testing.assert_array_equal(r2.f, r.f)
    with pytest.raises(ValueError, match="checkpoint"):
        finite.train_augmented(m, x, aug, "barlow_twins", checkpoint=ck,
                               **{**kw, "lr": 0.04, "ts": None})


def test_train_augmented_validation():
    from sslntk import data
    x, m = _aug_setup()
    kw = dict(key=jax.random.key(0), lr=0.1, steps=2, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        finite.train_augmented(m, x, data.gaussian_noise(0.1), "vicreg", batch_size=40, **kw)
    with pytest.raises(TypeError, match="augment"):
        finite.train_augmented(m, x, "noise", "vicreg", **kw)
    with pytest.raises(ValueError, match="x"):
        finite.train_augmented(m, x[:, :5], data.gaussian_noise(0.1), "vicreg", **kw)
    with pytest.raises(ValueError, match="optimizer_options"):
        finite.train_augmented(m, x, data.gaussian_noise(0.1), "vicreg",
                               optimizer_options=dict(betas=1), **kw)


def test_train_new_optimizers_match_optax():
    """`train(optimizer="adamw"/"lars"/"momentum", optimizer_options=...)` is the optax loop."""
    x, m = _aug_setup()
    xs = jnp.concatenate([x, x + 0.1])
    loss = losses.get("vicreg")
    for name, opts, tx in [
        ("lars", dict(weight_decay=1e-4), optax.lars(0.02, weight_decay=1e-4)),
        ("adamw", dict(schedule="cosine", warmup_steps=1),
         optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 0.02, 1, 5), weight_decay=0.0)),
    ]:
        r = finite.train(m, xs, loss, lr=0.02, steps=5, optimizer=name, optimizer_options=opts,
                         progress=False)
        th, state = m.theta, tx.init(m.theta)
        for _ in range(5):
            g = jax.grad(lambda t: loss(finite.forward(m.arch, t, xs)
                                        - 0.5 * finite.forward(m.arch, m.theta0, xs)))(th)
            u, state = tx.update(g, state, th)
            th = optax.apply_updates(th, u)
        np.testing.assert_allclose(r.model.theta[0][0], th[0][0], rtol=1e-9, atol=1e-12)


def test_loop_paths_agree_and_auto_picks_host_for_convolutions_on_cpu():
    """`loop="host"` (one jitted step per iteration, the CPU path for convolutional models: XLA:CPU
    runs convolutions in a loop body several times slower, jax-ml/jax#12868) and `loop="device"`
    (one `fori_loop`) run the same steps: same parameters to float64 round-off, for `train`
    (full batch and minibatch), `train_batched` and `train_augmented`."""
    from sslntk import data
    x = jax.random.normal(jax.random.key(0), (8, 5, 5, 2), F64)
    res = finite.network(finite.resnet(1, norm="layer"), 4, 3, key=jax.random.key(1),
                         in_shape=(5, 5, 2), dtype=F64, projector=1, alpha=0.1)
    mlp = finite.network(kernels.mlp(1), 8, 3, key=jax.random.key(1), in_shape=(8,), dtype=F64)
    cpu = jax.default_backend() == "cpu"
    for m, xx, conv in ((res, x, True), (mlp, X, False)):
        r = finite.train(m, xx, "vicreg", lr=1e-2, steps=1, progress=False, check_lr=False)
        assert r.loop == ("host" if conv and cpu else "device")   # loop="auto"
    with pytest.raises(ValueError, match="loop: unknown value"):
        finite.train(mlp, X, "vicreg", lr=1e-2, steps=2, progress=False, loop="gpu")

    def close(a, b):
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(u, v, rtol=1e-11, atol=1e-13)

    kw = dict(lr=1e-2, steps=6, ts=[0.0, 0.03, 0.06], progress=False)
    for extra in (dict(optimizer="momentum"), dict(optimizer="sgd", batch_size=2,
                                                   key=jax.random.key(5))):
        a, b = (finite.train(res, x, "vicreg", loop=lp, **kw, **extra) for lp in ("host", "device"))
        assert (a.loop, b.loop) == ("host", "device")
        close(a.f, b.f)
        close(nnx.state(a.model, nnx.Param), nnx.state(b.model, nnx.Param))
    ms = [finite.network(finite.resnet(1, norm="layer"), 4, 3, key=jax.random.key(s),
                         in_shape=(5, 5, 2), dtype=F64, projector=1) for s in range(2)]
    st = finite.stack_models(ms)
    keys = jnp.stack([jax.random.key(s) for s in range(2)])
    a, b = (finite.train_batched(st, x, "vicreg", keys=keys, loop=lp, **kw, check_lr=False)
            for lp in ("host", "device"))
    close(a.f, b.f)
    seq = finite.train(ms[1], x, "vicreg", check_lr=False, **kw)
    np.testing.assert_allclose(a.f[:, 1], seq.f, rtol=1e-10, atol=1e-13)
    src = jax.random.normal(jax.random.key(2), (6, 5, 5, 2), F64)
    # momentum, not Adam: Adam's m/√v turns the last-bit differences of the two compiled forms
    # (fusion order) of near-zero gradient entries into 1e-8 relative ones (seen on JAX 0.10)
    a, b = (finite.train_augmented(res, src, data.gaussian_noise(0.2), "vicreg",
                                   key=jax.random.key(3), optimizer="momentum", loop=lp, **kw)
            for lp in ("host", "device"))
    close(a.f, b.f)
