"""Probes against independent references: scikit-learn's RidgeClassifier / LogisticRegression on
the same (standardised) features, a direct numpy weighted kNN (solo-learn's evaluator re-derived),
finite differences for the implicit logistic gradient, and vmap over saved times == a loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.preprocessing import StandardScaler

from sslntk import probes


def _blobs(m=90, k=5, C=4, seed=0, sep=1.2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, m)
    x = rng.normal(size=(m, k)) * rng.uniform(0.2, 3.0, k) + sep * np.eye(C, k)[y] + 0.7
    return x, y


@pytest.mark.parametrize("C", [2, 4])
def test_ridge_equals_sklearn(C):
    x, y = _blobs(C=C)
    xs = StandardScaler().fit_transform(x)
    xj, = probes.standardize(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(xj), xs, atol=1e-12)   # same scaler, float64 round-off
    for lam in (1e-3, 2.0, 50.0):
        W, b = probes.ridge_fit(xj, jnp.asarray(y), C, lam)
        r = RidgeClassifier(alpha=lam).fit(xs, y)
        coef, icpt = np.reshape(r.coef_, (-1, x.shape[1])), np.ravel(r.intercept_)
        Wc, bc = np.asarray(W), np.asarray(b)
        if C == 2:   # sklearn keeps one column (class 1); ours keeps both, column 0 = −column 1
            np.testing.assert_allclose(Wc[:, 0], -Wc[:, 1], atol=1e-12)
            Wc, bc = Wc[:, 1:], bc[1:]
        # both are exact solves of the same normal equations: agreement to round-off (1e-4 asked)
        np.testing.assert_allclose(Wc.T, coef, atol=1e-10)
        np.testing.assert_allclose(bc, icpt, atol=1e-10)
        pred = np.argmax(xs @ np.asarray(W) + np.asarray(b), -1)
        assert abs(np.mean(pred == y) - r.score(xs, y)) < 1e-6


def test_logistic_equals_sklearn():
    x, y = _blobs(C=4)
    xs = StandardScaler().fit_transform(x)
    m = len(y)
    for lam in (1e-3, 0.05, 1.0):
        W, b, ok = probes.logistic_fit(jnp.asarray(xs), jnp.asarray(y), 4, lam)
        assert bool(ok)
        # sklearn's objective C Σ CE + ½‖W‖² is ours (mean CE + λ/2 ‖W‖²) times m·C with C = 1/(mλ)
        ref = LogisticRegression(C=1.0 / (m * lam), tol=1e-12, max_iter=100000).fit(xs, y)
        # both converge to gradient norm ~1e-10; the optimum is unique (strongly convex in W,
        # intercepts up to a common shift), so 1e-6 is far inside the 1e-4 asked for
        np.testing.assert_allclose(np.asarray(W).T, ref.coef_, atol=1e-6)
        np.testing.assert_allclose(np.asarray(b), ref.intercept_ - ref.intercept_.mean(), atol=1e-6)
        acc = float(probes.accuracy(jnp.asarray(xs) @ W + b, jnp.asarray(y)))
        assert abs(acc - ref.score(xs, y)) < 1e-6


def test_logistic_binary_maps_to_sklearn_binomial():
    # two softmax columns with penalty λ/2(‖w0‖²+‖w1‖²) == one logit u = w1 − w0 with penalty λ/4‖u‖²
    x, y = _blobs(C=2, seed=3)
    xs = StandardScaler().fit_transform(x)
    m, lam = len(y), 0.02
    W, b, _ = probes.logistic_fit(jnp.asarray(xs), jnp.asarray(y), 2, lam)
    ref = LogisticRegression(C=2.0 / (m * lam), tol=1e-12, max_iter=100000).fit(xs, y)
    np.testing.assert_allclose(np.asarray(W[:, 1] - W[:, 0]), ref.coef_[0], atol=1e-6)
    np.testing.assert_allclose(float(b[1] - b[0]), ref.intercept_[0], atol=1e-6)


def _knn_numpy(xtr, ytr, xte, C, k, T):
    a = xtr / np.maximum(np.linalg.norm(xtr, axis=1, keepdims=True), 1e-12)
    q = xte / np.maximum(np.linalg.norm(xte, axis=1, keepdims=True), 1e-12)
    preds = []
    for row in q @ a.T:
        nn = np.argsort(-row, kind="stable")[:k]
        score = np.zeros(C)
        for j in nn:
            score[ytr[j]] += np.exp(row[j] / T)
        preds.append(int(np.argmax(score)))
    return np.array(preds)


@pytest.mark.parametrize("k,T", [(20, 0.07), (5, 0.5), (200, 0.1)])
def test_knn_equals_numpy(k, T):
    x, y = _blobs(m=120, k=6, C=5, seed=1, sep=0.8)
    res = probes.KNN(k=k, temperature=T)(x[:80], y[:80], x[80:], y[80:])
    ref = _knn_numpy(x[:80], y[:80], x[80:], 5, min(k, 80), T)
    np.testing.assert_array_equal(np.asarray(res.predictions), ref)
    assert round(float(res.accuracy) * 40) == np.sum(ref == y[80:])   # the same count
    assert res.ok


@pytest.mark.parametrize("name", ["ridge", "knn", pytest.param("logistic", marks=pytest.mark.slow)])
def test_vmap_over_times_equals_loop(name):   # logistic: two L-BFGS compiles, ~90 s loaded
    x, y = _blobs(m=100, k=4, C=3, seed=2)
    xs = np.stack([x * (1 + 0.3 * t) + 0.2 * t * np.sin(3 * x) for t in range(2)])   # (T, m, k)
    probe = probes.get(name)
    many = probe(xs[:, :70], y[:70], xs[:, 70:], y[70:])
    assert many.accuracy.shape == (2,)
    for t in range(2):
        one = probe(xs[t, :70], y[:70], xs[t, 70:], y[70:])
        np.testing.assert_allclose(float(many.accuracy[t]), float(one.accuracy), atol=1e-12)
        np.testing.assert_allclose(float(many.loss[t]), float(one.loss), rtol=1e-8)


def test_validation_choice_and_refit():
    x, y = _blobs(m=100, k=5, C=3, seed=4)
    lams = (1e-2, 1.0, 1e3)
    res = probes.Ridge(lams=lams, val_fraction=0.25)(x[:80], y[:80], x[80:], y[80:])
    fit, val = probes._split(80, 0.25)
    a, v = probes.standardize(jnp.asarray(x[fit]), jnp.asarray(x[val]))
    accs = [float(probes.accuracy(v @ W + b, jnp.asarray(y[val])))
            for W, b in (probes.ridge_fit(a, jnp.asarray(y[fit]), 3, lam) for lam in lams)]
    best = max(i for i in range(3) if accs[i] == max(accs))          # ties → larger λ
    assert np.isclose(float(res.lam), lams[best] * 80 / len(fit))
    xs, xt = probes.standardize(jnp.asarray(x[:80]), jnp.asarray(x[80:]))
    W, b = probes.ridge_fit(xs, jnp.asarray(y[:80]), 3, float(res.lam))
    np.testing.assert_allclose(np.asarray(res.W), np.asarray(W), atol=1e-12)
    assert float(res.accuracy) == float(probes.accuracy(xt @ W + b, jnp.asarray(y[80:])))


def test_logistic_implicit_gradient_matches_finite_differences():
    x, y = _blobs(m=60, k=3, C=3, seed=5)
    x, y = jnp.asarray(x), jnp.asarray(y)
    d = jnp.asarray(np.random.default_rng(0).normal(size=x.shape))

    def test_loss(s):
        W, b, _ = probes.logistic_fit(x[:40] + s * d[:40], y[:40], 3, 0.05)
        return probes._logistic_loss(W, b, x[40:], y[40:], 3)

    g = float(jax.grad(test_loss)(0.1))
    h = 1e-4
    fd = (float(test_loss(0.1 + h)) - float(test_loss(0.1 - h))) / (2 * h)
    # FD truncation O(h²)·f''' ~ 1e-8 and solver tolerance 1e-10 / h ~ 1e-6 absolute
    assert abs(g - fd) <= 1e-5 * max(1.0, abs(fd)), (g, fd)


def test_bad_inputs_name_the_argument():
    x, y = _blobs(m=20, k=3, C=3)
    with pytest.raises(TypeError, match="y_train"):
        probes.Ridge()(x[:15], y[:15].astype(float), x[15:], y[15:])
    with pytest.raises(ValueError, match="y_test"):
        probes.Ridge()(x[:15], y[:15], x[15:], y[14:])
    with pytest.raises(ValueError, match="x_test"):
        probes.KNN()(x[:15], y[:15], x[15:, :2], y[15:])
    with pytest.raises(ValueError, match="n_classes"):
        probes.KNN()(x[:15], y[:15], x[15:], y[15:], n_classes=2)
    with pytest.raises(ValueError, match="standardize"):
        probes.Ridge(standardize="zca")
    with pytest.raises(ValueError, match="lams"):
        probes.Logistic(lams=(0.0, 1.0))
    with pytest.raises(ValueError, match="probe"):
        probes.get("svm")
    with pytest.raises(ValueError, match="x_train"):
        probes.Ridge()(np.full((15, 3), np.nan), y[:15], x[15:], y[15:])


def test_max_iter_reports_status():
    x, y = _blobs(m=60, k=3, C=3, seed=6)
    res = probes.Logistic(lams=(1e-6,), max_iter=2)(x[:40], y[:40], x[40:], y[40:])
    assert not res.ok and res.status_name == "max_steps"
    with pytest.raises(RuntimeError, match="max_steps"):
        res.raise_if_failed()
