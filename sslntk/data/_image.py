"""The standard SSL image augmentations as differentiable pytrees with explicit keys, vmapped over
samples: `random_resized_crop`, `horizontal_flip`, `color_jitter`, `random_grayscale`,
`gaussian_blur`, `solarize`, and `affine` (un/standardisation between data and pixel units).

Semantics follow torchvision's `transforms.v2` on float images in [0, 1] (the photometric ones clip
to [0, 1] after each step, as torchvision does), with these reparametrisations so that `jax.grad`
reaches every continuous strength (each strength multiplies or shifts a fixed uniform draw
`u ~ U(0, 1)` of the key):

* crop: area fraction `s = s_lo + (s_hi − s_lo)·u₁`, log aspect `log r = log r_lo + (log r_hi −
  log r_lo)·u₂`, box `h = min(H, H·√(s/r)·√(W/H))`, `w = min(W, √(s·r·H·W))`, corner
  `top = u₃(H − h)`, `left = u₄(W − w)`; resampled to `H × W` bilinearly at pixel centres
  (`align_corners=False`, borders replicated, no antialias), sub-pixel boxes (no rounding).
  torchvision rejection-samples boxes that fit (10 tries, then a centre crop); here an oversized
  side is clipped to the image instead (same law whenever the box fits).
* colour jitter factors `1 + b(2u − 1)` (brightness b, contrast c, saturation s in [0, 1]), hue shift
  `h(2u − 1)` (h in [0, 0.5], in turns of the colour wheel); order random per sample (as torchvision
  and SimCLR/BYOL) or fixed (`order="fixed"`: brightness, contrast, saturation, hue).
* blur σ = `σ_lo + (σ_hi − σ_lo)·u`, a normalised Gaussian of `kernel_size` taps (default: 10 % of
  the image side, made odd, at least 3 — SimCLR's rule), reflect padding, separable.
* every transform but the crop is applied with probability `p`: `out = x + g·(T(x) − x)`, the gate
  `g` a Bernoulli(p) draw `1[u < p]`. `gate="straight_through"` (default): forward the exact
  Bernoulli, backward `∂g/∂p = 1` (so `∂out/∂p = T(x) − x`, the gradient of the expectation over
  the gate with the other draws fixed). `gate="expected"`: `g = p` (the gate's mean: a smooth,
  deterministic relaxation whose derivative equals the straight-through one exactly).
  Solarisation's threshold and the flip/grayscale themselves have no continuous strength (their
  gradient is 0 almost everywhere); only their `p` is differentiable.

Each augmentation's `params(key, x)` returns the per-sample parameters it draws (boxes, factors,
order, gates), so an independent implementation can reproduce a call exactly (the tests do).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk.data._augment import Augmentation
from sslntk.data._pytree import pytree_class

GATES = ("straight_through", "expected")
ORDERS = ("random", "fixed")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


# ---------------------------------------------------------------------------------------------
# deterministic primitives on one image (H, W, C)
# ---------------------------------------------------------------------------------------------

def grayscale(img):
    """Luma `0.299 R + 0.587 G + 0.114 B`, repeated over the 3 channels; 1-channel images as is."""
    if img.shape[-1] == 1:
        return img
    g = img[..., 0] * LUMA[0] + img[..., 1] * LUMA[1] + img[..., 2] * LUMA[2]
    return jnp.repeat(g[..., None], img.shape[-1], axis=-1)


def _clip(x):
    return jnp.clip(x, 0.0, 1.0)


def adjust_brightness(img, f):
    return _clip(f * img)


def adjust_contrast(img, f):
    m = jnp.mean(grayscale(img)[..., 0])
    return _clip(f * img + (1 - f) * m)


def adjust_saturation(img, f):
    return _clip(f * img + (1 - f) * grayscale(img))


def rgb_to_hsv(img):
    """torchvision's `_rgb2hsv` (hue in turns, [0, 1)), channels last."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    maxc = jnp.maximum(jnp.maximum(r, g), b)
    minc = jnp.minimum(jnp.minimum(r, g), b)
    eqc = maxc == minc
    cr = maxc - minc
    one = jnp.ones_like(maxc)
    s = cr / jnp.where(eqc, one, maxc)
    crd = jnp.where(eqc, one, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = jnp.where(maxc == r, bc - gc, 0.0)
    hg = jnp.where((maxc == g) & (maxc != r), 2.0 + rc - bc, 0.0)
    hb = jnp.where((maxc != g) & (maxc != r), 4.0 + gc - rc, 0.0)
    h = jnp.mod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return jnp.stack([h, s, maxc], axis=-1)


def hsv_to_rgb(hsv):
    """torchvision's `_hsv2rgb`, channels last."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = jnp.floor(h * 6.0)
    f = h * 6.0 - i
    i = jnp.mod(i, 6).astype(jnp.int32)
    p = _clip(v * (1.0 - s))
    q = _clip(v * (1.0 - s * f))
    t = _clip(v * (1.0 - s * (1.0 - f)))
    sel = i[..., None] == jnp.arange(6)
    r = jnp.sum(sel * jnp.stack([v, q, p, p, t, v], -1), -1)
    g = jnp.sum(sel * jnp.stack([t, v, v, q, p, p], -1), -1)
    b = jnp.sum(sel * jnp.stack([p, p, t, v, v, q], -1), -1)
    return jnp.stack([r, g, b], axis=-1)


def adjust_hue(img, shift):
    """Rotate the hue by `shift` turns (torchvision `adjust_hue`); 1-channel images unchanged."""
    if img.shape[-1] == 1:
        return img
    hsv = rgb_to_hsv(img)
    hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + shift, 1.0))
    return hsv_to_rgb(hsv)


def _resample_matrix(start, length, size_in, size_out, dtype):
    """`(size_out, size_in)` bilinear weights sampling `[start, start + length)` at pixel centres."""
    i = jnp.arange(size_out, dtype=dtype)
    c = start + (i + 0.5) * length / size_out - 0.5
    c = jnp.clip(c, 0.0, size_in - 1)
    k = jnp.arange(size_in, dtype=dtype)
    return jax.nn.relu(1.0 - jnp.abs(c[:, None] - k[None, :]))


def resized_crop(img, box):
    """Crop `box = (top, left, height, width)` (real-valued pixels) of `img (H, W, C)` and resample
    it bilinearly to `(H, W)`."""
    H, W = img.shape[0], img.shape[1]
    Ty = _resample_matrix(box[0], box[2], H, H, img.dtype)
    Tx = _resample_matrix(box[1], box[3], W, W, img.dtype)
    return jnp.einsum("ih,hwc,jw->ijc", Ty, img, Tx)


def _blur_matrix(sigma, size, kernel_size, dtype):
    r = kernel_size // 2
    t = jnp.arange(-r, r + 1, dtype=dtype)
    w = jnp.exp(-0.5 * (t / sigma) ** 2)
    w = w / jnp.sum(w)
    i = np.arange(size)[:, None] + np.arange(-r, r + 1)[None, :]
    i = np.abs(i)
    i = np.where(i > size - 1, 2 * (size - 1) - i, i)                    # reflect (no edge repeat)
    onehot = (i[..., None] == np.arange(size)).astype(np.float64)        # (size, taps, size)
    return jnp.einsum("t,itj->ij", w, jnp.asarray(onehot, dtype))


def blur(img, sigma, kernel_size):
    """Separable Gaussian blur of `img (H, W, C)` with std `sigma` pixels, `kernel_size` taps,
    reflect padding (torchvision `gaussian_blur`)."""
    By = _blur_matrix(sigma, img.shape[0], kernel_size, img.dtype)
    Bx = _blur_matrix(sigma, img.shape[1], kernel_size, img.dtype)
    return jnp.einsum("ih,hwc,jw->ijc", By, img, Bx)


def default_kernel_size(H: int, W: int) -> int:
    """SimCLR's rule: 10 % of the image side, odd, at least 3."""
    return max(3, int(0.1 * min(H, W)) | 1)


# ---------------------------------------------------------------------------------------------
# the augmentations
# ---------------------------------------------------------------------------------------------

def _gate(p, u, gate, dtype):
    p = jnp.asarray(p, dtype)
    if gate == "expected":
        return p
    b = (u < p).astype(dtype)
    return b + p - jax.lax.stop_gradient(p)          # forward: b; ∂/∂p: 1


def _check_p(p):
    V.nonnegative_scalar("p", p, upper=1.0)


def _check_gate(gate):
    V.choice("gate", gate, GATES)


class _Image(Augmentation):
    """Per-sample image augmentation: `_n_uniform` uniforms per sample drawn from the key (column
    0 is the gate's when the class has `p`), then `_one(u_i, key_i, img_i)` vmapped."""

    _n_uniform = 1

    def _check(self, key, x):
        V.check_key("key", key)
        x = V.images("x", x)
        self._check_shape(x)
        return x

    def _check_shape(self, x):
        pass

    def _draw(self, key, x):
        ku, kk = jax.random.split(key)
        u = jax.random.uniform(ku, (x.shape[0], self._n_uniform), x.dtype)
        return u, jax.random.split(kk, x.shape[0])

    def _apply(self, key, x):
        u, keys = self._draw(key, x)
        return jax.vmap(self._one)(u, keys, x)

    def _gated(self, u0, img, out):
        g = _gate(self.p, u0, self.gate, img.dtype)
        return img + g * (out - img)

    def params(self, key, x) -> dict:
        """The per-sample parameters this call draws (numpy arrays, leading axis N)."""
        x = self._check(key, x)
        u, keys = self._draw(key, x)
        return {k: np.asarray(v) for k, v in jax.vmap(self._params)(u, keys, x).items()}

    def _applied(self, u0):
        return u0 < jnp.asarray(self.p, u0.dtype)


def _crop_box(aug, u, H, W):
    dt = u.dtype
    s0, s1 = (jnp.asarray(v, dt) for v in aug.scale)
    r0, r1 = (jnp.log(jnp.asarray(v, dt)) for v in aug.ratio)
    s = s0 + (s1 - s0) * u[0]
    r = jnp.exp(r0 + (r1 - r0) * u[1])
    area = s * H * W
    w = jnp.minimum(jnp.sqrt(area * r), W)
    h = jnp.minimum(jnp.sqrt(area / r), H)
    return jnp.stack([u[2] * (H - h), u[3] * (W - w), h, w])


@pytree_class(data=("scale", "ratio"))
@dataclass(frozen=True, eq=False)
class RandomResizedCrop(_Image):
    """Random resized crop to the input size (see the module docstring): area fraction in `scale`,
    aspect ratio (width / height) log-uniform in `ratio`, bilinear resampling. Differentiable in
    `scale` and `ratio`. `params` gives `box = (top, left, height, width)` per sample."""

    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    _n_uniform = 4

    def __post_init__(self):
        V.interval("scale", self.scale, lower=0.0, upper=1.0)
        V.interval("ratio", self.ratio, lower=0.0)

    def _one(self, u, k, img):
        return resized_crop(img, _crop_box(self, u, img.shape[0], img.shape[1]))

    def _params(self, u, k, img):
        return {"box": _crop_box(self, u, img.shape[0], img.shape[1])}


def random_resized_crop(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> RandomResizedCrop:
    """Random resized crop (torchvision `RandomResizedCrop` to the input size; see the module
    docstring for the differentiable parametrisation)."""
    return RandomResizedCrop(scale=V.interval("scale", scale, lower=0.0, upper=1.0),
                             ratio=V.interval("ratio", ratio, lower=0.0))


@pytree_class(data=("p",), static=("gate",))
@dataclass(frozen=True, eq=False)
class HorizontalFlip(_Image):
    """Mirror left–right with probability `p`."""

    p: float | jax.Array = 0.5
    gate: str = "straight_through"

    def __post_init__(self):
        _check_p(self.p)
        _check_gate(self.gate)

    def _one(self, u, k, img):
        return self._gated(u[0], img, img[:, ::-1])

    def _params(self, u, k, img):
        return {"applied": self._applied(u[0])}


def horizontal_flip(p=0.5, gate="straight_through") -> HorizontalFlip:
    return HorizontalFlip(p=p, gate=gate)


@pytree_class(data=("p",), static=("gate",))
@dataclass(frozen=True, eq=False)
class RandomGrayscale(_Image):
    """Replace an RGB image by its luma (repeated over the channels) with probability `p`."""

    p: float | jax.Array = 0.2
    gate: str = "straight_through"

    def __post_init__(self):
        _check_p(self.p)
        _check_gate(self.gate)

    def _one(self, u, k, img):
        return self._gated(u[0], img, grayscale(img))

    def _params(self, u, k, img):
        return {"applied": self._applied(u[0])}


def random_grayscale(p=0.2, gate="straight_through") -> RandomGrayscale:
    return RandomGrayscale(p=p, gate=gate)


@pytree_class(data=("brightness", "contrast", "saturation", "hue", "p"), static=("order", "gate"))
@dataclass(frozen=True, eq=False)
class ColorJitter(_Image):
    """torchvision `ColorJitter(brightness, contrast, saturation, hue)` applied with probability
    `p` (`RandomApply`), on [0, 1] images; factors `1 + b(2u − 1)`, hue shift `hue·(2u − 1)` turns;
    random order per sample unless `order="fixed"`. Differentiable in all four strengths and `p`."""

    brightness: float | jax.Array = 0.4
    contrast: float | jax.Array = 0.4
    saturation: float | jax.Array = 0.2
    hue: float | jax.Array = 0.1
    p: float | jax.Array = 0.8
    order: str = "random"
    gate: str = "straight_through"
    _n_uniform = 5

    def __post_init__(self):
        for n in ("brightness", "contrast", "saturation"):
            V.nonnegative_scalar(n, getattr(self, n), upper=1.0)
        V.nonnegative_scalar("hue", self.hue, upper=0.5)
        _check_p(self.p)
        V.choice("order", self.order, ORDERS)
        _check_gate(self.gate)

    def _check_shape(self, x):
        if x.shape[-1] not in (1, 3):
            raise ValueError(f"x: expected 1 or 3 channels for colour jitter, got shape "
                             f"{tuple(x.shape)}")

    def _factors(self, u):
        dt = u.dtype
        one = jnp.asarray(1.0, dt)
        return (one + jnp.asarray(self.brightness, dt) * (2 * u[1] - 1),
                one + jnp.asarray(self.contrast, dt) * (2 * u[2] - 1),
                one + jnp.asarray(self.saturation, dt) * (2 * u[3] - 1),
                jnp.asarray(self.hue, dt) * (2 * u[4] - 1))

    def _order(self, k):
        return jnp.arange(4) if self.order == "fixed" else jax.random.permutation(k, 4)

    def _one(self, u, k, img):
        fb, fc, fs, fh = self._factors(u)
        ops = (lambda z: adjust_brightness(z, fb), lambda z: adjust_contrast(z, fc),
               lambda z: adjust_saturation(z, fs), lambda z: adjust_hue(z, fh))
        order = self._order(k)
        # one traced body for the four steps (a Python loop would compile four copies)
        out = jax.lax.fori_loop(0, 4, lambda j, z: jax.lax.switch(order[j], ops, z), img)
        return self._gated(u[0], img, out)

    def _params(self, u, k, img):
        fb, fc, fs, fh = self._factors(u)
        return {"brightness": fb, "contrast": fc, "saturation": fs, "hue": fh,
                "order": self._order(k), "applied": self._applied(u[0])}


def color_jitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=0.8, order="random",
                 gate="straight_through") -> ColorJitter:
    return ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue,
                       p=p, order=order, gate=gate)


@pytree_class(data=("sigma", "p"), static=("kernel_size", "gate"))
@dataclass(frozen=True, eq=False)
class GaussianBlur(_Image):
    """Gaussian blur with σ uniform in `sigma` (pixels), `kernel_size` taps (None: 10 % of the
    image side, odd, >= 3), reflect padding, applied with probability `p`. Differentiable in
    `sigma` and `p`."""

    sigma: tuple = (0.1, 2.0)
    p: float | jax.Array = 0.5
    kernel_size: int | None = None
    gate: str = "straight_through"
    _n_uniform = 2

    def __post_init__(self):
        V.interval("sigma", self.sigma, lower=0.0)
        _check_p(self.p)
        if self.kernel_size is not None:
            V.odd_int("kernel_size", self.kernel_size, minimum=3)
        _check_gate(self.gate)

    def _ks(self, img):
        return self.kernel_size or default_kernel_size(img.shape[0], img.shape[1])

    def _check_shape(self, x):
        ks = self.kernel_size or default_kernel_size(x.shape[1], x.shape[2])
        if ks // 2 > min(x.shape[1], x.shape[2]) - 1:
            raise ValueError(f"kernel_size: expected a radius <= image side - 1 (reflect padding), "
                             f"got kernel_size {ks} for images {tuple(x.shape[1:3])}")

    def _sigma(self, u):
        s0, s1 = (jnp.asarray(v, u.dtype) for v in self.sigma)
        return s0 + (s1 - s0) * u[1]

    def _one(self, u, k, img):
        return self._gated(u[0], img, blur(img, self._sigma(u), self._ks(img)))

    def _params(self, u, k, img):
        return {"sigma": self._sigma(u), "applied": self._applied(u[0]),
                "kernel_size": jnp.asarray(self._ks(img))}


def gaussian_blur(sigma=(0.1, 2.0), p=0.5, kernel_size=None, gate="straight_through") -> GaussianBlur:
    return GaussianBlur(sigma=V.interval("sigma", sigma, lower=0.0), p=p, kernel_size=kernel_size,
                        gate=gate)


@pytree_class(data=("p", "threshold"), static=("gate",))
@dataclass(frozen=True, eq=False)
class Solarize(_Image):
    """Solarisation `x → x if x < threshold else 1 − x` (BYOL; torchvision `RandomSolarize` on
    [0, 1] images) with probability `p`. Differentiable in `p` (the threshold's gradient is 0
    almost everywhere)."""

    p: float | jax.Array = 0.2
    threshold: float | jax.Array = 0.5
    gate: str = "straight_through"

    def __post_init__(self):
        _check_p(self.p)
        V.nonnegative_scalar("threshold", self.threshold, upper=1.0)
        _check_gate(self.gate)

    def _one(self, u, k, img):
        t = jax.lax.stop_gradient(jnp.asarray(self.threshold, img.dtype))
        return self._gated(u[0], img, jnp.where(img < t, img, 1.0 - img))

    def _params(self, u, k, img):
        return {"applied": self._applied(u[0])}


def solarize(p=0.2, threshold=0.5, gate="straight_through") -> Solarize:
    return Solarize(p=p, threshold=threshold, gate=gate)


@pytree_class(data=("scale", "shift"))
@dataclass(frozen=True, eq=False)
class Affine(Augmentation):
    """Deterministic `x · scale + shift` (`scale`, `shift` broadcast against one sample, e.g. `(C,)`
    per channel): maps standardised data to [0, 1] pixels and back around the photometric
    augmentations (`unstandardize` / `standardize`)."""

    scale: jax.Array | float = 1.0
    shift: jax.Array | float = 0.0

    def __post_init__(self):
        V.as_float_array("scale", jnp.asarray(self.scale, dtype=float))
        V.as_float_array("shift", jnp.asarray(self.shift, dtype=float))

    def _check(self, key, x):
        x = super()._check(key, x)
        try:
            np.broadcast_shapes(np.shape(self.scale), np.shape(self.shift), x.shape[1:])
        except ValueError:
            raise ValueError(f"x: expected samples broadcastable with scale {np.shape(self.scale)}"
                             f" and shift {np.shape(self.shift)}, got shape {tuple(x.shape)}") \
                from None
        return x

    def _apply(self, key, x):
        return x * jnp.asarray(self.scale, x.dtype) + jnp.asarray(self.shift, x.dtype)


def _stats(mean, std):
    m = np.asarray(mean, dtype=np.float64)
    s = np.asarray(std, dtype=np.float64)
    if not np.all(np.isfinite(m)):
        raise ValueError(f"mean: expected finite values, got {mean!r}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"std: expected finite values > 0, got {std!r}")
    return m, s


def unstandardize(mean=0.0, std=1.0) -> Affine:
    """`x · std + mean`: standardised data back to pixel units."""
    m, s = _stats(mean, std)
    return Affine(scale=s, shift=m)


def standardize(mean=0.0, std=1.0) -> Affine:
    """`(x − mean) / std`: pixel units to standardised data."""
    m, s = _stats(mean, std)
    return Affine(scale=1.0 / s, shift=-m / s)
