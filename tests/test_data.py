"""Tests of sslntk.data: datasets, differentiable augmentations, Views.

Statistical checks compare a sample moment with its population value within 5 standard errors per
entry, the standard error computed from the population (Gaussian fourth moments) or, for mixtures,
by plug-in from the sample itself. The keys are fixed, so the tests are deterministic; 5 SE makes a
failure by chance (over a few dozen entries) a ~1e-5 event for any other key.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler

from sslntk import data as D

KEY = jax.random.key(0)


def keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def images(n=5, h=6, w=7, c=2, seed=0, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(seed), (n, h, w, c), dtype)


def within_se(est, ref, se, k=5.0):
    """max |est - ref| / se <= k, entrywise."""
    z = np.abs(np.asarray(est) - np.asarray(ref)) / np.asarray(se)
    assert z.max() <= k, f"max z-score {z.max():.2f} > {k}"


# --------------------------------------------------------------------------------------------------
# dataset registry
# --------------------------------------------------------------------------------------------------

def test_datasets_lists_names_and_unknown_raises():
    assert D.datasets() == ["cifar10", "cifar100", "digits", "fashion_mnist", "gaussian_mixture",
                            "mnist", "spiked", "stl10"]
    with pytest.raises(ValueError, match=r"name: unknown value 'imagenet'.*valid choices.*digits"):
        D.load("imagenet")
    with pytest.raises(TypeError, match="name: expected a dataset name"):
        D.load(3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        D.load("digits", bogus=1)


# --------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------

def test_digits_shapes_dtypes_and_flat():
    ds = D.load("digits")
    assert ds.name == "digits" and ds.image_shape == (8, 8, 1) and ds.n_classes == 10
    assert ds.x.shape == (1797, 8, 8, 1) and ds.x.dtype == jnp.float32
    assert ds.y.shape == (1797,) and ds.y.dtype == jnp.int32
    assert ds.flat.shape == (1797, 64) and ds.dim == 64 and ds.n == 1797
    np.testing.assert_array_equal(ds.y, load_digits().target)
    ds64 = D.load("digits", dtype=jnp.float64)
    assert ds64.x.dtype == jnp.float64
    # float32 is the float64 result rounded: relative 2^-24 ≈ 6e-8 per entry (|x| <= ~6).
    np.testing.assert_allclose(ds.x, ds64.x, rtol=0, atol=1e-6)


def test_digits_global_standardisation():
    ds = D.load("digits", dtype=jnp.float64)
    raw = load_digits().images
    # computed in float64 from the same data: equal to round-off.
    assert abs(float(ds.x.mean())) < 1e-12
    assert abs(float(ds.x.std()) - 1.0) < 1e-12
    np.testing.assert_allclose(ds.flat, (raw.reshape(-1, 64) - raw.mean()) / raw.std(), atol=1e-12)
    assert ds.info["standardize"] == "global"


def test_digits_pixel_standardisation_matches_sklearn_and_handles_constant_pixels():
    ds = D.load("digits", standardize="pixel", dtype=jnp.float64)
    flat = np.asarray(ds.flat)
    ref = StandardScaler().fit_transform(load_digits().data)  # zero-variance features: scale 1
    np.testing.assert_allclose(flat, ref, atol=1e-10)
    assert np.all(np.isfinite(flat))
    sd = flat.std(0)
    const = load_digits().data.std(0) == 0
    assert const.any() and const[0]  # the top-left pixel is blank in every image
    np.testing.assert_array_equal(flat[:, const], 0.0)
    np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(sd[~const], 1.0, atol=1e-12)


def test_digits_no_standardisation_and_bool_flags():
    ds = D.load("digits", standardize=False, dtype=jnp.float64)
    assert ds.info["standardize"] == "none"
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert D.load("digits", standardize=True, n=10).info["standardize"] == "global"


def test_digits_first_n_is_class_balanced_and_deterministic():
    target = load_digits().target
    ds = D.load("digits", n=50)
    np.testing.assert_array_equal(np.bincount(ds.y), [5] * 10)
    idx = ds.info["indices"]
    assert np.all(np.diff(idx) > 0)  # file order
    expected = np.sort(np.concatenate([np.flatnonzero(target == c)[:5] for c in range(10)]))
    np.testing.assert_array_equal(idx, expected)
    counts = np.bincount(D.load("digits", n=53).y, minlength=10)
    assert counts.sum() == 53 and counts.max() - counts.min() <= 1
    # class availability caps the balanced counts (digit 8 has 174 samples, the fewest)
    counts = np.bincount(D.load("digits", n=1790).y)
    assert counts.sum() == 1790 and counts[8] == 174


def test_digits_random_subset_keyed():
    a = D.load("digits", n=40, key=jax.random.key(1))
    b = D.load("digits", n=40, key=jax.random.key(1))
    c = D.load("digits", n=40, key=jax.random.key(2))
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.info["indices"], b.info["indices"])
    assert set(a.info["indices"]) != set(c.info["indices"])
    np.testing.assert_array_equal(np.bincount(a.y), [4] * 10)


def test_digits_classes_are_reindexed():
    ds = D.load("digits", classes=[8, 3], n=20)
    assert ds.n_classes == 2 and ds.info["classes"] == (3, 8)
    target = load_digits().target[ds.info["indices"]]
    np.testing.assert_array_equal(np.asarray(ds.y), (target == 8).astype(int))
    np.testing.assert_array_equal(np.bincount(ds.y), [10, 10])


@pytest.mark.parametrize("kw, err, match", [
    (dict(n=1), ValueError, "n: expected an integer >= 2"),
    (dict(n=0), ValueError, "n: expected an integer >= 2"),
    (dict(n=2.5), TypeError, "n: expected an integer"),
    (dict(n=400, classes=[0, 1]), ValueError, "n: expected at most 360"),
    (dict(classes=[10]), ValueError, "classes: expected distinct digits in 0..9"),
    (dict(classes=[1, 1]), ValueError, "classes: expected distinct digits"),
    (dict(classes=[]), ValueError, "classes: expected distinct digits"),
    (dict(classes=3), TypeError, "classes: expected a sequence"),
    (dict(standardize="zscore"), ValueError, "standardize: unknown value 'zscore'"),
    (dict(dtype=jnp.int32), TypeError, "dtype: expected a floating dtype"),
    (dict(n=10, key=5), TypeError, "key: expected a jax.random key"),
])
def test_digits_bad_input(kw, err, match):
    with pytest.raises(err, match=match):
        D.load("digits", **kw)


# --------------------------------------------------------------------------------------------------
# gaussian mixture
# --------------------------------------------------------------------------------------------------

def test_gaussian_mixture_shapes_and_means():
    ds = D.load("gaussian_mixture", n=30, n_classes=4, dim=5, separation=3.0, key=KEY)
    assert ds.x.shape == (30, 5) and ds.x.dtype == jnp.float32 and ds.y.dtype == jnp.int32
    assert ds.image_shape is None and ds.n_classes == 4 and ds.flat.shape == (30, 5)
    M = ds.info["means"]
    dist = np.linalg.norm(M[:, None] - M[None], axis=-1)
    # regular simplex: all pairwise distances equal `separation` (exact construction)
    np.testing.assert_allclose(dist[~np.eye(4, dtype=bool)], 3.0, rtol=1e-12)
    np.testing.assert_allclose(ds.info["weights"] @ M, 0.0, atol=1e-12)  # population-centred
    np.testing.assert_array_equal(M[:, 3:], 0.0)  # spans the first n_classes - 1 coordinates


def test_gaussian_mixture_separation_and_covariance_statistics():
    sep, s = 4.0, 0.7
    ds = D.load("gaussian_mixture", n=20000, n_classes=3, dim=3, separation=sep, within_std=s,
                weights=[0.2, 0.3, 0.5], key=KEY, dtype=jnp.float64)
    x, y = np.asarray(ds.x), np.asarray(ds.y)
    M, counts = ds.info["means"], ds.info["counts"]
    np.testing.assert_array_equal(np.bincount(y), counts)
    np.testing.assert_array_equal(counts, [4000, 6000, 10000])
    for c in range(3):  # class means: SE = within_std / sqrt(n_c) per coordinate
        within_se(x[y == c].mean(0), M[c], s / np.sqrt(counts[c]))
        within_se(x[y == c].std(0), s, s / np.sqrt(2 * counts[c]))  # SE of a Gaussian std
    # second moment vs population A (mean 0): plug-in SE of each product x_i x_j
    prods = x[:, :, None] * x[:, None, :]
    within_se(prods.mean(0), ds.A, prods.std(0) / np.sqrt(len(x)))
    # empirical pairwise distances of class means ≈ separation (SE ≤ s·sqrt(dim·2/n_min))
    em = np.stack([x[y == c].mean(0) for c in range(3)])
    d = np.linalg.norm(em[:, None] - em[None], axis=-1)[np.triu_indices(3, 1)]
    np.testing.assert_allclose(d, sep, atol=5 * s * np.sqrt(3 * 2 / counts.min()))


def test_gaussian_mixture_weights_imbalance_law():
    # Ziyin et al. 2023: two classes at fractions p, 1-p: a_e = sigma_w^2 + p(1-p) delta^2.
    ds = D.load("gaussian_mixture", n=100, separation=2.0, within_std=np.sqrt(0.1),
                weights=[0.1, 0.9], dim=3, key=KEY, dtype=jnp.float64)
    np.testing.assert_array_equal(ds.info["counts"], [10, 90])
    ev = np.linalg.eigvalsh(np.asarray(ds.A))
    np.testing.assert_allclose(ev, [0.1, 0.1, 0.1 + 0.09 * 4], rtol=1e-12)


def test_gaussian_mixture_counts_largest_remainder_and_key():
    ds = D.load("gaussian_mixture", n=7, n_classes=3, key=KEY)
    np.testing.assert_array_equal(ds.info["counts"], [3, 2, 2])
    a = D.load("gaussian_mixture", n=50, key=jax.random.key(3))
    b = D.load("gaussian_mixture", n=50, key=jax.random.key(3))
    c = D.load("gaussian_mixture", n=50, key=jax.random.key(4))
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.allclose(a.x, c.x)


@pytest.mark.parametrize("kw, err, match", [
    (dict(n=1), ValueError, "n: expected an integer >= 2"),
    (dict(n_classes=1), ValueError, "n_classes: expected an integer >= 2"),
    (dict(n_classes=4, dim=2), ValueError, "dim: expected dim >= n_classes - 1 = 3"),
    (dict(dim=0), ValueError, "dim: expected an integer >= 1"),
    (dict(separation=-1.0), ValueError, "separation: expected a finite number >= 0"),
    (dict(within_std=0.0), ValueError, "within_std: expected a finite number > 0"),
    (dict(weights=[1.0]), ValueError, r"weights: expected 2 class weights"),
    (dict(weights=[1.0, -1.0]), ValueError, "weights: expected positive"),
    (dict(weights=[1.0, np.nan]), ValueError, "weights: expected finite"),
    (dict(key=None), TypeError, "key: expected a jax.random key"),
    (dict(key=jax.random.split(KEY, 3)), ValueError, "key: expected a single key"),
])
def test_gaussian_mixture_bad_input(kw, err, match):
    kw = {"key": KEY, **kw}
    with pytest.raises(err, match=match):
        D.load("gaussian_mixture", **kw)


def test_gaussian_mixture_requires_key():
    with pytest.raises(TypeError, match="key"):
        D.load("gaussian_mixture", n=10)


# --------------------------------------------------------------------------------------------------
# spiked linear model (Ziyin et al. 2023)
# --------------------------------------------------------------------------------------------------

def gaussian_moment_se(S, n):
    """SE of the (mean-zero) sample second moment of N(0, S): sqrt((S_ii S_jj + S_ij^2) / n)."""
    d = np.diag(S)
    return np.sqrt((np.outer(d, d) + S**2) / n)


def test_spiked_defaults_expose_A_B_and_matching_augmentation():
    ds = D.load("spiked", n=64, key=KEY, dtype=jnp.float64)
    assert ds.x.shape == (64, 4) and ds.image_shape is None and ds.n_classes == 2
    np.testing.assert_array_equal(ds.A, np.diag([4.0, 2.0, 1.0, 0.5]))
    np.testing.assert_array_equal(ds.B, 0.25 * np.eye(4))
    aug = ds.augmentation
    assert isinstance(aug, D.GaussianNoise) and aug.strength == 0.5
    np.testing.assert_allclose(aug.covariance, ds.B, atol=1e-15)
    np.testing.assert_allclose(ds.info["Sigma"], ds.A + ds.B, atol=1e-15)
    np.testing.assert_array_equal(ds.y, (ds.x[:, 0] > 0).astype(np.int32))  # top direction of A


def test_spiked_builders():
    ds = D.load("spiked", n=8, key=KEY, spikes=[3.0, 1.0], dim=5, bulk=0.1, sigma=1.5,
                B0=[0, 0, 1, 1, 1], dtype=jnp.float64)
    np.testing.assert_array_equal(np.diag(ds.A), [3.0, 1.0, 0.1, 0.1, 0.1])
    np.testing.assert_allclose(np.diag(ds.B), [0, 0, 2.25, 2.25, 2.25])
    Bfull = np.array([[1.0, 0.5], [0.5, 2.0]])
    ds = D.load("spiked", n=8, key=KEY, A=[1.0, 2.0], B=Bfull, dtype=jnp.float64)
    np.testing.assert_array_equal(ds.A, np.diag([1.0, 2.0]))
    np.testing.assert_allclose(ds.B, Bfull, atol=1e-15)
    assert ds.augmentation.strength == 1.0
    np.testing.assert_allclose(ds.augmentation.covariance, Bfull, atol=1e-14)


@pytest.mark.parametrize("commuting", [True, False])
def test_spiked_empirical_covariances(commuting):
    n = 100_000
    if commuting:
        ds = D.load("spiked", n=n, key=KEY, sigma=0.8, dtype=jnp.float64)
    else:
        Q = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
        A = Q @ np.diag([3.0, 1.0, 0.2]) @ Q.T
        B = np.array([[0.5, 0.2, 0.0], [0.2, 0.4, 0.1], [0.0, 0.1, 0.3]])
        ds = D.load("spiked", n=n, key=KEY, A=A, B=B, dtype=jnp.float64)
    A, B = np.asarray(ds.A), np.asarray(ds.B)
    S = A + B
    x = np.asarray(ds.x)
    within_se(x.T @ x / n, A, gaussian_moment_se(A, n))
    v = ds.views(jax.random.key(7))
    a, b = np.asarray(v.a), np.asarray(v.b)
    within_se(a.T @ a / n, S, gaussian_moment_se(S, n))  # Cov(x_a) = A + B
    within_se(b.T @ b / n, S, gaussian_moment_se(S, n))
    # E[x_a x_b^T] = A; Var(x_a,i x_b,j) = S_ii S_jj + A_ij^2 for jointly Gaussian views
    d = np.diag(S)
    within_se(a.T @ b / n, A, np.sqrt((np.outer(d, d) + A**2) / n))
    e = a - b  # ~ N(0, 2B)
    within_se(e.T @ e / n, 2 * B, gaussian_moment_se(2 * B, n))


@pytest.mark.parametrize("kw, err, match", [
    (dict(A=[[1.0, 2.0], [2.0, 1.0]]), ValueError, "A: expected a positive semi-definite"),
    (dict(A=[[1.0, 0.5], [0.0, 1.0]]), ValueError, "A: expected a symmetric matrix"),
    (dict(A=np.ones((2, 3))), ValueError, r"A: expected a square \(d, d\)"),
    (dict(A=[1.0, -1.0]), ValueError, "A: expected a non-negative diagonal"),
    (dict(A=[1.0, 1.0], spikes=[1.0]), ValueError, "give either A or spikes"),
    (dict(A=[1.0, 1.0], dim=3), ValueError, "dim: expected 2 to match A"),
    (dict(spikes=[1.0, -2.0]), ValueError, "spikes: expected one or more variances >= 0"),
    (dict(spikes=[1.0, 2.0], dim=1), ValueError, r"dim: expected dim >= len\(spikes\) = 2"),
    (dict(sigma=-0.1), ValueError, "sigma: expected a finite number >= 0"),
    (dict(B=np.eye(3)), ValueError, r"B: expected shape \(4, 4\)"),
    (dict(B=np.eye(4), sigma=1.0), ValueError, "give either B or sigma/B0"),
    (dict(B0=[1.0, 1.0]), ValueError, r"B0: expected shape \(4, 4\)"),
    (dict(A=[["a", 0], [0, 1]]), TypeError, "A: expected a numeric matrix"),
    (dict(A=[True, False]), TypeError, "A: expected a numeric matrix"),
    (dict(A=[[np.inf, 0.0], [0.0, 1.0]]), ValueError, "A: expected finite values"),
    (dict(n=1), ValueError, "n: expected an integer >= 2"),
    (dict(bulk=-1.0, dim=6), ValueError, "bulk: expected a finite number >= 0"),
])
def test_spiked_bad_input(kw, err, match):
    kw = {"key": KEY, **kw}
    with pytest.raises(err, match=match):
        D.load("spiked", **kw)


def test_dataset_split_and_float64_requires_x64():
    ds = D.load("gaussian_mixture", n=10, key=KEY)
    tr, te = ds.split(7)
    assert tr.n == 7 and te.n == 3 and tr.name == te.name == "gaussian_mixture"
    np.testing.assert_array_equal(np.concatenate([tr.x, te.x]), ds.x)
    with pytest.raises(ValueError, match="n_first: expected an integer < n = 10"):
        ds.split(10)
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match="float64 needs 64-bit JAX"):
            D.load("digits", dtype=np.float64)
    finally:
        jax.config.update("jax_enable_x64", True)


# --------------------------------------------------------------------------------------------------
# augmentations
# --------------------------------------------------------------------------------------------------

# (edge/wrap padding, hard masks: numerics in test_shift_primitive_against_numpy and
# test_mask_statistics_and_channel_sharing; through the whole chain in the gradient test)
ALL_AUGS = {
    "noise": D.gaussian_noise(0.3),
    "translate": D.translate(1.3),
    "mask": D.mask(0.3),
    "jitter": D.jitter(0.2, 0.3),
    "compose": D.compose(D.translate(1.0), D.mask(0.2), D.jitter(0.1, 0.1), D.gaussian_noise(0.1)),
}


@pytest.mark.parametrize("name, dtype", [(n, jnp.float64) for n in sorted(ALL_AUGS)]
                         + [("compose", jnp.float32)])
def test_augmentation_shape_dtype_determinism(name, dtype):
    aug = ALL_AUGS[name]
    x = images(dtype=dtype)
    out = aug(KEY, x)
    assert out.shape == x.shape and out.dtype == dtype
    np.testing.assert_array_equal(out, aug(KEY, x))
    assert not np.allclose(out, aug(jax.random.key(1), x))
    assert not np.allclose(out, x)


@pytest.mark.parametrize("aug", [D.gaussian_noise(0.0), D.translate(0.0), D.mask(0.0),
                                 D.jitter(0.0, 0.0), D.compose()])
def test_zero_strength_is_identity(aug):
    x = images()
    np.testing.assert_array_equal(aug(KEY, x), x)


def test_shift_primitive_against_numpy():
    x = images(n=2, h=5, w=6, c=1)
    xn = np.asarray(x)
    out = D.shift(x, jnp.array([[1.0, -2.0], [0.0, 0.0]]))
    ref = np.zeros_like(xn[0])
    ref[1:, :4] = xn[0, :-1, 2:]  # content moves down 1, left 2; vacated pixels are zero
    np.testing.assert_allclose(out[0], ref, atol=1e-15)
    np.testing.assert_allclose(out[1], xn[1], atol=1e-15)
    wrap = D.shift(x, jnp.array([[1.0, -2.0], [3.0, 1.0]]), padding="wrap")
    np.testing.assert_allclose(wrap[0], np.roll(xn[0], (1, -2), axis=(0, 1)), atol=1e-15)
    np.testing.assert_allclose(wrap[1], np.roll(xn[1], (3, 1), axis=(0, 1)), atol=1e-15)
    half = D.shift(x, jnp.array([[0.5, 0.0], [0.0, 0.0]]), padding="wrap")
    np.testing.assert_allclose(half[0], (xn[0] + np.roll(xn[0], 1, axis=0)) / 2, atol=1e-15)
    edge = D.shift(x, jnp.array([[-2.5, 1.0], [0.0, 0.0]]), padding="edge")
    const = D.shift(jnp.ones_like(x), jnp.array([[-2.5, 1.7], [0.3, -4.0]]), padding="edge")
    np.testing.assert_allclose(const, 1.0, atol=1e-15)
    np.testing.assert_allclose(edge[0, 3:, 0], np.broadcast_to(xn[0, 4, 0], (2, 1)), atol=1e-15)


def test_translate_shift_magnitude_bounded_by_strength():
    # a unit mass at the centre of a 15x15 image moves by the sampled shift (no mass leaves);
    # its centre of mass gives the shift, which must lie in [-s, s]^2 and fill most of it.
    n, s = 200, 2.5
    x = jnp.zeros((n, 15, 15, 1)).at[:, 7, 7, 0].set(1.0)
    out = np.asarray(D.translate(s)(KEY, x))[..., 0]
    np.testing.assert_allclose(out.sum((1, 2)), 1.0, atol=1e-12)
    grid = np.arange(15)
    com = np.stack([(out.sum(2) * grid).sum(1), (out.sum(1) * grid).sum(1)], -1) - 7
    assert np.abs(com).max() <= s + 1e-12
    assert np.abs(com).max() > 0.95 * s
    # u ~ U[-1, 1]: E|shift| = s/2, SE = s/sqrt(12 n) per axis
    within_se(np.abs(com).mean(0), s / 2, s / np.sqrt(12 * n))


def test_gaussian_noise_statistics_isotropic_and_with_covariance():
    n, d = 50_000, 3
    x = jnp.zeros((n, d))
    e = np.asarray(D.gaussian_noise(0.7)(KEY, x))
    S = 0.49 * np.eye(d)
    within_se(e.T @ e / n, S, gaussian_moment_se(S, n))
    C = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 0.5]])
    aug = D.gaussian_noise(0.7, cov=C)
    np.testing.assert_allclose(aug.covariance, 0.49 * C, atol=1e-14)
    e = np.asarray(aug(KEY, x))
    within_se(e.T @ e / n, 0.49 * C, gaussian_moment_se(0.49 * C, n))
    diag = D.gaussian_noise(0.7, cov=np.array([2.0, 1.0, 0.0]))  # (D,) = diagonal variances
    e = np.asarray(diag(KEY, x))
    np.testing.assert_array_equal(e[:, 2], 0.0)
    S = 0.49 * np.diag([2.0, 1.0, 0.0])
    within_se((e.T @ e / n)[:2, :2], S[:2, :2], gaussian_moment_se(S[:2, :2], n))
    # on images the covariance is over the flattened features
    img = D.gaussian_noise(0.5, cov=np.eye(12))(KEY, images(h=2, w=3, c=2))
    assert img.shape == (5, 2, 3, 2)


def test_mask_statistics_and_channel_sharing():
    p = 0.3
    x = jnp.ones((200, 10, 10, 3))
    hard = np.asarray(D.mask(p, hard=True)(KEY, x))
    assert set(np.unique(hard)) == {0.0, 1.0}
    np.testing.assert_array_equal(hard[..., 0], hard[..., 2])  # one mask per pixel
    keep = hard[..., 0].mean()
    within_se(keep, 1 - p, np.sqrt(p * (1 - p) / hard[..., 0].size))
    # the relaxed mask has P(m > 1/2) = 1 - p exactly and the same draws as the hard one
    soft = np.asarray(D.mask(p)(KEY, x))
    np.testing.assert_array_equal(soft > 0.5, hard > 0.5)
    assert np.all((soft >= 0) & (soft <= 1)) and np.any((soft > 0.01) & (soft < 0.99))
    np.testing.assert_array_equal(D.mask(1.0)(KEY, x), 0.0)
    flat = np.asarray(D.mask(p)(KEY, jnp.ones((100, 50))))  # vectors: coordinate-wise
    assert flat.shape == (100, 50)
    assert not np.array_equal(flat[:, 0], flat[:, 1])


def test_jitter_ranges():
    b, c = 0.5, 0.4
    x = images(n=300)
    out = np.asarray(D.jitter(b, c)(KEY, x))
    xn = np.asarray(x)
    dm = out.mean((1, 2, 3)) - xn.mean((1, 2, 3))
    ratio = out.std((1, 2, 3)) / xn.std((1, 2, 3))
    assert np.abs(dm).max() <= b + 1e-12 and np.abs(dm).max() > 0.95 * b
    assert ratio.min() >= 1 - c - 1e-12 and ratio.max() <= 1 + c + 1e-12
    assert ratio.min() < 1 - 0.9 * c and ratio.max() > 1 + 0.9 * c


def test_compose_is_sequential_with_split_keys():
    augs = (D.translate(1.0), D.gaussian_noise(0.2))
    x = images()
    k1, k2 = jax.random.split(KEY)
    np.testing.assert_array_equal(D.compose(*augs)(KEY, x), augs[1](k2, augs[0](k1, x)))


def test_augmentation_pytree_structure():
    aug = D.compose(D.mask(0.2, temperature=0.5), D.translate(1.0, padding="edge"))
    leaves = jax.tree_util.tree_leaves(aug)
    assert leaves == [0.2, 0.5, 1.0]
    # rebuilt with arbitrary leaves (as JAX transformations do) without re-validating them
    none_tree = jax.tree_util.tree_map(lambda _: None, aug)
    assert none_tree.augs[1].padding == "edge" and none_tree.augs[0].strength is None
    doubled = jax.tree_util.tree_map(lambda v: 2 * v, aug)
    assert doubled.augs[0].strength == 0.4 and doubled.augs[1].strength == 2.0
    # vmap over a strength
    out = jax.vmap(lambda s: D.gaussian_noise(s)(KEY, images()))(jnp.array([0.0, 1.0]))
    np.testing.assert_array_equal(out[0], images())
    np.testing.assert_allclose(out[1], D.gaussian_noise(1.0)(KEY, images()), atol=1e-14)


def test_augmentation_registry():
    assert D.augmentations() == ["color_jitter", "gaussian_blur", "gaussian_noise",
                                 "horizontal_flip", "identity", "jitter", "mask",
                                 "random_grayscale", "random_resized_crop", "solarize",
                                 "translate"]
    assert isinstance(D.augmentation("translate", strength=2.0), D.Translate)
    with pytest.raises(ValueError, match="name: unknown value 'blur'.*valid choices"):
        D.augmentation("blur")


# --- gradients w.r.t. augmentation strengths vs central finite differences -----------------------

X = images(n=6, h=7, w=7, c=2, seed=3)
W = jax.random.normal(jax.random.key(42), (12, 7, 7, 2))
COV98 = np.asarray(jax.random.normal(jax.random.key(8), (98, 98))) / 10
COV98 = COV98 @ COV98.T  # a dense PSD covariance over the 7*7*2 flattened features
# One composition holding every augmentation (each strength away from its boundaries), so that one
# compiled forward and one compiled gradient serve every strength; each strength is checked
# through the whole chain.
ALL_IN_ONE = D.compose(
    D.translate(1.3), D.translate(1.7, padding="edge"), D.translate(2.2, padding="wrap"),
    D.mask(0.3, temperature=0.2), D.jitter(0.4, 0.3), D.gaussian_noise(0.3),
    D.gaussian_noise(0.7, cov=COV98))


def objective(aug):
    return jnp.sum(W * jnp.tanh(D.make_views(X, aug, jax.random.key(9)).stacked))


def test_grad_wrt_every_strength_matches_finite_differences():
    leaves, treedef = jax.tree_util.tree_flatten_with_path(ALL_IN_ONE)
    grads = jax.tree_util.tree_leaves(jax.grad(objective)(ALL_IN_ONE))
    values = [v for _, v in leaves]
    scalars = [(i, jax.tree_util.keystr(p)) for i, (p, v) in enumerate(leaves) if np.ndim(v) == 0]
    # 3 translations, mask p and temperature, brightness and contrast, 2 noise strengths
    assert len(scalars) == 9, scalars

    def f(i, val):
        vals = list(values)
        vals[i] = val
        return float(objective(jax.tree_util.tree_unflatten(treedef, vals)))

    h = 1e-6
    for i, name in scalars:
        # Central differences in float64, h = 1e-6: truncation h^2 |f'''| / 6 and rounding
        # ~1e-16 |f| / h are both <= 1e-7 here (|f| ~ 100; the mask's sigmoid at temperature 0.2
        # has |f'''| <= ~1e4). Translation is piecewise linear in the shift; with these fixed keys
        # no shift is within h of an integer, so f is smooth on [v - h, v + h].
        fd = (f(i, values[i] + h) - f(i, values[i] - h)) / (2 * h)
        g = float(grads[i])
        assert abs(g) > 1e-3, f"{name}: degenerate check, gradient ~0"
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-7, err_msg=name)


def test_grad_at_mask_boundaries_and_straight_through_is_finite():
    for aug in (D.mask(0.0), D.mask(1.0), D.mask(0.3, hard=True)):
        g = jax.tree_util.tree_leaves(jax.grad(objective)(aug))
        assert all(np.isfinite(v) for v in g)
    g = jax.grad(objective)(D.mask(0.3, hard=True))
    assert g.strength != 0  # the straight-through gradient reaches the drop probability


# --- bad inputs to augmentations ------------------------------------------------------------------

@pytest.mark.parametrize("build, err, match", [
    (lambda: D.gaussian_noise(-0.1), ValueError, "strength: expected a finite number >= 0"),
    (lambda: D.gaussian_noise(np.nan), ValueError, "strength: expected a finite number >= 0"),
    (lambda: D.gaussian_noise("big"), TypeError, "strength: expected a positive number"),
    (lambda: D.gaussian_noise(0.1, cov=[[1.0, 2.0], [2.0, 1.0]]), ValueError,
     "cov: expected a positive semi-definite"),
    (lambda: D.gaussian_noise(0.1, cov=np.ones((2, 2, 2))), ValueError, "cov: expected rank"),
    (lambda: D.translate(-1.0), ValueError, "strength: expected a finite number >= 0"),
    (lambda: D.translate(1.0, padding="reflect"), ValueError, "padding: unknown value 'reflect'"),
    (lambda: D.mask(1.5), ValueError, r"strength: expected a number in \[0, 1\], got 1.5"),
    (lambda: D.mask(0.1, temperature=0.0), ValueError, "temperature: expected a finite number > 0"),
    (lambda: D.mask(0.1, hard=1), TypeError, "hard: expected a bool"),
    (lambda: D.jitter(-0.1, 0.1), ValueError, "brightness: expected a finite number >= 0"),
    (lambda: D.jitter(0.1, 1.0), ValueError, r"contrast: expected a number in \[0, 1\), got 1.0"),
    (lambda: D.jitter(0.1, [0.1, 0.2]), TypeError, "contrast: expected a positive number"),
    (lambda: D.compose(D.mask(0.1), "noise"), TypeError, r"augs\[1\]: expected an augmentation"),
])
def test_augmentation_bad_parameters(build, err, match):
    with pytest.raises(err, match=match):
        build()


@pytest.mark.parametrize("aug", [D.gaussian_noise(0.1), D.translate(1.0), D.mask(0.1),
                                 D.jitter(0.1, 0.1), D.compose(D.gaussian_noise(0.1))],
                         ids=["noise", "translate", "mask", "jitter", "compose"])
def test_augmentation_bad_call_inputs(aug):
    x = images()
    with pytest.raises(TypeError, match="x: expected a floating dtype"):
        aug(KEY, jnp.ones((3, 4, 4, 1), jnp.int32))
    with pytest.raises(ValueError, match="x: expected finite values"):
        aug(KEY, x.at[0, 0, 0, 0].set(jnp.nan))
    with pytest.raises(TypeError, match="key: expected a jax.random key"):
        aug(0, x)
    with pytest.raises(TypeError, match="key: expected a jax.random key"):
        aug(jnp.zeros(3, jnp.uint32), x)
    with pytest.raises(ValueError, match="x: expected"):
        aug(KEY, x[0, 0, 0])  # rank 1: no batch axis


def test_translate_requires_images_and_noise_cov_size():
    with pytest.raises(ValueError, match=r"x: expected images \(N, H, W, C\), got shape \(5, 4\)"):
        D.translate(1.0)(KEY, jnp.ones((5, 4)))
    with pytest.raises(ValueError, match=r"shifts: expected shape \(5, 2\)"):
        D.shift(images(), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="x: expected 3 features per sample"):
        D.gaussian_noise(0.1, cov=np.eye(3))(KEY, jnp.ones((5, 4)))


# --------------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------------

def test_views_stacked_order_and_keys():
    x = images()
    aug = D.translate(1.0)
    v = D.make_views(x, aug, KEY)
    assert v.n == 5 and v.n_draws == 1 and not v.has_draws and v.feature_shape == (6, 7, 2)
    assert v.a.shape == v.b.shape == x.shape and v.stacked.shape == (10, 6, 7, 2)
    np.testing.assert_array_equal(v.stacked[:5], v.a)
    np.testing.assert_array_equal(v.stacked[5:], v.b)
    assert not np.allclose(v.a, v.b)
    w = D.make_views(x, aug, KEY)
    np.testing.assert_array_equal(v.a, w.a)
    np.testing.assert_array_equal(v.b, w.b)
    u = D.make_views(x, aug, jax.random.key(1))
    assert not np.allclose(v.a, u.a) and not np.allclose(v.b, u.b)
    same = D.make_views(x, None, KEY)  # no augmentation: both views are x
    np.testing.assert_array_equal(same.a, x)
    np.testing.assert_array_equal(same.b, x)
    raw = D.make_views(x, aug, jax.random.PRNGKey(0))  # raw uint32 keys are accepted too
    assert raw.a.shape == x.shape


def test_views_with_draws():
    x = jax.random.normal(KEY, (5, 3))
    aug = D.gaussian_noise(0.5)
    v = D.make_views(x, aug, KEY, n_draws=4)
    assert v.has_draws and v.n_draws == 4 and v.n == 5 and v.feature_shape == (3,)
    assert v.a.shape == (4, 5, 3) and v.stacked.shape == (4, 10, 3)
    singles = list(v.draws())
    assert len(singles) == 4
    for i, s in enumerate(singles):
        assert not s.has_draws and s.stacked.shape == (10, 3)
        np.testing.assert_array_equal(s.stacked, v.stacked[i])
    assert not np.allclose(singles[0].a, singles[1].a)
    one = D.make_views(x, aug, KEY)  # draw 0 is the n_draws=1 result; draws are nested
    np.testing.assert_allclose(v.draw(0).a, one.a, atol=1e-15)
    more = D.make_views(x, aug, KEY, n_draws=6)
    np.testing.assert_allclose(more.a[:4], v.a, atol=1e-15)
    assert list(one.draws())[0] is one
    # vmap over the draw axis sees single-draw Views
    sums = jax.vmap(lambda s: s.stacked.sum(0))(v)
    np.testing.assert_allclose(sums, v.stacked.sum(1), atol=1e-12)
    flat = D.make_views(images(), None, KEY, n_draws=2).flatten()
    assert flat.a.shape == (2, 5, 84) and flat.feature_ndim == 1 and flat.n == 5
    np.testing.assert_array_equal(flat.b[1], images().reshape(5, 84))


def test_views_constructor_and_from_stacked():
    f = jax.random.normal(KEY, (8, 3))
    v = D.Views.from_stacked(f)
    np.testing.assert_array_equal(v.stacked, f)
    assert v.n == 4
    with pytest.raises(ValueError, match="b: expected the shape of a"):
        D.Views(f[:4], f[:3])
    with pytest.raises(ValueError, match="a: expected n >= 2 source samples"):
        D.Views(f[:1], f[1:2])
    with pytest.raises(TypeError, match="a: expected a floating dtype"):
        D.Views(jnp.ones((4, 2), jnp.int32), jnp.ones((4, 2), jnp.int32))
    with pytest.raises(ValueError, match="a: expected finite values"):
        D.Views(f[:4].at[0, 0].set(jnp.inf), f[4:])
    with pytest.raises(ValueError, match="a: expected shape .* with 1 feature axes"):
        D.Views(jnp.ones((2, 2, 2, 2)), jnp.ones((2, 2, 2, 2)), feature_ndim=1)
    with pytest.raises(ValueError, match=r"f: expected stacked views .* 2n >= 4"):
        D.Views.from_stacked(f[:3])
    with pytest.raises(TypeError, match="mixed dtypes"):
        D.Views(f[:4], f[4:].astype(jnp.float32))


def test_make_views_under_jit_matches_eager():
    x = images()
    aug = D.jitter(0.2, 0.2)
    jv = jax.jit(lambda a, k: D.make_views(x, a, k, n_draws=2))(aug, KEY)
    ev = D.make_views(x, aug, KEY, n_draws=2)
    assert isinstance(jv, D.Views) and jv.has_draws
    np.testing.assert_allclose(jv.stacked, ev.stacked, atol=1e-12)  # fusion rounding only


@pytest.mark.parametrize("kw, err, match", [
    (dict(x=jnp.ones((4, 3), jnp.int32)), TypeError, "x: expected a floating dtype"),
    (dict(x=jnp.ones((4, 3)).at[1, 1].set(jnp.nan)), ValueError, "x: expected finite values"),
    (dict(x=jnp.ones(4)), ValueError, r"x: expected a batch \(N, ...\) of rank >= 2"),
    (dict(x=jnp.ones((1, 3))), ValueError, "x: expected n >= 2 source samples"),
    (dict(key=None), TypeError, "key: expected a jax.random key"),
    (dict(key=3), TypeError, "key: expected a jax.random key"),
    (dict(n_draws=0), ValueError, "n_draws: expected an integer >= 1"),
    (dict(n_draws=2.0), TypeError, "n_draws: expected an integer"),
    (dict(augment="noise"), TypeError, "augment: expected an augmentation"),
    (dict(augment=lambda k, x: x[:, :2]), ValueError, "augment: expected output of the input's"),
])
def test_make_views_bad_input(kw, err, match):
    args = {"x": jnp.ones((4, 3)), "augment": D.gaussian_noise(0.1), "key": KEY, **kw}
    with pytest.raises(err, match=match):
        D.make_views(args["x"], args["augment"], args["key"], **({"n_draws": kw["n_draws"]}
                                                                  if "n_draws" in kw else {}))
