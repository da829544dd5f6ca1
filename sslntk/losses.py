"""SSL losses as pure functions of embeddings `f: (2n, k)` in stacked view order `[a_1..a_n, b_1..b_n]`.

`get(name, **constants)` returns a `Loss`: a pytree whose constants are leaves (so `jax.vmap` and
`jax.grad` over loss constants work) and whose name is static. Call it as `loss(f) -> scalar`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from sslntk import _validate as V


def split_views(f: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(2n, k)` stacked embeddings → `(f_a, f_b)`, each `(n, k)`."""
    n = f.shape[0] // 2
    return f[:n], f[n:]


def cross_correlation(f: jax.Array) -> jax.Array:
    """Symmetrised, uncentred cross-view correlation `C = (f_aᵀ f_b + f_bᵀ f_a) / (2n)`, `(k, k)`.

    Stepwise digest §2 (C = W Γ Wᵀ for a linear model)."""
    fa, fb = split_views(f)
    n2 = f.shape[0]
    return (fa.T @ fb + fb.T @ fa) / n2


def barlow_twins(f: jax.Array, lam=1.0) -> jax.Array:
    """Barlow Twins, theory form (DESIGN.md): `L = Σ_i (C_ii − 1)² + λ Σ_{i≠j} C_ij²`,
    `C = (f_aᵀ f_b + f_bᵀ f_a)/(2n)`. λ = 1 is the rotation-invariant case the stepwise theory solves
    (then `L = ‖C − I‖_F²`, ∇_W L = 4 (C − I) W Γ, stepwise digest §2)."""
    C = cross_correlation(f)
    d = jnp.diagonal(C)
    off = jnp.sum(C**2) - jnp.sum(d**2)
    return jnp.sum((d - 1.0) ** 2) + lam * off


@dataclass(frozen=True)
class _Spec:
    fn: Callable
    defaults: dict
    # True when the loss depends on f only through view cross-moments (f_aᵀf_b, f_aᵀf_a, ...), so the
    # eigen-reduced solver may project onto eigenpairs of M = K^{1/2} Z K^{1/2}/2n (issue [F]).
    cross_moment_only: bool = False
    checks: dict = dataclasses.field(default_factory=dict)  # constant -> "positive" | "nonnegative"


_REGISTRY: dict[str, _Spec] = {
    "barlow_twins": _Spec(barlow_twins, {"lam": 1.0}, True, {"lam": "nonnegative"}),
}


def names() -> list[str]:
    return sorted(_REGISTRY)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Loss:
    """A named SSL loss with its constants. `loss(f)` with `f: (2n, k)` → scalar."""

    constants: dict
    name: str = dataclasses.field(default="barlow_twins", metadata=dict(static=True))

    def __call__(self, f: jax.Array) -> jax.Array:
        return _REGISTRY[self.name].fn(f, **self.constants)

    def grad(self, f: jax.Array) -> jax.Array:
        """∇_f L, `(2n, k)`."""
        return jax.grad(self)(f)

    @property
    def cross_moment_only(self) -> bool:
        return _REGISTRY[self.name].cross_moment_only


def get(name: str, **constants) -> Loss:
    """Build the loss `name` with `constants` (defaults filled in). Unknown names or constants raise
    errors listing the valid choices; non-numeric or out-of-range constants raise naming the constant."""
    V.choice("name", name, names())
    spec = _REGISTRY[name]
    unknown = set(constants) - set(spec.defaults)
    if unknown:
        raise ValueError(f"{name}: unknown constant(s) {sorted(unknown)}; valid constants are "
                         f"{sorted(spec.defaults)}")
    c = {**spec.defaults, **constants}
    for k, rule in spec.checks.items():
        V.positive_float(f"{name}.{k}", c[k], allow_zero=(rule == "nonnegative"))
    return Loss(constants=c, name=name)
