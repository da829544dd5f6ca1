"""Built-in offline datasets: `Dataset` and the loaders `digits`, `gaussian_mixture`, `spiked`,
and the registry `load` / `datasets` that also holds the file-backed image datasets of `_files`
(`mnist`, `fashion_mnist`, `cifar10`, `cifar100`, `stl10`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk.data._augment import Augmentation, GaussianNoise, sqrtm_psd
from sslntk.data._views import Views, make_views


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


def digits_file() -> Path:
    """The UCI optical digits file that scikit-learn ships (`sklearn/datasets/data/digits.csv.gz`,
    1797 rows of 64 pixels and the label), found without importing scikit-learn (importing it costs
    about a second: the built-in dataset should not)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the built-in 'digits' dataset reads the copy that scikit-learn "
                                  "ships; install scikit-learn")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    # The same parse as `sklearn.datasets.load_digits` (tests check equality with it).
    raw = np.loadtxt(digits_file(), delimiter=",")
    images, target = raw[:, :-1].reshape(-1, 8, 8).astype(np.float64), raw[:, -1].astype(np.int64)
    images.flags.writeable = False
    target.flags.writeable = False
    return images, target


def balanced_counts(n: int, available: np.ndarray) -> np.ndarray:
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
    dt = V.float_dtype(dtype, any_float=True)
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
        V.check_key("key", key)
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
        counts = balanced_counts(n, available)
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
    along the class direction; Ziyin et al. 2023, docs/theory/collapse.md). `info`: `means`, `weights`,
    `counts`.
    """
    dt = V.float_dtype(dtype, any_float=True)
    V.check_key("key", key)
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
        w = np.asarray(V.as_float_array("weights", np.asarray(weights, dtype=float), ndim=1),
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
    """The linear SSL model of Ziyin et al. (ICLR 2023): clean inputs `x ~ N(0, A)`, `(n, d)`.

    Data covariance `A`: either given (`(d, d)` PSD, or `(d,)` for a diagonal) or built as
    `diag(spikes, bulk, ..., bulk)` of size `dim` (default `spikes = (4, 2, 1, 0.5)`,
    `dim = len(spikes)`, `bulk = 0`).

    Augmentation covariance `B = σ² B0` (σ² times a fixed shape): `sigma` (default 0.5) is the
    noise std and `B0` (`(d, d)` PSD or `(d,)` diagonal, default `I`) its shape, e.g. a 0/1
    diagonal to perturb only some coordinates. Alternatively give `B` directly (then σ = 1,
    B0 = B; not together with `sigma`/`B0`).

    The views are sampled by `Dataset.augmentation = gaussian_noise(σ, cov=B0)` (std σ is the
    differentiable strength): `ds.views(key)` gives `x_a = x + ε_a`, `x_b = x + ε_b`, ε i.i.d.
    `N(0, B)`, so `Cov(x_a) = A + B`, `E[x_a x_bᵀ] = A`, `Cov(x_a − x_b) = 2B`.
    Labels: `y = 1[x · v₁ > 0]` with `v₁` the top eigenvector of A (a 2-class "signal" label for
    probes). `info`: `sigma`, `B0`, `Sigma = A + B`.
    """
    dt = V.float_dtype(dtype, any_float=True)
    V.check_key("key", key)
    n = V.positive_int("n", n, minimum=2)
    if A is not None:
        if spikes is not None:
            raise ValueError("spikes: give either A or spikes (with dim, bulk), not both")
        A_ = V.covariance("A", A)
        if dim is not None and V.positive_int("dim", dim) != A_.shape[0]:
            raise ValueError(f"dim: expected {A_.shape[0]} to match A, got {dim}")
    else:
        sp = (4.0, 2.0, 1.0, 0.5) if spikes is None else spikes
        sp = np.asarray(V.as_float_array("spikes", np.asarray(sp, dtype=float), ndim=1),
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
        s, B0_ = 1.0, V.covariance("B", B, d)
    else:
        s = 0.5 if sigma is None else sigma
        V.positive_float("sigma", s, allow_zero=True)
        s = float(s)
        B0_ = np.eye(d) if B0 is None else V.covariance("B0", B0, d)
    B_ = s**2 * B0_
    z = jax.random.normal(key, (n, d), jnp.float64 if dt.itemsize > 4 else jnp.float32)
    X = np.asarray(z, dtype=np.float64) @ sqrtm_psd(A_)
    v1 = np.linalg.eigh(A_)[1][:, -1]
    y = (X @ v1 > 0).astype(np.int32)
    aug = GaussianNoise(strength=s, cov_sqrt=jnp.asarray(sqrtm_psd(B0_), dtype=dt))
    return Dataset(name="spiked", x=jnp.asarray(X, dtype=dt), y=jnp.asarray(y), image_shape=None,
                   n_classes=2, A=jnp.asarray(A_, dtype=dt), B=jnp.asarray(B_, dtype=dt),
                   augmentation=aug,
                   info={"sigma": s, "B0": B0_, "Sigma": A_ + B_})


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": digits, "gaussian_mixture": gaussian_mixture, "spiked": spiked,
}


def _all_loaders() -> dict[str, Callable[..., Dataset]]:
    from sslntk.data._files import LOADERS  # imports this module: look it up lazily

    return {**_LOADERS, **LOADERS}


def datasets() -> list[str]:
    """Names accepted by `load`: the built-in ones and the file-backed image datasets."""
    return sorted(_all_loaders())


def load(name: str, **options) -> Dataset:
    """Load dataset `name` (see `datasets()`); `options` are the keyword arguments of the loader of
    the same name (`digits`, `gaussian_mixture`, `spiked`; `mnist`, `fashion_mnist`, `cifar10`,
    `cifar100`, `stl10`: `root`, `split`, `n`, `classes`, `standardize`, `key`, `download`,
    `progress`, see `sslntk.data.load_files`), including `dtype` (default float32)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a dataset name (str), got {type(name).__name__}")
    V.choice("name", name, datasets())
    return _all_loaders()[name](**options)
