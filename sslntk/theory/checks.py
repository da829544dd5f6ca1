"""Input checks and one linear-algebra helper shared by the collapse/landscape modules (private).

Like `sslntk._validate`, value checks (PSD, orthonormality, signs) run only on concrete arrays at the
public API boundary; under `jit`/`vmap` tracing only shapes and dtypes are checked.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V


def _tol(dtype) -> float:
    return 1e3 * float(jnp.finfo(dtype).eps)


def symmetric(name: str, M) -> jnp.ndarray:
    """A square symmetric matrix `(p, p)` (symmetry checked to 1e3·eps relative to max|M|)."""
    arr = V.as_float_array(name, M, ndim=2)
    return V.square_kernel(name, arr, sym_tol=_tol(arr.dtype))


def psd(name: str, A, *, what: str = "a symmetric positive semi-definite matrix") -> jnp.ndarray:
    """A symmetric PSD matrix `(d, d)`; the smallest eigenvalue may be negative by round-off only
    (>= -1e3·eps·||A||_2). The error reports the smallest eigenvalue found."""
    A = symmetric(name, A)
    if V.is_concrete(A) and A.size:
        ev = np.linalg.eigvalsh(np.asarray(A, dtype=np.float64))
        scale = max(float(np.max(np.abs(ev))), 1e-300)
        if ev[0] < -_tol(A.dtype) * scale:
            raise ValueError(f"{name}: expected {what}, got smallest eigenvalue {ev[0]:.3g} "
                             f"(largest |eigenvalue| {scale:.3g})")
    return A


def real(name: str, v):
    """A finite real scalar or array (any sign). Integers are cast to the default float dtype."""
    if isinstance(v, (bool, str, bytes)) or v is None:
        raise TypeError(f"{name}: expected a number, got {v!r}")
    try:
        arr = jnp.asarray(v)
    except TypeError as e:
        raise TypeError(f"{name}: expected a number, got {type(v).__name__}") from e
    if jnp.issubdtype(arr.dtype, jnp.integer):
        arr = arr.astype(jnp.result_type(float))
    return V.as_float_array(name, arr)


def nonneg(name: str, v):
    """A scalar or array >= 0 (weight decay, times, variances); the sign is checked on concrete
    values. Python/NumPy integers are accepted and cast to the default float dtype."""
    arr = real(name, v)
    if V.is_concrete(arr) and arr.size and np.any(np.asarray(arr) < 0):   # numpy: safe in traces
        raise ValueError(f"{name}: expected non-negative value(s), got min {np.min(arr)}")
    return arr


def positive(name: str, v):
    """A scalar or array > 0 (temperature, learning rate)."""
    arr = nonneg(name, v)
    if V.is_concrete(arr) and arr.size and np.any(np.asarray(arr) <= 0):
        raise ValueError(f"{name}: expected positive value(s), got min {np.min(arr)}")
    return arr


def orthonormal_columns(name: str, W) -> jnp.ndarray:
    """`(p, k)` with k <= p and `WᵀW = I` to 1e3·eps·p (a point of the Stiefel manifold)."""
    W = V.as_float_array(name, W, ndim=2)
    p, k = W.shape
    if k > p or k < 1:
        raise ValueError(f"{name}: expected a (p, k) frame with 1 <= k <= p, got shape {(p, k)}")
    if V.is_concrete(W):
        err = float(jnp.max(jnp.abs(W.T @ W - jnp.eye(k, dtype=W.dtype))))
        if err > _tol(W.dtype) * max(p, 10):
            raise ValueError(f"{name}: expected orthonormal columns (WᵀW = I, a Stiefel point), "
                             f"got max|WᵀW − I| = {err:.3g}")
    return W


def sym_sqrt(S, inverse: bool = False):
    """`S^{1/2}` (or `S^{−1/2}`) of a symmetric PSD matrix via eigh, negative round-off clipped to 0
    (jittable; the inverse needs S positive definite)."""
    lam, U = jnp.linalg.eigh((S + S.T) / 2)
    lam = jnp.clip(lam, 0.0)
    return (U * (1 / jnp.sqrt(lam) if inverse else jnp.sqrt(lam))) @ U.T
