"""Architectures and their infinite-width kernels over augmented views.

The ONLY module of sslntk that imports `neural_tangents` (DESIGN.md). One `Arch` spec builds the
neural-tangents `stax` network (kernel and finite reference) here and the matching Flax NNX module in
`sslntk.finite`.

Kernel convention: `(n1, n2)` kernels of ONE output (neural-tangents `trace_axes=(-1,)`); the full
kernel of a k-output network is `K ⊗ I_k`. NTK parametrisation throughout.
"""

from __future__ import annotations

import functools
import sys
import types
from dataclasses import dataclass

# neural-tangents 0.6.5 imports `neural_tangents.experimental` (TF→JAX conversion via tensorflow and
# tf2jax) at package import; sslntk uses none of it and drops both dependencies (pyproject override),
# so an empty stand-in module is registered first to keep tensorflow out of the process.
sys.modules.setdefault("neural_tangents.experimental", types.ModuleType("neural_tangents.experimental"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

from sslntk import _validate as V  # noqa: E402

ACTIVATIONS = ("relu", "erf", "gelu", "leaky_relu", "abs", "abs_relu")
KINDS = ("mlp", "cnn")


@dataclass(frozen=True)
class Arch:
    """One architecture spec, shared by the kernels and the finite networks (hashable, static).

    kind="mlp": `depth` hidden blocks (Dense → activation) then a Dense readout; input `(N, d)` or
        images `(N, H, W, C)` (flattened first).
    kind="cnn": `depth` blocks (Conv `filter_shape`, `padding` → activation), global average pooling,
        Dense readout; input images `(N, H, W, C)` (NHWC).
    Every layer uses the same `W_std`/`b_std` in NTK parametrisation: `W ~ N(0, 1)` stored, the forward
    pass multiplies by `W_std / sqrt(fan_in)` and the bias by `b_std`, exactly as `stax.Dense/Conv`.
    `leaky_slope` is the negative-side slope of `leaky_relu`; `abs_relu` is `stax.ABRelu(-a, 1)` with
    `a = leaky_slope` (a=1 gives |x|)... see `activation_layer`.
    """

    kind: str = "mlp"
    depth: int = 1
    activation: str = "relu"
    W_std: float = 1.0
    b_std: float = 0.0
    filter_shape: tuple[int, int] = (3, 3)
    padding: str = "SAME"
    leaky_slope: float = 0.1

    def __post_init__(self):
        V.choice("kind", self.kind, KINDS)
        V.positive_int("depth", self.depth, minimum=1)
        V.choice("activation", self.activation, ACTIVATIONS)
        V.positive_float("W_std", self.W_std)
        V.positive_float("b_std", self.b_std, allow_zero=True)
        if self.kind == "cnn":
            if (len(self.filter_shape) != 2
                    or any(not isinstance(s, int) or s < 1 for s in self.filter_shape)):
                raise ValueError(f"filter_shape: expected two positive ints, got {self.filter_shape!r}")
            V.choice("padding", self.padding, ("SAME", "VALID", "CIRCULAR"))


def mlp(depth: int = 1, activation: str = "relu", W_std: float = 1.0, b_std: float = 0.0,
        **kw) -> Arch:
    """MLP spec: `depth` hidden (Dense → activation) blocks and a Dense readout (NTK param.)."""
    return Arch(kind="mlp", depth=depth, activation=activation, W_std=W_std, b_std=b_std, **kw)


def cnn(depth: int = 1, activation: str = "relu", W_std: float = 1.0, b_std: float = 0.0,
        filter_shape: tuple[int, int] = (3, 3), padding: str = "SAME", **kw) -> Arch:
    """CNN spec for NHWC images: (Conv → activation) × depth, global average pool, Dense readout."""
    return Arch(kind="cnn", depth=depth, activation=activation, W_std=W_std, b_std=b_std,
                filter_shape=tuple(filter_shape), padding=padding, **kw)


def activation_layer(arch: Arch):
    """The stax layer for `arch.activation`."""
    a = arch.activation
    if a == "relu":
        return stax.Relu()
    if a == "erf":
        return stax.Erf()
    if a == "gelu":
        return stax.Gelu()
    if a == "leaky_relu":
        return stax.LeakyRelu(arch.leaky_slope)
    if a == "abs":
        return stax.Abs()
    if a == "abs_relu":
        return stax.ABRelu(-arch.leaky_slope, 1.0)
    raise ValueError(f"activation: unknown {a!r}; valid choices are {list(ACTIVATIONS)}")


def stax_network(arch: Arch, width: int = 512, out_dim: int = 1):
    """neural-tangents `(init_fn, apply_fn, kernel_fn)` for `arch` at hidden width `width`."""
    V.positive_int("width", width)
    V.positive_int("out_dim", out_dim)
    layers = []
    if arch.kind == "mlp":
        layers.append(stax.Flatten())
        for _ in range(arch.depth):
            layers += [stax.Dense(width, W_std=arch.W_std, b_std=arch.b_std), activation_layer(arch)]
    else:
        for _ in range(arch.depth):
            layers += [stax.Conv(width, arch.filter_shape, padding=arch.padding,
                                 W_std=arch.W_std, b_std=arch.b_std), activation_layer(arch)]
        layers.append(stax.GlobalAvgPool())
    layers.append(stax.Dense(out_dim, W_std=arch.W_std, b_std=arch.b_std))
    return stax.serial(*layers)


# ------------------------------------------------------------------------------------------------
# Reference wrappers around neural-tangents ("the peer" for tests and benchmarks)
# ------------------------------------------------------------------------------------------------

_EMPIRICAL_IMPLEMENTATIONS = (1, 2)


@functools.lru_cache(maxsize=64)
def _empirical_ntk_jit(apply_fn, implementation: int):
    return jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), implementation=implementation))


def reference_empirical_ntk(apply_fn, params, x1, x2=None, implementation: int = 2) -> jax.Array:
    """Empirical NTK of a finite network from neural-tangents, `(n1, n2)`, ONE-output convention.

    `apply_fn(params, x) -> (N, k)` (e.g. from `stax_network(arch, width, out_dim=k)`).
    neural-tangents' `empirical_ntk_fn(..., trace_axes=(-1,))` contracts the output pair of axes and
    divides by `k` (`_trace_and_diagonal` returns `trace / contract_size`), so the result is the MEAN
    over outputs of the per-output kernels, `(1/k) Σ_j J_j(x1) J_j(x2)ᵀ` — the single-output kernel
    `K` of the convention "full kernel = K ⊗ I_k" (exactly so at infinite width, where the
    output-output blocks are `K δ_jj'`). For `k = 1` it is `J(x1) J(x2)ᵀ` exactly.

    `implementation`: 1 (Jacobian contraction) or 2 (NTK-vector products). neural-tangents'
    implementations 0 (auto) and 3 (structured derivatives) fail on the pinned JAX 0.5.3 and are
    rejected. `x2=None` means `x2 = x1`.
    """
    if isinstance(implementation, bool) or implementation not in _EMPIRICAL_IMPLEMENTATIONS:
        raise ValueError(f"implementation: expected 1 (Jacobian contraction) or 2 (NTK-vector "
                         f"products), got {implementation!r}; neural-tangents' 0 (auto) and 3 "
                         f"(structured derivatives) are broken on JAX 0.5.3")
    if not callable(apply_fn):
        raise TypeError(f"apply_fn: expected a callable apply_fn(params, x), got "
                        f"{type(apply_fn).__name__}")
    x1 = V.as_float_array("x1", x1)
    if x1.ndim < 2 or x1.shape[0] == 0:
        raise ValueError(f"x1: expected a non-empty batch (N, ...), got shape {tuple(x1.shape)}")
    if x2 is not None:
        x2 = V.as_float_array("x2", x2)
        if x2.shape[1:] != x1.shape[1:] or x2.shape[0] == 0:
            raise ValueError(f"x2: expected a non-empty batch with per-example shape "
                             f"{tuple(x1.shape[1:])} like x1, got shape {tuple(x2.shape)}")
        V.same_dtype(x1=x1, x2=x2)
    out = jax.eval_shape(apply_fn, params, x1[:1])
    if not hasattr(out, "shape") or len(out.shape) != 2:
        raise ValueError(f"apply_fn: expected outputs of shape (N, k), got {out}")
    return _empirical_ntk_jit(apply_fn, int(implementation))(x1, x2, params)


def _as_pytree_callable(fn):
    """A pytree for `jax.jit`: `Loss` objects (constants as leaves) pass through; an opaque
    callable becomes a `Partial` (the function itself is static)."""
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(fn)):
        return jax.tree_util.Partial(fn)
    return fn


@jax.jit
def _nt_gradient_descent(loss, K, f0, ts, K_test_train, f0_test):
    predict_fn = nt.predict.gradient_descent(
        lambda fx, y: loss(fx), K, jnp.zeros_like(f0), learning_rate=1.0, trace_axes=(-1,))
    if K_test_train is None:
        return predict_fn(ts, f0), None
    return predict_fn(ts, f0, f0_test, K_test_train)


def reference_gradient_descent(loss, K, f0, ts, K_test_train=None, f0_test=None):
    """Kernel gradient flow by neural-tangents' `predict.gradient_descent` (the reference peer).

    Solves `df/dt = -K ∇_f L(f)` (and `df_test/dt = -K_test_train ∇_f L(f)`) over the full `(2n, k)`
    system with JAX's Dormand–Prince `odeint` at neural-tangents' fixed tolerances (rtol = atol =
    1.4e-8, no step limit). `learning_rate=1`, so `t` is in units of learning-rate × steps
    (DESIGN.md "Time"). `trace_axes=(-1,)`: `K` is the one-output kernel, applied to each output.

    Args:
      loss: `loss(f) -> scalar` on `(2n, k)` embeddings (an `sslntk.losses.Loss` or any callable);
        adapted to neural-tangents' `loss(fx, y)` with an unused dummy target.
      K: `(2n, 2n)` symmetric kernel over the stacked views. f0: `(2n, k)` initial embeddings.
      ts: `(T,)` non-negative, strictly increasing times.
      K_test_train: `(m, 2n)` cross kernel and f0_test: `(m, k)` initial test outputs (both or none).

    Returns:
      `(f_t, f_test_t)`: `(T, 2n, k)` and `(T, m, k)` (or None without test points). jitted.
    """
    if not callable(loss):
        raise TypeError(f"loss: expected a callable loss(f) -> scalar, got {type(loss).__name__}")
    f0 = V.stacked_views("f0", f0, ndim=2)
    K = V.square_kernel("K", K)
    if K.shape[0] != f0.shape[0]:
        raise ValueError(f"K: expected shape ({f0.shape[0]}, {f0.shape[0]}) to match f0 "
                         f"{tuple(f0.shape)}, got {tuple(K.shape)}")
    ts = _check_times("ts", ts)
    if (K_test_train is None) != (f0_test is None):
        raise ValueError("K_test_train and f0_test: expected both or neither, got "
                         f"K_test_train={'None' if K_test_train is None else 'array'}, "
                         f"f0_test={'None' if f0_test is None else 'array'}")
    if K_test_train is not None:
        K_test_train = V.as_float_array("K_test_train", K_test_train, ndim=2)
        f0_test = V.as_float_array("f0_test", f0_test, ndim=2)
        if K_test_train.shape[1] != K.shape[0]:
            raise ValueError(f"K_test_train: expected shape (m, {K.shape[0]}), got "
                             f"{tuple(K_test_train.shape)}")
        if f0_test.shape != (K_test_train.shape[0], f0.shape[1]):
            raise ValueError(f"f0_test: expected shape ({K_test_train.shape[0]}, {f0.shape[1]}), "
                             f"got {tuple(f0_test.shape)}")
    V.same_dtype(K=K, f0=f0, ts=ts, K_test_train=K_test_train, f0_test=f0_test)
    return _nt_gradient_descent(_as_pytree_callable(loss), K, f0, ts, K_test_train, f0_test)


def _check_times(name: str, ts) -> jax.Array:
    ts = V.as_float_array(name, ts, ndim=1)
    if ts.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one time, got an empty array")
    if V.is_concrete(ts):
        if bool(jnp.any(ts < 0)):
            raise ValueError(f"{name}: expected non-negative times, got min {float(jnp.min(ts))}")
        if ts.shape[0] > 1 and not bool(jnp.all(jnp.diff(ts) > 0)):
            raise ValueError(f"{name}: expected strictly increasing times, got {ts}")
    return ts
