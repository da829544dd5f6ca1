"""Downstream accuracy: kernel prediction over time (steps at the predicted step times, plateaus
vs the kernel-PCA limit), a wide finite network vs the kernel prediction from its own f0, and the
gradient of the probe loss with respect to the augmentation strength vs central finite
differences. Accuracy noise: the binomial standard error sqrt(a(1 − a)/m_test) of an accuracy a
measured on m_test test points."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sslntk as sk
from sslntk import data, downstream, finite, kernels, probes, theory
from sslntk.experiments import initial_function


def _se(a, m):
    return float(np.sqrt(max(a * (1 - a), 1e-12) / m))


@pytest.fixture(scope="module")
def staircase():
    """The default staircase (examples/staircase.toml: digits, translate 1 + noise 0.3, 2-layer
    ReLU NTK, BT λ = 1) at n = 128 sources, k = 4, α = 1e-4, with 192 held-out labelled points."""
    n, m_te, k, alpha = 128, 192, 4, 1e-4
    key = jax.random.PRNGKey(0)
    ds = sk.load("digits", n=n + m_te, key=jax.random.fold_in(key, 1), dtype=jnp.float64)
    x, y = ds.x, np.asarray(ds.y)
    views = sk.make_views(x[:n], data.compose(data.translate(1.0), data.gaussian_noise(0.3)),
                          jax.random.fold_in(key, 2))
    K_all, Kn_all = kernels.ntk_and_nngp(sk.mlp(depth=2), jnp.concatenate([views.stacked, x]))
    N = 2 * n
    f0_all = initial_function(Kn_all, k, alpha, jax.random.fold_in(key, 3))
    K, K_ex = K_all[:N, :N], K_all[N:, :N]
    pred = theory.stepwise(K, f0_all[:N], k)
    ts = jnp.linspace(0.0, 1.3 * float(pred.step_times.max()), 100)
    pr = (probes.Ridge(standardize="global"), "knn")
    cur = downstream.kernel_curve(K, "barlow_twins", f0_all[:N], ts, K_eval_train=K_ex,
                                  f0_eval=f0_all[N:], y_fit=y[:n], y_test=y[n:], probes=pr,
                                  method="ode")
    lim = downstream.limit_curve(K, K_ex, y[:n], y[n:], range(1, k + 1), probes=pr)
    return dict(cur=cur, lim=lim, pred=pred, m_te=m_te, k=k)


def test_kernel_accuracy_rises_across_steps(staircase):
    cur, pred, m = staircase["cur"], staircase["pred"], staircase["m_te"]
    assert cur.ok
    acc = np.asarray(cur.accuracy["ridge"])
    plat = downstream.plateaus(cur, pred.step_times, probe="ridge")      # 0..k modes learned
    se = max(_se(a, m) for a in plat)
    # non-decreasing across the learned steps, within twice the binomial noise ...
    for j in range(1, staircase["k"]):
        assert plat[j + 1] >= plat[j] - 2 * se, (plat, se)
    # ... and a real rise across the first three steps
    assert plat[3] - plat[1] >= 2 * se, (plat, se)
    assert acc.shape == cur.ts.shape


def test_plateaus_line_up_with_step_times(staircase):
    """The accuracy changes at the predicted steps: before the first step it stays at its t = 0
    value (nothing has moved), and once all modes are learned it stays at the t → ∞ kernel-PCA
    value with k outputs."""
    cur, pred, lim, m = staircase["cur"], staircase["pred"], staircase["lim"], staircase["m_te"]
    ts = np.asarray(cur.ts)
    st, w = np.asarray(pred.step_times), np.asarray(pred.step_widths)
    for name in ("ridge", "knn"):
        acc = np.asarray(cur.accuracy[name])
        early = ts < st[0] - 2 * w[0]                    # before step 1: representation unchanged
        assert early.sum() >= 2 and np.ptp(acc[early]) <= 2 * _se(acc[0], m), name
        late = ts > st[-1] + 2 * w[-1]                   # after the last step: the limit
        assert late.sum() >= 2
        a_inf = lim.accuracy[name][-1]
        assert np.all(np.abs(acc[late] - a_inf) <= 2 * _se(a_inf, m) + 1e-12), (name, acc[late],
                                                                               a_inf)


def test_limit_curve_matches_final_embedding_probe(staircase):
    """limit_curve's value at k is the probe on theory.stepwise.final_embedding's test rows."""
    lim = staircase["lim"]
    assert lim.accuracy["ridge"].shape == (staircase["k"],)
    assert np.all(np.diff(lim.gammas) <= 1e-12)          # descending spectrum


@pytest.mark.slow
def test_finite_width_4096_accuracy_gap_below_3_points():
    _finite_gap(n=32, m_te=256, width=4096, bound=0.03)


def test_finite_wide_accuracy_gap_fast():
    # the cheap version: width 1024 on fewer points; the gap bound is the same 3 points on
    # 128 test points, i.e. at most 3 test points decided differently
    _finite_gap(n=16, m_te=128, width=1024, bound=3.5 / 128)


def _finite_gap(n, m_te, width, bound):
    k, alpha, lr = 3, 1e-2, 0.05
    ds = sk.load("digits", n=n + m_te, key=jax.random.PRNGKey(0), dtype=jnp.float64)
    x, y = ds.flat, np.asarray(ds.y)
    views = sk.make_views(x[:n], data.gaussian_noise(0.3), jax.random.PRNGKey(1))
    arch = sk.mlp(depth=1, activation="erf")
    K_all = kernels.ntk(arch, jnp.concatenate([views.stacked, x]))
    N = 2 * n
    net = finite.network(arch, width, k, key=jax.random.key(0), alpha=alpha, dtype=jnp.float64)
    f0 = net(views.stacked)
    pred = theory.stepwise(K_all[:N, :N], f0, k)
    steps = int(np.ceil(1.3 * float(pred.step_times.max()) / lr))
    c = downstream.finite_curve(net, views, "barlow_twins", x, y[:n], y[n:], arch=arch, lr=lr,
                                steps=steps, ts=np.linspace(0, steps * lr, 11),
                                probes=(probes.Ridge(standardize="global"),), K=K_all)
    assert c.net.ok and c.kernel.ok
    print("final accuracy net", float(c.net.accuracy["ridge"][-1]), "kernel",
          float(c.kernel.accuracy["ridge"][-1]), "gap", c.gap["ridge"])
    assert abs(c.gap["ridge"]) < bound


def test_strength_gradient_matches_finite_differences():
    n, m_te, k = 24, 40, 3
    ds = sk.load("digits", n=n + m_te, key=jax.random.PRNGKey(0), dtype=jnp.float64)
    x, y = ds.x, np.asarray(ds.y)
    obj = downstream.strength_objective(x[:n], x, y[:n], y[n:], data.gaussian_noise,
                                        sk.mlp(depth=2), k, key=jax.random.PRNGKey(1), lam=1.0)
    g = downstream.strength_gradient(obj, 0.3, rel_step=1e-4)
    # central FD error O(h²) ≈ 1e-8 relative at h = 3e-5; float64 round-off in the eigensolve
    # ~1e-13 / h ≈ 1e-9: 1e-4 relative is the acceptance bound, far above both
    assert np.isfinite(g["grad"]) and abs(g["grad"]) > 0
    assert g["rel_error"] < 1e-4, g


def test_bad_inputs_name_the_argument(staircase):
    cur = staircase["cur"]
    with pytest.raises(ValueError, match="f_eval"):
        downstream.probe_embeddings(cur.f_eval[:, :10], np.arange(5), np.arange(6))
    with pytest.raises(TypeError, match="y_fit"):
        downstream.probe_embeddings(cur.f_eval[-1], np.zeros(128), np.zeros(192, int))
    with pytest.raises(ValueError, match="probe"):
        downstream.probe_embeddings(cur.f_eval[-1], np.zeros(128, int), np.zeros(192, int),
                                    probes=("svm",))
