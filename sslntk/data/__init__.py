"""Datasets (built-in, offline), differentiable augmentations and paired `Views`.

Datasets — `load(name, **options) -> Dataset`, names from `datasets()`:

* `"digits"`: scikit-learn's bundled 1797 8×8 handwritten digits (no download), kept as NHWC images
  `(n, 8, 8, 1)`; `Dataset.flat` is the `(n, 64)` view. Standardised on the selected subset (see
  `digits`).
* `"gaussian_mixture"`: classes at the vertices of a regular simplex (every pair of class means
  `separation` apart), isotropic within-class noise, optional class `weights` (imbalance). Exposes
  its population covariance `A`.
* `"spiked"`: the linear model of Ziyin et al. (ICLR 2023): `x ~ N(0, A)`, views
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
`Views.stacked` is `(2n, ...)` in the order `[a_1..a_n, b_1..b_n]` (docs/concepts.md). With `n_draws > 1`
every array gains a leading draw axis `(n_draws, n, ...)`; `views.draws()` yields one single-draw
`Views` per draw, so an augmentation-averaged kernel is `mean_i K(views.draw(i).stacked)`
(or a `jax.lax.map`/`vmap` over `views.stacked`'s leading axis).

Randomness: every random function takes an explicit `jax.random` key (typed `jax.random.key` or raw
`PRNGKey`); same key, same result.

One concept per private module (the public names are re-exported here):

* `_augment`: the augmentation pytrees and their constructors, `shift`, the name registry.
* `_views`: `Views` and `make_views`.
* `_datasets`: `Dataset`, the built-in loaders and `load` / `datasets`.
* `_pytree`: `pytree_class`, the pytree registration the augmentations and `Views` share.
Input checks (keys, dtypes, batches, covariances) live in `sslntk._validate`.
"""

from sslntk.data._augment import (  # noqa: F401  (PADDINGS: translate's padding modes)
    PADDINGS,
    Augmentation,
    Compose,
    GaussianNoise,
    Jitter,
    Mask,
    Translate,
    ViewPair,
    augmentation,
    augmentations,
    compose,
    gaussian_noise,
    jitter,
    mask,
    shift,
    translate,
)
from sslntk.data._datasets import (  # noqa: F401  (STANDARDIZE: digits' standardisations)
    STANDARDIZE,
    Dataset,
    datasets,
    digits,
    gaussian_mixture,
    load,
    spiked,
)
from sslntk.data._download import DownloadError, fetch
from sslntk.data._files import (  # noqa: F401  (SPLITS, STANDARDIZE_IMAGES: file datasets' options)
    SPLITS,
    STANDARDIZE_IMAGES,
    cifar10,
    cifar100,
    data_root,
    fashion_mnist,
    load_files,
    mnist,
    stl10,
)
from sslntk.data._formats import (
    FormatError,
    read_cifar_batch,
    read_idx,
    read_stl10_images,
    read_stl10_labels,
    write_idx,
)
from sslntk.data._image import (  # noqa: F401  (GATES, ORDERS: the gate / jitter-order modes)
    GATES,
    ORDERS,
    Affine,
    ColorJitter,
    GaussianBlur,
    HorizontalFlip,
    RandomGrayscale,
    RandomResizedCrop,
    Solarize,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    gaussian_blur,
    grayscale,
    horizontal_flip,
    random_grayscale,
    random_resized_crop,
    resized_crop,
    solarize,
    standardize,
    unstandardize,
)
from sslntk.data._recipes import recipe, recipes
from sslntk.data._views import Views, make_views

__all__ = [
    "Dataset", "load", "datasets", "digits", "gaussian_mixture", "spiked",
    "mnist", "fashion_mnist", "cifar10", "cifar100", "stl10", "load_files", "data_root",
    "read_idx", "write_idx", "read_cifar_batch", "read_stl10_images", "read_stl10_labels",
    "FormatError", "fetch", "DownloadError",
    "Augmentation", "GaussianNoise", "Translate", "Mask", "Jitter", "Compose",
    "gaussian_noise", "translate", "mask", "jitter", "compose", "shift", "augmentation",
    "augmentations", "Views", "make_views", "ViewPair",
    "RandomResizedCrop", "HorizontalFlip", "ColorJitter", "RandomGrayscale", "GaussianBlur",
    "Solarize", "Affine", "random_resized_crop", "horizontal_flip", "color_jitter",
    "random_grayscale", "gaussian_blur", "solarize", "standardize", "unstandardize", "recipe",
    "recipes", "grayscale", "adjust_brightness", "adjust_contrast", "adjust_saturation",
    "adjust_hue", "resized_crop",
]
