"""Differentiable augmentations: frozen pytrees `aug(key, x) -> x_aug` (`gaussian_noise`,
`translate`, `mask`, `jitter`, `compose`) with their strengths as leaves, and the name registry
(`augmentation`, `augmentations`). Formulas and conventions: the `sslntk.data` package docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk.data._pytree import pytree_class


def sqrtm_psd(M: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root (round-off negative eigenvalues set to 0)."""
    w, Q = np.linalg.eigh(M)
    return (Q * np.sqrt(np.clip(w, 0, None))) @ Q.T



class Augmentation:
    """Base of every augmentation: `aug(key, x) -> x_aug`, `x` a float batch `(N, ...)`, output of
    the same shape and dtype. Subclasses are frozen pytrees whose strengths are leaves."""

    def __call__(self, key, x) -> jax.Array:
        x = self._check(key, x)
        return _apply_jit(self, key, x)

    def _check(self, key, x) -> jax.Array:
        """Validate the call's inputs (at the API boundary, before tracing); return `x` as an array."""
        V.check_key("key", key)
        return V.batch("x", x)

    def _apply(self, key, x) -> jax.Array:  # pragma: no cover - abstract
        """The augmentation itself, on validated inputs (runs traced, under one `jax.jit`)."""
        raise NotImplementedError


@jax.jit
def _apply_jit(aug: Augmentation, key, x):
    # One compiled program per (augmentation structure, shapes, dtypes) instead of one dispatch per
    # operation; strengths are traced leaves, so new strength values reuse the compiled program.
    return aug._apply(key, x)


@pytree_class(data=("strength", "cov_sqrt"))
@dataclass(frozen=True, eq=False)
class GaussianNoise(Augmentation):
    """Additive Gaussian noise `x + strength · ε L`, `ε ~ N(0, I)` per sample over its flattened
    features `D`; `cov_sqrt` is `L` (`(D, D)` symmetric, or `(D,)` for a diagonal, or None for the
    identity). Noise covariance: `covariance = strength² · L Lᵀ`. Build with `gaussian_noise`."""

    strength: float | jax.Array = 0.1
    cov_sqrt: jax.Array | None = None

    def __post_init__(self):
        V.nonnegative_scalar("strength", self.strength)

    @property
    def covariance(self) -> jax.Array | None:
        """`strength² · cov` (`(D, D)`); None when `cov_sqrt` is None (then it is `strength² I`)."""
        if self.cov_sqrt is None:
            return None
        L = jnp.asarray(self.cov_sqrt)
        C = jnp.diag(L**2) if L.ndim == 1 else L @ L.T
        return jnp.asarray(self.strength) ** 2 * C

    def _check(self, key, x):
        x = super()._check(key, x)
        D = int(np.prod(x.shape[1:]))
        if self.cov_sqrt is not None and jnp.shape(self.cov_sqrt)[0] != D:
            raise ValueError(f"x: expected {jnp.shape(self.cov_sqrt)[0]} features per sample to "
                             f"match the noise covariance, got shape {tuple(x.shape)} ({D} features)")
        return x

    def _apply(self, key, x):
        N, D = x.shape[0], int(np.prod(x.shape[1:]))
        s = jnp.asarray(self.strength, x.dtype)
        eps = jax.random.normal(key, (N, D), x.dtype)
        if self.cov_sqrt is not None:
            L = jnp.asarray(self.cov_sqrt, x.dtype)
            eps = eps * L if L.ndim == 1 else eps @ L.T
        return x + s * eps.reshape(x.shape)


def gaussian_noise(strength: float = 0.1, cov=None) -> GaussianNoise:
    """Additive Gaussian noise with std `strength` (σ ≥ 0) and shape `cov` (`(D, D)` PSD or `(D,)`
    variances over the flattened features; None = identity): noise covariance `σ² · cov`."""
    V.nonnegative_scalar("strength", strength)
    L = None
    if cov is not None:
        C = V.covariance("cov", cov)
        if np.ndim(cov) == 1:
            L = jnp.asarray(np.sqrt(np.diag(C)), dtype=jnp.asarray(cov).dtype)
        else:
            L = jnp.asarray(sqrtm_psd(C), dtype=jnp.asarray(cov).dtype)
    return GaussianNoise(strength=strength, cov_sqrt=L)


PADDINGS = ("zeros", "edge", "wrap")


def _interp_matrix(shift: jax.Array, size: int, padding: str, dtype) -> jax.Array:
    """`(N, size, size)` matrices T with `(T v)_i = v(i − shift)` by linear interpolation."""
    i = jnp.arange(size, dtype=dtype)[:, None]
    k = jnp.arange(size, dtype=dtype)[None, :]
    c = i[None] - shift[:, None, None]                         # source coordinate of output i
    if padding == "edge":
        c = jnp.clip(c, 0, size - 1)
    d = c - k
    if padding == "wrap":
        d = jnp.mod(d, size)
        d = jnp.minimum(d, size - d)
    return jax.nn.relu(1 - jnp.abs(d))


def shift(x, shifts, padding: str = "zeros") -> jax.Array:
    """Shift images `x: (N, H, W, C)` by `shifts: (N, 2)` pixels `(dy, dx)` (positive = content
    moves down/right), with bilinear interpolation for fractional shifts. `padding`: "zeros" (fill
    with 0), "edge" (replicate the border) or "wrap" (circular). Deterministic primitive of
    `translate`; differentiable in `shifts` except at integer crossings."""
    x = V.images("x", x)
    V.choice("padding", padding, PADDINGS)
    s = V.as_float_array("shifts", shifts, ndim=2)
    if s.shape != (x.shape[0], 2):
        raise ValueError(f"shifts: expected shape ({x.shape[0]}, 2), got {tuple(s.shape)}")
    s = s.astype(x.dtype)
    Ty = _interp_matrix(s[:, 0], x.shape[1], padding, x.dtype)
    Tx = _interp_matrix(s[:, 1], x.shape[2], padding, x.dtype)
    out = jnp.einsum("nih,nhwc->niwc", Ty, x)
    return jnp.einsum("njw,niwc->nijc", Tx, out)


@pytree_class(data=("strength",), static=("padding",))
@dataclass(frozen=True, eq=False)
class Translate(Augmentation):
    """Random translation of images `(N, H, W, C)` by `strength · u` pixels per axis, `u ~ U[-1, 1]²`
    per sample, bilinear interpolation, `padding` as in `shift`. With "zeros" this is a random crop
    of the image zero-padded by `strength` pixels, extended to sub-pixel offsets."""

    strength: float | jax.Array = 1.0
    padding: str = "zeros"

    def __post_init__(self):
        V.nonnegative_scalar("strength", self.strength)
        V.choice("padding", self.padding, PADDINGS)

    def _check(self, key, x):
        V.check_key("key", key)
        return V.images("x", x)

    def _apply(self, key, x):
        u = jax.random.uniform(key, (x.shape[0], 2), x.dtype, -1.0, 1.0)
        return shift(x, jnp.asarray(self.strength, x.dtype) * u, self.padding)


def translate(strength: float = 1.0, padding: str = "zeros") -> Translate:
    """Random sub-pixel translation of images by up to `strength` pixels per axis (see `Translate`)."""
    return Translate(strength=strength, padding=padding)


@pytree_class(data=("strength", "temperature"), static=("hard",))
@dataclass(frozen=True, eq=False)
class Mask(Augmentation):
    """Random masking: each pixel (images `(N, H, W, C)`: one mask per pixel shared by the channels)
    or coordinate (any other `(N, ...)`) is multiplied by a relaxed Bernoulli keep-mask

        m = sigmoid((log(1 − p) − log p + log u − log(1 − u)) / temperature),  u ~ U(0, 1),

    the binary-Concrete relaxation (Maddison et al. 2017) of a Bernoulli(1 − p) mask, p = `strength`
    the drop probability: P(m > 1/2) = 1 − p exactly, and m → 1[keep] as temperature → 0. Masked
    entries go to 0 (the mean of standardised data). p = 0 is the identity and p = 1 masks all.
    `hard=True`: the forward pass uses the hard mask 1[m > 1/2], the gradient that of m
    (straight-through estimator)."""

    strength: float | jax.Array = 0.1
    temperature: float | jax.Array = 0.1
    hard: bool = False

    def __post_init__(self):
        V.nonnegative_scalar("strength", self.strength, upper=1.0)
        V.positive_float("temperature", self.temperature)
        if not isinstance(self.hard, bool):
            raise TypeError(f"hard: expected a bool, got {self.hard!r}")

    def keep_mask(self, key, x) -> jax.Array:
        """The mask m (broadcastable to `x`) that `__call__` multiplies `x` by."""
        return _keep_mask_jit(self, key, self._check(key, x))

    def _keep_mask(self, key, x):
        shape = x.shape[:3] + (1,) if x.ndim == 4 else x.shape
        tiny = jnp.finfo(x.dtype).tiny
        u = jax.random.uniform(key, shape, x.dtype, tiny, 1.0)
        p = jnp.asarray(self.strength, x.dtype)
        t = jnp.asarray(self.temperature, x.dtype)
        interior = (p > 0) & (p < 1)
        ps = jnp.where(interior, p, 0.5)                       # keeps the unused branch finite
        z = (jnp.log1p(-ps) - jnp.log(ps) + jnp.log(u) - jnp.log1p(-u)) / t
        m = jnp.where(interior, jax.nn.sigmoid(z), jnp.where(p <= 0, 1.0, 0.0).astype(x.dtype))
        if self.hard:
            m = m + jax.lax.stop_gradient((m > 0.5).astype(x.dtype) - m)
        return m

    def _apply(self, key, x):
        return x * self._keep_mask(key, x)


_keep_mask_jit = jax.jit(Mask._keep_mask)


def mask(strength: float = 0.1, temperature: float = 0.1, hard: bool = False) -> Mask:
    """Random masking with drop probability `strength` in [0, 1] (see `Mask`)."""
    return Mask(strength=strength, temperature=temperature, hard=hard)


@pytree_class(data=("brightness", "contrast"))
@dataclass(frozen=True, eq=False)
class Jitter(Augmentation):
    """Brightness/contrast jitter per sample: `x' = (x − x̄)(1 + contrast · u₁) + x̄ + brightness · u₂`,
    `u ~ U[-1, 1]²`, `x̄` the sample mean over all its features. `contrast` in [0, 1) keeps the
    contrast factor positive; `brightness` >= 0 is an additive shift (data are standardised)."""

    brightness: float | jax.Array = 0.1
    contrast: float | jax.Array = 0.1

    def __post_init__(self):
        V.nonnegative_scalar("brightness", self.brightness)
        V.nonnegative_scalar("contrast", self.contrast, upper=1.0, upper_ok=False)

    def _apply(self, key, x):
        u = jax.random.uniform(key, (x.shape[0], 2), x.dtype, -1.0, 1.0)
        bshape = (x.shape[0],) + (1,) * (x.ndim - 1)
        c = (jnp.asarray(self.contrast, x.dtype) * u[:, 0]).reshape(bshape)
        b = (jnp.asarray(self.brightness, x.dtype) * u[:, 1]).reshape(bshape)
        mean = jnp.mean(x, axis=tuple(range(1, x.ndim)), keepdims=True)
        return x + (x - mean) * c + b            # = (x − x̄)(1 + c) + x̄ + b; exact x at 0


def jitter(brightness: float = 0.1, contrast: float = 0.1) -> Jitter:
    """Brightness/contrast jitter (see `Jitter`)."""
    return Jitter(brightness=brightness, contrast=contrast)


@pytree_class(data=("augs",))
@dataclass(frozen=True, eq=False)
class Compose(Augmentation):
    """Apply `augs` left to right; augmentation i draws from `jax.random.split(key, len(augs))[i]`.
    No augmentation: the identity."""

    augs: tuple = ()

    def __post_init__(self):
        if not isinstance(self.augs, tuple):
            raise TypeError(f"augs: expected a tuple of augmentations, got {type(self.augs).__name__}")
        for i, a in enumerate(self.augs):
            if not callable(a):
                raise TypeError(f"augs[{i}]: expected an augmentation (callable (key, x) -> x), "
                                f"got {type(a).__name__}")

    def __call__(self, key, x):
        x = self._check(key, x)
        if all(isinstance(a, Augmentation) for a in self.augs):
            return _apply_jit(self, key, x)
        return self._apply(key, x)  # plain-function members cannot be jit arguments: run eagerly

    def _check(self, key, x):
        x = super()._check(key, x)
        for a in self.augs:  # shape requirements of the members (e.g. translate needs images)
            if isinstance(a, Augmentation):
                a._check(key, x)
        return x

    def _apply(self, key, x):
        if not self.augs:
            return x
        for a, k in zip(self.augs, jax.random.split(key, len(self.augs)), strict=True):
            x = a._apply(k, x) if isinstance(a, Augmentation) else a(k, x)
        return x


def compose(*augs) -> Compose:
    """Chain augmentations (applied left to right, independent sub-keys); `compose()` = identity."""
    return Compose(augs=tuple(augs))


@pytree_class(data=("a", "b"))
@dataclass(frozen=True, eq=False)
class ViewPair:
    """Different augmentations for the two views (the asymmetric BYOL / Barlow Twins recipes):
    `make_views(x, ViewPair(aug_a, aug_b), key)` draws view a with `aug_a` and view b with `aug_b`
    (keys as for one augmentation). `ViewPair(aug, aug)` equals passing `aug`."""

    a: Callable
    b: Callable

    def __post_init__(self):
        for n in ("a", "b"):
            if not callable(getattr(self, n)):
                raise TypeError(f"{n}: expected an augmentation (callable (key, x) -> x), got "
                                f"{type(getattr(self, n)).__name__}")

    def _check(self, key, x):
        for aug in (self.a, self.b):
            if isinstance(aug, Augmentation):
                aug._check(key, x)


_AUGMENTATIONS: dict[str, Callable[..., Augmentation]] = {
    "gaussian_noise": gaussian_noise, "translate": translate, "mask": mask, "jitter": jitter,
    "identity": compose,
}


def _all_augmentations() -> dict[str, Callable[..., Augmentation]]:
    from sslntk.data import _image  # imports this module: look it up lazily

    return {**_AUGMENTATIONS, "random_resized_crop": _image.random_resized_crop,
            "horizontal_flip": _image.horizontal_flip, "color_jitter": _image.color_jitter,
            "random_grayscale": _image.random_grayscale, "gaussian_blur": _image.gaussian_blur,
            "solarize": _image.solarize}


def augmentations() -> list[str]:
    """Names accepted by `augmentation` (the named recipes are `sslntk.data.recipes()`)."""
    return sorted(_all_augmentations())


def augmentation(name: str, **params) -> Augmentation:
    """Build an augmentation by name (for configs): `augmentation("translate", strength=1.0)`."""
    V.choice("name", name, augmentations())
    return _all_augmentations()[name](**params)

