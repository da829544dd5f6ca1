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
from sslntk.kernels import initial_function


def _se(a, m):
    return float(np.sqrt(max(a * (1 - a), 1e-12) / m))


@pytest.fixture(scope="module")
def staircase():
    """The default staircase (examples/staircase.toml: digits, translate 1 + noise 0.3, 2-layer
    ReLU NTK, BT λ = 1) at n = 128 sources, k = 4 and the README's α = 1e-4, with 192 held-out
    labelled points (binomial s.e. of an accuracy ≤ 0.036), solved in closed form."""
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
    ts = jnp.linspace(0.0, 1.6 * float(pred.step_times.max()), 100)   # past t_k + 2 widths
    pr = (probes.Ridge(standardize="global"), "knn")
    cur = downstream.kernel_curve(K, "barlow_twins", f0_all[:N], ts, K_eval_train=K_ex,
                                  f0_eval=f0_all[N:], y_fit=y[:n], y_test=y[n:], probes=pr,
                                  method="closed_form")
    lim = downstream.limit_curve(K, K_ex, y[:n], y[n:], range(1, k + 1), probes=pr)
    return dict(cur=cur, lim=lim, pred=pred, m_te=m_te, k=k)


def test_kernel_accuracy_rises_across_steps(staircase):
    cur, pred, m = staircase["cur"], staircase["pred"], staircase["m_te"]
    assert cur.ok
    for name in ("ridge", "knn"):
        plat = downstream.plateaus(cur, pred.step_times, probe=name)   # 0..k modes learned
        se = max(_se(a, m) for a in plat)
        print(name, "plateaus", plat.round(3), "s.e.", round(se, 3))
        # non-decreasing across the learned steps, within twice the binomial noise
        for j in range(1, staircase["k"]):
            assert plat[j + 1] >= plat[j] - 2 * se, (name, plat, se)
    plat = downstream.plateaus(cur, pred.step_times, probe="ridge")
    se = max(_se(a, m) for a in plat)
    assert plat[3] - plat[1] >= 2 * se, (plat, se)      # a real rise across the first 3 steps


def test_plateaus_line_up_with_step_times(staircase):
    """On the plateau after step 1 (its first half) and after the last step the predicted accuracy
    equals the α → 0 staircase `downstream.staircase` (the kernel-PCA top-j accuracy from the
    predicted step time t_j on), within twice the binomial noise; the big change of the ridge
    accuracy happens between t_1 and t_3."""
    cur, pred, lim, m = staircase["cur"], staircase["pred"], staircase["lim"], staircase["m_te"]
    ts = np.asarray(cur.ts)
    st, w = np.asarray(pred.step_times), np.asarray(pred.step_widths)
    ideal = downstream.staircase(lim, st, ts, {p: v[0] for p, v in cur.accuracy.items()})
    # first half (in log time) of the plateau after step 1: the next mode is still
    # ≲ α^{1 − t/t_2} ≤ α^{1/2} relative there; closer to t_2 it is large enough to move an arg-max
    first = (ts > st[0] + 2 * w[0]) & (ts < np.sqrt(st[0] * st[1]))
    last = ts > st[-1] + 2 * w[-1]                                  # all k modes learned
    assert first.sum() >= 3 and last.sum() >= 3, (first.sum(), last.sum())
    # kNN after step 1 is not compared: cosine similarity of a 1-D embedding is ±1, so the α → 0
    # 1-mode kNN is all ties, while at finite α the still-small directions break them
    for name, checks in (("ridge", ((first, 1), (last, staircase["k"]))),
                         ("knn", ((last, staircase["k"]),))):
        acc = np.asarray(cur.accuracy[name])
        for sel, j in checks:
            a_j = lim.accuracy[name][j - 1]
            np.testing.assert_allclose(ideal[name][sel], a_j)
            assert np.all(np.abs(acc[sel] - a_j) <= 2 * _se(a_j, m) + 1e-12), (name, j, acc[sel],
                                                                               a_j)
    acc = np.asarray(cur.accuracy["ridge"])
    before, after = acc[first].mean(), acc[ts > st[2] + 2 * w[2]].mean()
    assert after - before >= 2 * _se(before, m)


def test_limit_curve_matches_final_embedding_probe(staircase):
    """limit_curve's value at k is the probe on theory.final_embedding's test rows."""
    lim = staircase["lim"]
    assert lim.accuracy["ridge"].shape == (staircase["k"],)
    assert np.all(np.diff(lim.gammas) <= 1e-12)          # descending spectrum


@pytest.mark.slow
def test_finite_width_4096_accuracy_gap_below_3_points():
    # measured (2 loaded CPU cores): ridge 0.238 vs 0.238, kNN 0.477 vs 0.488 on 256 test points
    _finite_gap(width=4096, probe_names=("ridge", "knn"), n_saves=11)


def test_finite_width_4096_accuracy_gap_fast():
    # the cheaper version: the same network and data, the ridge probe only, at 3 saved times
    _finite_gap(width=4096, probe_names=("ridge",), n_saves=3)


def _finite_gap(width, probe_names, n_saves, n=32, m_te=256, bound=0.03):
    """A width-`width` NTK MLP (erf, 1 hidden layer, f = g − (1 − α) g₀, α = 1e-2) trained by
    full-batch GD with BT on 2n = 64 digit views vs the kernel GD prediction from its own f0;
    the probes fit the n clean sources (10 classes, chance 0.1) and test on m_te held-out digits.
    1 point = 0.01 accuracy; with 256 test points 3 points are 7 test points."""
    k, alpha, lr = 3, 1e-2, 0.05
    ds = sk.load("digits", n=n + m_te, key=jax.random.PRNGKey(0), dtype=jnp.float64)
    x, y = ds.flat, np.asarray(ds.y)
    chance = 1.0 / len(np.unique(y))
    views = sk.make_views(x[:n], data.gaussian_noise(0.3), jax.random.PRNGKey(1))
    arch = sk.mlp(depth=1, activation="erf")
    K_all = kernels.ntk(arch, jnp.concatenate([views.stacked, x]))
    N = 2 * n
    net = finite.network(arch, width, k, key=jax.random.key(0), alpha=alpha, dtype=jnp.float64)
    f0 = net(views.stacked)
    pred = theory.stepwise(K_all[:N, :N], f0, k)
    steps = int(np.ceil(1.3 * float(pred.step_times.max()) / lr))
    pr = {"ridge": probes.Ridge(standardize="global"), "knn": probes.KNN()}
    c = downstream.finite_curve(net, views, "barlow_twins", x, y[:n], y[n:], arch=arch, lr=lr,
                                steps=steps, ts=np.linspace(0, steps * lr, n_saves),
                                probes=[pr[p] for p in probe_names], K=K_all,
                                check_lr=False)   # the kernel side takes the same GD steps
    assert c.net.ok and c.kernel.ok
    for p in probe_names:
        a_net, a_ker = float(c.net.accuracy[p][-1]), float(c.kernel.accuracy[p][-1])
        print(p, "final accuracy net", a_net, "kernel", a_ker, "gap", c.gap[p])
        assert a_ker > chance + 0.1                # the comparison is not between two guesses
        assert abs(c.gap[p]) < bound, (p, a_net, a_ker)


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


@pytest.mark.slow
def test_experiment_kind_runs_and_resumes(tmp_path):   # ~90 s on 2 loaded cores
    from sslntk import config, experiments

    cfg = config.validate({
        "kind": "downstream", "seed": 0,
        "data": {"name": "digits", "n": 16, "n_test": 32, "noise": 0.3, "translate": 1.0},
        "arch": {"kind": "mlp", "depth": 1, "activation": "erf"},
        "dynamics": {"k": 2, "alpha": 1e-2, "n_times": 20},
        "finite": {"widths": [32], "lr": 0.1, "n_times": 6},
        "strength": {"values": [0.3]},
    })
    res, did = experiments.run(cfg, tmp_path / "run", progress=False)
    assert did
    h = res["headline"]
    assert h["probes"] == ["ridge", "knn"] and len(h["step_times_predicted"]) == 2
    for p in ("ridge", "knn"):
        assert len(h["plateau_accuracy"][p]) == 3 and len(h["limit_accuracy_vs_k"][p]) == 2
        assert 0 <= h["final_accuracy"][p] <= 1
    assert h["strength"]["grad_rel_error_vs_fd"] < 1e-4
    assert (tmp_path / "run" / "downstream.png").exists()
    arr = np.load(tmp_path / "run" / "arrays.npz")
    assert arr["finite_net_ridge"].shape == (1, 1, 6)
    res2, did2 = experiments.run(cfg, tmp_path / "run", progress=False)
    assert not did2 and res2["headline"] == h


def test_config_rejects_bad_probe_kind():
    from sslntk import config

    with pytest.raises(config.ConfigError, match="probe.kinds"):
        config.validate({"kind": "downstream", "probe": {"kinds": ["svm"]}})


def test_width_sweep_collects_finite_curves():
    n, m = 8, 24
    ds = sk.load("digits", n=n + m, key=jax.random.PRNGKey(0), dtype=jnp.float64)
    x, y = ds.flat, np.asarray(ds.y)
    views = sk.make_views(x[:n], data.gaussian_noise(0.3), jax.random.PRNGKey(1))
    arch = sk.mlp(depth=1, activation="erf")
    kw = dict(lr=0.1, steps=20, ts=np.linspace(0, 2.0, 3), check_lr=False)
    ws = downstream.width_sweep(arch, views, "barlow_twins", x, y[:n], y[n:], [16, 64], 1,
                                alpha=0.1, out_dim=2, probes=("ridge",), **kw)
    assert ws.acc_net["ridge"].shape == (2, 1, 3) and ws.gap["ridge"].shape == (2, 1)
    assert np.all(ws.status_net == 0) and np.all(ws.status_kernel == 0)
    # the same as one finite_curve with the network of key 0 at width 64
    net = finite.network(arch, 64, 2, key=jax.random.key(0), alpha=0.1, dtype=jnp.float64)
    c = downstream.finite_curve(net, views, "barlow_twins", x, y[:n], y[n:], arch=arch,
                                probes=("ridge",), **kw)
    np.testing.assert_array_equal(ws.acc_net["ridge"][1, 0], np.asarray(c.net.accuracy["ridge"]))
    np.testing.assert_array_equal(ws.acc_kernel["ridge"][1, 0],
                                  np.asarray(c.kernel.accuracy["ridge"]))
    assert ws.summary()["ridge"]["gap_mean"][1] == pytest.approx(c.gap["ridge"])
