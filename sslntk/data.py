"""Datasets (built-in, offline), differentiable augmentations and paired `Views`.

Datasets — `load(name, **options) -> Dataset`, names from `datasets()`:

* `"digits"`: scikit-learn's bundled 1797 8×8 handwritten digits (no download), kept as NHWC images
  `(n, 8, 8, 1)`; `Dataset.flat` is the `(n, 64)` view. Standardised on the selected subset (see
  `digits`).
* `"gaussian_mixture"`: classes at the vertices of a regular simplex (every pair of class means
  `separation` apart), isotropic within-class noise, optional class `weights` (imbalance). Exposes
  its population covariance `A`.
* `"spiked"`: the linear model of the Ziyin et al. digest §1.1: `x ~ N(0, A)`, views
  `x_a = x + ε_a`, `x_b = x + ε_b` with `ε ~ N(0, B)` i.i.d. and independent of `x`. Exposes `A`,
  `B` and the matching augmentation `Dataset.augmentation = gaussian_noise(σ, cov=B0)`
  (`B = σ² B0`), so `make_views(ds.x, ds.augmentation, key)` has `Cov(x_a) = A + B`,
  `E[x_a x_bᵀ] = A`, `Cov(x_a − x_b) = 2B`.

Augmentations — small frozen pytrees `aug(key, x) -> x_aug` acting on a batch `(N, ...)`, each
sample with its own randomness. Strengths are pytree leaves and enter reparametrised
(`strength × noise`, noise drawn from the key), so `jax.grad` flows to them and `jax.jit`/`jax.vmap`
work on them:

* `gaussian_noise(strength, cov=None)`: `x + strength · L ε`, `ε ~ N(0, I)`, `L Lᵀ = cov` (identity
  when `cov` is None). `strength` is the noise std σ (not the variance); covariance `σ² cov`.
* `translate(strength, padding="zeros")`: images `(N, H, W, C)` shifted by `strength · u` pixels per
  axis, `u ~ U[-1, 1]²`, with bilinear (tent) interpolation, i.e. a sub-pixel random crop of the
  padded image. Piecewise linear in the shift, so differentiable except where a shift crosses an
  integer (measure zero).
* `mask(strength, temperature=0.1, hard=False)`: each pixel (shared across channels) or coordinate
  is dropped (set to 0) with probability `strength`, using the binary-Concrete relaxation
  `m = sigmoid((logit(1 − p) + logit(u)) / temperature)`, `u ~ U(0, 1)`; as `temperature → 0` this
  is an exact Bernoulli(1 − p) keep-mask. `hard=True` uses the hard mask forward and the relaxed
  gradient backward (straight-through; then gradients do not equal finite differences).
* `jitter(brightness, contrast)`: per sample `x' = (x − x̄)(1 + contrast · u₁) + x̄ + brightness · u₂`,
  `u ~ U[-1, 1]²`, `x̄` the sample's mean over all its features.
* `compose(*augs)`: applied left to right, each with its own sub-key; `compose()` is the identity.

Each call validates its inputs, then runs as one compiled program (`jax.jit` over the augmentation
pytree: new strength values reuse it). `make_views` and `compose` also take plain functions
`(key, x) -> x_aug`, run without the outer `jit`.

Views — `make_views(x, augment, key, n_draws=1) -> Views`. `Views.a`, `Views.b` are `(n, ...)`,
`Views.stacked` is `(2n, ...)` in the order `[a_1..a_n, b_1..b_n]` (DESIGN.md). With `n_draws > 1`
every array gains a leading draw axis `(n_draws, n, ...)`; `views.draws()` yields one single-draw
`Views` per draw, so an augmentation-averaged kernel is `mean_i K(views.draw(i).stacked)`
(or a `jax.lax.map`/`vmap` over `views.stacked`'s leading axis).

Randomness: every random function takes an explicit `jax.random` key (typed `jax.random.key` or raw
`PRNGKey`); same key, same result.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V

__all__ = [
    "Dataset", "load", "datasets", "digits", "gaussian_mixture", "spiked",
    "Augmentation", "GaussianNoise", "Translate", "Mask", "Jitter", "Compose",
    "gaussian_noise", "translate", "mask", "jitter", "compose", "shift", "augmentation",
    "augmentations", "Views", "make_views",
]


# ---------------------------------------------------------------------------------------------------
# shared checks
# ---------------------------------------------------------------------------------------------------

def _float(name: str, x, *, ndim=None) -> jax.Array:
    """`_validate.as_float_array`, with the NaN/inf check done in numpy: a concrete array closed
    over inside `jax.jit` would otherwise be checked with staged (traced) jnp ops."""
    arr = V.as_float_array(name, x, ndim=ndim, finite=False)
    if V.is_concrete(arr) and arr.size:
        bad = int(np.sum(~np.isfinite(np.asarray(arr))))
        if bad:
            raise ValueError(f"{name}: expected finite values, got {bad} NaN/inf entries")
    return arr


def _check_key(name: str, key) -> None:
    """A `jax.random` key: typed (`jax.random.key`, shape ()) or raw (`PRNGKey`, uint32 (2,))."""
    hint = "expected a jax.random key (jax.random.key(seed) or jax.random.PRNGKey(seed))"
    if key is None or isinstance(key, (bool, int, float, np.integer, np.floating, str)):
        raise TypeError(f"{name}: {hint}, got {key!r}")
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is None:
        raise TypeError(f"{name}: {hint}, got {type(key).__name__}")
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise ValueError(f"{name}: expected a single key of shape (), got a key array of shape "
                             f"{shape}")
        return
    if dtype != np.uint32 or tuple(shape) != (2,):
        raise TypeError(f"{name}: {hint}, got an array of dtype {dtype} and shape {tuple(shape)}")


def _dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype: expected a floating dtype (float32/float64), got {dtype!r}") from e
    if not np.issubdtype(dt, np.floating):
        raise TypeError(f"dtype: expected a floating dtype (float32/float64), got {dt}")
    if dt.itemsize > 4 and not jax.config.jax_enable_x64:
        raise ValueError(f"dtype: {dt} needs 64-bit JAX; call "
                         f"jax.config.update('jax_enable_x64', True) first")
    return dt


def _psd(name: str, M, d: int | None = None) -> np.ndarray:
    """A covariance given as a `(d, d)` symmetric PSD matrix or a `(d,)` non-negative diagonal;
    returns the `(d, d)` float64 matrix. PSD is checked to round-off (relative 1e-10)."""
    if isinstance(M, (str, bytes)) or np.asarray(M).dtype == bool:
        raise TypeError(f"{name}: expected a numeric matrix or vector, got {M!r}")
    try:
        M = np.asarray(M, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a numeric matrix or vector, got {M!r}") from e
    arr = np.asarray(_float(name, M, ndim=(1, 2)), dtype=np.float64)
    if arr.ndim == 1:
        if np.any(arr < 0):
            raise ValueError(f"{name}: expected a non-negative diagonal (variances), got minimum "
                             f"{arr.min():.3g}")
        arr = np.diag(arr)
    if arr.shape[0] != arr.shape[1] or arr.shape[0] < 1:
        raise ValueError(f"{name}: expected a square (d, d) covariance, got shape {arr.shape}")
    if d is not None and arr.shape[0] != d:
        raise ValueError(f"{name}: expected shape ({d}, {d}) (or ({d},) for a diagonal), got "
                         f"{arr.shape}")
    scale = max(float(np.abs(arr).max()), 1e-300)
    if np.abs(arr - arr.T).max() > 1e-10 * scale:
        raise ValueError(f"{name}: expected a symmetric matrix, got max |M - M^T| = "
                         f"{np.abs(arr - arr.T).max():.3g}")
    w = np.linalg.eigvalsh((arr + arr.T) / 2)
    if w.min() < -1e-10 * scale:
        raise ValueError(f"{name}: expected a positive semi-definite matrix, got smallest "
                         f"eigenvalue {w.min():.3g}")
    return (arr + arr.T) / 2


def _sqrtm(M: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root (round-off negative eigenvalues set to 0)."""
    w, Q = np.linalg.eigh(M)
    return (Q * np.sqrt(np.clip(w, 0, None))) @ Q.T


def _batch(name: str, x, *, min_ndim: int = 2) -> jax.Array:
    """A float batch `(N, ...)` with N >= 1 and at least `min_ndim` axes."""
    arr = _float(name, x)
    if arr.ndim < min_ndim:
        raise ValueError(f"{name}: expected a batch (N, ...) of rank >= {min_ndim}, got shape "
                         f"{tuple(arr.shape)}")
    return arr


def _images(name: str, x) -> jax.Array:
    arr = _float(name, x)
    if arr.ndim != 4:
        raise ValueError(f"{name}: expected images (N, H, W, C), got shape {tuple(arr.shape)}")
    return arr


def _strength(name: str, v, *, upper: float | None = None, upper_ok: bool = True):
    """Non-negative (possibly traced) strength; optional upper bound checked on concrete values."""
    V.positive_float(name, v, allow_zero=True)
    if np.ndim(v) != 0:
        raise ValueError(f"{name}: expected a scalar, got shape {np.shape(v)}")
    if upper is not None and V.is_concrete(v):
        fv = float(v)
        if fv > upper or (fv == upper and not upper_ok):
            interval = f"[0, {upper:g}" + ("]" if upper_ok else ")")
            raise ValueError(f"{name}: expected a number in {interval}, got {v!r}")
    return v


# ---------------------------------------------------------------------------------------------------
# pytree registration that never re-runs __init__ (JAX builds nodes with tracer/None/object leaves)
# ---------------------------------------------------------------------------------------------------

def _pytree(data: Sequence[str], static: Sequence[str] = ()):
    data, static = tuple(data), tuple(static)

    def register(cls):
        def flatten_with_keys(obj):
            return ([(jax.tree_util.GetAttrKey(f), getattr(obj, f)) for f in data],
                    tuple(getattr(obj, f) for f in static))

        def flatten(obj):
            return [getattr(obj, f) for f in data], tuple(getattr(obj, f) for f in static)

        def unflatten(aux, children):
            obj = object.__new__(cls)
            for f, v in zip(data, children, strict=True):
                object.__setattr__(obj, f, v)
            for f, v in zip(static, aux, strict=True):
                object.__setattr__(obj, f, v)
            return obj

        jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
        return cls

    return register


# ---------------------------------------------------------------------------------------------------
# Augmentations
# ---------------------------------------------------------------------------------------------------

class Augmentation:
    """Base of every augmentation: `aug(key, x) -> x_aug`, `x` a float batch `(N, ...)`, output of
    the same shape and dtype. Subclasses are frozen pytrees whose strengths are leaves."""

    def __call__(self, key, x) -> jax.Array:
        x = self._check(key, x)
        return _apply_jit(self, key, x)

    def _check(self, key, x) -> jax.Array:
        """Validate the call's inputs (at the API boundary, before tracing); return `x` as an array."""
        _check_key("key", key)
        return _batch("x", x)

    def _apply(self, key, x) -> jax.Array:  # pragma: no cover - abstract
        """The augmentation itself, on validated inputs (runs traced, under one `jax.jit`)."""
        raise NotImplementedError


@jax.jit
def _apply_jit(aug: Augmentation, key, x):
    # One compiled program per (augmentation structure, shapes, dtypes) instead of one dispatch per
    # operation; strengths are traced leaves, so new strength values reuse the compiled program.
    return aug._apply(key, x)


@_pytree(data=("strength", "cov_sqrt"))
@dataclass(frozen=True, eq=False)
class GaussianNoise(Augmentation):
    """Additive Gaussian noise `x + strength · ε L`, `ε ~ N(0, I)` per sample over its flattened
    features `D`; `cov_sqrt` is `L` (`(D, D)` symmetric, or `(D,)` for a diagonal, or None for the
    identity). Noise covariance: `covariance = strength² · L Lᵀ`. Build with `gaussian_noise`."""

    strength: float | jax.Array = 0.1
    cov_sqrt: jax.Array | None = None

    def __post_init__(self):
        _strength("strength", self.strength)

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
    _strength("strength", strength)
    L = None
    if cov is not None:
        C = _psd("cov", cov)
        if np.ndim(cov) == 1:
            L = jnp.asarray(np.sqrt(np.diag(C)), dtype=jnp.asarray(cov).dtype)
        else:
            L = jnp.asarray(_sqrtm(C), dtype=jnp.asarray(cov).dtype)
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
    x = _images("x", x)
    V.choice("padding", padding, PADDINGS)
    s = _float("shifts", shifts, ndim=2)
    if s.shape != (x.shape[0], 2):
        raise ValueError(f"shifts: expected shape ({x.shape[0]}, 2), got {tuple(s.shape)}")
    s = s.astype(x.dtype)
    Ty = _interp_matrix(s[:, 0], x.shape[1], padding, x.dtype)
    Tx = _interp_matrix(s[:, 1], x.shape[2], padding, x.dtype)
    out = jnp.einsum("nih,nhwc->niwc", Ty, x)
    return jnp.einsum("njw,niwc->nijc", Tx, out)


@_pytree(data=("strength",), static=("padding",))
@dataclass(frozen=True, eq=False)
class Translate(Augmentation):
    """Random translation of images `(N, H, W, C)` by `strength · u` pixels per axis, `u ~ U[-1, 1]²`
    per sample, bilinear interpolation, `padding` as in `shift`. With "zeros" this is a random crop
    of the image zero-padded by `strength` pixels, extended to sub-pixel offsets."""

    strength: float | jax.Array = 1.0
    padding: str = "zeros"

    def __post_init__(self):
        _strength("strength", self.strength)
        V.choice("padding", self.padding, PADDINGS)

    def _check(self, key, x):
        _check_key("key", key)
        return _images("x", x)

    def _apply(self, key, x):
        u = jax.random.uniform(key, (x.shape[0], 2), x.dtype, -1.0, 1.0)
        return shift(x, jnp.asarray(self.strength, x.dtype) * u, self.padding)


def translate(strength: float = 1.0, padding: str = "zeros") -> Translate:
    """Random sub-pixel translation of images by up to `strength` pixels per axis (see `Translate`)."""
    return Translate(strength=strength, padding=padding)


@_pytree(data=("strength", "temperature"), static=("hard",))
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
        _strength("strength", self.strength, upper=1.0)
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


@_pytree(data=("brightness", "contrast"))
@dataclass(frozen=True, eq=False)
class Jitter(Augmentation):
    """Brightness/contrast jitter per sample: `x' = (x − x̄)(1 + contrast · u₁) + x̄ + brightness · u₂`,
    `u ~ U[-1, 1]²`, `x̄` the sample mean over all its features. `contrast` in [0, 1) keeps the
    contrast factor positive; `brightness` >= 0 is an additive shift (data are standardised)."""

    brightness: float | jax.Array = 0.1
    contrast: float | jax.Array = 0.1

    def __post_init__(self):
        _strength("brightness", self.brightness)
        _strength("contrast", self.contrast, upper=1.0, upper_ok=False)

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


@_pytree(data=("augs",))
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


_AUGMENTATIONS: dict[str, Callable[..., Augmentation]] = {
    "gaussian_noise": gaussian_noise, "translate": translate, "mask": mask, "jitter": jitter,
    "identity": compose,
}


def augmentations() -> list[str]:
    """Names accepted by `augmentation`."""
    return sorted(_AUGMENTATIONS)


def augmentation(name: str, **params) -> Augmentation:
    """Build an augmentation by name (for configs): `augmentation("translate", strength=1.0)`."""
    V.choice("name", name, augmentations())
    return _AUGMENTATIONS[name](**params)


# ---------------------------------------------------------------------------------------------------
# Views
# ---------------------------------------------------------------------------------------------------

@_pytree(data=("a", "b"), static=("feature_ndim",))
@dataclass(frozen=True, eq=False)
class Views:
    """Two augmented views of `n` source samples.

    `a`, `b`: `(n, *features)` for one augmentation draw, or `(n_draws, n, *features)` with a
    leading draw axis. `feature_ndim` is the rank of one sample (1 for vectors, 3 for NHWC images);
    it defaults to `a.ndim − 1` (no draw axis). Whether a draw axis is present is read off the
    arrays' rank, so `jax.vmap` over the draw axis sees single-draw `Views`.

    `stacked` is `(2n, ...)` (or `(n_draws, 2n, ...)`) in the order `[a_1..a_n, b_1..b_n]`; the
    positive-pair matrix is `Z = [[0, I], [I, 0]]`. For an augmentation-averaged kernel, average
    over `views.draws()` (one single-draw `Views` per draw) or map over `views.stacked`'s first axis.
    """

    a: jax.Array
    b: jax.Array
    feature_ndim: int | None = None

    def __post_init__(self):
        a = _float("a", self.a)
        b = _float("b", self.b)
        if a.shape != b.shape:
            raise ValueError(f"b: expected the shape of a {tuple(a.shape)}, got {tuple(b.shape)}")
        V.same_dtype(a=a, b=b)
        fnd = self.feature_ndim
        if fnd is None:
            fnd = a.ndim - 1
        fnd = V.positive_int("feature_ndim", fnd, minimum=0)
        if a.ndim not in (fnd + 1, fnd + 2):
            raise ValueError(f"a: expected shape (n, ...) or (n_draws, n, ...) with {fnd} feature "
                             f"axes, got shape {tuple(a.shape)}")
        n = a.shape[-fnd - 1]
        if n < 2:
            raise ValueError(f"a: expected n >= 2 source samples, got n = {n} "
                             f"(shape {tuple(a.shape)})")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "feature_ndim", fnd)

    @property
    def has_draws(self) -> bool:
        return self.a.ndim == self.feature_ndim + 2

    @property
    def n_draws(self) -> int:
        """Number of augmentation draws (1 when there is no draw axis)."""
        return self.a.shape[0] if self.has_draws else 1

    @property
    def n(self) -> int:
        """Number of source samples."""
        return self.a.shape[-self.feature_ndim - 1]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.a.shape[self.a.ndim - self.feature_ndim:])

    @property
    def stacked(self) -> jax.Array:
        """`[a_1..a_n, b_1..b_n]`: `(2n, ...)`, or `(n_draws, 2n, ...)` with draws."""
        return jnp.concatenate([self.a, self.b], axis=1 if self.has_draws else 0)

    def draw(self, i: int) -> Views:
        """The single-draw `Views` of draw `i` (itself when there is no draw axis and i == 0)."""
        if not self.has_draws:
            if i not in (0, -1):
                raise IndexError(f"i: single-draw Views has only draw 0, got {i}")
            return self
        return Views(self.a[i], self.b[i], self.feature_ndim)

    def draws(self) -> Iterator[Views]:
        """Iterate over single-draw `Views` (once, itself, when there is no draw axis)."""
        for i in range(self.n_draws):
            yield self.draw(i)

    def flatten(self) -> Views:
        """Same views with features flattened to one axis: `(n, D)` / `(n_draws, n, D)`."""
        lead = self.a.shape[: self.a.ndim - self.feature_ndim]
        return Views(self.a.reshape(*lead, -1), self.b.reshape(*lead, -1), 1)

    @classmethod
    def from_stacked(cls, f, feature_ndim: int | None = None) -> Views:
        """Inverse of `stacked` for one draw: `f: (2n, ...)` → `Views(f[:n], f[n:])`."""
        f = _float("f", f)
        if f.ndim < 1 or f.shape[0] % 2 or f.shape[0] < 4:
            raise ValueError(f"f: expected stacked views [a_1..a_n, b_1..b_n] with an even leading "
                             f"dimension 2n >= 4, got shape {tuple(f.shape)}")
        n = f.shape[0] // 2
        return cls(f[:n], f[n:], f.ndim - 1 if feature_ndim is None else feature_ndim)


def _views(augment, x, key, n_draws: int):
    def one(k):
        ka, kb = jax.random.split(k)
        return augment(ka, x), augment(kb, x)

    if n_draws == 1:
        return one(jax.random.fold_in(key, 0))
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_draws))
    return jax.vmap(one)(keys)


_views_jit = jax.jit(_views, static_argnames=("n_draws",))


def make_views(x, augment: Callable | None, key, n_draws: int = 1) -> Views:
    """Two augmented views of every row of `x: (n, ...)`.

    Draw i uses `k_i = jax.random.fold_in(key, i)`, split into one key for view a and one for view b,
    each passed to `augment(k, x)` (a whole-batch call; every sample gets its own randomness). So
    views are nested across `n_draws`: draw 0 is the `n_draws=1` result, and draws with
    `n_draws=5` are the first five of `n_draws=10`. `augment=None` gives identical views `a = b = x`.
    `n_draws=1` returns `Views` without a draw axis, `n_draws > 1` with one (`(n_draws, n, ...)`).
    """
    x = _batch("x", x)
    if x.shape[0] < 2:
        raise ValueError(f"x: expected n >= 2 source samples, got shape {tuple(x.shape)}")
    _check_key("key", key)
    n_draws = V.positive_int("n_draws", n_draws)
    if augment is None:
        augment = compose()
    if not callable(augment):
        raise TypeError(f"augment: expected an augmentation (callable (key, x) -> x) or None, got "
                        f"{type(augment).__name__}")

    if isinstance(augment, Augmentation):
        a, b = _views_jit(augment, x, key, n_draws)
    else:  # a plain function cannot be a jit argument: run eagerly
        a, b = _views(augment, x, key, n_draws)
    want = x.shape if n_draws == 1 else (n_draws, *x.shape)
    if a.shape != want or b.shape != want:
        raise ValueError(f"augment: expected output of the input's shape {tuple(x.shape)}, got "
                         f"{tuple(a.shape[n_draws > 1:])}")
    return Views(a, b, x.ndim - 1)


# ---------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset: inputs `x` (`(n, *features)`, float), integer labels `y` (`(n,)`, int32, in
    `0..n_classes-1`) and metadata. `image_shape` is `(H, W, C)` for image data, else None.
    `A`/`B`: data and augmentation covariances where the model defines them (`(D, D)`, D the
    flattened feature count); `augmentation`: the augmentation the model prescribes (spiked: the
    Gaussian noise with covariance `B`), else None. `info`: loader-specific metadata."""

    name: str
    x: jax.Array
    y: jax.Array
    image_shape: tuple[int, ...] | None
    n_classes: int
    A: jax.Array | None = None
    B: jax.Array | None = None
    augmentation: Augmentation | None = None
    info: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def dim(self) -> int:
        """Flattened feature count D."""
        return int(np.prod(self.x.shape[1:]))

    @property
    def dtype(self):
        return self.x.dtype

    @property
    def flat(self) -> jax.Array:
        """`x` as `(n, D)`."""
        return self.x.reshape(self.n, -1)

    def views(self, key, augment: Callable | None = None, n_draws: int = 1) -> Views:
        """`make_views(self.x, augment or self.augmentation, key, n_draws)`."""
        return make_views(self.x, augment if augment is not None else self.augmentation, key,
                          n_draws)

    def split(self, n_first: int) -> tuple[Dataset, Dataset]:
        """The first `n_first` samples and the rest (e.g. train / held-out), metadata kept."""
        n_first = V.positive_int("n_first", n_first)
        if n_first >= self.n:
            raise ValueError(f"n_first: expected an integer < n = {self.n}, got {n_first}")
        return (dataclasses.replace(self, x=self.x[:n_first], y=self.y[:n_first]),
                dataclasses.replace(self, x=self.x[n_first:], y=self.y[n_first:]))


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images, target = d.images.astype(np.float64), d.target.astype(np.int64)
    images.flags.writeable = False
    target.flags.writeable = False
    return images, target


def _balanced_counts(n: int, available: np.ndarray) -> np.ndarray:
    """Split n as evenly as possible over classes, capped by what each class has."""
    counts = np.zeros_like(available)
    remaining = n
    while remaining > 0:
        active = np.flatnonzero(counts < available)
        q, r = divmod(remaining, len(active))
        for j, c in enumerate(active):
            add = min(q + (j < r), available[c] - counts[c])
            counts[c] += add
            remaining -= add
    return counts


STANDARDIZE = ("global", "pixel", "none")


def digits(n: int | None = None, *, classes: Sequence[int] | None = None,
           standardize: str | bool = "global", key=None, dtype=jnp.float32) -> Dataset:
    """scikit-learn's 1797 8×8 digits (bundled, offline) as images `x: (n, 8, 8, 1)`.

    Selection: `classes` (digits to keep, default all ten; labels are re-indexed to
    `0..len(classes)-1` in sorted-digit order, `info["classes"]` maps back). `n` (default all):
    a class-balanced subset (counts differ by at most one, capped by availability): with `key=None`
    the first samples of each class in file order, kept in file order; with a `key` a random
    balanced subset in random order. `info["indices"]` are the rows of the original 1797.

    Standardisation, on the selected subset, in float64 before casting:
    * "global" (default, or True): `(x − mean) / std` with one mean and std over all pixels;
      keeps the images' spatial contrast (translations and masks stay meaningful).
    * "pixel": per-pixel z-score (sklearn `StandardScaler` semantics): each pixel's mean/std over
      the samples; pixels constant over the subset (std 0, e.g. the always-blank corners) are only
      centred, so they are exactly 0, never NaN.
    * "none" (or False): raw intensities / 16, in [0, 1].
    `info["mean"]`, `info["std"]` hold the statistics used (scalars or `(8, 8, 1)` arrays).
    """
    dt = _dtype(dtype)
    if isinstance(standardize, bool):
        standardize = "global" if standardize else "none"
    V.choice("standardize", standardize, STANDARDIZE)
    images, target = _digits_raw()
    if classes is None:
        classes = tuple(range(10))
    else:
        if isinstance(classes, (int, np.integer, str)) or not isinstance(classes, Sequence):
            raise TypeError(f"classes: expected a sequence of digits 0..9, got {classes!r}")
        bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, (int, np.integer))
               or not 0 <= c <= 9]
        if bad or len(set(classes)) != len(classes) or len(classes) < 1:
            raise ValueError(f"classes: expected distinct digits in 0..9 (at least one), got "
                             f"{list(classes)!r}")
        classes = tuple(sorted(int(c) for c in classes))
    pool = np.flatnonzero(np.isin(target, classes))
    if key is not None:
        _check_key("key", key)
    if n is None:
        idx = pool
    else:
        n = V.positive_int("n", n, minimum=2)
        if n > len(pool):
            raise ValueError(f"n: expected at most {len(pool)} (samples of classes {list(classes)}),"
                             f" got {n}")
        if key is not None:
            pool = pool[np.asarray(jax.random.permutation(key, len(pool)))]
        available = np.array([np.sum(target[pool] == c) for c in classes])
        counts = _balanced_counts(n, available)
        take = np.zeros(len(pool), bool)
        for c, k in zip(classes, counts, strict=True):
            take[np.flatnonzero(target[pool] == c)[:k]] = True
        idx = pool[take]
    if len(idx) < 2:
        raise ValueError(f"n: expected at least 2 samples, got {len(idx)}")
    X = images[idx][..., None]
    if standardize == "global":
        mean, std = X.mean(), X.std()
    elif standardize == "pixel":
        mean, std = X.mean(0), X.std(0)
        std = np.where(std > 0, std, 1.0)
    else:
        mean, std = 0.0, 16.0
    X = (X - mean) / std
    remap = {c: i for i, c in enumerate(classes)}
    y = np.array([remap[t] for t in target[idx]], dtype=np.int32)
    return Dataset(name="digits", x=jnp.asarray(X, dtype=dt), y=jnp.asarray(y),
                   image_shape=(8, 8, 1), n_classes=len(classes),
                   info={"standardize": standardize, "mean": mean, "std": std, "indices": idx,
                         "classes": classes})


def _simplex_means(n_classes: int, dim: int, separation: float) -> np.ndarray:
    """`(n_classes, dim)` vertices of a centred regular simplex, pairwise distance `separation`,
    in the first `n_classes − 1` coordinates (Helmert basis)."""
    K = n_classes
    H = np.zeros((K - 1, K))
    for j in range(1, K):
        H[j - 1, :j] = 1.0
        H[j - 1, j] = -j
        H[j - 1] /= np.sqrt(j * (j + 1))
    M = np.zeros((K, dim))
    M[:, : K - 1] = separation / np.sqrt(2.0) * H.T
    return M


def gaussian_mixture(n: int = 200, *, key, n_classes: int = 2, dim: int = 2,
                     separation: float = 4.0, within_std: float = 1.0,
                     weights: Sequence[float] | None = None, dtype=jnp.float32) -> Dataset:
    """Gaussian mixture `x = μ_y + within_std · ε`, `ε ~ N(0, I_dim)`, `x: (n, dim)`.

    Class means are the vertices of a regular simplex with every pair `separation` apart (in units
    of the coordinates; `separation / within_std` is the signal-to-noise ratio), spanning the first
    `n_classes − 1` coordinates (so `dim >= n_classes − 1`), then shifted so that the population
    mean `Σ_c w_c μ_c` is 0. `weights` (positive, normalised here; default uniform) are the class
    proportions: the class counts are `n · w` rounded by largest remainder (deterministic, summing to
    n), and the samples are shuffled with `key`. `A = within_std² I + Σ_c w_c μ_c μ_cᵀ` is the
    population covariance (for two classes at fractions p, 1−p: a = within² + p(1−p)·separation²
    along the class direction, Ziyin digest §4.2). `info`: `means`, `weights`, `counts`.
    """
    dt = _dtype(dtype)
    _check_key("key", key)
    n = V.positive_int("n", n, minimum=2)
    K = V.positive_int("n_classes", n_classes, minimum=2)
    dim = V.positive_int("dim", dim)
    if dim < K - 1:
        raise ValueError(f"dim: expected dim >= n_classes - 1 = {K - 1} (a simplex of {K} "
                         f"equidistant means), got {dim}")
    V.positive_float("separation", separation, allow_zero=True)
    V.positive_float("within_std", within_std)
    if weights is None:
        w = np.full(K, 1.0 / K)
    else:
        w = np.asarray(_float("weights", np.asarray(weights, dtype=float), ndim=1),
                       dtype=np.float64)
        if w.shape != (K,):
            raise ValueError(f"weights: expected {K} class weights (n_classes), got shape {w.shape}")
        if np.any(w <= 0):
            raise ValueError(f"weights: expected positive class weights, got {w.tolist()}")
        w = w / w.sum()
    raw = n * w
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    means = _simplex_means(K, dim, float(separation))
    means = means - w @ means
    A = float(within_std) ** 2 * np.eye(dim) + (means.T * w) @ means
    k_perm, k_noise = jax.random.split(key)
    y = np.repeat(np.arange(K), counts)[np.asarray(jax.random.permutation(k_perm, n))]
    eps = np.asarray(jax.random.normal(k_noise, (n, dim), jnp.float64 if dt.itemsize > 4
                                       else jnp.float32), dtype=np.float64)
    X = means[y] + float(within_std) * eps
    return Dataset(name="gaussian_mixture", x=jnp.asarray(X, dtype=dt),
                   y=jnp.asarray(y, dtype=jnp.int32), image_shape=None, n_classes=K,
                   A=jnp.asarray(A, dtype=dt),
                   info={"means": means, "weights": w, "counts": counts,
                         "separation": float(separation), "within_std": float(within_std)})


def spiked(n: int = 512, *, key, spikes: Sequence[float] | None = None, dim: int | None = None,
           bulk: float = 0.0, A=None, sigma: float | None = None, B0=None, B=None,
           dtype=jnp.float32) -> Dataset:
    """The linear SSL model of the Ziyin et al. digest §1.1: clean inputs `x ~ N(0, A)`, `(n, d)`.

    Data covariance `A`: either given (`(d, d)` PSD, or `(d,)` for a diagonal) or built as
    `diag(spikes, bulk, ..., bulk)` of size `dim` (default `spikes = (4, 2, 1, 0.5)`,
    `dim = len(spikes)`, `bulk = 0`).

    Augmentation covariance `B = σ² B0` (digest: "B = sigma^2 B_0"): `sigma` (default 0.5) is the
    noise std and `B0` (`(d, d)` PSD or `(d,)` diagonal, default `I`) its shape, e.g. a 0/1
    diagonal to perturb only some coordinates. Alternatively give `B` directly (then σ = 1,
    B0 = B; not together with `sigma`/`B0`).

    The views are sampled by `Dataset.augmentation = gaussian_noise(σ, cov=B0)` (std σ is the
    differentiable strength): `ds.views(key)` gives `x_a = x + ε_a`, `x_b = x + ε_b`, ε i.i.d.
    `N(0, B)`, so `Cov(x_a) = A + B`, `E[x_a x_bᵀ] = A`, `Cov(x_a − x_b) = 2B`.
    Labels: `y = 1[x · v₁ > 0]` with `v₁` the top eigenvector of A (a 2-class "signal" label for
    probes). `info`: `sigma`, `B0`, `Sigma = A + B`.
    """
    dt = _dtype(dtype)
    _check_key("key", key)
    n = V.positive_int("n", n, minimum=2)
    if A is not None:
        if spikes is not None:
            raise ValueError("spikes: give either A or spikes (with dim, bulk), not both")
        A_ = _psd("A", A)
        if dim is not None and V.positive_int("dim", dim) != A_.shape[0]:
            raise ValueError(f"dim: expected {A_.shape[0]} to match A, got {dim}")
    else:
        sp = (4.0, 2.0, 1.0, 0.5) if spikes is None else spikes
        sp = np.asarray(_float("spikes", np.asarray(sp, dtype=float), ndim=1),
                        dtype=np.float64)
        if sp.size < 1 or np.any(sp < 0):
            raise ValueError(f"spikes: expected one or more variances >= 0, got {sp.tolist()}")
        d = sp.size if dim is None else V.positive_int("dim", dim)
        if d < sp.size:
            raise ValueError(f"dim: expected dim >= len(spikes) = {sp.size}, got {d}")
        V.positive_float("bulk", bulk, allow_zero=True)
        A_ = np.diag(np.concatenate([sp, np.full(d - sp.size, float(bulk))]))
    d = A_.shape[0]
    if B is not None:
        if sigma is not None or B0 is not None:
            raise ValueError("B: give either B or sigma/B0 (B = sigma^2 B0), not both")
        s, B0_ = 1.0, _psd("B", B, d)
    else:
        s = 0.5 if sigma is None else sigma
        V.positive_float("sigma", s, allow_zero=True)
        s = float(s)
        B0_ = np.eye(d) if B0 is None else _psd("B0", B0, d)
    B_ = s**2 * B0_
    z = jax.random.normal(key, (n, d), jnp.float64 if dt.itemsize > 4 else jnp.float32)
    X = np.asarray(z, dtype=np.float64) @ _sqrtm(A_)
    v1 = np.linalg.eigh(A_)[1][:, -1]
    y = (X @ v1 > 0).astype(np.int32)
    aug = GaussianNoise(strength=s, cov_sqrt=jnp.asarray(_sqrtm(B0_), dtype=dt))
    return Dataset(name="spiked", x=jnp.asarray(X, dtype=dt), y=jnp.asarray(y), image_shape=None,
                   n_classes=2, A=jnp.asarray(A_, dtype=dt), B=jnp.asarray(B_, dtype=dt),
                   augmentation=aug,
                   info={"sigma": s, "B0": B0_, "Sigma": A_ + B_})


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": digits, "gaussian_mixture": gaussian_mixture, "spiked": spiked,
}


def datasets() -> list[str]:
    """Names accepted by `load`."""
    return sorted(_LOADERS)


def load(name: str, **options) -> Dataset:
    """Load dataset `name` (see `datasets()`); `options` are the keyword arguments of the loader of
    the same name (`digits`, `gaussian_mixture`, `spiked`), including `dtype` (default float32)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a dataset name (str), got {type(name).__name__}")
    V.choice("name", name, datasets())
    return _LOADERS[name](**options)
