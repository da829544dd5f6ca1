"""finite.kernel_prediction / output_space_ntk / kernel_drift.

References: explicit Jacobians (jax.jacobian, J Jᵀ), `finite.empirical_ntk` (one-output trace),
the model's own linearisation trained by GD (`finite.linearize` + `finite.train`: the same
dynamics in parameter space, so equal to round-off), and the trained network itself (acceptance).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import data, finite, kernels, metrics

F64 = jnp.float64


def _digits(n):
    ds = data.load("digits", n=n, classes=(0, 1), dtype=F64)
    return data.make_views(ds.x, data.gaussian_noise(0.3), jax.random.key(0)).flatten()


def test_output_space_ntk_is_J_Jt():
    views = _digits(4)
    m = finite.network(kernels.mlp(2, "erf", b_std=0.2), 8, 3, key=jax.random.key(1),
                       dtype=F64, alpha=0.3)
    x = views.stacked
    Th, Ttx = finite.output_space_ntk(m, x, x[:3] * 0.5, chunk=5)
    J = jax.jacobian(lambda th: finite.forward(m.arch, th, x).reshape(-1))(m.theta)
    J = np.concatenate([np.asarray(a).reshape(J_rows(x), -1) for a in jax.tree.leaves(J)], 1)
    np.testing.assert_allclose(Th, J @ J.T, rtol=1e-10, atol=1e-12)
    Jt = jax.jacobian(lambda th: finite.forward(m.arch, th, x[:3] * 0.5).reshape(-1))(m.theta)
    Jt = np.concatenate([np.asarray(a).reshape(9, -1) for a in jax.tree.leaves(Jt)], 1)
    np.testing.assert_allclose(Ttx, Jt @ J.T, rtol=1e-10, atol=1e-12)
    p = finite.kernel_prediction(m, views, "barlow_twins", [0.0, 0.1], lr=0.05)
    np.testing.assert_allclose(p.kernel, finite.empirical_ntk(m, x), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p.f[0], m(x), rtol=1e-12, atol=1e-14)
    assert 0 < p.cross_output < 1


def J_rows(x):
    return x.shape[0] * 3


@pytest.mark.parametrize("kind", ["mlp", "resnet-batchnorm"])
def test_kernel_prediction_is_the_trained_linearisation(kind):
    """GD on the linearised model IS the kernel dynamics: equal to round-off (full kernel; BN
    ResNet included, whose Θ is the batch map's). A callable loss works too."""
    views = _digits(4)
    if kind == "mlp":
        m = finite.network(kernels.mlp(1, "erf"), 16, 2, key=jax.random.key(2), dtype=F64,
                           alpha=0.2)
        x, lr = views, 0.05
    else:
        m = finite.network(finite.resnet(1, norm="batch"), 4, 2, key=jax.random.key(2),
                           dtype=F64, alpha=0.2, projector=1)
        # ‖Θ‖ ≈ 130 and VICReg's curvature: lr = 2e-3 diverges (loss 42 → 8.7e3 → 6e35 in 12
        # steps, now reported as DIVERGED); 5e-4 descends (42 → 16)
        x, lr = views.stacked.reshape(-1, 8, 8, 1), 5e-4
    steps = 12
    ts = lr * np.arange(0, steps + 1, 4)
    lin = finite.train(finite.linearize(m), x, "vicreg", lr=lr, steps=steps, ts=ts,
                       progress=False, check_lr=False)
    assert lin.status_name == "success", lin.status_name
    p = finite.kernel_prediction(m, x, "vicreg", ts, lr=lr)
    assert p.ok and p.which == "full"
    np.testing.assert_allclose(p.f, lin.f, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(p.loss, lin.loss, rtol=1e-8)
    q = finite.kernel_prediction(m, x, lambda f: jnp.sum(f**2) - jnp.sum(f[0]), ts, lr=lr)
    assert q.f.shape == p.f.shape and np.all(np.isfinite(q.f))


def test_kernel_prediction_validation():
    views = _digits(4)
    m = finite.network(kernels.mlp(1), 8, 2, key=jax.random.key(0), dtype=F64)
    with pytest.raises(ValueError, match="lr"):
        finite.kernel_prediction(m, views, "barlow_twins", [0.0, 1.0])
    with pytest.raises(ValueError, match="lr"):
        finite.kernel_prediction(m, views, "barlow_twins", [0.0, 1.0], method="ode", lr=0.1)
    with pytest.raises(ValueError, match="kernel"):
        finite.kernel_prediction(m, views, "barlow_twins", [0.0, 1.0], lr=0.1, kernel="diag")
    with pytest.raises(ValueError, match="one_output"):
        finite.kernel_prediction(m, views, lambda f: jnp.sum(f**2), [0.0, 1.0], lr=0.1,
                                 kernel="one_output")
    with pytest.raises(TypeError, match="model"):
        finite.kernel_prediction(lambda x: x, views, "barlow_twins", [0.0], lr=0.1)
    with pytest.raises(ValueError, match="models"):
        finite.kernel_drift(m, [], views)


def _bt_run(n, width, steps, seed=0):
    views = _digits(n)
    m = finite.network(kernels.mlp(1, "erf"), width, 3, key=jax.random.key(seed), alpha=1e-2,
                       dtype=F64)
    lr = 0.08
    ts = lr * np.arange(0, steps + 1, 4)
    r = finite.train(m, views, "barlow_twins", lr=lr, steps=steps, ts=ts, progress=False,
                     check_lr=False)
    p = finite.kernel_prediction(m, views, "barlow_twins", ts, lr=lr)
    one = finite.kernel_prediction(m, views, "barlow_twins", ts, lr=lr, kernel="one_output")
    sp = np.asarray(metrics.cross_correlation_spectrum(jnp.asarray(p.f)))
    return m, views, r, p, one, sp, ts


def test_kernel_prediction_follows_training_small():
    """Width 512, 2n = 32 digit views, BT λ = 1, α = 1e-2, through the first two steps (the third
    is not reached by t = 32 here). Measured: 3.0 % (full kernel), 64-77 % with the one-output
    kernel (the cross-output terms, 5 % of ‖Θ‖, decide which direction escapes the saddle first).
    Tolerance 6 %: the remaining gap is kernel motion, O(width^-1/2) and amplified by the
    exponential escape from α = 1e-2 (0.25 % at width 4096, slow test)."""
    m, views, r, p, one, sp, ts = _bt_run(16, 512, 400)
    assert sp[-1, 1] > 0.9                                       # two steps done
    dev = np.asarray(finite.relative_deviation(r.f, p.f))
    dev1 = np.asarray(finite.relative_deviation(r.f, one.f))
    print(f"\nwidth 512: max deviation full {dev.max():.4f}, one-output {dev1.max():.4f}, "
          f"cross-output {p.cross_output:.4f}")
    assert dev.max() < 0.06 and dev1.max() > 3 * dev.max()
    mot = finite.kernel_drift(m, [r.model], views)
    assert 0 < mot.drift[0] < 0.2 and 0.98 < mot.alignment[0] <= 1 + 1e-12


@pytest.mark.slow
def test_kernel_prediction_follows_training_width_4096():
    """Issue [J] acceptance: NTK MLP width 4096, 2n = 64 digit views, BT λ = 1, α = 1e-2,
    full-batch GD lr 0.08: the full-kernel prediction from the model's own empirical NTK matches
    training to < 1 % through the first three steps. Measured: 0.25 % (one-output kernel: 4.3 %;
    cross-output terms 1.3 % of ‖Θ‖)."""
    m, views, r, p, one, sp, ts = _bt_run(32, 4096, 400)
    hit = np.flatnonzero(sp[:, 2] >= 0.9)
    assert hit.size                                               # three steps within the run
    w = ts <= ts[hit[0]]
    dev = np.asarray(finite.relative_deviation(r.f, p.f))[w]
    print(f"\nwidth 4096 through step 3 (t <= {ts[hit[0]]:.2f}): max deviation {dev.max():.4f}")
    assert dev.max() < 0.01


def test_width_sweep_across_parametrisations():
    """param / reference plumbing: against each network's own empirical-NTK prediction, the
    linearisation IS that prediction (dev_lin_ker ≈ 0 to round-off), for NTK and μP alike."""
    views = _digits(4)
    kw = dict(alpha=0.1, lr=0.002, steps=12, ts=0.002 * np.arange(0, 13, 4), out_dim=2,   # μP: ‖JSJᵀ‖≈250
              method="gd", progress=False, drift_points=8, linearized=True)
    arch = kernels.mlp(1, "erf")
    for param in ("ntk", "mup"):
        r = finite.width_sweep(arch, views, "barlow_twins", [8, 32], 1, param=param,
                               base_width=8 if param == "mup" else None, reference="empirical",
                               **kw)
        assert np.all(r.dev_lin_ker < 1e-8) and np.all(np.isnan(r.init_kernel_error))
        assert np.all(r.dev_train[:, :, 1:] > 0) and r.exponent is not None
    with pytest.raises(ValueError, match="reference"):
        finite.width_sweep(arch, views, "barlow_twins", [8, 32], 1, param="standard",
                           reference="infinite", **kw)
