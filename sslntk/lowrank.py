"""Low-rank route to the top-m contrastive eigenpairs for 2n views whose kernel does not fit in memory.

The eigen-reduced solver only needs a pair ``(A, E)`` with ``E = K A``, ``Aᵀ K A = I`` (see
:class:`sslntk.linalg.EigenDecomposition`). This module builds one for ``2n = 131072`` views on one
machine without ever forming the ``(2n, 2n)`` kernel, in ``O(N·l)`` memory (``N = 2n``,
``l`` landmarks), and certifies it with EXACT kernel products:

1. **Nyström by block randomly pivoted Cholesky** (Chen, Epperly, Tropp & Webber 2023, "Randomly
   pivoted Cholesky", Alg. 2/3; Williams & Seeger 2001 for Nyström). ``l`` landmark views are
   drawn in blocks of ``b``, each block with probability proportional to the current residual
   diagonal (``landmarks="rpcholesky"``) or uniformly (``landmarks="uniform"``); the block's exact
   kernel columns ``K(X, X_S)`` (``(N, b)``, computed by ``sslntk.kernels.ntk``) update a factor
   ``F`` (``(N, l)``). The result is the Nyström approximation on the chosen landmarks,
   ``K̂ = F Fᵀ = C W⁺ Cᵀ`` with ``C = K(X, X_L)``, ``W = K(X_L, X_L)`` (round-off eigenvalues of the
   block Schur complements cut), and ``K − K̂ ⪰ 0``.
2. **Contrastive modes of K̂.** With ``Fᵀ F = V g Vᵀ`` and ``F' = F V`` (columns with
   ``g < cut·max g`` dropped), ``M̂ = K̂^{1/2} Z K̂^{1/2}/N`` acts on the orthonormal basis
   ``Q = F' g^{-1/2}`` as ``S = F'ᵀ Z F'/N``; its eigenpairs ``S u = γ̂ u`` give candidates
   ``Â = F' g⁻¹ U``, ``K̂ Â = F' U`` (``Âᵀ K̂ Â = I``).
3. **One exact pass** ``P = K Â`` (row blocks ``K(X_rows, X)`` computed on the fly and dropped)
   and a Rayleigh–Ritz step of the exact pencil ``(Pᵀ Z P/N) v = θ (Âᵀ P) v``: ``A = Â V``,
   ``E = P V``. Now ``E = K A`` and ``Aᵀ K A = I`` hold for the TRUE kernel (to round-off), so
   ``K − E Eᵀ ⪰ 0`` and the eigen-reduced solver's flow is the exact kernel flow under
   ``K_m = E Eᵀ``, as for the dense Krylov decomposition.

**Bound** (:class:`LowRankBound`, all from exact kernel values):

* eigenvalues: with ``B = K^{1/2} A`` (orthonormal columns), ``θ_j`` are the Ritz values of ``M``
  on ``span B``, so ``θ_j ≤ γ_j`` (Cauchy interlacing); the residual ``R_j = M b_j − θ_j b_j =
  K^{1/2} r_j`` with ``r_j = Z E_j/N − θ_j A_j`` obeys ``‖R_j‖² = r_jᵀ K r_j ≤ ‖Fᵀ r_j‖² +
  τ ‖r_j‖²`` with ``τ = tr(K − K̂) ≥ ‖K − K̂‖₂`` (``tr K`` exact from the ``N`` diagonal entries),
  and some eigenvalue of ``M`` lies within ``ρ_j = ‖R_j‖`` of ``θ_j`` (Weinstein / Krylov–
  Bogoliubov bound for a symmetric operator; Parlett 1998, "The symmetric eigenvalue problem",
  Thm 4.5.1).
* tail: ``κ = ‖K − E Eᵀ‖₂ ≤ min(tr K − ‖E‖_F², τ + ‖K̂ − E Eᵀ‖₂)`` (triangle inequality; the last
  norm is computed exactly in the ``(l + m)``-dimensional span of ``[F, E]``). Stored as the
  decomposition's ``tail_norm`` — a rigorous UPPER bound here (the dense route's is a power-
  iteration estimate from below).
* step times: in the Barlow Twins staircase from ``f₀ ~ α`` the j-th step happens at
  ``t_j ≈ ln(1/(γ_j α²))/(8 γ_j)`` (Simon et al. 2023: the per-mode logistic solution at λ = 1,
  ``docs/theory/stepwise.md``), so to first order
  ``|Δt_j|/t_j ≤ (1 + 1/ln(1/(γ_j α²))) · |Δγ_j|/γ_j`` (:meth:`LowRankBound.step_time_rtol`).

Cost (digits views, depth-2 ReLU MLP NTK, float32): ``l·N`` kernel entries for the Nyström factor,
``N²/2`` for the exact pass (the upper block triangle; the dominant cost at 2n = 131072),
``O(N l²)`` flops, and ``O(N (l + b_rows))`` memory (:func:`memory_plan`; checked before anything
runs). Measured on a busy shared 2-core machine (``benchmarks/bench_lowrank.py``): 2n = 131072,
l = 1024, m = 64: 19 min (exact pass 12.6 min), peak RSS 3.4 GiB, the 16-step staircase complete;
2n = 16384, l = 2048 against the dense route: step times within 0.17 %, top-16 eigenvalues within
1.2e-3 (relative), certified radius (``exact_radius=True``) ≤ 3.4e-2 relative and ≥ the error.
The one-pass radius is loose where the Nyström trace error ``τ`` is large (noise-augmented views:
ρ/θ ≈ 5 at 2n = 131072, l = 1024), so it certifies little there; ``exact_radius`` costs a second
pass.

:func:`solve` integrates the eigen-reduced Barlow-Twins-type flow on such a decomposition without
a dense kernel (see there). See ``docs/how-to/choose-a-solver.md``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _sharding, kernels, linalg
from sslntk import _validate as V
from sslntk._progress import Progress, progress_meter
from sslntk._status import FAILED, MAX_STEPS, NONFINITE, SUCCESS

LANDMARKS = ("rpcholesky", "uniform")

#: bytes of the kernel module's per-block intermediates (see ``kernels.BLOCK_MEMORY_BUDGET``)
_KERNEL_WORK = int(kernels.BLOCK_MEMORY_BUDGET)
_CHUNK = 8192          # rows per float64 chunk of the small Gram matrices (`_gram64`)


@dataclass(frozen=True)
class LowRankBound:
    """A-posteriori certificate of a low-rank contrastive decomposition (exact kernel values).

    Attributes:
      values: ``(m,)`` Ritz values ``θ_j`` (= the decomposition's values); ``θ_j ≤ γ_j``.
      radius: ``(m,)`` ``ρ_j ≥ ‖M b_j − θ_j b_j‖``: an eigenvalue of ``M`` lies in
        ``[θ_j − ρ_j, θ_j + ρ_j]``.
      trace: ``tr K`` (exact, from the diagonal).
      nystrom_trace_error: ``τ = tr(K − K̂) ≥ ‖K − K̂‖₂`` of the landmark approximation.
      tail_norm: ``≥ ‖K − E Eᵀ‖₂`` (rigorous, see the module docstring).
      landmarks: ``(l,)`` indices of the landmark views (rows of the stacked views).
      seconds: wall time per phase (``diagonal``, ``nystrom``, ``modes``, ``exact_pass``, ``bound``).
      plan: the memory plan that was checked before the run (:func:`memory_plan`).
    """

    values: np.ndarray
    radius: np.ndarray
    trace: float
    nystrom_trace_error: float
    tail_norm: float
    landmarks: np.ndarray
    seconds: dict
    plan: dict

    @property
    def lower(self) -> np.ndarray:
        """``(m,)`` rigorous lower bounds on the true ``γ_j``: ``θ_j`` (interlacing)."""
        return self.values

    def step_time_rtol(self, alpha: float, k: int | None = None) -> np.ndarray:
        """``(k,)`` first-order relative bound on the BT staircase step times ``t_j`` implied by
        ``ρ_j`` (module docstring; ``α`` the initial scale, ``k`` the number of steps)."""
        V.positive_float("alpha", alpha)
        k = self.values.shape[0] if k is None else V.positive_int("k", k)
        th, rho = self.values[:k], self.radius[:k]
        lg = np.log(1.0 / np.maximum(th * alpha**2, 1e-300))
        ok = (rho < th) & (lg > 0)       # otherwise the interval reaches 0 (or t_j's formula fails)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = (1.0 + 1.0 / lg) * rho / (th - rho)
        return np.where(ok, out, np.inf)


@dataclass(frozen=True)
class LowRankDecomposition:
    """What :func:`nystrom_decomposition` returns: the decomposition and its certificate.

    Attributes:
      decomposition: a :class:`sslntk.linalg.EigenDecomposition` (``kind="contrastive"``,
        ``method="nystrom"``) with ``E = K A``, ``Aᵀ K A = I`` for the exact kernel; pass it as
        ``decomposition=`` to ``dynamics.solve(..., "eigen")`` when the dense ``K`` fits, or to
        :func:`solve` when it does not.
      bound: :class:`LowRankBound`.
    """

    decomposition: linalg.EigenDecomposition
    bound: LowRankBound


@dataclass(frozen=True)
class LowRankKernel:
    """The kernel of ``N`` views known only through a certified low-rank contrastive
    decomposition (the dense ``(N, N)`` K is never formed). Pass it as ``K`` to
    ``dynamics.solve(K, loss, f0, ts)``: solver ``"auto"`` or ``"eigen"`` runs :func:`solve` on
    its decomposition (the exact flow under ``K_m = E Eᵀ``, with the bound of that docstring).
    Build it with :func:`kernel` (which returns the dense K instead when that fits in memory) or
    from a :class:`LowRankDecomposition`.

    ``op(g)`` applies ``K_m = E Eᵀ`` (``(N, k)``), the rank-m kernel the reduced flow uses.

    Attributes:
      lowrank: the :class:`LowRankDecomposition`.
    """

    lowrank: LowRankDecomposition

    @property
    def decomposition(self) -> linalg.EigenDecomposition:
        return self.lowrank.decomposition

    @property
    def shape(self) -> tuple[int, int]:
        N = self.decomposition.n_points
        return (N, N)

    @property
    def dtype(self):
        return self.decomposition.vectors.dtype

    def __call__(self, g: jax.Array) -> jax.Array:
        E = self.decomposition.lift
        return E @ (E.T @ g)

    def solve(self, loss, f0, ts, solver="auto", *, progress: bool = False, K_test_train=None,
              f0_test=None, record_terms: bool = False, diagnostics: bool = False, **options):
        """``dynamics.solve`` on this kernel: ``solver`` ``"auto"``/``"eigen"`` only (the others
        need the dense K); ``options``: ``rtol``, ``atol``, ``max_steps`` of :func:`solve`. Test
        points, ``record_terms`` and ``diagnostics`` are not supported here (ValueError)."""
        for nm, v in (("K_test_train", K_test_train), ("f0_test", f0_test)):
            if v is not None:
                raise ValueError(f"{nm}: test points are not supported on a low-rank kernel "
                                 f"(the cross kernel K_test_train A would be needed); got one")
        for nm, v in (("record_terms", record_terms), ("diagnostics", diagnostics)):
            if v:
                raise ValueError(f"{nm}: not supported on a low-rank kernel; compute it from "
                                 f"the returned Trajectory.f")
        name = getattr(solver, "name", solver)
        if name not in ("auto", "eigen"):
            raise ValueError(f"solver: a low-rank kernel (sslntk.lowrank.LowRankKernel) runs the "
                             f"'eigen' solver (or 'auto'), got {solver!r}; the other solvers "
                             f"need the dense (2n, 2n) kernel")
        if not isinstance(solver, str):
            opts = {k: getattr(solver, k, None) for k in ("rtol", "atol", "max_steps")}
            options = {**{k: v for k, v in opts.items() if v is not None}, **options}
        unknown = sorted(set(options) - {"rtol", "atol", "max_steps"})
        if unknown:
            raise ValueError(f"solver 'eigen' on a low-rank kernel: unknown option(s) {unknown}; "
                             f"valid options are ['atol', 'max_steps', 'rtol']")
        tr = solve(self.lowrank, loss, f0, ts, progress=progress, **options)
        reason = ("requested" if name == "eigen" else
                  "a low-rank kernel (sslntk.lowrank): the contrastive eigen reduction on its "
                  "certified decomposition")
        return dataclasses.replace(tr, method="eigen", reason=reason)


def dense_kernel_bytes(N: int, dtype=jnp.float32) -> int:
    """Bytes the dense route needs at least: the ``(N, N)`` kernel, a host copy while it is
    assembled, and the kernel module's block intermediates."""
    s = np.dtype(V.float_dtype(dtype)).itemsize
    return 2 * N * N * s + _KERNEL_WORK


def kernel(arch, views, m: int = 64, *, memory_limit: int | None = None, progress: bool = False,
           **nystrom_options):
    """The kernel for ``dynamics.solve``: the dense NTK ``kernels.ntk(arch, views)`` when
    :func:`dense_kernel_bytes` fits in ``memory_limit`` (bytes for the dense route; default: the
    host's available memory), else a :class:`LowRankKernel` from :func:`nystrom_decomposition`
    (``m`` modes; further options passed on; it checks its own plan against the host's available
    memory). 2n = 131072 float32 views need 128 GiB dense: the low-rank route."""
    X = _stacked(arch, views)
    if memory_limit is not None:
        memory_limit = V.positive_int("memory_limit", memory_limit)
    limit = memory_limit if memory_limit is not None else _sharding.device_memory_limit(None)[0]
    if limit is None or dense_kernel_bytes(X.shape[0], X.dtype) <= limit:
        return kernels.ntk(arch, X, progress=progress)
    return LowRankKernel(nystrom_decomposition(arch, X, m, progress=progress,
                                               **nystrom_options))


# ------------------------------------------------------------------------------------------------
# memory plan


def memory_plan(N: int, m: int, *, landmarks: int, dims: int, block: int | None = None,
                row_block: int | None = None, dtype=jnp.float32) -> dict:
    """Peak bytes of :func:`nystrom_decomposition` for ``N`` views of ``dims`` numbers each
    (shapes only; nothing runs). Terms (``s`` bytes per number, ``m' = m + max(8, m/4)`` candidate
    modes): the views ``N·dims·s``; the factor and its rotation ``2·N·l·s``; a landmark block's
    kernel columns, their update and the kernel module's host copy ``4·N·b·s``; an exact-pass
    row block ``2·r·N·s`` (kernel rows and their host copy); the ``(N, m')`` candidates, products
    and result ``6·N·m'·s``; the kernel module's per-block intermediates
    (``kernels.BLOCK_MEMORY_BUDGET``); the float64 row chunks of the small Grams
    ``2·8192·l·8``. Returns ``{term: bytes, "peak": sum, "limit": available}``.
    """
    N = V.positive_int("N", N)
    m = V.positive_int("m", m)
    l_ = V.positive_int("landmarks", landmarks)
    dims = V.positive_int("dims", dims)
    s = np.dtype(V.float_dtype(dtype)).itemsize
    b = _landmark_block(l_) if block is None else V.positive_int("block", block)
    r = _row_block(N) if row_block is None else V.positive_int("row_block", row_block)
    mp = linalg.default_block(m, N)
    terms = dict(views=N * dims * s, factor=2 * N * l_ * s, landmark_block=4 * N * b * s,
                 row_block=2 * min(r, N) * N * s, modes=6 * N * mp * s, kernel_work=_KERNEL_WORK,
                 gram_chunks=2 * min(N, _CHUNK) * l_ * 8)
    terms["peak"] = sum(terms.values())
    terms["limit"] = _sharding.device_memory_limit(None)[0]
    return terms


def _landmark_block(l_: int) -> int:
    return int(min(l_, 256))


def _row_block(N: int) -> int:
    """Exact-pass rows per kernel call: ~256 MiB of float32 kernel rows, a multiple of 8."""
    r = max(8, (64 * 2**20) // max(N, 1))
    return int(min(N, r - r % 8 if r >= 16 else r))


# ------------------------------------------------------------------------------------------------
# kernel access through the public kernels API


def _kernel_rows(arch, X, rows, cols):
    """``K(X[rows], X[cols])``, numpy in X's dtype (exact kernel values)."""
    return np.asarray(kernels.ntk(arch, X[rows], X[cols]))


def kernel_diagonal(arch, views, *, block: int = 256, progress: bool = False) -> np.ndarray:
    """``diag K`` ``(N,)`` of the NTK of ``arch`` on stacked ``views`` (``N`` kernel entries:
    ``N/block`` small diagonal blocks ``K(X_i, X_i)``)."""
    X = _stacked(arch, views)
    block = V.positive_int("block", block)
    return _diagonal(arch, X, block, progress)


def _diagonal(arch, X, block, progress):
    N = X.shape[0]
    out = np.empty(N, dtype=np.dtype(X.dtype))
    nb = -(-N // block)
    with Progress(nb, "low-rank: kernel diagonal", enabled=progress) as p:
        for i in range(nb):
            s = slice(i * block, min(N, (i + 1) * block))
            out[s] = np.diagonal(np.asarray(kernels.ntk(arch, X[s])))
            p.update(1)
    return out


def apply_kernel(arch, views, Y, *, row_block: int | None = None,
                 progress: bool = False) -> np.ndarray:
    """``K @ Y`` for ``Y (N, c)`` with exact kernel blocks computed on the fly and dropped
    (the ``N²/2`` entries of the upper block triangle, ``O(row_block·N)`` memory): the product a
    dense K would give."""
    X = _stacked(arch, views)
    Y = np.asarray(V.as_float_array("Y", Y, ndim=2))
    if Y.shape[0] != X.shape[0]:
        raise ValueError(f"Y: expected shape (N, c) with N = {X.shape[0]} (the views), got "
                         f"{Y.shape}")
    r = _row_block(X.shape[0]) if row_block is None else V.positive_int("row_block", row_block)
    return _apply(arch, X, Y.astype(np.dtype(X.dtype)), r, progress, "low-rank: K @ Y")


def _apply(arch, X, Y, r, progress, label):
    """``K @ Y`` from the upper block triangle: row block ``i`` against columns ``i·r..N`` (one
    kernel call, ``r × (N − i·r)``) adds to rows ``i`` and, transposed, to the later rows — half
    of the ``N²`` kernel entries, each computed once (K is symmetric)."""
    N = X.shape[0]
    Yw = Y.astype(np.float64) if Y.dtype == np.float64 else Y
    out = np.zeros((N, Y.shape[1]), dtype=Yw.dtype)
    nb = -(-N // r)
    with Progress(nb, label, enabled=progress) as p:
        for i in range(nb):
            a, b = i * r, min(N, (i + 1) * r)
            Kr = _kernel_rows(arch, X, slice(a, b), slice(a, N))     # (b − a, N − a)
            out[a:b] += Kr @ Yw[a:]
            if b < N:
                out[b:] += Kr[:, b - a:].T @ Yw[a:b]
            p.update(1)
    return out.astype(Y.dtype)


def _stacked(arch, views) -> jax.Array:
    if not isinstance(arch, kernels.Arch):
        raise TypeError(f"arch: expected a sslntk.kernels.Arch (kernels.mlp(...) or "
                        f"kernels.cnn(...)), got {type(arch).__name__}")
    if hasattr(views, "stacked") and hasattr(views, "has_draws"):
        if views.has_draws:
            raise ValueError(f"views: expected a single-draw Views, got one with {views.n_draws} "
                             f"augmentation draws")
        views = views.stacked
    X = V.as_float_array("views", views)
    if X.ndim < 2 or X.shape[0] % 2 or X.shape[0] < 4:
        raise ValueError(f"views: expected stacked views [a_1..a_n, b_1..b_n] with an even "
                         f"number 2n >= 4 of rows, got shape {tuple(X.shape)}")
    return X


# ------------------------------------------------------------------------------------------------
# the decomposition


def nystrom_decomposition(arch, views, m: int, *, landmarks: int | None = None,
                          method: str = "rpcholesky", key: jax.Array | None = None,
                          block: int | None = None, row_block: int | None = None,
                          memory_limit: int | None = None, exact_radius: bool = False,
                          progress: bool = False) -> LowRankDecomposition:
    """Top-``m`` contrastive eigenpairs of the NTK of ``arch`` on ``views`` without forming K.

    Args:
      arch: a ``sslntk.kernels.Arch`` (its infinite-width NTK, one output, is the kernel).
      views: stacked views ``(N, ...)`` = ``[a_1..a_n, b_1..b_n]`` (or a single-draw
        ``sslntk.data.Views``), ``N = 2n``; the kernel's dtype is theirs.
      m: eigenpairs wanted, ``1 <= m <= landmarks``.
      landmarks: ``l``, landmark views (default ``min(N, max(1024, 16 m))``); memory ``O(N l)``.
      method: ``"rpcholesky"`` (blocks drawn ∝ the residual diagonal, default) or ``"uniform"``.
      key: PRNG key for the landmark draws (default ``PRNGKey(0)``); same key, same result.
      block: landmarks per block (default ``min(l, 256)``).
      row_block: kernel rows per call in the exact pass (default ~64 Mi entries per call).
      memory_limit: bytes the run may use (default: the host's available memory); a larger
        :func:`memory_plan` raises ``MemoryError`` with the plan before anything runs.
      exact_radius: spend a second exact pass (``K @ (N, m)``, ``N²`` more kernel entries) for
        the residual norms ``ρ_j = (r_jᵀ K r_j)^{1/2}`` themselves instead of the one-pass upper
        bound ``(‖Fᵀ r_j‖² + τ ‖r_j‖²)^{1/2}`` (measured 2n = 512: ~100× tighter; the one-pass
        bound is loose by ``τ/‖K − K̂‖₂``).
      progress: progress bars for the long phases (diagonal, landmark blocks, exact pass).

    Returns:
      :class:`LowRankDecomposition`: ``.decomposition`` (an ``EigenDecomposition`` with
      ``kind="contrastive"``, ``method="nystrom"``, ``tail_norm`` a rigorous upper bound) and
      ``.bound`` (:class:`LowRankBound`).

    Example::

        import jax, sslntk as sk
        from sslntk import data, kernels, lowrank
        ds = sk.load("digits", n=256, key=jax.random.PRNGKey(0))
        v = sk.make_views(ds.x, data.gaussian_noise(0.5), jax.random.PRNGKey(1))
        lr = lowrank.nystrom_decomposition(kernels.mlp(depth=2), v, 16, landmarks=256)
        print(lr.decomposition.values[:4], lr.bound.radius[:4])
    """
    X = _stacked(arch, views)
    N = int(X.shape[0])
    m = V.positive_int("m", m)
    V.choice("method", method, LANDMARKS)
    l_ = min(N, max(1024, 16 * m)) if landmarks is None else V.positive_int("landmarks", landmarks)
    if l_ > N:
        raise ValueError(f"landmarks: expected at most N = {N} (the views), got {l_}")
    if m > l_:
        raise ValueError(f"m: expected m <= landmarks = {l_} (the rank of the Nyström "
                         f"approximation), got m={m}")
    b = _landmark_block(l_) if block is None else V.positive_int("block", block)
    r = _row_block(N) if row_block is None else V.positive_int("row_block", row_block)
    key = jax.random.PRNGKey(0) if key is None else key
    if memory_limit is not None:
        memory_limit = V.positive_int("memory_limit", memory_limit)
    plan = memory_plan(N, m, landmarks=l_, dims=int(np.prod(X.shape[1:])), block=b,
                       row_block=r, dtype=X.dtype)
    limit = memory_limit if memory_limit is not None else plan["limit"]
    if limit is not None and plan["peak"] > limit:
        raise MemoryError(f"nystrom_decomposition (N = {N}, m = {m}, landmarks = {l_}): planned "
                          f"peak {plan['peak'] / 2**30:.2f} GiB > limit {limit / 2**30:.2f} GiB; "
                          f"plan (bytes): {plan}. Use fewer landmarks or smaller blocks.")
    dt = np.dtype(X.dtype)
    eps = float(np.finfo(dt).eps)
    secs = {}

    t0 = time.perf_counter()
    diag = _diagonal(arch, X, 256, progress).astype(np.float64)
    trace = float(np.sum(diag))
    secs["diagonal"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    F, idx = _pivoted_cholesky(arch, X, diag, l_, b, method, key, eps, progress)
    secs["nystrom"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mp = min(linalg.default_block(m, N), l_)
    A_hat, Fp, gk = _kernel_hat_modes(F, mp, eps)
    del F
    secs["modes"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    P = _apply(arch, X, A_hat, r, progress, "low-rank: exact pass K @ A")
    secs["exact_pass"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    th, A, E = _exact_rayleigh_ritz(A_hat, P, m, eps)
    del P, A_hat
    tau = max(0.0, trace - float(np.sum(np.square(Fp, dtype=np.float64))))
    R = _residuals(A, E, th)
    if exact_radius:
        KR = _apply(arch, X, R.astype(dt), r, progress, "low-rank: exact pass K @ r")
        radius = np.sqrt(np.maximum(np.sum(R * KR, axis=0), 0.0))
    else:
        radius = _residual_radius(R, Fp, tau)
    tail = _tail_bound(Fp, gk, E, tau, trace)
    secs["bound"] = time.perf_counter() - t0

    Ej = jnp.asarray(E)
    dec = linalg.EigenDecomposition(
        values=jnp.asarray(th.astype(dt)), vectors=jnp.asarray(A), lift=Ej,
        trace=jnp.asarray(trace, dt), tail_norm=jnp.asarray(tail, dt),
        residual=jnp.asarray((radius / np.maximum(np.abs(th), 1e-300)).astype(dt)),
        kind="contrastive", method="nystrom")
    bound = LowRankBound(values=th, radius=radius, trace=trace, nystrom_trace_error=tau,
                         tail_norm=tail, landmarks=idx, seconds=secs, plan=plan)
    return LowRankDecomposition(decomposition=dec, bound=bound)


def _pivoted_cholesky(arch, X, diag, l_, b, method, key, eps, progress):
    """Block randomly pivoted (or uniform) Cholesky: ``F (N, l)`` with ``F Fᵀ`` the Nyström
    approximation on the drawn landmarks (Chen et al. 2023, Alg. 3). Each block: exact columns
    ``G = K(X, X_S) − F F_Sᵀ``; its ``(b, b)`` pivot block is whitened by an eigendecomposition
    (directions below ``cut·max`` — already captured — become zero columns), ``F ← [F, G W]``,
    ``d ← d − ‖rows of G W‖²``."""
    N = X.shape[0]
    dt = np.dtype(X.dtype)
    F = np.zeros((N, l_), dtype=dt)
    d = diag.copy()
    chosen = np.zeros(N, dtype=bool)
    idx = []
    col = 0
    nb = -(-l_ // b)
    cut = 10 * b * eps
    with Progress(nb, "low-rank: landmark blocks", enabled=progress) as p:
        for _ in range(nb):
            bb = min(b, l_ - col)
            key, sub = jax.random.split(key)
            w = np.where(chosen, 0.0, np.maximum(d, 0.0) if method == "rpcholesky" else 1.0)
            if not np.any(w > 0):
                w = np.where(chosen, 0.0, 1.0)
            S = np.asarray(jax.random.choice(sub, N, (bb,), replace=False,
                                             p=jnp.asarray(w / w.sum())))
            S = np.sort(S)
            chosen[S] = True
            idx.append(S)
            G = np.asarray(kernels.ntk(arch, X, X[S])).astype(dt)
            if col:
                G -= F[:, :col] @ F[S, :col].T
            Gss = G[S].astype(np.float64)
            g, Vg = np.linalg.eigh(0.5 * (Gss + Gss.T))
            keep = g > cut * max(float(g.max()), 0.0) if g.max() > 0 else np.zeros_like(g, bool)
            Wm = Vg * np.where(keep, 1.0 / np.sqrt(np.where(keep, g, 1.0)), 0.0)
            Fn = G @ Wm.astype(dt)
            F[:, col:col + bb] = Fn
            d -= np.sum(np.square(Fn, dtype=np.float64), axis=1)
            col += bb
            p.update(1)
    return F, np.concatenate(idx)


def _gram64(X, Y, chunk: int = _CHUNK) -> np.ndarray:
    """``Xᵀ Y`` accumulated in float64 over row chunks (float32 inputs: the small matrices that
    decide the modes keep their full accuracy; memory O(chunk·cols))."""
    out = np.zeros((X.shape[1], Y.shape[1]))
    for a in range(0, X.shape[0], chunk):
        out += X[a:a + chunk].astype(np.float64).T @ Y[a:a + chunk].astype(np.float64)
    return out


def _kernel_hat_modes(F, mp, eps):
    """Top-``mp`` contrastive modes of ``K̂ = F Fᵀ``: candidates ``Â = F' g⁻¹ U`` ``(N, mp)``
    (``F' = F V``, ``Fᵀ F = V g Vᵀ``, ``S = F'ᵀ Z F'/N``, ``S U = U Γ̂``); also ``F'`` and ``g``.
    Directions with ``g < 10·eps·max g`` are dropped: below the factor's own round-off, and they
    would only inflate ``Â`` (any candidate subspace is valid: the exact pass decides)."""
    N = F.shape[0]
    Gf = _gram64(F, F)
    g, Vg = np.linalg.eigh(0.5 * (Gf + Gf.T))
    keep = g > 10 * eps * max(float(g.max()), 1e-300)
    g, Vg = g[keep], Vg[:, keep]
    Fp = F @ Vg.astype(F.dtype)
    S = _gram64(Fp, _flip(Fp)) / N
    gam, U = np.linalg.eigh(0.5 * (S + S.T))
    U = U[:, ::-1][:, :mp]
    A_hat = Fp @ (U / g[:, None]).astype(F.dtype)
    return A_hat, Fp, g


def _exact_rayleigh_ritz(A_hat, P, m, eps):
    """Rayleigh–Ritz of the exact pencil ``(Pᵀ Z P/N) v = θ (Âᵀ P) v`` (``P = K Â``): top-m
    ``θ``, ``A = Â V``, ``E = P V``, then ``Aᵀ E = I`` re-imposed (Cholesky, as ``linalg``'s Krylov
    route) so that ``K − E Eᵀ ⪰ 0``. The Gram ``Âᵀ K Â ⪰ I`` has columns of very different size
    (``K̂`` underestimates K most where ``Â`` is largest): scaled to unit diagonal first, so the
    round-off cut ``100·m'·eps`` is relative to O(1), not to the largest column."""
    N = A_hat.shape[0]
    S = _gram64(P, _flip(P)) / N
    G = _gram64(A_hat, P)
    S, G = 0.5 * (S + S.T), 0.5 * (G + G.T)
    d = np.sqrt(np.maximum(np.diag(G), 1e-300))
    S, G = S / np.outer(d, d), G / np.outer(d, d)
    g, Vg = np.linalg.eigh(G)
    keep = g > 100 * G.shape[0] * eps * g.max()
    if int(keep.sum()) < m:
        raise ValueError(f"m: the exact Rayleigh–Ritz step kept {int(keep.sum())} independent "
                         f"candidate directions, fewer than m = {m}; use more landmarks")
    Wm = Vg[:, keep] / np.sqrt(g[keep])
    th, Vt = np.linalg.eigh(Wm.T @ S @ Wm)
    th, Vt = th[::-1][:m], Vt[:, ::-1][:, :m]
    Vv = ((Wm @ Vt) / d[:, None]).astype(A_hat.dtype)
    A, E = A_hat @ Vv, P @ Vv
    Gm = _gram64(A, E)
    Lc = np.linalg.cholesky(0.5 * (Gm + Gm.T))
    Li = np.linalg.inv(Lc).T.astype(A.dtype)            # A ← A L⁻ᵀ, E ← E L⁻ᵀ
    return th, A @ Li, E @ Li


def _residuals(A, E, th):
    """``(N, m)`` ``r_j = Z E_j/N − θ_j A_j`` (float64): ``K^{1/2} r_j = M b_j − θ_j b_j``."""
    N = A.shape[0]
    return _flip(E).astype(np.float64) / N - A.astype(np.float64) * th


def _residual_radius(R, Fp, tau):
    """``ρ_j² = ‖Fᵀ r_j‖² + τ ‖r_j‖² ≥ r_jᵀ K r_j`` (module docstring); ``‖Fᵀ r‖ = ‖F'ᵀ r‖``
    (``F' = F V``, V orthogonal on the kept directions; the dropped ones carry ``≤ cut·max g`` of
    K̂, inside round-off)."""
    quad = np.sum((Fp.T.astype(np.float64) @ R) ** 2, axis=0)
    return np.sqrt(quad + tau * np.sum(R**2, axis=0))


def _tail_bound(Fp, g, E, tau, trace):
    """``‖K − E Eᵀ‖₂ ≤ min(tr K − ‖E‖_F², τ + ‖K̂ − E Eᵀ‖₂)``; the last norm exactly in the span
    of ``[Q, E]`` (``Q = F' g^{-1/2}`` orthonormal): ``K̂ = Q diag(g) Qᵀ``, ``E = Q E_c + Q₂ R₂``."""
    Q = Fp / np.sqrt(g).astype(Fp.dtype)
    E64 = E.astype(np.float64)
    Ec = Q.T.astype(np.float64) @ E64
    Q2, R2 = np.linalg.qr(E64 - Q.astype(np.float64) @ Ec)
    r, m = Ec.shape[0], E.shape[1]
    Y = np.concatenate([Ec, R2], axis=0)                 # E in the basis [Q, Q2]
    D = -Y @ Y.T
    D[np.arange(r), np.arange(r)] += g
    hat_minus = float(np.max(np.abs(np.linalg.eigvalsh(0.5 * (D + D.T)))))
    mass = trace - float(np.sum(E64**2))
    del Q2, m
    return float(min(max(mass, 0.0), tau + hat_minus))


def _flip(X):
    n = X.shape[0] // 2
    return np.concatenate([X[n:], X[:n]], axis=0)


# ------------------------------------------------------------------------------------------------
# the reduced solve without a dense kernel


def solve(decomposition, loss, f0, ts, *, rtol: float | None = None, atol: float | None = None,
          max_steps: int = 100_000, progress: bool = False):
    """Eigen-reduced kernel flow of a cross-moment loss on a decomposition, without a dense K.

    The flow under ``K_m = E Eᵀ`` from ``f₀`` is ``f = r₀ + E w``, ``w₀ = Aᵀ f₀``,
    ``r₀ = f₀ − E w₀`` and, for ``L(f) = ℓ(C)``, ``C = fᵀ Z f/N``:
    ``dw/dt = −2 (S w + X) ∇ℓ(C)``, ``C = wᵀ S w + wᵀX + Xᵀw + C_r`` with ``S = EᵀZE/N``,
    ``X = EᵀZr₀/N``, ``C_r = r₀ᵀZr₀/N`` — the moment path of ``dynamics.solve(..., "eigen")``
    (the same equations, integrated with diffrax's Tsit5 and a PID controller), which needs ``K``
    only for its error bound. Here the bound uses ``κ = decomposition.tail_norm ≥ ‖K − K_m‖₂``
    instead of the exact product ``K Z r₀``: ``‖(K − K_m) Z r₀ G‖_F ≤ κ ‖r₀ G‖_F``, so
    ``b' = (2κ/N)(‖r₀ G‖_F + ‖G‖₂ b)`` — rigorous for the discarded modes under the same
    assumptions as the dense route's (retained trajectory exact).

    Args:
      decomposition: a contrastive ``linalg.EigenDecomposition`` (e.g. from
        :func:`nystrom_decomposition`) of the kernel of the ``N`` views.
      loss: an SSL method with a ``moment_form`` (``sslntk.methods``; a loss of ``C`` alone:
        Barlow Twins, kernel PCA, ...), e.g. ``losses.get("barlow_twins")``.
      f0: ``(N, k)`` initial embeddings, ``k <= m``; ts: ``(T,)`` non-decreasing times ≥ 0.
      rtol, atol, max_steps: diffrax step control (defaults as ``dynamics.solve``'s eigen
        method: rtol 1e-5 float32 / 1e-8 float64, ``atol = rtol·RMS(w₀)``).
      progress: a progress bar for the solve.

    Returns:
      ``sslntk.dynamics.Trajectory`` (``method="eigen-lowrank"``, ``f (T, N, k)``, ``loss (T,)``,
      ``bound (T,)``).
    """
    from sslntk import dynamics, methods

    if isinstance(decomposition, LowRankKernel):
        decomposition = decomposition.lowrank
    if isinstance(decomposition, LowRankDecomposition):
        decomposition = decomposition.decomposition
    if not isinstance(decomposition, linalg.EigenDecomposition):
        raise TypeError(f"decomposition: expected a sslntk.linalg.EigenDecomposition or a "
                        f"LowRankDecomposition, got {type(decomposition).__name__}")
    if decomposition.kind != "contrastive":
        raise ValueError(f"decomposition: expected kind 'contrastive', got "
                         f"{decomposition.kind!r}")
    method = methods.as_method(loss)
    form = getattr(method, "moment_form", None)
    if form is None:
        raise ValueError(f"loss: expected a method of C = fᵀZf/2n alone (one with a "
                         f"moment_form, e.g. Barlow Twins), got {methods.method_label(method)}; "
                         f"without the dense kernel only the moment path can run")
    f0 = V.stacked_views("f0", f0, ndim=2)
    N, k = f0.shape
    if decomposition.n_points != N:
        raise ValueError(f"f0: expected shape ({decomposition.n_points}, k) (the decomposition's "
                         f"views), got {tuple(f0.shape)}")
    if f0.dtype != decomposition.vectors.dtype:
        raise TypeError(f"f0: expected dtype {decomposition.vectors.dtype} (the "
                        f"decomposition's), got {f0.dtype}")
    if k > decomposition.m:
        raise ValueError(f"f0: expected k <= m = {decomposition.m} embedding dimensions (the "
                         f"reduced flow moves f in an m-dimensional span), got k = {k}")
    ts = V.as_float_array("ts", ts, ndim=1).astype(f0.dtype)
    tsn = np.asarray(ts)
    if tsn.size < 1 or tsn[0] < 0 or np.any(np.diff(tsn) < 0):
        raise ValueError(f"ts: expected a non-empty non-decreasing 1-D array of times >= 0, got "
                         f"{tsn}")
    max_steps = V.positive_int("max_steps", max_steps)
    dt = f0.dtype
    rtol = (1e-8 if dt == jnp.float64 else 1e-5) if rtol is None else V.positive_float("rtol",
                                                                                        rtol)
    out = _reduced(decomposition, form, f0, ts, jnp.asarray(rtol, dt),
                   None if atol is None else jnp.asarray(V.positive_float("atol", atol), dt),
                   max_steps=max_steps, progress=bool(progress))
    fs, L, bnd, status, nsteps = out
    return dynamics.Trajectory(ts=ts, f=fs, loss=L, status=status, n_steps=nsteps, bound=bnd,
                               method="eigen-lowrank")


def _reduced(dec, loss, f0, ts, rtol, atol, *, max_steps, progress):
    S, w0, X, Cr, H = _prep(dec, f0)
    fn = _integrate_fn(max_steps, progress, atol is not None)
    rate = 2.0 * dec.tail_norm / f0.shape[0]             # the bound's 2κ/N
    W, L, bnd, status, nsteps = fn(S, w0, X, Cr, H, rate, loss, ts, rtol,
                                   rtol if atol is None else atol)
    return _lift(dec.lift, f0, W, w0), L, bnd, status, nsteps


@jax.jit
def _prep(dec, f0):
    A, E = dec.vectors, dec.lift
    N = f0.shape[0]
    ZE = jnp.concatenate([E[N // 2:], E[:N // 2]], axis=0)
    S = E.T @ ZE / N
    w0 = A.T @ f0
    r0 = f0 - E @ w0
    X = ZE.T @ r0 / N
    Zr = jnp.concatenate([r0[N // 2:], r0[:N // 2]], axis=0)
    Cr = r0.T @ Zr / N
    return 0.5 * (S + S.T), w0, X, 0.5 * (Cr + Cr.T), r0.T @ r0


@jax.jit
def _lift(E, f0, W, w0):
    return f0[None] + jnp.einsum("im,tmk->tik", E, W - w0[None])


_FNS = {}


def _integrate_fn(max_steps, progress, has_atol):
    """The jitted reduced integration (one compiled program per option set)."""
    key = (max_steps, progress, has_atol)
    if key in _FNS:
        return _FNS[key]

    @jax.jit
    def run(S, w0, X, Cr, H, rate, loss, ts, rtol, atol):
        dtype = w0.dtype
        gradC = jax.grad(lambda C: loss(C))

        def cm(w):
            Sw = S @ w
            Cm = w.T @ (Sw + 2.0 * X)
            return Sw + X, 0.5 * (Cm + Cm.T) + Cr

        scale = (atol / rtol) if has_atol else jnp.maximum(
            jnp.sqrt(jnp.mean(w0**2)), jnp.finfo(dtype).tiny)

        def vf(t, y, args):
            u, b = y
            w = u * scale
            SwX, Cm = cm(w)
            G = gradC(Cm)
            G = 0.5 * (G + G.T)
            rG = jnp.sqrt(jnp.maximum(jnp.sum(G * (H @ G)), 0.0))
            g2 = jnp.max(jnp.abs(jnp.linalg.eigvalsh(G)))
            db = rate * (rG + g2 * b)                 # b' = (2κ/N)(‖r₀G‖_F + ‖G‖₂ b)
            return (-2.0 * SwX @ G) / scale, db

        term = diffrax.ODETerm(vf)
        # step control on the state alone: the bound grows exponentially (Gronwall) and may
        # overflow; it must not steer (or stall) the steps of the flow it describes
        ctrl = diffrax.PIDController(rtol=rtol, atol=rtol, norm=lambda y: _rms(y[0]))
        sol = diffrax.diffeqsolve(term, diffrax.Tsit5(), t0=jnp.zeros((), dtype), t1=ts[-1],
                                  dt0=None, y0=(w0 / scale, jnp.zeros((), dtype)),
                                  saveat=diffrax.SaveAt(ts=ts), stepsize_controller=ctrl,
                                  max_steps=max_steps, throw=False,
                                  progress_meter=progress_meter("low-rank solve") if progress
                                  else diffrax.NoProgressMeter())
        U, b = sol.ys
        W = U * scale
        L = jax.vmap(lambda w: loss(cm(w)[1]))(W)
        ok = sol.result == diffrax.RESULTS.successful
        fin = jnp.all(jnp.isfinite(W)) & jnp.all(jnp.isfinite(L))
        status = jnp.where(ok, jnp.where(fin, SUCCESS, NONFINITE),
                           jnp.where(sol.result == diffrax.RESULTS.max_steps_reached, MAX_STEPS,
                                     FAILED)).astype(jnp.int32)
        b = jnp.where(jnp.isnan(b) & jnp.isfinite(L), jnp.inf, b)    # an overflowed bound: inf
        return W, L, b, status, sol.stats["num_accepted_steps"].astype(jnp.int32)

    _FNS[key] = run
    return run


__all__ = ["LANDMARKS", "LowRankBound", "LowRankDecomposition", "LowRankKernel", "memory_plan",
           "nystrom_decomposition", "kernel_diagonal", "apply_kernel", "solve", "kernel",
           "dense_kernel_bytes"]


def _rms(x):
    return jnp.sqrt(jnp.mean(x**2))
