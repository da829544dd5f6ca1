"""The neural-tangents references ("the peer" for tests and benchmarks): `reference_empirical_ntk`,
`reference_gradient_descent`, and `nt_block`, the `method="nt"` path of `ntk`/`nngp`.

Thin wrappers around neural-tangents, reached only through `_nt_compat.load()` (the shim that makes
its final release load on current JAX), on first use: sslntk runs with neural-tangents absent.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk.kernels import _nt_compat
from sslntk.kernels._arch import stax_network


def nt_block(arch, get: tuple[str, ...]):
    """`method="nt"`: `(a, b or None) -> tuple of kernels` for one block by neural-tangents'
    `kernel_fn` of `stax_network(arch)` (jitted by `_assembly._block_fn`)."""
    kernel_fn = stax_network(arch)[2]

    def fn(a, b):
        k = kernel_fn(a, b, get)
        return tuple(k)
    return fn


_EMPIRICAL_IMPLEMENTATIONS = (1, 2)


@functools.lru_cache(maxsize=64)
def _empirical_ntk_jit(apply_fn, implementation: int):
    nt = _nt_compat.load()
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
    implementations 0 (auto) and 3 (structured derivatives) are broken (on JAX 0.5.3 already, and
    their jaxpr-walking internals are gone from current JAX) and are rejected. `x2=None` means `x2 = x1`.
    """
    if isinstance(implementation, bool) or implementation not in _EMPIRICAL_IMPLEMENTATIONS:
        raise ValueError(f"implementation: expected 1 (Jacobian contraction) or 2 (NTK-vector "
                         f"products), got {implementation!r}; neural-tangents' 0 (auto) and 3 "
                         f"(structured derivatives) are broken")
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
    predict_fn = _nt_compat.load().predict.gradient_descent(
        lambda fx, y: loss(fx), K, jnp.zeros_like(f0), learning_rate=1.0, trace_axes=(-1,))
    if K_test_train is None:
        return predict_fn(ts, f0), None
    return predict_fn(ts, f0, f0_test, K_test_train)


def reference_gradient_descent(loss, K, f0, ts, K_test_train=None, f0_test=None):
    """Kernel gradient flow by neural-tangents' `predict.gradient_descent` (the reference peer).

    Solves `df/dt = -K ∇_f L(f)` (and `df_test/dt = -K_test_train ∇_f L(f)`) over the full `(2n, k)`
    system with JAX's Dormand–Prince `odeint` at neural-tangents' fixed tolerances (rtol = atol =
    1.4e-8, no step limit). `learning_rate=1`, so `t` is in units of learning-rate × steps
    (docs/concepts.md). `trace_axes=(-1,)`: `K` is the one-output kernel, applied to each output.

    Args:
      loss: `loss(f) -> scalar` on `(2n, k)` embeddings (an `sslntk.losses.Loss` or any callable);
        adapted to neural-tangents' `loss(fx, y)` with an unused dummy target.
      K: `(2n, 2n)` symmetric kernel over the stacked views. f0: `(2n, k)` initial embeddings.
      ts: `(T,)` non-negative, strictly increasing times (cast to K's dtype).
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
    K_test_train, f0_test = V.check_test_pair(K_test_train, f0_test, K.shape[0], f0.shape[1])
    V.same_dtype(K=K, f0=f0, K_test_train=K_test_train, f0_test=f0_test)
    ts = ts.astype(K.dtype)          # neural-tangents integrates in K's dtype
    return _nt_gradient_descent(_as_pytree_callable(loss), K, f0, ts, K_test_train, f0_test)


def _check_times(name: str, ts) -> jax.Array:
    ts = V.as_float_array(name, ts, ndim=1)
    if ts.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one time, got an empty array")
    if V.is_concrete(ts):   # numpy: inside a jit trace jnp ops on a captured array are staged
        t = np.asarray(ts)
        if np.any(t < 0):
            raise ValueError(f"{name}: expected non-negative times, got min {float(t.min())}")
        if t.shape[0] > 1 and not np.all(np.diff(t) > 0):
            raise ValueError(f"{name}: expected strictly increasing times, got {t}")
    return ts
