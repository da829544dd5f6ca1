"""Input validation shared by every public function: the one home of sslntk's input checks.

Errors name the argument, what was expected and what was given (`docs/concepts.md`). These run on
concrete arrays at the API boundary; under `jax.jit` tracing the value checks (NaN/inf, PSD) are
skipped because values are unknown, while shape and dtype checks still apply.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when `x` holds values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def as_float_array(name: str, x, *, ndim: int | Sequence[int] | None = None,
                   finite: bool = True) -> jax.Array:
    """Convert `x` to a floating JAX array, checking rank, dtype and finiteness.

    Integer/bool inputs are rejected rather than silently cast (a common mistake is passing labels).
    """
    if x is None:
        raise TypeError(f"{name}: expected an array, got None")
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name}: expected a numeric array, got {type(x).__name__}")
    try:
        arr = jnp.asarray(x)
    except TypeError as e:
        raise TypeError(f"{name}: expected a numeric array, got {type(x).__name__}") from e
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating dtype (float32/float64), got {arr.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            exp = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name}: expected rank {exp}, got shape {tuple(arr.shape)}")
    if finite and is_concrete(arr) and arr.size and is_distributed(arr):
        # a sharded array: a sharded reduction, never a host copy of the whole array
        from sslntk._sharding import to_host

        if not bool(to_host(_all_finite(arr))):
            raise ValueError(f"{name}: expected finite values, got NaN/inf entries")
        finite = False
    # value checks evaluated now (`ensure_compile_time_eval`: inside a jit trace a concrete
    # captured array would otherwise be staged), as one reduction where the array lives
    if finite and is_concrete(arr) and arr.size:
        ok = bool(evaluated(_all_finite, arr))
        if not ok:
            bad = int(np.sum(~np.isfinite(np.asarray(arr))))
            raise ValueError(f"{name}: expected finite values, got {bad} NaN/inf entries")
    return arr


def evaluated(fn, *args):
    """`fn(*args)` for concrete `args`, as concrete arrays even when called while a jit is being
    traced (a concrete array captured by the traced function). Only then is the call repeated under
    `jax.ensure_compile_time_eval`: outside a trace that mode would run the traced body's constant
    sub-expressions as separate small programs (a fresh process loads each one)."""
    out = fn(*args)
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(out)):
        with jax.ensure_compile_time_eval():
            out = fn(*args)
    return out


def is_distributed(x) -> bool:
    """A concrete `jax.Array` spread over more than one device or process (checked without a host
    copy, see `sslntk._sharding`)."""
    if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
        return False
    try:
        return (not x.is_fully_addressable) or len(x.sharding.device_set) > 1
    except Exception:  # noqa: BLE001
        return False


@jax.jit
def _all_finite(x):
    return jnp.all(jnp.isfinite(x))


#: Tile size of `_asymmetry`'s pass over K.
SYMMETRY_TILE = 256


@functools.partial(jax.jit, static_argnames=("tile",))
def _asymmetry(K, *, tile=SYMMETRY_TILE):
    """`(max |K − Kᵀ|, max |K|, Σ |K − Kᵀ|)` in one pass over K: the tile pairs `(K_IJ, K_JI)`,
    `I ≤ J`, of a `tile × tile` grid (the last tile row/column clamped to end at N, overlapping
    its neighbour: harmless for a maximum), each compared as `K_IJ − K_JIᵀ` while both sit in
    cache. Every entry enters the sum (`K_ii − K_ii` too), so a NaN/inf entry makes it non-finite:
    the finiteness check (a non-finite sum of finite entries, an overflow, is told apart by the
    caller). A whole-matrix `K − K.T` costs ~3× more on CPU (a strided transposed read of K)."""
    N = K.shape[0]
    t = min(int(tile), N)
    nb = -(-N // t)
    pairs = np.array([(i, j) for i in range(nb) for j in range(i, nb)], np.int32)
    starts = jnp.asarray(np.minimum(pairs * t, N - t))

    def body(p, c):
        asym, mx, tot = c
        i, j = starts[p, 0], starts[p, 1]
        A = jax.lax.dynamic_slice(K, (i, j), (t, t))
        # the tile's transpose materialised on its own (in cache): fused into the reduction it
        # becomes a strided read that doubles the cost of the pass (measured, CPU)
        Bt = jax.lax.optimization_barrier(jax.lax.dynamic_slice(K, (j, i), (t, t)).T)
        D = jnp.abs(A - Bt)
        mx = jnp.maximum(mx, jnp.maximum(jnp.max(jnp.abs(A)), jnp.max(jnp.abs(Bt))))
        # XLA's CPU max drops NaN, a sum does not (and an isfinite reduction costs 4× the pass)
        return jnp.maximum(asym, jnp.max(D)), mx, tot + jnp.sum(D)

    z = jnp.zeros((), K.dtype)
    return jax.lax.fori_loop(0, len(pairs), body, (z, z, z))


def same_dtype(**arrays) -> jnp.dtype:
    """Check that all given arrays share one floating dtype; return it."""
    dtypes = {k: jnp.asarray(v).dtype for k, v in arrays.items() if v is not None}
    if len(set(dtypes.values())) > 1:
        desc = ", ".join(f"{k}={d}" for k, d in dtypes.items())
        raise TypeError(f"mixed dtypes: expected one floating dtype for all of "
                        f"{', '.join(dtypes)}, got {desc}")
    return next(iter(dtypes.values()))


def positive_int(name: str, v, *, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {v}")
    return int(v)


def positive_float(name: str, v, *, allow_zero: bool = False):
    """Check a positive scalar; traced values pass through (they may be vmapped/differentiated)."""
    if isinstance(v, bool) or v is None:
        raise TypeError(f"{name}: expected a positive number, got {v!r}")
    if is_concrete(v):
        try:
            fv = float(v)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name}: expected a positive number, got {v!r}") from e
        if not np.isfinite(fv) or fv < 0 or (fv == 0 and not allow_zero):
            rel = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{name}: expected a finite number {rel}, got {v!r}")
    return v


def choice(name: str, v, valid: Sequence[str]) -> str:
    if v not in valid:
        raise ValueError(f"{name}: unknown value {v!r}; valid choices are {sorted(valid)}")
    return v


def stacked_views(name: str, f, *, ndim: int | Sequence[int] = 2) -> jax.Array:
    """Check an array in stacked view order `(2n, ...)`: leading dimension even and >= 4 (n >= 2)."""
    arr = as_float_array(name, f, ndim=ndim)
    if arr.shape[0] % 2 or arr.shape[0] < 4:
        raise ValueError(f"{name}: expected stacked views [a_1..a_n, b_1..b_n] with an even leading "
                         f"dimension 2n >= 4, got shape {tuple(arr.shape)}")
    return arr


def square_kernel(name: str, K, *, sym_tol: float | None = None) -> jax.Array:
    """Check a square symmetric kernel matrix `(N, N)` with finite entries; symmetry checked to
    round-off (`max |K − Kᵀ| / max |K| ≤ 100·eps`, or `sym_tol`). A dense concrete K is read once
    for both checks (`_asymmetry`)."""
    arr = as_float_array(name, K, ndim=2, finite=False)
    dense = is_concrete(arr) and (not is_distributed(arr) or arr.is_fully_replicated)
    if not dense:        # traced (no values) or sharded: the checks of `as_float_array`
        arr = as_float_array(name, arr, ndim=2)
    if arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name}: expected a square (N, N) kernel, got shape {tuple(arr.shape)}")
    from sslntk import _sharding

    layout = _sharding.layout_of(arr)
    if layout is not None:   # row-sharded: probe-based checks, no host copy
        _sharding.check_kernel(name, arr, layout, sym_tol)
        return arr
    if is_concrete(arr) and is_distributed(arr) and not arr.is_fully_replicated:
        raise ValueError(f"{name}: expected an unsharded kernel or one sharded by rows over one "
                         f"mesh axis (NamedSharding(mesh, P(axis, None))), got sharding "
                         f"{arr.sharding}")
    if dense:
        tol = sym_tol if sym_tol is not None else 100 * float(jnp.finfo(arr.dtype).eps)
        asym = 0.0
        if arr.size:
            # one tiled pass where K lives (a host copy and a strided numpy transpose cost
            # seconds at N = 4096); evaluated now even when called while tracing a jit
            d, scale, total = (float(x) for x in evaluated(_asymmetry, arr))
            if not (np.isfinite(total) and np.isfinite(scale)):
                bad = int(np.sum(~np.isfinite(np.asarray(arr))))
                if bad:
                    raise ValueError(f"{name}: expected finite values, got {bad} NaN/inf entries")
            asym = d / (scale or 1.0)
        if asym > tol:
            raise ValueError(f"{name}: expected a symmetric kernel, got max |K - K^T|/max|K| = "
                             f"{asym:.3g} > {tol:.1g}")
    return arr


def check_test_pair(K_test_train, f0_test, N: int, k: int):
    """Check the optional test-point pair: cross kernel `(m, N)` and initial test embeddings `(m, k)`,
    both given or neither. Returns them as float arrays (or `(None, None)`)."""
    if (K_test_train is None) != (f0_test is None):
        raise ValueError("K_test_train and f0_test: expected both or neither (they give test "
                         f"predictions), got K_test_train={'None' if K_test_train is None else 'array'}, "
                         f"f0_test={'None' if f0_test is None else 'array'}")
    if K_test_train is None:
        return None, None
    K_test_train = as_float_array("K_test_train", K_test_train, ndim=2)
    f0_test = as_float_array("f0_test", f0_test, ndim=2)
    if K_test_train.shape[1] != N:
        raise ValueError(f"K_test_train: expected shape (m, 2n) = (m, {N}), got "
                         f"{tuple(K_test_train.shape)}")
    if f0_test.shape != (K_test_train.shape[0], k):
        raise ValueError(f"f0_test: expected shape (m, k) = ({K_test_train.shape[0]}, {k}), got "
                         f"{tuple(f0_test.shape)}")
    return K_test_train, f0_test


def float_dtype(dtype, *, any_float: bool = False) -> np.dtype:
    """`dtype` as float32/float64 (float64 only with 64-bit JAX enabled), else a clear error.
    `any_float=True` accepts every numpy floating dtype (the dataset loaders); wider than 32 bits
    still needs 64-bit JAX."""
    expected = "a floating dtype (float32/float64)" if any_float else "float32 or float64"
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype: expected {expected}, got {dtype!r}") from e
    if not (np.issubdtype(dt, np.floating) if any_float else dt in (np.float32, np.float64)):
        raise TypeError(f"dtype: expected {expected}, got {dt}")
    if dt.itemsize > 4 and not jax.config.jax_enable_x64:
        raise ValueError(f"dtype: {dt} needs 64-bit JAX; call "
                         f"jax.config.update('jax_enable_x64', True) first")
    return dt


def check_key(name: str, key) -> None:
    """A `jax.random` key: typed (`jax.random.key`, shape ()) or raw (`PRNGKey`, uint32 (2,))."""
    hint = "expected a jax.random key (jax.random.key(seed) or jax.random.PRNGKey(seed))"
    if key is None or isinstance(key, (bool, int, float, np.integer, np.floating, str)):
        raise TypeError(f"{name}: {hint}, got {key!r}")
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is None:
        raise TypeError(f"{name}: {hint}, got {type(key).__name__}")
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise ValueError(f"{name}: expected a single key of shape (), got a key array of shape "
                             f"{shape}")
        return
    if dtype != np.uint32 or tuple(shape) != (2,):
        raise TypeError(f"{name}: {hint}, got an array of dtype {dtype} and shape {tuple(shape)}")


def batch(name: str, x, *, min_ndim: int = 2) -> jax.Array:
    """A float batch `(N, ...)` with N >= 1 and at least `min_ndim` axes."""
    arr = as_float_array(name, x)
    if arr.ndim < min_ndim:
        raise ValueError(f"{name}: expected a batch (N, ...) of rank >= {min_ndim}, got shape "
                         f"{tuple(arr.shape)}")
    return arr


def images(name: str, x) -> jax.Array:
    """A float batch of images `(N, H, W, C)` (NHWC)."""
    arr = as_float_array(name, x)
    if arr.ndim != 4:
        raise ValueError(f"{name}: expected images (N, H, W, C), got shape {tuple(arr.shape)}")
    return arr


def covariance(name: str, M, d: int | None = None) -> np.ndarray:
    """A covariance given as a `(d, d)` symmetric PSD matrix or a `(d,)` non-negative diagonal;
    returns the `(d, d)` float64 matrix. PSD is checked to round-off (relative 1e-10)."""
    if isinstance(M, (str, bytes)) or np.asarray(M).dtype == bool:
        raise TypeError(f"{name}: expected a numeric matrix or vector, got {M!r}")
    try:
        M = np.asarray(M, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a numeric matrix or vector, got {M!r}") from e
    arr = np.asarray(as_float_array(name, M, ndim=(1, 2)), dtype=np.float64)
    if arr.ndim == 1:
        if np.any(arr < 0):
            raise ValueError(f"{name}: expected a non-negative diagonal (variances), got minimum "
                             f"{arr.min():.3g}")
        arr = np.diag(arr)
    if arr.shape[0] != arr.shape[1] or arr.shape[0] < 1:
        raise ValueError(f"{name}: expected a square (d, d) covariance, got shape {arr.shape}")
    if d is not None and arr.shape[0] != d:
        raise ValueError(f"{name}: expected shape ({d}, {d}) (or ({d},) for a diagonal), got "
                         f"{arr.shape}")
    scale = max(float(np.abs(arr).max()), 1e-300)
    if np.abs(arr - arr.T).max() > 1e-10 * scale:
        raise ValueError(f"{name}: expected a symmetric matrix, got max |M - M^T| = "
                         f"{np.abs(arr - arr.T).max():.3g}")
    w = np.linalg.eigvalsh((arr + arr.T) / 2)
    if w.min() < -1e-10 * scale:
        raise ValueError(f"{name}: expected a positive semi-definite matrix, got smallest "
                         f"eigenvalue {w.min():.3g}")
    return (arr + arr.T) / 2


def nonnegative_scalar(name: str, v, *, upper: float | None = None, upper_ok: bool = True):
    """A non-negative scalar (e.g. an augmentation strength; traced values pass), with an optional
    upper bound (`upper_ok`: whether it is included) checked on concrete values."""
    positive_float(name, v, allow_zero=True)
    if np.ndim(v) != 0:
        raise ValueError(f"{name}: expected a scalar, got shape {np.shape(v)}")
    if upper is not None and is_concrete(v):
        fv = float(v)
        if fv > upper or (fv == upper and not upper_ok):
            interval = f"[0, {upper:g}" + ("]" if upper_ok else ")")
            raise ValueError(f"{name}: expected a number in {interval}, got {v!r}")
    return v


def interval(name: str, v, *, lower: float = 0.0, upper: float | None = None,
             lower_ok: bool = False) -> tuple:
    """A pair `(lo, hi)` with `lower < lo <= hi <= upper` (`lower <= lo` when `lower_ok`), e.g. a
    crop scale range; traced entries pass (they may be differentiated). Returns the pair as a tuple."""
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 2:
        raise TypeError(f"{name}: expected a pair (lo, hi), got {v!r}")
    lo, hi = v
    for x in (lo, hi):
        if isinstance(x, bool) or x is None or np.ndim(x) != 0:
            raise TypeError(f"{name}: expected a pair of numbers (lo, hi), got {v!r}")
    if is_concrete(lo) and is_concrete(hi):
        flo, fhi = float(lo), float(hi)
        ok = np.isfinite(flo) and np.isfinite(fhi) and flo <= fhi
        ok = ok and (flo >= lower if lower_ok else flo > lower)
        ok = ok and (upper is None or fhi <= upper)
        if not ok:
            lo_rel = ">=" if lower_ok else ">"
            up = f" <= {upper:g}" if upper is not None else ""
            raise ValueError(f"{name}: expected (lo, hi) with {lower:g} {lo_rel.replace('>', '<')} "
                             f"lo <= hi{up}, got {tuple(v)!r}")
    return (lo, hi)


def odd_int(name: str, v, *, minimum: int = 1) -> int:
    """An odd integer >= minimum (e.g. a blur kernel size)."""
    v = positive_int(name, v, minimum=minimum)
    if v % 2 == 0:
        raise ValueError(f"{name}: expected an odd integer >= {minimum}, got {v}")
    return v


# ----------------------------------------------------------------------------------------------
# Positive semi-definiteness of a kernel: the one rule and the one message

#: Block size of `psd_kernel`'s block Krylov space (vectors per product `K @ (N, PSD_BLOCK)`).
PSD_BLOCK = 16
#: Block steps of `psd_kernel`: each one product `K @ (N, PSD_BLOCK)`, i.e. one pass over K.
PSD_BLOCK_STEPS = 4


def psd_tolerance(N: int, dtype, lam_max: float) -> float:
    """The round-off tolerance of the PSD rule: `max(N, 10) · eps(dtype) · max(λ_max, 0)`, the size
    of the eigenvalue perturbation that round-off of order `eps·|K|` in the N² entries can cause
    (`‖E‖₂ ≤ N·max|E_ij|`)."""
    return max(int(N), 10) * float(jnp.finfo(dtype).eps) * max(float(lam_max), 0.0)


def psd_error(name: str, lam_min: float, lam_max: float, tol: float) -> ValueError:
    """The one message for a kernel that is not positive semi-definite, the same at every entry
    point whether `lam_min` comes from a Krylov space, a diagonal entry or an exact
    decomposition."""
    return ValueError(f"{name}: expected a positive semi-definite kernel, got smallest eigenvalue "
                      f"{lam_min:.3g} (largest {lam_max:.3g}; round-off tolerance "
                      f"{tol:.3g} = max(N, 10)·eps·λ_max)")


def ritz_values(K, *, block: int = PSD_BLOCK, steps: int = PSD_BLOCK_STEPS
                ) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values of the concrete square kernel `K (N, N)` on a block Krylov space, and its
    diagonal: `(θ (d,) ascending, float64; diag(K) (N,))`, `d ≤ block·steps` (less after a
    breakdown or when `N < block·steps`).

    The space is `span{Q₁, K Q₁, …, K^{s−1} Q₁}` for a fixed random `(N, b)` start `Q₁`
    (`b = min(block, N)`, `s = min(steps, N // b)`), built by block Lanczos with full
    re-orthogonalisation (block Gram–Schmidt, then whitening of the small Gram, twice: "twice is
    enough"; `_orthonormal_block`); K enters only through the `s` products `K @ (N, b)` (BLAS-3:
    `s` passes over K, where a single-vector Lanczos of the same dimension streams K `b·s`
    times). Rayleigh–Ritz is done on the host in
    float64 on the pencil `(QᵀKQ, QᵀQ)`, keeping only the directions of the computed basis whose
    Gram eigenvalue is at least 1/2 (numerically independent ones), so the θ are Rayleigh
    quotients of vectors of the space and interlace the spectrum of the symmetric part of K
    (Cauchy): `λ_i ≤ θ_i ≤ λ_{i+N−d}`, in particular `λ_min ≤ θ_min` and `θ_max ≤ λ_max`, up to
    the round-off of the products. Block Krylov: Golub & Underwood 1977; Musco & Musco 2015.
    A row-sharded K (`sslntk._sharding`) is multiplied where its rows live, never gathered.
    """
    from sslntk import _sharding

    N = int(K.shape[0])
    b = max(1, min(int(block), N))
    s = max(1, min(int(steps), N // b))
    layout = _sharding.layout_of(K)
    T, G, d = (_sharding.to_host(x).astype(np.float64)
               for x in _block_krylov(K, block=b, steps=s, layout=layout))
    T, G = 0.5 * (T + T.T), 0.5 * (G + G.T)
    if not (np.all(np.isfinite(T)) and np.all(np.isfinite(G))):
        return np.array([np.nan]), d
    g, U = np.linalg.eigh(G)
    keep = g >= 0.5           # an orthonormal basis has g = 1; below: a dependent direction
    W = U[:, keep] / np.sqrt(g[keep])
    return np.linalg.eigvalsh(W.T @ T @ W), d


def psd_kernel(name: str, K, *, block: int = PSD_BLOCK, steps: int = PSD_BLOCK_STEPS
               ) -> float | None:
    """Check that the concrete square kernel `K (N, N)` is positive semi-definite; return an
    estimate of its smallest eigenvalue (None when `K` is traced: values are unknown under jit,
    where the check is skipped).

    Cost `steps` passes over K (products `K @ (N, block)`, default 4 × 16: a Krylov space of
    dimension 64), never a dense decomposition: the Ritz values of a block Krylov space
    (`ritz_values`: fixed random start, full re-orthogonalisation) satisfy `θ_min ≥ λ_min` and
    `θ_max ≤ λ_max` (Cauchy interlacing), so `θ_min < −tol` proves that K is not PSD. The rule:
    refuse when the smallest Ritz value or the smallest diagonal entry (a PSD matrix has
    `K_ii ≥ λ_min`) is below `−tol`, `tol = psd_tolerance(N, dtype, λ_max)`. A negative eigenvalue
    the Krylov space has not resolved (a tiny negative tail under a large, slowly converging bottom
    cluster) can pass; a solver that decomposes K anyway reports its spectrum. A row-sharded K
    (`sslntk._sharding`) is multiplied where its rows live, never gathered. `K` must already be a
    square float array (`square_kernel`).

        >>> import jax.numpy as jnp
        >>> psd_kernel("K", jnp.eye(4)) > 0.99
        True
    """
    if not is_concrete(K):
        return None
    N = int(K.shape[0])
    if N == 0:
        raise ValueError(f"{name}: expected a non-empty kernel, got shape {tuple(K.shape)}")
    theta, d = ritz_values(K, block=block, steps=steps)
    d_min = float(np.min(d))
    lo, hi = float(np.min(theta)), max(float(np.max(theta)), float(np.max(d)))
    tol = psd_tolerance(N, K.dtype, hi)
    if not np.isfinite(lo) or lo < -tol:
        raise psd_error(name, lo, hi, tol)
    if d_min < -tol:
        raise psd_error(name, d_min, hi, tol)      # a PSD matrix has λ_min ≤ min K_ii
    return min(lo, d_min)


def _orthonormal_block(Y, Qa):
    """Columns spanning `Y` minus its projection on the orthonormal `Qa` (None: nothing), made
    orthonormal by whitening the small Gram `YᵀY` (its eigendecomposition; directions below
    `1e3·eps·max` — numerically dependent — become zero columns, so sizes stay static); twice
    ("twice is enough"). A Householder QR of the tall `(N, b)` block costs ~0.25 s at N = 8192 on
    CPU, this ~1 ms."""
    hi = jax.lax.Precision.HIGHEST
    cut = 1e3 * jnp.finfo(Y.dtype).eps
    for _ in range(2):
        if Qa is not None:
            Y = Y - jnp.matmul(Qa, jnp.matmul(Qa.T, Y, precision=hi), precision=hi)
        g, U = jnp.linalg.eigh(jnp.matmul(Y.T, Y, precision=hi))
        keep = g > cut * jnp.max(g)
        Y = jnp.matmul(Y, U * jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, g, 1.0)), 0.0),
                       precision=hi)
    return Y


@functools.partial(jax.jit, static_argnames=("block", "steps", "layout"))
def _block_krylov(K, *, block, steps, layout):
    """Block Lanczos on K from a fixed random `(N, block)` start, `steps` products `K @ Q`, full
    re-orthogonalisation. Returns the projected `QᵀKQ`, the Gram `QᵀQ` (both `(d, d)`,
    `d = block·steps`; zero rows/columns for directions dropped at a breakdown) and `diag(K)`
    (read in the same program)."""
    from sslntk import _sharding

    N = K.shape[0]
    hi = jax.lax.Precision.HIGHEST
    Q = _orthonormal_block(jax.random.normal(jax.random.PRNGKey(0), (N, block), K.dtype), None)
    Qs, Ps = [Q], []
    for it in range(steps):
        P = _sharding.row_matmul(K, Q, layout, precision=hi)   # the one pass over K of this step
        Ps.append(P)
        if it == steps - 1:
            break
        Q = _orthonormal_block(P, jnp.concatenate(Qs, axis=1))
        Qs.append(Q)
    Qa, Pa = jnp.concatenate(Qs, axis=1), jnp.concatenate(Ps, axis=1)
    return (jnp.matmul(Qa.T, Pa, precision=hi), jnp.matmul(Qa.T, Qa, precision=hi),
            _sharding.row_diagonal(K, layout))
