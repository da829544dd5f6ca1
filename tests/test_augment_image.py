"""The SSL image augmentations (`sslntk.data._image`) and recipes against independent references.

References are float64 numpy implementations written here from the transforms' definitions
(torchvision semantics): bilinear resampling by explicit floor/ceil neighbours, Gaussian blur by
`np.pad(mode="reflect")` and a 1-D convolution, the hue rotation through Python's `colorsys` pixel by
pixel. Each reference is fed the parameters the augmentation drew (`aug.params(key, x)`), so the
comparison is exact up to float64 round-off: the tolerance 1e-12 is ~10⁴ ulps of values in [0, 1]
(a few dozen flops per output; nothing is iterated).

Gradients: `jax.grad` of `L(θ) = Σ W ⊙ aug_θ(key, x)` (fixed key, fixed random W) against the
central difference `(L(θ+ε) − L(θ−ε)) / 2ε`, ε = 1e-6. The transforms are piecewise smooth in θ
(clips, hue sectors, bilinear kinks); with a fixed key no kink lies within ε of the test point
(probability ~ε per kink), so the FD error is truncation O(ε² L''') ≲ 1e-10 plus round-off
O(eps·|L|/ε) ≈ 1e-16·1e2/1e-6 = 1e-8: rtol 1e-6 with atol 1e-7 leaves a margin of 10×.
Probabilities: with `gate="expected"` the output is smooth in p and is FD-checked; the default
straight-through gate must give the very same gradient.
"""

import colorsys
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk import data as D

KEY = jax.random.key(7)
TOL = 1e-12


def imgs(n=6, h=9, w=8, c=3, seed=0, lo=0.03, hi=0.97):
    return jax.random.uniform(jax.random.key(seed), (n, h, w, c), jnp.float64, lo, hi)


# --------------------------------------------------------------------------------------------------
# float64 numpy references
# --------------------------------------------------------------------------------------------------

def ref_bilinear_axis(n_in, start, length):
    """Source positions (floor neighbour, ceil neighbour, weight of ceil) for n_in output pixels."""
    out = []
    for i in range(n_in):
        c = start + (i + 0.5) * length / n_in - 0.5
        c = min(max(c, 0.0), n_in - 1)
        i0 = int(np.floor(c))
        i1 = min(i0 + 1, n_in - 1)
        out.append((i0, i1, c - i0))
    return out


def ref_crop(img, box):
    H, W, _ = img.shape
    top, left, h, w = box
    ys, xs = ref_bilinear_axis(H, top, h), ref_bilinear_axis(W, left, w)
    out = np.zeros_like(img)
    for i, (y0, y1, wy) in enumerate(ys):
        for j, (x0, x1, wx) in enumerate(xs):
            out[i, j] = ((1 - wy) * (1 - wx) * img[y0, x0] + (1 - wy) * wx * img[y0, x1]
                         + wy * (1 - wx) * img[y1, x0] + wy * wx * img[y1, x1])
    return out


def ref_gray(img):
    if img.shape[-1] == 1:
        return img
    g = 0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]
    return np.repeat(g[..., None], 3, -1)


def ref_hue(img, shift):
    if img.shape[-1] == 1:
        return img
    out = np.empty_like(img)
    for idx in np.ndindex(img.shape[:-1]):
        h, s, v = colorsys.rgb_to_hsv(*img[idx])
        out[idx] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
    return out


def ref_jitter(img, prm):
    ops = {0: lambda z: np.clip(prm["brightness"] * z, 0, 1),
           1: lambda z: np.clip(prm["contrast"] * z + (1 - prm["contrast"]) * ref_gray(z)[..., 0]
                                .mean(), 0, 1),
           2: lambda z: np.clip(prm["saturation"] * z + (1 - prm["saturation"]) * ref_gray(z), 0, 1),
           3: lambda z: ref_hue(z, prm["hue"])}
    if not prm["applied"]:
        return img
    for j in prm["order"]:
        img = ops[int(j)](img)
    return img


def ref_blur(img, sigma, ks):
    r = ks // 2
    t = np.arange(-r, r + 1)
    k = np.exp(-t**2 / (2 * sigma**2))
    k /= k.sum()
    p = np.pad(img, ((r, r), (r, r), (0, 0)), mode="reflect")
    H, W, _ = img.shape
    tmp = sum(k[a] * p[a:a + H] for a in range(ks))               # along rows
    return sum(k[a] * tmp[:, a:a + W] for a in range(ks))         # along columns


def per_sample(aug, x, ref):
    x = np.asarray(x)
    prm = aug.params(KEY, x)
    got = np.asarray(aug(KEY, jnp.asarray(x)))
    want = np.stack([ref(x[i], {k: v[i] for k, v in prm.items()}) for i in range(len(x))])
    err = np.max(np.abs(got - want))
    assert err < TOL, f"{type(aug).__name__}: max |jax - numpy| = {err:.3g}"
    return prm, err


# --------------------------------------------------------------------------------------------------
# each transform against its reference
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale, ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.5, 1.0), (0.2, 5.0))])
def test_random_resized_crop_matches_bilinear_reference(scale, ratio):
    aug = D.random_resized_crop(scale, ratio)
    x = imgs(n=8, h=9, w=11)
    prm, _ = per_sample(aug, x, lambda im, p: ref_crop(im, p["box"]))
    top, left, h, w = prm["box"].T
    assert np.all(top >= 0) and np.all(left >= 0) and np.all(top + h <= 9 + 1e-12)
    assert np.all(left + w <= 11 + 1e-12)
    area = h * w / 99
    inside = (h < 9) & (w < 11)                  # unclipped boxes follow the law exactly
    assert np.all((area[inside] >= scale[0] - 1e-12) & (area[inside] <= scale[1] + 1e-12))
    assert np.all((w / h)[inside] >= ratio[0] - 1e-12) and np.all((w / h)[inside] <= ratio[1] + 1e-9)


def test_full_crop_is_the_identity():
    x = imgs(h=7, w=7)
    np.testing.assert_allclose(D.random_resized_crop((1.0, 1.0), (1.0, 1.0))(KEY, x), x, atol=TOL)


def test_flip_grayscale_solarize_match_references():
    x = imgs(n=40)
    prm, _ = per_sample(D.horizontal_flip(0.5), x,
                        lambda im, p: im[:, ::-1] if p["applied"] else im)
    assert 0 < prm["applied"].sum() < 40
    per_sample(D.random_grayscale(0.5), x, lambda im, p: ref_gray(im) if p["applied"] else im)
    per_sample(D.solarize(0.5, 0.4), x,
               lambda im, p: np.where(im < 0.4, im, 1 - im) if p["applied"] else im)


@pytest.mark.parametrize("order", ["random", "fixed"])
def test_color_jitter_matches_reference(order):
    aug = D.color_jitter(0.8, 0.8, 0.8, 0.2, p=0.8, order=order)
    prm, _ = per_sample(aug, imgs(n=12, h=5, w=4), ref_jitter)
    assert prm["applied"].sum() not in (0, 12)
    if order == "random":
        assert len({tuple(o) for o in prm["order"]}) > 1
    else:
        assert np.all(prm["order"] == np.arange(4))
    assert np.all(np.abs(prm["brightness"] - 1) <= 0.8) and np.all(np.abs(prm["hue"]) <= 0.2)


def test_color_jitter_on_one_channel_images():
    aug = D.color_jitter(0.5, 0.5, 0.5, 0.2, p=1.0)
    per_sample(aug, imgs(n=5, c=1), ref_jitter)


@pytest.mark.parametrize("kernel_size", [None, 3, 7])
def test_gaussian_blur_matches_reference(kernel_size):
    aug = D.gaussian_blur((0.1, 2.0), p=0.7, kernel_size=kernel_size)
    x = imgs(n=10, h=30, w=24)
    prm, _ = per_sample(aug, x, lambda im, p: ref_blur(im, p["sigma"], int(p["kernel_size"]))
                        if p["applied"] else im)
    assert np.all(prm["kernel_size"] == (kernel_size or 3))     # 10 % of 24 → 2 → odd 3


def test_hue_rotation_matches_colorsys_on_single_pixels():
    rng = np.random.default_rng(1)
    special = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (0, 0, 0),
               (1, 1, 1), (0.5, 0.5, 0.5), (0.2, 0.2, 0.9), (0.9, 0.2, 0.9), (0.3, 0.7, 0.3)]
    pixels = np.concatenate([np.array(special, float), rng.uniform(0, 1, (200, 3))])
    shifts = np.concatenate([[0.0, 0.5, -0.5, 0.25, -1 / 6, 1 / 3], rng.uniform(-0.5, 0.5, 206)])
    worst = 0.0
    for px, sh in zip(pixels, shifts, strict=True):
        got = np.asarray(D.adjust_hue(jnp.asarray(px).reshape(1, 1, 3), sh)).ravel()
        h, s, v = colorsys.rgb_to_hsv(*px)
        want = np.array(colorsys.hsv_to_rgb((h + sh) % 1.0, s, v))
        worst = max(worst, np.max(np.abs(got - want)))
        hsv = np.asarray(D._image.rgb_to_hsv(jnp.asarray(px))).ravel()   # the conversion itself
        np.testing.assert_allclose(hsv, [h, s, v], atol=TOL)
    assert worst < TOL, worst


def test_gates_fire_with_probability_p():
    # 4000 Bernoulli(0.3) gates: |fraction − p| within 5 standard errors (sqrt(p(1-p)/n) = 0.0072)
    x = imgs(n=4000, h=2, w=2, c=1)
    a = D.horizontal_flip(0.3).params(KEY, x)["applied"]
    assert abs(a.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 4000)


# --------------------------------------------------------------------------------------------------
# gradients of the strengths against central finite differences
# --------------------------------------------------------------------------------------------------

W = np.random.default_rng(3).standard_normal((6, 9, 8, 3))


def loss(aug, x):
    return jnp.sum(jnp.asarray(W[: x.shape[0]]) * aug(KEY, x))


def fd(aug, field, idx, x, eps=1e-6):
    def at(d):
        v = getattr(aug, field)
        if idx is None:
            new = v + d
        else:
            new = tuple(vi + d if i == idx else vi for i, vi in enumerate(v))
        return float(loss(dataclasses.replace(aug, **{field: new}), x))
    return (at(eps) - at(-eps)) / (2 * eps)


CASES = [
    (D.random_resized_crop((0.3, 0.9), (0.6, 1.5)), [("scale", 0), ("scale", 1), ("ratio", 0),
                                                       ("ratio", 1)]),
    (D.color_jitter(0.5, 0.45, 0.4, 0.15, p=0.8, gate="expected"),
     [("brightness", None), ("contrast", None), ("saturation", None), ("hue", None),
      ("p", None)]),
    (D.color_jitter(0.5, 0.45, 0.4, 0.15, p=0.8, order="fixed", gate="expected"),
     [("brightness", None), ("hue", None)]),
    (D.gaussian_blur((0.3, 1.7), p=0.6, gate="expected"), [("sigma", 0), ("sigma", 1), ("p", None)]),
    (D.horizontal_flip(0.4, gate="expected"), [("p", None)]),
    (D.random_grayscale(0.3, gate="expected"), [("p", None)]),
    (D.solarize(0.35, gate="expected"), [("p", None)]),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_strength_gradients_match_central_differences(case):
    aug, fields = CASES[case]
    x = imgs(h=9, w=8)
    g = jax.grad(loss)(aug, x)
    for field, idx in fields:
        ad = getattr(g, field) if idx is None else getattr(g, field)[idx]
        num = fd(aug, field, idx, x)
        assert abs(float(ad) - num) <= 1e-7 + 1e-6 * abs(num), (field, idx, float(ad), num)
        assert abs(num) > 1e-3, (field, idx, num)       # a real dependence, not 0 = 0


@pytest.mark.parametrize("make", [
    lambda gate: D.color_jitter(0.5, 0.45, 0.4, 0.15, p=0.6, gate=gate),
    lambda gate: D.gaussian_blur((0.3, 1.7), p=0.6, gate=gate),
    lambda gate: D.horizontal_flip(0.5, gate=gate),
    lambda gate: D.solarize(0.5, gate=gate)])
def test_straight_through_gradient_equals_the_expected_gates(make):
    x = imgs(h=9, w=8)
    g_st, g_ex = jax.grad(loss)(make("straight_through"), x), jax.grad(loss)(make("expected"), x)
    np.testing.assert_allclose(float(g_st.p), float(g_ex.p), rtol=1e-12, atol=1e-12)
    st = make("straight_through")                  # the forward pass is an exact Bernoulli sample
    prm = st.params(KEY, x)
    always = dataclasses.replace(st, p=1.0)(KEY, x)
    want = np.where(prm["applied"][:, None, None, None], np.asarray(always), np.asarray(x))
    np.testing.assert_allclose(st(KEY, x), want, atol=TOL)


# --------------------------------------------------------------------------------------------------
# recipes, views, registry, validation
# --------------------------------------------------------------------------------------------------

def _members(view):
    return {type(a).__name__: a for a in view.augs}


def test_recipe_constants():
    assert D.recipes() == ["barlow_twins", "byol", "simclr"]
    s = D.recipe("simclr")
    a = _members(s.a)
    assert (a["ColorJitter"].brightness, a["ColorJitter"].hue, a["ColorJitter"].p) == (0.8, 0.2, 0.8)
    assert a["GaussianBlur"].p == 0.5 and a["GaussianBlur"].sigma == (0.1, 2.0)
    assert a["RandomGrayscale"].p == 0.2 and a["HorizontalFlip"].p == 0.5
    assert "Solarize" not in a and a["RandomResizedCrop"].scale == (0.08, 1.0)
    c = _members(D.recipe("simclr", color_strength=0.5, blur=False).a)
    assert c["ColorJitter"].saturation == pytest.approx(0.4) and "GaussianBlur" not in c
    for name in ("byol", "barlow_twins"):
        r = D.recipe(name)
        a, b = _members(r.a), _members(r.b)
        cj = a["ColorJitter"]
        assert (cj.brightness, cj.contrast, cj.saturation, cj.hue, cj.p) == (0.4, 0.4, 0.2, 0.1, 0.8)
        assert a["GaussianBlur"].p == 1.0 and b["GaussianBlur"].p == 0.1
        assert "Solarize" not in a and b["Solarize"].p == 0.2


def test_recipe_with_standardisation_round_trips_when_every_step_is_off():
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    x = (imgs(h=8, w=8) - mean) / std
    r = D.recipe("byol", mean=mean, std=std)
    off = tuple(dataclasses.replace(a, p=0.0) if hasattr(a, "p") else
                dataclasses.replace(a, scale=(1.0, 1.0), ratio=(1.0, 1.0))
                if isinstance(a, D.RandomResizedCrop) else a for a in r.a.augs)
    v = D.make_views(x, D.ViewPair(D.compose(*off), D.compose(*off)), KEY)
    np.testing.assert_allclose(v.a, x, atol=1e-12)


def test_recipe_views():
    # byol and barlow_twins share one structure (one compiled program); simclr has its own
    x = imgs(n=3, h=8, w=8)
    for name in D.recipes():
        v = D.make_views(x, D.recipe(name), KEY)
        assert v.a.shape == (3, 8, 8, 3) and np.all(np.isfinite(v.stacked))
        assert not np.allclose(v.a, v.b)


@pytest.mark.slow  # compiles the reverse pass of a whole recipe (~1 min on a shared CPU)
def test_recipe_gradients_reach_the_strengths():
    x = imgs(n=3, h=8, w=8)
    r = D.recipe("barlow_twins")
    g = jax.grad(lambda r: jnp.sum(D.make_views(x, r, KEY).stacked ** 2))(r)
    leaves = jax.tree_util.tree_leaves(g)
    cj = _members(g.b)["ColorJitter"]
    assert all(np.isfinite(v) for v in leaves) and float(cj.brightness) != 0 and float(cj.p) != 0


def test_make_views_with_a_pair_uses_each_augmentation_for_its_view():
    x = imgs(n=3)
    v = D.make_views(x, (D.compose(), D.horizontal_flip(1.0)), KEY)
    np.testing.assert_array_equal(v.a, x)
    np.testing.assert_allclose(v.b, x[:, :, ::-1], atol=TOL)   # x + 1·(flip(x) − x)


@pytest.mark.parametrize("make, err, match", [
    (lambda: D.random_resized_crop((0.5, 0.2)), ValueError, r"scale: expected \(lo, hi\)"),
    (lambda: D.random_resized_crop((0.0, 1.0)), ValueError, r"scale: expected \(lo, hi\) with 0 <"),
    (lambda: D.random_resized_crop(0.5), TypeError, r"scale: expected a pair"),
    (lambda: D.random_resized_crop(ratio=(-1, 2)), ValueError, r"ratio: expected"),
    (lambda: D.horizontal_flip(1.5), ValueError, r"p: expected a number in \[0, 1\]"),
    (lambda: D.horizontal_flip(gate="gumbel"), ValueError, r"gate: unknown value 'gumbel'"),
    (lambda: D.color_jitter(brightness=1.2), ValueError, r"brightness: expected a number in"),
    (lambda: D.color_jitter(hue=0.6), ValueError, r"hue: expected a number in \[0, 0.5\]"),
    (lambda: D.color_jitter(order="sorted"), ValueError, r"order: unknown value"),
    (lambda: D.gaussian_blur(kernel_size=4), ValueError, r"kernel_size: expected an odd integer"),
    (lambda: D.gaussian_blur(sigma=(0, 1)), ValueError, r"sigma: expected"),
    (lambda: D.solarize(threshold=2), ValueError, r"threshold: expected a number in \[0, 1\]"),
    (lambda: D.recipe("moco"), ValueError, r"name: unknown value 'moco'.*simclr"),
    (lambda: D.recipe("byol", color_strength=0.5), ValueError, r"color_strength: only the simclr"),
    (lambda: D.recipe("simclr", std=0), ValueError, r"std: expected finite values > 0"),
    (lambda: D.recipe("simclr", blur=1), TypeError, r"blur: expected a bool"),
])
def test_constructor_validation(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_call_validation():
    with pytest.raises(ValueError, match=r"x: expected images \(N, H, W, C\)"):
        D.horizontal_flip()(KEY, jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"x: expected 1 or 3 channels"):
        D.color_jitter()(KEY, jnp.zeros((2, 4, 4, 2)))
    with pytest.raises(ValueError, match=r"kernel_size: expected a radius <= image side - 1"):
        D.gaussian_blur(kernel_size=9)(KEY, jnp.zeros((2, 4, 4, 3)))
    with pytest.raises(TypeError, match=r"key: expected a jax.random key"):
        D.solarize()(3, jnp.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"x: expected images"):
        D.make_views(jnp.zeros((3, 5)), D.recipe("simclr"), KEY)


def test_registry_lists_the_new_augmentations():
    names = D.augmentations()
    for n in ("random_resized_crop", "horizontal_flip", "color_jitter", "random_grayscale",
              "gaussian_blur", "solarize"):
        assert n in names
    assert isinstance(D.augmentation("solarize", p=0.3), D.Solarize)


def test_float32_and_one_channel_digits():
    # digits (1 channel, [0, 1] after /16, float32): the recipe runs on grayscale images too
    ds = D.load("digits", n=10, standardize="none")
    v = D.make_views(ds.x, D.recipe("simclr"), KEY)
    assert v.a.shape == (10, 8, 8, 1) and v.a.dtype == jnp.float32
    assert np.all(np.isfinite(v.stacked))
