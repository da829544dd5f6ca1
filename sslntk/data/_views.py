"""Paired augmented views: `Views` (stacked order `[a_1..a_n, b_1..b_n]`, optional draw axis) and
`make_views(x, augment, key, n_draws)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from sslntk import _validate as V
from sslntk.data._augment import Augmentation, ViewPair, compose
from sslntk.data._pytree import pytree_class


@pytree_class(data=("a", "b"), static=("feature_ndim",))
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
        a = V.as_float_array("a", self.a)
        b = V.as_float_array("b", self.b)
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
        f = V.as_float_array("f", f)
        if f.ndim < 1 or f.shape[0] % 2 or f.shape[0] < 4:
            raise ValueError(f"f: expected stacked views [a_1..a_n, b_1..b_n] with an even leading "
                             f"dimension 2n >= 4, got shape {tuple(f.shape)}")
        n = f.shape[0] // 2
        return cls(f[:n], f[n:], f.ndim - 1 if feature_ndim is None else feature_ndim)


def _views(augment, x, key, n_draws: int):
    aug_a, aug_b = (augment.a, augment.b) if isinstance(augment, ViewPair) else (augment, augment)

    def run(aug, k):
        return aug._apply(k, x) if isinstance(aug, Augmentation) else aug(k, x)

    def one(k):
        ka, kb = jax.random.split(k)
        return run(aug_a, ka), run(aug_b, kb)

    if n_draws == 1:
        return one(jax.random.fold_in(key, 0))
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_draws))
    return jax.vmap(one)(keys)


_views_jit = jax.jit(_views, static_argnames=("n_draws",))


def make_views(x, augment: Callable | None, key, n_draws: int = 1) -> Views:
    """Two augmented views of every row of `x: (n, ...)`.

    Draw i uses `k_i = jax.random.fold_in(key, i)`, split into one key for view a and one for view b,
    each passed to `augment(k, x)` (a whole-batch call; every sample gets its own randomness);
    `augment` may be a `ViewPair(aug_a, aug_b)` (or a 2-tuple) to draw view a with `aug_a` and view
    b with `aug_b` (the asymmetric BYOL / Barlow Twins recipes, `sslntk.data.recipe`). So
    views are nested across `n_draws`: draw 0 is the `n_draws=1` result, and draws with
    `n_draws=5` are the first five of `n_draws=10`. `augment=None` gives identical views `a = b = x`.
    `n_draws=1` returns `Views` without a draw axis, `n_draws > 1` with one (`(n_draws, n, ...)`).
    """
    x = V.batch("x", x)
    if x.shape[0] < 2:
        raise ValueError(f"x: expected n >= 2 source samples, got shape {tuple(x.shape)}")
    V.check_key("key", key)
    n_draws = V.positive_int("n_draws", n_draws)
    if augment is None:
        augment = compose()
    if isinstance(augment, tuple) and len(augment) == 2:
        augment = ViewPair(*augment)
    if not (callable(augment) or isinstance(augment, ViewPair)):
        raise TypeError(f"augment: expected an augmentation (callable (key, x) -> x), a ViewPair "
                        f"or None, got {type(augment).__name__}")
    members = (augment.a, augment.b) if isinstance(augment, ViewPair) else (augment,)
    for m in members:  # validate the input against each augmentation before tracing
        if isinstance(m, Augmentation):
            x = m._check(key, x)

    if all(isinstance(m, Augmentation) for m in members):
        a, b = _views_jit(augment, x, key, n_draws)
    else:  # a plain function cannot be a jit argument: run eagerly
        a, b = _views(augment, x, key, n_draws)
    want = x.shape if n_draws == 1 else (n_draws, *x.shape)
    if a.shape != want or b.shape != want:
        raise ValueError(f"augment: expected output of the input's shape {tuple(x.shape)}, got "
                         f"{tuple(a.shape[n_draws > 1:])}")
    return Views(a, b, x.ndim - 1)

