"""The method protocol: an SSL method is an object that owns its state, its function-space vector
field, its discrete step, its loss and named terms, and optional structure for fast solvers.

Time `t` is in units of learning-rate × steps; `f (2n, k)` holds the online function on the 2n
stacked training views `[a_1..a_n, b_1..b_n]`; `f_test (m, k)` the online function at m test points.

The models are diffrax's terms (a vector field `(t, y, args) -> dy/dt` over a pytree `y`) and
optax's `GradientTransformation` (`init` builds a state pytree, `update` advances it): a method's
`init` builds a `State`, `vector_field` is the ODE right-hand side a solver integrates, `step` is
the discrete update a gradient-descent solver iterates. See `docs/concepts.md`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


class State(eqx.Module):
    """The state pytree every method evolves (fields that are None are absent).

    Attributes:
      f: `(2n, k)` online function on the stacked training views.
      aux: whatever else the method evolves, any pytree (e.g. an EMA target `(2n, k)`, a
        predictor `(k, k)`, a centre `(k,)`); None for a gradient flow.
      f_test: `(m, k)` online function at test points, or None.
      aux_test: the method's auxiliary state at test points (e.g. the EMA target `(m, k)` there),
        or None.
    """

    f: jax.Array
    aux: Any = None
    f_test: jax.Array | None = None
    aux_test: Any = None


class KernelOp(eqx.Module):
    """`apply_K`: what a solver hands a method's `vector_field` / `step` to apply the kernel.

    `apply_K(g)` is `K g` `(2n, k)` for `g (2n, k)`; `apply_K.test(g)` is `K_test_train g` `(m, k)`
    (None without test points). Solvers may pass any object with this interface (a row-sharded K,
    a low-rank `E Eᵀ`); methods never see K itself.

    Args:
      K: `(2n, 2n)` kernel. K_test_train: `(m, 2n)` or None.
      layout: a `sslntk._sharding.RowLayout` for a row-sharded K (products where its rows live).
    """

    K: jax.Array
    K_test_train: jax.Array | None = None
    layout: Any = eqx.field(default=None, static=True)

    def __call__(self, g: jax.Array) -> jax.Array:
        from sslntk import _sharding

        return _sharding.row_matmul(self.K, g, self.layout, precision=HIGHEST)

    def test(self, g: jax.Array) -> jax.Array | None:
        if self.K_test_train is None:
            return None
        return jnp.matmul(self.K_test_train, g, precision=HIGHEST)


class MomentForm(eqx.Module):
    """Structure "depends on f only through `C = fᵀ Z f / 2n`" (`Z` swaps the two views):
    `L(f) = ℓ(C(f))` with `ℓ = of_moment` on symmetric `C (k, k)`. Then `∇_f L = (2/2n)·Z f G`,
    `G = ∂ℓ/∂C`, and the flow keeps every eigenspace of `M = K^{1/2} Z K^{1/2}/2n` invariant: the
    eigen-reduced solver integrates an `(m, k)` state (Simon et al. 2023; `docs/theory/stepwise.md`).
    """

    of_moment: Callable = eqx.field(static=True)
    constants: Any = None        # traced constants passed to `of_moment(C, **constants)`

    def __call__(self, C: jax.Array) -> jax.Array:
        return self.of_moment(C, **(self.constants or {}))


class StepwiseForm(eqx.Module):
    """Structure "Barlow Twins, theory form": `L = Σ_i (C_ii − 1)² + λ Σ_{i≠j} C_ij²` with
    `C = fᵀ Z f / 2n`. At λ = 1 (`L = ‖C − I‖_F²`) the kernel flow has the stepwise closed form of
    Simon et al. (2023), which the `ClosedForm` solver evaluates (`docs/theory/stepwise.md`).

    Attributes:
      lam: λ (a scalar; traced under jit/vmap).
    """

    lam: Any


class Method:
    """Base of every SSL method (a mixin: concrete methods are `equinox.Module`s or registered
    dataclass pytrees, numeric constants traced leaves, options static).

    Required: `force` (or a whole `vector_field`) and `loss`. Everything else has a default:

    * `init(f0, key=None, *, f0_test=None) -> State` — `State(f0, init_aux(f0, key), f0_test,
      init_aux_test(f0_test, aux))`.
    * `force(state) -> g (2n, k)` — the online function moves by `df/dt = −K g` (training views)
      and `df_test/dt = −K_test_train g` (test points). A gradient flow has `g = ∇_f L(f)`; a
      method with stop-gradient uses `g(f, aux)`.
    * `aux_field(t, state, df)`, `aux_test_field(t, state, df_test)` — `d aux/dt`, `d aux_test/dt`
      (None without aux). Given `df = −K g` so that, e.g., a predictor can follow the online function.
    * `vector_field(t, state, apply_K) -> State` — `dstate/dt` (built from the three above; override
      it for anything else). `apply_K` is a `KernelOp`.
    * `step(state, lr, apply_K) -> State` — one discrete update (default: explicit Euler,
      `state + lr·vector_field(0, state, apply_K)`); methods whose reference code orders its
      updates (online step, then EMA) override it.
    * `loss(state) -> scalar`, `terms(state) -> {name: scalar}` summing to the loss (default
      `{"loss": loss}`).
    * structure for fast solvers, None when absent: `potential` (a callable `f -> scalar` when the
      method is the gradient flow of that function of f alone), `moment_form` (`MomentForm`),
      `stepwise_form` (`StepwiseForm`). A solver that needs one refuses a method without it,
      naming the method and what it lacks (`require`).
    * `label` — a short name for messages and records.
    """

    # ---- structure (optional) ----
    @property
    def potential(self) -> Callable | None:
        return None

    @property
    def moment_form(self) -> MomentForm | None:
        return None

    @property
    def stepwise_form(self) -> StepwiseForm | None:
        return None

    @property
    def label(self) -> str:
        return type(self).__name__

    # ---- state ----
    def init(self, f0: jax.Array, key=None, *, f0_test: jax.Array | None = None) -> State:
        aux = self.init_aux(f0, key)
        aux_test = None if f0_test is None else self.init_aux_test(f0_test, aux)
        return State(f=f0, aux=aux, f_test=f0_test, aux_test=aux_test)

    def init_aux(self, f0: jax.Array, key=None):
        return None

    def init_aux_test(self, f0_test: jax.Array, aux):
        return None

    # ---- dynamics ----
    def force(self, state: State) -> jax.Array:
        raise NotImplementedError(f"{self.label}: a method defines force(state) (df/dt = −K·force) "
                                  f"or overrides vector_field")

    def aux_field(self, t, state: State, df: jax.Array):
        return None

    def aux_test_field(self, t, state: State, df_test: jax.Array):
        return None

    def vector_field(self, t, state: State, apply_K) -> State:
        g = self.force(state)
        df = -apply_K(g)
        if state.f_test is None:
            return State(f=df, aux=self.aux_field(t, state, df))
        df_test = -apply_K.test(g)
        return State(f=df, aux=self.aux_field(t, state, df), f_test=df_test,
                     aux_test=self.aux_test_field(t, state, df_test))

    def step(self, state: State, lr, apply_K) -> State:
        d = self.vector_field(jnp.zeros((), state.f.dtype), state, apply_K)
        return jax.tree_util.tree_map(lambda x, dx: x + lr * dx, state, d)

    # ---- objective ----
    def loss(self, state: State) -> jax.Array:
        raise NotImplementedError(f"{self.label}: a method defines loss(state)")

    def terms(self, state: State) -> dict:
        return {"loss": self.loss(state)}


def require(method, structure: str, solver: str, hint: str = "") -> Any:
    """`method.<structure>` or a ValueError naming the solver, the method and what it lacks."""
    value = getattr(method, structure, None)
    if value is None:
        raise ValueError(f"method: solver {solver!r} needs a method with `{structure}` "
                         f"({_WHAT[structure]}); {method_label(method)} has none"
                         f"{'; ' + hint if hint else ''}")
    return value


_WHAT = {
    "potential": "the gradient flow of a scalar function of f alone",
    "moment_form": "a loss of f only through the cross moment C = fᵀZf/2n",
    "stepwise_form": "Barlow Twins in its theory form",
}


def method_label(method) -> str:
    lab = getattr(method, "label", None)
    return repr(lab) if isinstance(lab, str) else type(method).__name__


def as_state(x) -> State:
    """A `State`, or a bare `f (2n, k)` array as `State(f)` (gradient flows)."""
    return x if isinstance(x, State) else State(f=x)


class GradientFlow(eqx.Module, Method):
    """The gradient-flow method of a plain callable `fn: f (2n, k) -> scalar`:
    `df/dt = −K ∇_f fn(f)`. `fn` is static (hashed by `jax.jit`); arrays it closes over are
    constants of the compiled solve.

        >>> import jax.numpy as jnp
        >>> m = GradientFlow(lambda f: jnp.sum(f**2))
        >>> float(m.loss(m.init(jnp.ones((4, 2)))))
        8.0
    """

    fn: Callable = eqx.field(static=True)

    @property
    def potential(self) -> Callable:
        return self.fn

    @property
    def label(self) -> str:
        return getattr(self.fn, "__name__", type(self.fn).__name__)

    def __call__(self, f):
        return self.fn(f)

    def force(self, state: State) -> jax.Array:
        return jax.grad(self.fn)(as_state(state).f)

    def loss(self, state) -> jax.Array:
        return self.fn(as_state(state).f)


def as_method(x) -> Method:
    """A `Method` as is; a registered loss name → `sslntk.losses.get(name)`; a plain callable
    `f -> scalar` → `GradientFlow(x)`; anything else raises TypeError."""
    if isinstance(x, Method):
        return x
    if isinstance(x, str):
        from sslntk import losses

        return losses.get(x)
    if callable(x):
        return GradientFlow(x)
    raise TypeError(f"method: expected a sslntk method (sslntk.methods.Method, e.g. "
                    f"sslntk.losses.get(name)), a loss name or a callable f -> scalar, got "
                    f"{type(x).__name__}")
