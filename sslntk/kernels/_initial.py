"""The initial function of a wide network at small initialisation: `initial_function`.

At infinite width the network output at initialisation is a Gaussian process with the NNGP kernel
(Neal 1996; Lee et al. 2018; Novak et al. 2019), one independent copy per output, and the trained
function of sslntk's small-initialisation scheme starts at `f₀ = α·g_θ₀` (`docs/concepts.md`). So
over N inputs `f₀ ~ N(0, α² K_nngp ⊗ I_k)`: the k columns are independent draws of
`N(0, α² K_nngp)`. This is the `f0` that the kernel dynamics (`sslntk.dynamics.solve`) and the
stepwise theory (`sslntk.theory.stepwise`) start from, beside the kernels it is drawn with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sslntk import _validate as V


def initial_function(K_nngp, k: int, alpha, key) -> jax.Array:
    """Draw `f₀ ~ N(0, α² K_nngp ⊗ I_k)`: `(N, k)`, k independent columns of covariance `α² K_nngp`.

    Args:
      K_nngp: `(N, N)` NNGP kernel over all inputs (training views and test points; e.g.
        `kernels.nngp(arch, x)`), symmetric positive semi-definite. A kernel that is not PSD is
        refused with the rule and message of `sslntk.dynamics.solve` (`_validate.psd_kernel`: a few
        Lanczos products, O(N²) each, no extra decomposition); skipped under jit.
      k: number of outputs (embedding dimension), ≥ 1.
      alpha: the initialisation scale α ≥ 0 (`f = g_θ − (1 − α) g_θ₀`, so `f₀ = α g_θ₀`).
      key: a `jax.random` key.

    Returns `(N, k)` in K_nngp's dtype: `α · L ξ` with `ξ ~ N(0, I)` `(N, k)` and `L` the Cholesky
    factor of `K_nngp + 1e-10·(tr K/N)·I` (the jitter keeps a PSD kernel with exact null directions,
    e.g. duplicate inputs, factorisable; it adds a covariance of relative size 1e-10). When that
    factorisation still fails in the kernel's precision (a rank-deficient K in float32), the factor
    is `U Λ₊^{1/2}` from `eigh` instead (same distribution; only outside jit).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from sslntk import kernels
        >>> x = jax.random.normal(jax.random.PRNGKey(0), (6, 3))
        >>> f0 = kernels.initial_function(kernels.nngp(kernels.mlp(1), x), 2, 1e-3,
        ...                               jax.random.PRNGKey(1))
        >>> f0.shape
        (6, 2)
    """
    K = V.square_kernel("K_nngp", K_nngp)
    if K.shape[0] == 0:
        raise ValueError(f"K_nngp: expected a non-empty kernel, got shape {tuple(K.shape)}")
    k = V.positive_int("k", k)
    alpha = V.positive_float("alpha", alpha, allow_zero=True)
    V.check_key("key", key)
    V.psd_kernel("K_nngp", K)
    f0 = _draw_cholesky(K, key, k=k, alpha=alpha)
    if V.is_concrete(f0) and not bool(jnp.all(jnp.isfinite(f0))):
        f0 = _draw_eigh(K, key, k=k, alpha=alpha)
    return f0


def _draw_cholesky(K, key, *, k, alpha):
    # the operations of the earlier `experiments.initial_function`, so the same key gives the same f0
    N = K.shape[0]
    jitter = 1e-10 * jnp.trace(K) / N
    L = jnp.linalg.cholesky(K + jitter * jnp.eye(N, dtype=K.dtype))
    return alpha * (L @ jax.random.normal(key, (N, k), K.dtype))


def _draw_eigh(K, key, *, k, alpha):
    lam, U = jnp.linalg.eigh(0.5 * (K + K.T))
    root = jnp.sqrt(jnp.maximum(lam, 0.0))
    return alpha * ((U * root) @ jax.random.normal(key, (K.shape[0], k), K.dtype))
