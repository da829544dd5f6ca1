"""Empirical neural tangent kernel of a finite network (own Jacobian-contraction implementation).

`Θ(x, x') = (1/k) Σ_o ∂f_o(x)/∂θ · ∂f_o(x')/∂θ`: sslntk's ONE-output convention
(`docs/concepts.md`; the trace over the k outputs divided by k, as neural-tangents'
`empirical_ntk_fn(..., trace_axes=(-1,))` and `kernels.reference_empirical_ntk` return it). Only `nnx.Param`
variables count (the frozen init θ₀ of the small-init construction is not a parameter), so the kernel is that
of `g_θ`, independent of α.

Algorithm: per-example Jacobians (`vmap(jacrev)`) of blocks of `block` inputs, `(block, k, P)` each,
contracted blockwise as `J₁ J₂ᵀ / k` over the flattened (output, parameter) axis. The block size is
chosen so that one Jacobian block holds at most `max_block_bytes`; for `x2=None` only the upper
block triangle is computed, and Jacobian blocks are kept for reuse when all of them fit in
`max_cache_bytes` (else recomputed).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sslntk import _validate as V
from sslntk.finite._network import ensure_built
from sslntk.finite._state import split_trainable, trainable_output


def _check_model(model):
    if not isinstance(model, nnx.Module) or not callable(model):
        raise TypeError(f"model: expected a callable flax.nnx.Module (e.g. sslntk.finite.network), "
                        f"got {type(model).__name__}")


def _check_batch(name, x, model):
    x = V.as_float_array(name, x)
    ensure_built(model, x)
    in_shape = getattr(model, "in_shape", None)
    if x.ndim < 2 or x.shape[0] == 0 or (in_shape is not None and tuple(x.shape[1:]) != in_shape):
        exp = f"(N, {', '.join(map(str, in_shape))})" if in_shape is not None else "(N, ...)"
        raise ValueError(f"{name}: expected a non-empty batch of shape {exp}, got {tuple(x.shape)}")
    return x


@functools.partial(jax.jit, static_argnums=0)
def _jac_block(graphdef, params, rest, xb):
    def one(p, x):
        return trainable_output(graphdef, p, rest, x[None])[0]
    J = jax.vmap(jax.jacrev(one), in_axes=(None, 0))(params, xb)
    return [leaf.reshape(xb.shape[0], -1) for leaf in jax.tree.leaves(J)]


@jax.jit
def _contract(J1, J2):
    return sum(a @ b.T for a, b in zip(J1, J2, strict=True))


def empirical_ntk(model, x1, x2=None, *, block_size: int | None = None,
                  max_block_bytes: int = 2**28, max_cache_bytes: int = 2**31) -> jax.Array:
    """Empirical NTK `(n1, n2)` of `model` (one-output convention, see module doc) at its CURRENT
    parameters: `(1/k) Σ_o J_o(x1) J_o(x2)ᵀ` with `J_o = ∂f_o/∂θ` over the trainable `nnx.Param`s.

    Args:
      model: a `sslntk.finite` network (or any NNX module mapping `(N, ...)` → `(N, k)`).
      x1: `(n1, *in_shape)`; x2: `(n2, *in_shape)` or None (= x1, symmetric, half the work).
      block_size: inputs per Jacobian block (default: largest with one block ≤ max_block_bytes).
    Returns: a `(n1, n2)` array in the model's dtype.
    """
    _check_model(model)
    if getattr(model, "couples_batch", False):
        raise ValueError("model: its outputs couple the examples of a batch (BatchNorm), so the "
                         "per-example Jacobians of empirical_ntk do not apply; use "
                         "sslntk.finite.kernel_prediction / full_ntk (Jacobian of the whole batch)")
    x1 = _check_batch("x1", x1, model)
    if x2 is not None:
        x2 = _check_batch("x2", x2, model)
        V.same_dtype(x1=x1, x2=x2)
    graphdef, params, rest = split_trainable(model)
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("model: has no trainable nnx.Param variables")
    pdtype = leaves[0].dtype
    if x1.dtype != pdtype:
        raise TypeError(f"x1: expected the model's dtype {pdtype}, got {x1.dtype}")
    n_par = sum(math.prod(a.shape) for a in leaves)
    k = jax.eval_shape(lambda x: trainable_output(graphdef, params, rest, x), x1[:1]).shape[-1]
    per_row = k * n_par * jnp.dtype(pdtype).itemsize
    if block_size is None:
        block_size = max(1, min(max(x1.shape[0], 0 if x2 is None else x2.shape[0]),
                                int(max_block_bytes // per_row)))
    block_size = V.positive_int("block_size", block_size)

    def blocks(x):
        n = x.shape[0]
        out = []
        for s in range(0, n, block_size):
            xb = x[s:s + block_size]
            m = xb.shape[0]
            if m < block_size:  # pad to one compiled shape
                xb = jnp.concatenate([xb, jnp.zeros((block_size - m, *x.shape[1:]), x.dtype)])
            out.append((s, m, xb))
        return out

    def jac(xb, m):
        return [a[:m] for a in _jac_block(graphdef, params, rest, xb)]

    b1 = blocks(x1)
    if x2 is None:
        cache = per_row * x1.shape[0] <= max_cache_bytes
        stored: dict[int, list] = {}

        def get(i):
            if i in stored:
                return stored[i]
            J = jac(b1[i][2], b1[i][1])
            if cache:
                stored[i] = J
            return J

        K = np.zeros((x1.shape[0], x1.shape[0]), dtype=pdtype)
        for i, (si, mi, _) in enumerate(b1):
            Ji = get(i)
            for j in range(i, len(b1)):
                sj, mj, _ = b1[j]
                blk = np.asarray(_contract(Ji, Ji if j == i else get(j))) / k
                K[si:si + mi, sj:sj + mj] = blk
                K[sj:sj + mj, si:si + mi] = blk.T
            if not cache:
                stored.clear()
        return jnp.asarray(K)
    b2 = blocks(x2)
    cache2 = per_row * x2.shape[0] <= max_cache_bytes
    J2s = [jac(xb, m) for _, m, xb in b2] if cache2 else None
    K = np.zeros((x1.shape[0], x2.shape[0]), dtype=pdtype)
    for si, mi, xa in b1:
        Ji = jac(xa, mi)
        for j, (sj, mj, xb) in enumerate(b2):
            Jj = J2s[j] if cache2 else jac(xb, mj)
            K[si:si + mi, sj:sj + mj] = np.asarray(_contract(Ji, Jj)) / k
    return jnp.asarray(K)
