"""Top-m eigensolvers for kernel matrices and a reusable decomposition for the eigen-reduced solver.

Two eigenproblems appear in the kernel-regime dynamics (``docs/concepts.md``):

* ``kind="kernel"``: the top-m eigenpairs of the kernel ``K`` itself, ``K u = λ u``.
* ``kind="contrastive"``: the top-m eigenpairs of ``M = K^{1/2} Z K^{1/2} / 2n`` (Simon et al. 2023,
  the kernelised stepwise model; ``docs/theory/stepwise.md``),
  computed WITHOUT ``K^{1/2}`` as the K-self-adjoint pencil ``(K Z K / 2n) a = γ K a`` — equivalently
  ``(Z K / 2n) a = γ a`` with ``aᵀ K a = 1``. The eigenvectors of ``M`` are ``b = K^{1/2} a``.

Both are stored in one form, :class:`EigenDecomposition`, built around a pair ``(A, E)`` of
``(2n, m)`` matrices with ``E = K A`` and ``Aᵀ K A = I_m``:

* kernel kind:       ``A = U Λ^{-1/2}``, ``E = U Λ^{1/2}`` (``U`` orthonormal eigenvectors of ``K``);
* contrastive kind:  ``A`` = K-orthonormal generalised eigenvectors, ``E = K A`` (``EᵀZE/2n = Γ``).

In both, ``K_m = E Eᵀ`` is a rank-m kernel with ``K − K_m ⪰ 0`` (``K^{1/2} A`` has orthonormal
columns), and the eigen-reduced dynamics of ``sslntk.dynamics`` are the EXACT kernel flow under
``K_m`` (see ``sslntk/dynamics/_eigen.py``).

Algorithms (all jittable, static sizes):

* ``method="eigh"``: dense ``jnp.linalg.eigh`` (kernel kind: one ``eigh`` of ``K``; contrastive
  kind: `contrastive_eigenpairs`, the one dense solver of the contrastive problem: ``eigh(K)`` for
  ``K^{1/2}`` with a round-off cut-off, then ``eigh(M)``). O(N³); exact.
* ``method="krylov"``: randomised block Krylov (block Lanczos with full re-orthogonalisation and a
  Rayleigh–Ritz step; Musco & Musco 2015, "Randomized block Krylov methods for stronger and faster
  approximate SVD"). The Krylov space of ``T = Z K / 2n`` (or ``K``) is built with a Euclidean
  orthonormal basis ``Q`` (robust QR) and ONE product ``K @ block`` per block; the Rayleigh–Ritz
  step solves the small generalised problem ``(Pᵀ Z P / 2n) v = θ (Qᵀ P) v`` with ``P = K Q``.
  Cost ``(depth + 1)`` products ``K @ (N, b)`` plus ``O(N (depth·b)²)``: no O(N³) work.
* ``method="subspace"``: randomised subspace iteration (the same, keeping only the last block;
  Halko, Martinsson & Tropp 2011, Alg. 4.4) — slower to converge, kept for comparison.

Sharded kernels: both Krylov methods take a row-sharded ``K`` (``NamedSharding(mesh,
P(axis, None))``) and run every ``K @ block`` where its row blocks live (``_sharding.row_matmul``:
a ``shard_map`` plus an ``all_gather``); the ``(N, b)`` blocks and small problems are replicated.
``memory_plan`` gives the compiled programs' per-device memory for any size without running them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sslntk import _sharding
from sslntk import _validate as V

KINDS = ("kernel", "contrastive")
METHODS = ("auto", "eigh", "krylov", "subspace")

# Below this size "auto" uses the dense eigh (exact and, at this size, about as fast).
DENSE_MAX_N = 1024


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class EigenDecomposition:
    """Top-m eigenpairs of a kernel (``kind="kernel"``) or of its contrastive matrix
    ``M = K^{1/2} Z K^{1/2}/2n`` (``kind="contrastive"``), in the form the eigen-reduced solver uses.

    Compute it once per kernel with :func:`eigen_decomposition` and pass it as ``decomposition=``
    to every solve that shares the kernel (it does not depend on ``f0``, ``α`` or loss constants).

    Attributes:
      values: ``(m,)`` eigenvalues, descending (``λ_j`` of K, or ``γ_j`` of M).
      vectors: ``(N, m)`` the matrix ``A`` (reduced coordinates are ``w = Aᵀ f``), ``Aᵀ K A = I``.
      lift: ``(N, m)`` the matrix ``E = K A`` (``f = f₀ + E (w − w₀)``); ``K_m = E Eᵀ``.
      trace: ``tr K``.
      tail_norm: estimate of ``‖K − E Eᵀ‖₂`` (12 block power iterations, block 8, on the PSD
        remainder: an estimate from below), used by the solver's discarded-spectrum bound.
      residual: ``(m,)`` relative eigen-residuals ``‖T a − θ a‖ / (|θ| ‖a‖ + ‖T‖·eps)`` with
        ``T = Z K/2n`` or ``K`` (computed from stored products; a convergence diagnostic).
      kind: ``"kernel"`` or ``"contrastive"`` (static).
      method: the algorithm that produced it (static).
    """

    values: jax.Array
    vectors: jax.Array
    lift: jax.Array
    trace: jax.Array
    tail_norm: jax.Array
    residual: jax.Array
    kind: str = dataclasses.field(default="contrastive", metadata=dict(static=True))
    method: str = dataclasses.field(default="eigh", metadata=dict(static=True))

    @property
    def m(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_points(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def discarded_mass(self) -> jax.Array:
        """``tr(K − E Eᵀ) = tr K − ‖E‖_F²`` ≥ ``tail_norm`` (the kernel mass the reduction drops)."""
        return self.trace - jnp.sum(self.lift**2)


def pair_flip(X: jax.Array, axis: int = 0) -> jax.Array:
    """The pair-swap operator: ``Z`` applied along ``axis`` of ``X``, for the positive-pair matrix
    ``Z = [[0, I_n], [I_n, 0]]`` of stacked views ``[a_1..a_n, b_1..b_n]``.

    ``axis=0`` gives ``Z @ X`` (``X: (2n, ...)``), ``axis=-1`` gives ``X @ Z`` (``X: (..., 2n)``):
    the two view halves swap places. Every use of ``Z`` in sslntk goes through this one function
    (``kernels.pair_matrix(n)`` is ``pair_flip(I_2n)``); it is a permutation, never a matmul.

        >>> import jax.numpy as jnp
        >>> pair_flip(jnp.arange(4.0))
        Array([2., 3., 0., 1.], dtype=float32)
    """
    n = X.shape[axis] // 2
    return jnp.concatenate([jax.lax.slice_in_dim(X, n, 2 * n, axis=axis),
                            jax.lax.slice_in_dim(X, 0, n, axis=axis)], axis=axis)


class ContrastiveEigenpairs(NamedTuple):
    """All eigenpairs of the contrastive matrix ``M = K^{1/2} Z K^{1/2} / 2n``
    (`contrastive_eigenpairs`), in the forms the rest of sslntk reads.

    values: ``(2n,)`` γ_j, descending (can be negative: such modes are never learned).
    vectors: ``(2n, 2n)`` ``B``, orthonormal eigenvectors of ``M`` (columns).
    coef: ``(2n, 2n)`` ``A = K^{+1/2} B``: ``(Z K / 2n) A = A diag(γ)``, ``Aᵀ K A = I`` on the
      kept range; the eigenfunctions are ``g_j(x) = k_X(x) a_j``.
    lift: ``(2n, 2n)`` ``E = K A = K^{1/2} B``, the eigenfunctions on the training views.
    kernel_values: ``(2n,)`` eigenvalues λ of ``K`` (descending, as computed: round-off negatives
      kept), from the same decomposition (for the PSD rule).
    kernel_vectors: ``(2n, 2n)`` the matching orthonormal eigenvectors ``U`` of ``K``.
    rank: int scalar, the number of eigenvalues of K kept in ``K^{±1/2}`` (above ``rcond·λ_max``).
    """

    values: jax.Array
    vectors: jax.Array
    coef: jax.Array
    lift: jax.Array
    kernel_values: jax.Array
    kernel_vectors: jax.Array
    rank: jax.Array


def contrastive_eigenpairs(K, *, rcond: float | None = None,
                           kernel_eigh: tuple[jax.Array, jax.Array] | None = None
                           ) -> ContrastiveEigenpairs:
    """The contrastive eigenproblem, solved densely: all eigenpairs of ``M = K^{1/2} Z K^{1/2} / 2n``.

    The one implementation that `eigen_decomposition(kind="contrastive", method="eigh")`,
    `contrastive_eigh`, `sslntk.kernels.contrastive_spectrum` and
    `sslntk.theory.contrastive_modes` read. ``M`` is the matrix whose eigenvalues γ_j set the
    step times of Barlow Twins kernel gradient flow (Simon et al. 2023, ICML, "On the stepwise
    nature of self-supervised learning": their kernelised model is the linear model with the
    feature cross-correlation replaced by ``M``; derivation in ``docs/theory/stepwise.md``).

    Algorithm: ``K = U Λ Uᵀ`` (dense ``eigh``, or ``kernel_eigh = (λ descending, U)`` when the
    caller has it already), ``K^{1/2}`` and ``K^{+1/2}`` from the eigenvalues above ``rcond·λ_max``
    (default ``rcond = 2n·eps(dtype)``; the rest is K's numerical null space, which the flow never
    moves), ``M = K^{1/2} Z K^{1/2} / 2n`` (Z by `pair_flip`), ``M = B Γ Bᵀ``, then
    ``A = K^{+1/2} B`` and ``E = K^{1/2} B``. O(N³); jittable; in K's dtype (use float64 for
    closed-form work). K is trusted to be symmetric PSD (negative eigenvalues count as null
    space); the public callers check it first or from ``kernel_values``.

    Args:
      K: ``(2n, 2n)`` kernel over stacked views ``[a_1..a_n, b_1..b_n]``.
      rcond: relative cut-off for ``K^{±1/2}`` (default ``2n·eps``).
      kernel_eigh: optional ``(λ (2n,) descending, U (2n, 2n))``, the eigendecomposition of the
        symmetrised K, to reuse.

    Examples:
        >>> import jax.numpy as jnp
        >>> r = contrastive_eigenpairs(jnp.eye(4))     # K = I: M = Z/4, γ = ±1/4
        >>> [round(float(g), 3) for g in r.values]
        [0.25, 0.25, -0.25, -0.25]
    """
    K = V.square_kernel("K", K)
    N = K.shape[0]
    if N % 2 or N < 4:
        raise ValueError(f"K: the contrastive eigenproblem needs stacked views [a_1..a_n, "
                         f"b_1..b_n] with an even size N = 2n >= 4, got N={N}")
    rc = N * float(jnp.finfo(K.dtype).eps) if rcond is None else float(
        V.positive_float("rcond", rcond, allow_zero=True))
    if kernel_eigh is None:
        lam, U = _descending_eigh(0.5 * (K + K.T))
    else:
        lam, U = kernel_eigh
    return _contrastive_from_eigh(lam, U, jnp.asarray(rc, K.dtype))


@jax.jit
def _contrastive_from_eigh(lam, U, rc):
    N = lam.shape[0]
    keep = lam > rc * lam[0]
    sq = jnp.where(keep, jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
    isq = jnp.where(keep, 1.0 / jnp.where(keep, sq, 1.0), 0.0)
    Kh = (U * sq) @ U.T
    Mx = Kh @ pair_flip(Kh) / N                     # K^{1/2} Z K^{1/2} / 2n
    gam, B = _descending_eigh(0.5 * (Mx + Mx.T))
    UtB = U.T @ B
    A = U @ (isq[:, None] * UtB)
    E = U @ (sq[:, None] * UtB)
    return ContrastiveEigenpairs(values=gam, vectors=B, coef=A, lift=E, kernel_values=lam,
                                 kernel_vectors=U, rank=jnp.sum(keep))


def _descending_eigh(S):
    w, V_ = jnp.linalg.eigh(S)
    return w[::-1], V_[:, ::-1]


def _whitener(G, cut):
    """`W` with `Wᵀ G W = I` on the directions of the PSD `G` whose eigenvalue is at least
    `cut·max`, zero columns for the others (static sizes); and the mask of kept columns."""
    g, Vg = jnp.linalg.eigh(G)
    keep = g > cut * jnp.max(g)
    return Vg * jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, g, 1.0)), 0.0), keep


def _whitened_rayleigh_ritz(S, G, cut):
    """Eigenpairs of the small pencil ``S v = θ G v`` (``G`` PSD, possibly singular).

    ``G`` is whitened by its eigendecomposition; directions with ``g < cut·max g`` (numerically
    dependent basis vectors) are dropped by giving them θ = −inf, so sizes stay static."""
    Wm, keep = _whitener(G, cut)
    St = Wm.T @ S @ Wm
    St = 0.5 * (St + St.T)
    th, Vt = jnp.linalg.eigh(St)
    # Dropped directions have zero rows/cols in St: push their eigenvalues to the bottom.
    dead = jnp.sum(Vt**2 * (~keep)[:, None], axis=0) > 0.5
    th = jnp.where(dead, -jnp.inf, th)
    order = jnp.argsort(-th)
    return th[order], (Wm @ Vt)[:, order]


def _kernel_pair(lam, U):
    """``(A, E) = (U Λ^{-1/2}, U Λ^{1/2})`` (``Aᵀ K A = I``, ``E = K A``); eigenvalues at round-off
    level (``λ <= 0``) give zero columns: those directions are K's null space, frozen by the flow."""
    pos = lam > 0
    sq = jnp.sqrt(jnp.where(pos, lam, 1.0))
    return U * jnp.where(pos, 1.0 / sq, 0.0), U * jnp.where(pos, sq, 0.0)


def _orthonormalize(Y, Q_prev):
    """Euclidean block Gram–Schmidt of ``Y`` against ``Q_prev`` (twice: "twice is enough"), then QR."""
    for _ in range(2):
        if Q_prev is not None:
            Y = Y - Q_prev @ (Q_prev.T @ Y)
        Y, _ = jnp.linalg.qr(Y)
    return Y


def _k_orthonormalize(Kmm, Y, Q_prev, P_prev, cut):
    """A block `Q` with `QᵀKQ = I` spanning `Y` minus its K-projection on the previous blocks
    (`P_prev = K Q_prev`), and `P = K Q` (the block's one O(N²b) product). Two passes of block
    Gram–Schmidt in the K inner product with a Euclidean QR for conditioning; the small Gram
    `YᵀKY` is whitened by its eigendecomposition and directions below `cut·max` (K's numerical
    null space) become zero columns, so sizes stay static. Why K-orthonormal: the contrastive
    pencil (KZK/2n, K) is then a plain symmetric eigenproblem on the basis, instead of a
    whitening of an ill-conditioned Gram in float32 (measured at 2n = 8192, float32: eigen
    residuals 7e-4 instead of 6e-3, and the BT staircase's loss error 5e-6–1e-5 instead of
    4e-5–2e-4)."""
    for _ in range(2):
        if Q_prev is not None:
            Y = Y - Q_prev @ (P_prev.T @ Y)
        Y, _ = jnp.linalg.qr(Y)
    P = Kmm(Y)
    W, _ = _whitener(0.5 * (Y.T @ P + P.T @ Y), cut)
    return Y @ W, P @ W


@partial(jax.jit, static_argnames=("m", "kind", "block", "depth", "krylov", "layout"))
def _krylov(K, key, *, m, kind, block, depth, krylov, layout=None):
    key = _subkeys(key)[0]
    N = K.shape[0]
    Kmm = lambda X: _sharding.row_matmul(K, X, layout)   # K @ X where K's row blocks live
    dtype = K.dtype
    n2 = jnp.asarray(N, dtype)
    eps = jnp.finfo(dtype).eps
    contrastive = kind == "contrastive"

    def next_block(Y, Qs, Ps):
        Qp = jnp.concatenate(Qs, axis=1) if (krylov and Qs) else None
        if contrastive:   # K-orthonormal basis (see _k_orthonormalize)
            return _k_orthonormalize(Kmm, Y, Qp, None if Qp is None else jnp.concatenate(Ps, axis=1),
                                     100 * eps)
        Q = _orthonormalize(Y, Qp)
        return Q, Kmm(Q)                             # the one O(N² b) product per block

    Qs, Ps = [], []
    Q, P = next_block(jax.random.normal(key, (N, block), dtype), Qs, Ps)
    for it in range(depth + 1):
        if krylov:
            Qs.append(Q)
            Ps.append(P)
        else:
            Qs, Ps = [Q], [P]
        if it == depth:
            break
        Q, P = next_block(pair_flip(P) / n2 if contrastive else P, Qs, Ps)
    Qa = jnp.concatenate(Qs, axis=1)
    Pa = jnp.concatenate(Ps, axis=1)
    if kind == "contrastive":
        S = Pa.T @ pair_flip(Pa) / n2                # Qᵀ K Z K Q / 2n
        G = Qa.T @ Pa                                # Qᵀ K Q
        S, G = 0.5 * (S + S.T), 0.5 * (G + G.T)
        th, Vv = _whitened_rayleigh_ritz(S, G, cut=100 * eps)
        th, Vv = th[:m], Vv[:, :m]
        A = Qa @ Vv
        E = Pa @ Vv
        # Re-impose Aᵀ K A = I exactly (cheap: m x m) so that K − E Eᵀ is PSD.
        Gm = A.T @ E
        Gm = 0.5 * (Gm + Gm.T)
        Lc = jnp.linalg.cholesky(Gm)
        A = jax.scipy.linalg.solve_triangular(Lc, A.T, lower=True).T
        E = jax.scipy.linalg.solve_triangular(Lc, E.T, lower=True).T
        res_vec = pair_flip(E) / n2 - A * th             # T a − θ a with T = Z K / 2n
        a_norm = jnp.linalg.norm(A, axis=0)
        T_norm = jnp.max(jnp.abs(th))
        res = jnp.linalg.norm(res_vec, axis=0) / (jnp.abs(th) * a_norm + T_norm * eps * a_norm)
        return th, A, E, res
    S = Qa.T @ Pa
    S = 0.5 * (S + S.T)
    th, Vv = _descending_eigh(S)
    th, Vv = th[:m], Vv[:, :m]
    U = Qa @ Vv
    KU = Pa @ Vv
    res = jnp.linalg.norm(KU - U * th, axis=0) / (jnp.abs(th) + jnp.max(jnp.abs(th)) * eps)
    A, E = _kernel_pair(th, U)
    return th, A, E, res


@partial(jax.jit, static_argnames=("m", "kind"))
def _dense(K, *, m, kind):
    N = K.shape[0]
    dtype = K.dtype
    eps = jnp.finfo(dtype).eps
    lam, U = _descending_eigh(0.5 * (K + K.T))
    if kind == "kernel":
        lam, U = lam[:m], U[:, :m]
        A, E = _kernel_pair(lam, U)
        return lam, A, E, jnp.zeros((m,), dtype)
    # Contrastive: the one dense solver (round-off cut-off N·eps·λ_max for K^{±1/2}).
    r = _contrastive_from_eigh(lam, U, jnp.asarray(N * eps, dtype))
    return r.values[:m], r.coef[:, :m], r.lift[:, :m], jnp.zeros((m,), dtype)


@partial(jax.jit, static_argnames=("iters", "block", "layout"))
def _tail_norm(K, E, key, *, iters=12, block=8, layout=None):
    """‖K − E Eᵀ‖₂ by block power iteration (the remainder is PSD, so the estimate is from below),
    floored at 0."""
    X = jax.random.normal(_subkeys(key)[1], (K.shape[0], block), K.dtype)
    Kmm = lambda X: _sharding.row_matmul(K, X, layout)

    def body(X, _):
        Y = Kmm(X) - E @ (E.T @ X)
        Q, _ = jnp.linalg.qr(Y)
        return Q, None

    X, _ = jax.lax.scan(body, jnp.linalg.qr(X)[0], None, length=iters)
    Y = Kmm(X) - E @ (E.T @ X)
    S = X.T @ Y
    return jnp.maximum(jnp.max(jnp.linalg.eigvalsh(0.5 * (S + S.T))), 0.0)


def _subkeys(key):
    """The decomposition's two keys `(Krylov start, tail estimate)` from the user's `key` (None:
    `PRNGKey(0)`), derived inside each compiled program (no small eager programs per call)."""
    return jax.random.split(jax.random.PRNGKey(0) if key is None else key)


@partial(jax.jit, static_argnames=("layout",))
def _trace(K, *, layout=None):
    return _sharding.row_trace(K, layout)


def memory_plan(N: int, m: int, kind: str = "contrastive", *, mesh=None, sharding=None,
                dtype=jnp.float32, method: str = "krylov", block: int | None = None,
                depth: int | None = None, tail_iters: int = 12) -> dict:
    """Per-device memory of `eigen_decomposition` on a row-sharded `(N, N)` kernel, from the
    compiled programs' own `memory_analysis()` (shapes only; nothing runs). Returns
    `{"krylov": bytes dict, "tail_norm": bytes dict, "peak": max of the two, "limit": ...}` (see
    `sslntk._sharding.compiled_bytes`)."""
    N = V.positive_int("N", N)
    m = V.positive_int("m", m)
    V.choice("kind", kind, KINDS)
    V.choice("method", method, ("krylov", "subspace"))
    layout = _sharding.resolve(mesh, sharding)
    if layout is None:
        raise ValueError("mesh, sharding: expected one of them (the plan is for a sharded kernel)")
    _sharding.check_rows("mesh", N, layout)
    dt = V.float_dtype(dtype)
    b = min(default_block(m, N) if block is None else V.positive_int("block", block), N)
    d = (6 if method == "krylov" else 30) if depth is None else V.positive_int("depth", depth,
                                                                               minimum=0)
    if method == "krylov":
        d = max(0, min(d, N // b - 1))
    Ks = jax.ShapeDtypeStruct((N, N), dt, sharding=layout.rows)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=layout.replicated)
    E = jax.ShapeDtypeStruct((N, m), dt, sharding=layout.replicated)
    kry = _sharding.compiled_bytes(_krylov.lower(Ks, key, m=m, kind=kind, block=b, depth=d,
                                                 krylov=method == "krylov",
                                                 layout=layout).compile())
    tail = _sharding.compiled_bytes(_tail_norm.lower(Ks, E, key, iters=int(tail_iters),
                                                     layout=layout).compile())
    return dict(krylov=kry, tail_norm=tail, peak=max(kry.get("peak", 0), tail.get("peak", 0)),
                limit=_sharding.device_memory_limit(layout)[0], devices=layout.size, block=b,
                depth=d)


def default_block(m: int, N: int) -> int:
    """Krylov block size: m plus an oversampling of max(8, m/4), at most N."""
    return int(min(N, m + max(8, m // 4)))


def eigen_decomposition(K, m: int, kind: str = "contrastive", *, method: str = "auto",
                        key: jax.Array | None = None, block: int | None = None,
                        depth: int | None = None, tail_iters: int = 12,
                        memory_limit: int | None = None) -> EigenDecomposition:
    """Top-``m`` eigenpairs of ``K`` (``kind="kernel"``) or of ``M = K^{1/2} Z K^{1/2}/2n``
    (``kind="contrastive"``), as a reusable :class:`EigenDecomposition`.

    Args:
      K: ``(N, N)`` symmetric PSD kernel over stacked views ``[a_1..a_n, b_1..b_n]`` (``N = 2n``).
      m: number of eigenpairs, ``1 <= m <= N``.
      kind: ``"contrastive"`` (for losses that depend on ``f`` only through
        ``C = fᵀ Z f / 2n``) or ``"kernel"`` (any loss).
      method: ``"eigh"`` (dense, exact, O(N³)), ``"krylov"`` (randomised block Krylov, default for
        ``N > 1024``), ``"subspace"`` (randomised subspace iteration) or ``"auto"``.
      key: PRNG key for the random start block (``"krylov"``/``"subspace"`` and the tail-norm
        estimate); default ``jax.random.PRNGKey(0)``. Same key, same result.
      block: Krylov block size (default ``m + max(8, m/4)``).
      depth: number of Krylov blocks after the first (default 6 for krylov, 30 for subspace).
      tail_iters: power iterations for ``tail_norm``.
      memory_limit: sharded K only: bytes per device the compiled Krylov program may use (default:
        the device memory, or the host's available memory shared by its local CPU devices); a
        larger plan (its ``memory_analysis()``) raises ``MemoryError`` before it runs.

    Sharded kernels: a row-sharded ``K`` (``NamedSharding(mesh, P(axis, None))``, e.g.
    from ``kernels.ntk(..., mesh=mesh)``) is never gathered: every product ``K @ (N, b)`` runs as a
    ``shard_map`` on the devices that hold the row blocks, joined by an ``all_gather`` collective,
    and everything else (the ``(N, b)`` Krylov blocks, the small Rayleigh–Ritz problems, the
    result) is replicated on the mesh. ``"auto"`` then means ``"krylov"`` (``"eigh"`` raises: it
    needs the whole matrix). Same algorithm, same key, same result as for the unsharded K (to
    round-off). Works across processes under ``jax.distributed``.

    Returns:
      :class:`EigenDecomposition` with ``values`` descending. Under ``jax.jit`` pass ``m``, ``kind``,
      ``method``, ``block`` and ``depth`` as static values.
    """
    return trusted_eigen_decomposition(V.square_kernel("K", K), m, kind, method=method, key=key,
                                       block=block, depth=depth, tail_iters=tail_iters,
                                       memory_limit=memory_limit)


def trusted_eigen_decomposition(K, m: int, kind: str = "contrastive", *, method: str = "auto",
                                key: jax.Array | None = None, block: int | None = None,
                                depth: int | None = None, tail_iters: int = 12,
                                memory_limit: int | None = None) -> EigenDecomposition:
    """`eigen_decomposition` for a kernel its caller has already checked: `K` is trusted to be a
    square, symmetric, finite float array (`sslntk._validate.square_kernel`), so it is not read
    again for the check (a pass over K, ~0.2 s at N = 8192 float32 on CPU). For solvers behind a
    validating entry point (`sslntk.dynamics.solve`, `solve_many`), which check K once; users call
    `eigen_decomposition`. The small options are still checked (cheap)."""
    N = K.shape[0]
    V.choice("kind", kind, KINDS)
    V.choice("method", method, METHODS)
    m = V.positive_int("m", m)
    if m > N:
        raise ValueError(f"m: expected 1 <= m <= N = {N} (the kernel's size), got m={m}")
    if kind == "contrastive" and (N % 2 or N < 4):
        raise ValueError(f"K: the contrastive kind needs stacked views [a_1..a_n, b_1..b_n] with an "
                         f"even size N = 2n >= 4, got N={N}")
    layout = _sharding.layout_of(K)
    if memory_limit is not None:
        memory_limit = V.positive_int("memory_limit", memory_limit)
    if layout is not None:
        if method == "eigh":
            raise ValueError("method: 'eigh' is a dense eigendecomposition of the whole kernel, "
                             "which a row-sharded K never gathers on one device; use 'krylov' "
                             "(or 'auto', which picks it for a sharded K) or 'subspace'")
        if method == "auto":
            method = "krylov"
        key = _sharding.place(jax.random.PRNGKey(0) if key is None else key, layout)
    if method == "auto":
        method = "eigh" if N <= DENSE_MAX_N else "krylov"
    if method == "eigh":
        vals, A, E, res = _dense(K, m=m, kind=kind)
    else:
        b = default_block(m, N) if block is None else V.positive_int("block", block)
        if b < m:
            raise ValueError(f"block: expected a Krylov block size >= m = {m}, got {b}")
        b = min(b, N)
        d = (6 if method == "krylov" else 30) if depth is None else V.positive_int(
            "depth", depth, minimum=0)
        if method == "krylov":
            d = max(0, min(d, N // b - 1))            # the Krylov space cannot exceed N
        opts = dict(m=m, kind=kind, block=b, depth=d, krylov=(method == "krylov"), layout=layout)
        if layout is None:
            vals, A, E, res = _krylov(K, key, **opts)
        else:   # compiled first: its memory_analysis() is checked before it runs
            vals, A, E, res = _sharding.checked_call(
                f"eigen_decomposition ({method}, N = {N}, m = {m}, sharded over "
                f"{layout.describe()})", _krylov, (K, key), opts, layout, memory_limit)
    if m < N and tail_iters > 0:
        tail = _tail_norm(K, E, key, iters=int(tail_iters), layout=layout)
    else:
        tail = jnp.zeros((), K.dtype)
        if layout is not None:
            tail = _sharding.place(tail, layout)
    trace = _trace(K, layout=layout)
    return EigenDecomposition(values=vals, vectors=A, lift=E, trace=trace,
                              tail_norm=tail, residual=res, kind=kind,
                              method=method)


def top_eigh(K, m: int, *, method: str = "auto", key=None, **kw) -> tuple[jax.Array, jax.Array]:
    """Top-``m`` eigenpairs ``(λ (m,), U (N, m))`` of a symmetric PSD ``K``, descending."""
    d = eigen_decomposition(K, m, "kernel", method=method, key=key, tail_iters=0, **kw)
    # E = U Λ^{1/2}  →  U = E Λ^{-1/2}
    return d.values, d.lift / jnp.sqrt(jnp.where(d.values > 0, d.values, 1.0))


def contrastive_eigh(K, m: int, *, method: str = "auto", key=None, **kw
                     ) -> tuple[jax.Array, jax.Array]:
    """Top-``m`` eigenpairs of the contrastive problem, descending: ``(γ (m,), A (N, m))`` with
    ``(Z K / 2n) A = A diag(γ)`` and ``Aᵀ K A = I``. The orthonormal eigenvectors of
    ``M = K^{1/2} Z K^{1/2}/2n`` are ``B = K^{1/2} A`` (not formed here; `contrastive_eigenpairs`
    returns them). A view of `eigen_decomposition(K, m, "contrastive")` (dense: the one solver
    `contrastive_eigenpairs`; large N: block Krylov on the same pencil)."""
    d = eigen_decomposition(K, m, "contrastive", method=method, key=key, tail_iters=0, **kw)
    return d.values, d.vectors
