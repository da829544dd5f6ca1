"""The contrastive kernel and its spectrum, and the PSD check: `pair_matrix` Z, the contrastive
kernel `K^Γ = k_Xᵀ Z k_X / 2n`, the spectrum of `M = K^{1/2} Z K^{1/2} / 2n` (Simon et al. 2023,
ICML, "On the stepwise nature of self-supervised learning": the kernelised model, whose eigenvalues
set the step times; see `docs/theory/stepwise.md`), and `kernel_spectrum`, the symmetric-PSD
eigendecomposition of a kernel.

The pair swap and the eigenproblem itself are `sslntk.linalg`'s (`pair_flip`,
`contrastive_eigenpairs`): the functions here are views of them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _sharding, linalg
from sslntk import _validate as V


def pair_matrix(n: int, dtype=jnp.float32) -> jax.Array:
    """The positive-pair matrix `Z = [[0, I_n], [I_n, 0]]`, `(2n, 2n)`, for stacked views
    `[a_1..a_n, b_1..b_n]`: the dense form of the pair-swap operator `sslntk.linalg.pair_flip`
    (`pair_flip(I_2n)`; use `pair_flip` to apply Z without forming it)."""
    n = V.positive_int("n", n)
    dt = V.float_dtype(dtype)
    return linalg.pair_flip(jnp.eye(2 * n, dtype=dt))


def _dense_only(name: str, K, what: str) -> None:
    if _sharding.layout_of(K) is not None:
        raise ValueError(f"{name}: {what} is a dense eigendecomposition of the whole kernel, which "
                         f"a row-sharded K never gathers on one device; use "
                         f"sslntk.linalg.eigen_decomposition(K, m, kind, method='krylov') (top-m "
                         f"eigenpairs by sharded products) or pass an unsharded K")


def _even_kernel(name: str, K) -> jax.Array:
    K = V.square_kernel(name, K)
    if K.shape[0] % 2 or K.shape[0] < 4:
        raise ValueError(f"{name}: expected a kernel over stacked views [a_1..a_n, b_1..b_n], "
                         f"(2n, 2n) with 2n even and >= 4, got shape {tuple(K.shape)}")
    return K


def _cross(name: str, k, K: jax.Array) -> jax.Array:
    k = V.as_float_array(name, k, ndim=2)
    if k.shape[1] != K.shape[0]:
        raise ValueError(f"{name}: expected k_X(x) rows of shape (m, {K.shape[0]}) (kernel "
                         f"against the 2n training views), got shape {tuple(k.shape)}")
    return k


def contrastive_kernel(K, k_x1=None, k_x2=None) -> jax.Array:
    """Contrastive kernel `K^Γ(x, x') = (1/2n) k_X(x)ᵀ Z k_X(x')` (Simon et al. 2023; the kernel
    whose eigenfunctions the Barlow Twins flow learns, `docs/theory/stepwise.md`).

    `K`: `(2n, 2n)` base kernel over the stacked views (sets n; checked). `k_x1`: `(m1, 2n)` rows
    `k_X(x) = [K(x, x_1..x_n), K(x, x'_1..x'_n)]`, or None for the training views (`k_X = K`);
    `k_x2`: `(m2, 2n)`, None for `k_x2 = k_x1`. Returns `(m1, m2)`; on the training views it is
    `K Z K / 2n`. A row-sharded `K` (`kernels.ntk(..., mesh=)`) with `k_x1 = k_x2 =
    None` gives a row-sharded `K Z K / 2n`, by a ring of collective permutes (never gathered).
    """
    K = _even_kernel("K", K)
    layout = _sharding.layout_of(K)
    if layout is not None:
        if k_x1 is not None or k_x2 is not None:
            raise ValueError("k_x1, k_x2: a row-sharded K supports only the training views "
                             "(k_x1 = k_x2 = None); pass unsharded arrays for test points")
        from sslntk.kernels._sharded import contrastive_kernel_sharded

        return contrastive_kernel_sharded(K, layout)
    k1 = K if k_x1 is None else _cross("k_x1", k_x1, K)
    k2 = k1 if k_x2 is None else _cross("k_x2", k_x2, K)
    V.same_dtype(K=K, k_x1=k1, k_x2=k2)
    return (k1 @ linalg.pair_flip(k2, axis=-1).T) / K.shape[0]


class KernelSpectrum(NamedTuple):
    """Eigen-decomposition of a symmetric PSD kernel (`kernel_spectrum`).

    values: `(N,)` eigenvalues, descending, as computed (round-off negatives kept, not clipped).
    vectors: `(N, N)` orthonormal eigenvectors (columns, same order), or None.
    min_eigenvalue, max_eigenvalue: floats. tol: the absolute PSD tolerance that was applied
    (eigenvalues ≥ −tol passed as round-off).
    """

    values: jax.Array
    vectors: jax.Array | None
    min_eigenvalue: float
    max_eigenvalue: float
    tol: float

    @property
    def psd_values(self) -> jax.Array:
        """`values` with the round-off negatives (≥ −tol, already checked) set to 0."""
        return jnp.maximum(self.values, 0)


def _psd_tol(N: int, dtype, lam_max: float, rtol: float | None) -> float:
    if rtol is None:
        rtol = max(N, 10) * float(jnp.finfo(dtype).eps)
    else:
        rtol = float(V.positive_float("tol", rtol, allow_zero=True))
    return rtol * max(lam_max, 0.0)


def kernel_spectrum(K, *, tol: float | None = None, vectors: bool = True,
                    name: str = "K") -> KernelSpectrum:
    """Eigen-decomposition of a kernel matrix with the symmetry and PSD checks.

    Checks that `K` is square and symmetric to round-off (`_validate.square_kernel`), computes its
    eigenvalues (`eigh` on the symmetrised matrix, in K's dtype) and raises a ValueError when the
    smallest one is below `−tol · λ_max`. Default relative tolerance `max(N, 10) · eps(dtype)`: the
    size of the eigenvalue perturbation that round-off of order `eps·|K|` in the N² entries can cause
    (`‖E‖₂ ≤ N·max|E_ij|`). The eigenvalues are returned as computed (never clipped); see
    `KernelSpectrum.psd_values` for the clipped copy.
    """
    K = V.square_kernel(name, K)
    _dense_only(name, K, "kernel_spectrum")
    if K.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty kernel, got shape {tuple(K.shape)}")
    Ks = 0.5 * (K + K.T)
    if vectors:
        w, U = jnp.linalg.eigh(Ks)
        w, U = w[::-1], U[:, ::-1]
    else:
        w, U = jnp.linalg.eigvalsh(Ks)[::-1], None
    lo, hi = float(w[-1]), float(w[0])
    atol = _psd_tol(K.shape[0], K.dtype, hi, tol)
    if not np.isfinite(lo) or lo < -atol:
        raise ValueError(f"{name}: expected a positive semi-definite kernel, got smallest "
                         f"eigenvalue {lo:.3g} (largest {hi:.3g}; round-off tolerance {atol:.3g} "
                         f"= tol·λ_max; pass tol= to loosen it for a kernel computed in lower "
                         f"precision)")
    return KernelSpectrum(values=w, vectors=U, min_eigenvalue=lo, max_eigenvalue=hi, tol=atol)


class ContrastiveSpectrum(NamedTuple):
    """Eigenpairs of `M = K^{1/2} Z K^{1/2} / 2n` (`contrastive_spectrum`) and what is needed to
    evaluate the eigenfunctions `g_j(x) = b_jᵀ K^{-1/2} k_X(x)` at new points.

    values: `(2n,)` γ_j, descending (can be negative; modes with γ ≤ 0 are never learned).
    vectors: `(2n, 2n)` B, orthonormal eigenvectors b_j of M (columns).
    coef: `(2n, 2n)` `A = K^{-1/2} B`, so `g(x) = k_X(x) A` and `Aᵀ K A = I` on the kept range.
    kernel: the `KernelSpectrum` of the (ridged) K that was used.
    rank: number of eigenvalues of K kept (above `rcond·λ_max`) in `K^{±1/2}`.
    ridge: the ridge added to K.
    """

    values: jax.Array
    vectors: jax.Array
    coef: jax.Array
    kernel: KernelSpectrum
    rank: int
    ridge: float

    def eigenfunctions(self, k_x, d: int | None = None) -> jax.Array:
        """`g_j(x)` for rows `k_x: (m, 2n)` of `k_X(x)`: `(m, d)` (d = 2n by default)."""
        k_x = V.as_float_array("k_x", k_x, ndim=2)
        if k_x.shape[1] != self.coef.shape[0]:
            raise ValueError(f"k_x: expected shape (m, {self.coef.shape[0]}), got "
                             f"{tuple(k_x.shape)}")
        d = self.coef.shape[1] if d is None else V.positive_int("d", d)
        if d > self.coef.shape[1]:
            raise ValueError(f"d: expected at most {self.coef.shape[1]} eigenfunctions, got {d}")
        return k_x @ self.coef[:, :d]

    def embedding(self, k_x, d: int) -> jax.Array:
        """The α → 0 Barlow Twins embedding (Simon et al. 2023, the final embedding of the
        kernelised model: kernel PCA of `K^Γ`), up to a rotation U:
        `f(x) = Γ_d^{-1/2} [g_1(x)..g_d(x)]`, `(m, d)`; requires γ_d > 0."""
        d = V.positive_int("d", d)
        g = self.eigenfunctions(k_x, d)
        gam = self.values[:d]
        if float(gam[-1]) <= 0:
            raise ValueError(f"d: expected d <= the number of positive eigenvalues "
                             f"({int(jnp.sum(self.values > 0))}), got {d}")
        return g / jnp.sqrt(gam)


def contrastive_spectrum(K, *, ridge: float = 0.0, rcond: float | None = None,
                         tol: float | None = None) -> ContrastiveSpectrum:
    """Eigen-decomposition of the contrastive matrix `M = K^{1/2} Z K^{1/2} / 2n`, with K's PSD check.

    `K`: `(2n, 2n)` PSD base kernel over stacked views (checked by `kernel_spectrum` with `tol`).
    `ridge` ≥ 0 is added to K first (`K + ridge·I` replaces K everywhere, then the g_j reconstruct
    the ridged K^Γ exactly). `K^{±1/2}` use the eigenvalues of K above `rcond·λ_max` (default
    `2n·eps(dtype)`), the rest is treated as an exact null space (pseudo-inverse): with
    `k_X(x)` in the range of K (true for any x when K is a Gram matrix `Φ Φᵀ`), still
    `Σ_j γ_j g_j(x) g_j(x') = K^Γ(x, x')`. The nonzero γ_j equal the eigenvalues of the
    non-symmetric `Z K / 2n` and of `Γ_φ = Φᵀ Z Φ / 2n` (the feature-space cross-correlation of
    Simon et al. 2023). Computed in K's dtype; use float64 for closed-form work. A view of
    `sslntk.linalg.contrastive_eigenpairs` (the one solver), on the decomposition that the PSD
    check (`kernel_spectrum`) computes anyway.

        >>> import jax.numpy as jnp
        >>> [round(float(g), 3) for g in contrastive_spectrum(jnp.eye(4)).values]
        [0.25, 0.25, -0.25, -0.25]
    """
    K = _even_kernel("K", K)
    _dense_only("K", K, "contrastive_spectrum")
    ridge = float(V.positive_float("ridge", ridge, allow_zero=True))
    N = K.shape[0]
    if ridge:
        K = K + ridge * jnp.eye(N, dtype=K.dtype)
    spec = kernel_spectrum(K, tol=tol)
    rc = N * float(jnp.finfo(K.dtype).eps) if rcond is None else float(
        V.positive_float("rcond", rcond, allow_zero=True))
    r = linalg.contrastive_eigenpairs(K, rcond=rc, kernel_eigh=(spec.values, spec.vectors))
    return ContrastiveSpectrum(values=r.values, vectors=r.vectors, coef=r.coef, kernel=spec,
                               rank=int(r.rank), ridge=ridge)
