"""Activations as objects: each holds its elementwise function and its dual kernel rule.

One `Activation` is the single place where a nonlinearity is spelled: the finite networks call it
(`act(x)`), the infinite-width recursion (`sslntk.kernels.ntk` / `nngp`) uses its dual maps, the
neural-tangents reference uses its `stax_layer()`, and configs / the CLI list its registry names
(`ACTIVATIONS`). neural-tangents' `stax.Relu()`, `stax.Erf()` (a layer that carries both the
function and its kernel map) is the pattern (Novak et al. 2020, "Neural Tangents").

Dual rule (NNGP and NTK maps through one nonlinearity; Neal 1996, Lee et al. 2018 for the NNGP,
Jacot et al. 2018 for the NTK): for a centred Gaussian pair `(u, v)` with `Var u = q1`,
`Var v = q2`, `Cov(u, v) = c`,

    dual(c, q1, q2)  = (E[φ(u) φ(v)], E[φ'(u) φ'(v)]),      variance(q) = E[φ(u)²], u ~ N(0, q).

The recursion then reads `Σˡ⁺¹ = σ_w² E[φφ] + σ_b²` and `Θˡ⁺¹ = σ_w² E[φ'φ'] Θˡ + Σˡ⁺¹` (see
`docs/concepts.md`). Closed forms: the arcsine kernel for erf (Williams 1997, "Computing with
infinite networks"), the degree-1 arc-cosine kernel for the piecewise-linear family (Cho & Saul
2009), and neural-tangents' closed form for the exact GELU. Every function broadcasts `c`, `q1`,
`q2` and keeps their dtype; each is checked against neural-tangents' kernels and, by Monte Carlo,
against its own finite function (tests/test_kernels.py).

String shorthand: `as_activation("erf")`, `as_activation("leaky_relu", leaky_slope=0.2)`; the
names are `ACTIVATIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from sslntk.kernels import _nt_compat

# Cephes `atan` (double: rational P/Q on [0, 0.66] after reduction, ~2 ulp) and `atanf` (float:
# degree-4 polynomial on [0, tan(π/8)], ~2 ulp); XLA's CPU arctan2 is ~4× slower than this, and
# the arc-cosine kernels evaluate one per pixel pair and layer.
_ATAN_P = (-8.750608600031904122785e-1, -1.615753718733365076637e1, -7.500855792314704667340e1,
           -1.228866684490136173410e2, -6.485021904942025371773e1)
_ATAN_Q = (2.485846490142306297962e1, 1.650270098316988542046e2, 4.328810604912902668951e2,
           4.853903996359136964868e2, 1.945506571482613964425e2)
_ATANF = (8.05374449538e-2, -1.38776856032e-1, 1.99777106478e-1, -3.33329491539e-1)


def _atan2(y, x):
    """`arctan2(y, x)` (numpy's conventions, `atan2(0, 0) = 0`) from mul/add/div/select only
    (Cephes `atan`/`atanf`, S. L. Moshier; the ratio reduced to [0, 1] by swapping |y|, |x|)."""
    ay, ax = jnp.abs(y), jnp.abs(x)
    hi, lo = jnp.maximum(ay, ax), jnp.minimum(ay, ax)
    f64 = jnp.dtype(jnp.result_type(y, x)) == jnp.float64
    big = lo > (0.66 if f64 else 0.41421356237309503) * hi
    t = jnp.where(big, lo - hi, lo) / jnp.where(big, lo + hi, jnp.where(hi > 0, hi, 1))
    z = t * t
    if f64:
        P, Q = _ATAN_P, _ATAN_Q
        p = (((P[0] * z + P[1]) * z + P[2]) * z + P[3]) * z + P[4]
        q = ((((z + Q[0]) * z + Q[1]) * z + Q[2]) * z + Q[3]) * z + Q[4]
        r = t + t * (z * p / q)
    else:
        F = _ATANF
        r = t + t * z * (((F[0] * z + F[1]) * z + F[2]) * z + F[3])
    a = jnp.where(big, jnp.pi / 4 + r, r)
    a = jnp.where(ay > ax, jnp.pi / 2 - a, a)
    a = jnp.where(x < 0, jnp.pi - a, a)
    return jnp.where(y < 0, -a, a)


def _finite(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not (
            np.isfinite(v)):
        raise ValueError(f"{name}: expected a finite number, got {v!r}")
    return float(v)


@dataclass(frozen=True)
class Activation:
    """An elementwise nonlinearity φ with its dual kernel rule (base class; hashable, static).

    Subclasses define `name` (the registry / config name), `__call__` (φ on an array, any shape),
    `dual(c, q1, q2, need_dot)` and `variance(q)` (the Gaussian expectations in the module
    docstring), and `stax_layer()` (the neural-tangents layer, for the reference kernels only).
    A user subclass that implements these works in `kernels.mlp/cnn`, `kernels.ntk` and
    `sslntk.finite.network` alike.
    """

    name: ClassVar[str] = "activation"

    def __call__(self, x):
        raise NotImplementedError(f"{type(self).__name__}: no elementwise function defined")

    def dual(self, c, q1, q2, need_dot: bool = True):
        """`(E[φ(u)φ(v)], E[φ'(u)φ'(v)] or None)` for `Var u = q1`, `Var v = q2`, `Cov = c`
        (broadcasting arrays, same dtype)."""
        raise NotImplementedError(f"{type(self).__name__}: no dual kernel rule defined")

    def variance(self, q):
        """`E[φ(u)²]` for `u ~ N(0, q)` (the NNGP map on the diagonal, `c = q1 = q2 = q`)."""
        raise NotImplementedError(f"{type(self).__name__}: no dual kernel rule defined")

    def stax_layer(self):
        """The neural-tangents `stax` layer with the same function and kernel."""
        raise NotImplementedError(f"{type(self).__name__}: no neural-tangents layer (the native "
                                  f"kernels do not need one)")

    def __str__(self) -> str:
        return self.name


class _PiecewiseLinear(Activation):
    """`φ(x) = a·min(x, 0) + b·max(x, 0)` (neural-tangents' `ABRelu(a, b)`), the family whose dual
    is the degree-1 arc-cosine kernel (Cho & Saul 2009). Subclasses give `slopes = (a, b)`."""

    @property
    def slopes(self) -> tuple[float, float]:
        raise NotImplementedError

    def __call__(self, x):
        a, b = self.slopes
        return a * jnp.minimum(x, 0) + b * jnp.maximum(x, 0)

    def dual(self, c, q1, q2, need_dot: bool = True):
        """`E[φφ] = (a − b)²/2π · sqrt(q1 q2 − c²) + ((a² + b²)/2 − (a − b)²θ/2π)·c`,
        `E[φ'φ'] = (a² + b²)/2 − (a − b)²θ/2π`, θ the angle between u and v (Cho & Saul 2009, the
        degree-1 arc-cosine kernel; as neural-tangents' `stax.ABRelu`)."""
        a, b = self.slopes
        # sin²θ·q1·q2 = q1 q2 − c². Where sin²θ is below round-off (identical inputs; c and q
        # rounded differently, or an FMA-contracted q·q − c·c) it is set to 0: otherwise θ comes
        # out O(sqrt(eps)) instead of 0 and the NTK factor E[φ'φ'] = (a²+b²)/2 − (a−b)²θ/2π is off
        # by O(sqrt(eps)) (3e-4 in float32) on every duplicate pair. The change is below the
        # arc-cosine's own conditioning error there.
        prod = q1 * q2
        r2 = prod - c**2
        pos = r2 > 8 * jnp.finfo(c.dtype).eps * prod
        # double `where`: no sqrt'(0) = inf reaches jax.grad through the masked branch
        root = jnp.where(pos, jnp.sqrt(jnp.where(pos, r2, 1.0)), 0.0)
        ang = jnp.where((root == 0) & (c == 0), jnp.pi / 2, _atan2(root, c))  # nt's fill
        factor = (a - b) ** 2 / (2 * jnp.pi)
        dsig = (a**2 + b**2) / 2 - factor * ang
        return factor * root + dsig * c, (dsig if need_dot else None)

    def variance(self, q):
        a, b = self.slopes
        return (a**2 + b**2) / 2 * q


@dataclass(frozen=True)
class Relu(_PiecewiseLinear):
    """ReLU, `φ(x) = max(x, 0)` (`stax.Relu()`); dual: the arc-cosine kernel (Cho & Saul 2009)."""

    name: ClassVar[str] = "relu"

    @property
    def slopes(self):
        return (0.0, 1.0)

    def stax_layer(self):
        return _nt_compat.load().stax.Relu()


@dataclass(frozen=True)
class LeakyRelu(_PiecewiseLinear):
    """Leaky ReLU, `φ(x) = max(x, 0) + alpha·min(x, 0)` (`stax.LeakyRelu(alpha)`)."""

    alpha: float = 0.1
    name: ClassVar[str] = "leaky_relu"

    def __post_init__(self):
        object.__setattr__(self, "alpha", _finite("alpha", self.alpha))

    @property
    def slopes(self):
        return (self.alpha, 1.0)

    def stax_layer(self):
        return _nt_compat.load().stax.LeakyRelu(self.alpha)


@dataclass(frozen=True)
class Abs(_PiecewiseLinear):
    """`φ(x) = |x|` (`stax.Abs()`)."""

    name: ClassVar[str] = "abs"

    @property
    def slopes(self):
        return (-1.0, 1.0)

    def stax_layer(self):
        return _nt_compat.load().stax.Abs()


@dataclass(frozen=True)
class AbsRelu(_PiecewiseLinear):
    """`φ(x) = a·min(x, 0) + b·max(x, 0)` (neural-tangents' `stax.ABRelu(a, b)`): a = 0, b = 1 is
    ReLU, a = −1, b = 1 is |x|. The shorthand `"abs_relu"` with `leaky_slope = s` is
    `AbsRelu(-s, 1)`, `φ(x) = max(x, 0) − s·min(x, 0)`."""

    a: float
    b: float = 1.0
    name: ClassVar[str] = "abs_relu"

    def __post_init__(self):
        object.__setattr__(self, "a", _finite("a", self.a))
        object.__setattr__(self, "b", _finite("b", self.b))

    @property
    def slopes(self):
        return (self.a, self.b)

    def stax_layer(self):
        return _nt_compat.load().stax.ABRelu(self.a, self.b)


@dataclass(frozen=True)
class Erf(Activation):
    """`φ(x) = erf(x)` (`stax.Erf()`); dual: the arcsine kernel (Williams 1997)."""

    name: ClassVar[str] = "erf"

    def __call__(self, x):
        # exactly neural-tangents' Erf(a=1, b=1, c=0): a·erf(b·x) + c
        return 1.0 * jax.scipy.special.erf(1.0 * x) + 0.0

    def dual(self, c, q1, q2, need_dot: bool = True):
        """`E[φφ] = (2/π) arcsin(2c / sqrt((1 + 2q1)(1 + 2q2)))` and its derivative in c,
        `E[φ'φ'] = (4/π) / sqrt((1 + 2q1)(1 + 2q2) − 4c²)` (Williams 1997)."""
        prod = (1 + 2 * q1) * (1 + 2 * q2)
        root = jnp.sqrt(jnp.maximum(prod - 4 * c**2, 0.0))
        return (2 / jnp.pi) * _atan2(2 * c, root), ((4 / jnp.pi) / root if need_dot else None)

    def variance(self, q):
        return (2 / jnp.pi) * _atan2(q, jnp.sqrt(q + 0.25))

    def stax_layer(self):
        return _nt_compat.load().stax.Erf()


@dataclass(frozen=True)
class Gelu(Activation):
    """The exact GELU, `φ(x) = x·Φ(x)` (`stax.Gelu(approximate=False)`); dual: neural-tangents'
    closed form."""

    name: ClassVar[str] = "gelu"

    def __call__(self, x):
        return jax.nn.gelu(x, approximate=False)

    def dual(self, c, q1, q2, need_dot: bool = True):
        """neural-tangents' closed form of `stax.Gelu` (its `kernel_fn`), with `d = sqrt((q1 + 1)
        (q2 + 1) − c²)`: `E[φφ] = ((c² + q1 q2 d²) / ((q1 + 1)(q2 + 1) d) + c·atan(c/d)) / 2π
        + c/4`."""
        prod = q1 * q2
        prod1 = (q1 + 1) * (q2 + 1)
        d2 = prod1 - c**2
        d = jnp.sqrt(jnp.maximum(d2, 0.0))
        ang = _atan2(c, d)
        new = ((c**2 + prod * d2) / (prod1 * d) + c * ang) / (2 * jnp.pi) + 0.25 * c
        dot = None
        if need_dot:
            first = (1 / d2 + (1 - prod) / prod1 + 1) * c / d / (2 * jnp.pi)
            dot = first + 0.25 + ang / (2 * jnp.pi)
        return new, dot

    def variance(self, q):
        r = jnp.sqrt(1 + 2 * q)
        return q * ((q / ((q + 1) * r) + _atan2(q, r) / 2) / jnp.pi + 0.25)

    def stax_layer(self):
        return _nt_compat.load().stax.Gelu()


#: The string shorthands, in the order the CLI lists them: name → constructor of `leaky_slope`.
_REGISTRY = {
    "relu": lambda s: Relu(),
    "erf": lambda s: Erf(),
    "gelu": lambda s: Gelu(),
    "leaky_relu": lambda s: LeakyRelu(s),
    "abs": lambda s: Abs(),
    "abs_relu": lambda s: AbsRelu(-s, 1.0),
}
ACTIVATIONS = tuple(_REGISTRY)
DEFAULT_LEAKY_SLOPE = 0.1


def as_activation(spec, *, leaky_slope: float | None = None) -> Activation:
    """An `Activation` from an object (returned as is) or a name in `ACTIVATIONS`.

    `leaky_slope` (default 0.1) only completes the names "leaky_relu" (`LeakyRelu(leaky_slope)`)
    and "abs_relu" (`AbsRelu(-leaky_slope, 1)`); an object already carries its constants.

    >>> as_activation("leaky_relu", leaky_slope=0.2)
    LeakyRelu(alpha=0.2)
    """
    if leaky_slope is not None:
        leaky_slope = _finite("leaky_slope", leaky_slope)
    if isinstance(spec, Activation):
        if leaky_slope is not None:
            raise ValueError(f"leaky_slope: only completes a string activation; the object "
                             f"{spec!r} carries its own constants, got leaky_slope={leaky_slope!r}")
        return spec
    if isinstance(spec, str) and spec in _REGISTRY:
        return _REGISTRY[spec](DEFAULT_LEAKY_SLOPE if leaky_slope is None else leaky_slope)
    raise ValueError(f"activation: expected a sslntk.kernels.Activation (e.g. kernels.Relu()) or "
                     f"one of {list(ACTIVATIONS)}, got {spec!r}")
