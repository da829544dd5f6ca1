"""Blocked construction of the infinite-width kernels: `ntk`, `nngp`, `ntk_and_nngp`,
`averaged_kernel`.

The `(n1, n2)` kernel is assembled from jitted blocks (`_block_fn`: the native recursion of
`_recursion`, or neural-tangents' `kernel_fn` from `_reference` for `method="nt"`), so memory stays
bounded by the block size (`auto_block_size`, from `BLOCK_MEMORY_BUDGET`) for 2n = 8192 views. With
`x2=None` only the upper block triangle is computed and the result is exactly symmetric. Under
`jax.jit`/`jax.grad` (traced inputs) the blocks are joined with jnp instead of a host array
(`_blocked_traced`), so the kernel stays differentiable. With `mesh=`/`sharding=` the kernel is
built row-sharded instead (`_sharded`; docs/how-to/scale-out.md).

Cost (benchmarks/bench_kernels.py, 2 shared cores; complexity in `_recursion`): a depth-2 MLP
kernel on 2n = 8192 digits views takes seconds; a depth-2 CNN with global average pooling on 8×8
images needs 2 · 64² dual-activation evaluations per pair of views (~5.8k pairs per CPU-second:
2n = 2048 in 6 CPU-minutes), with the flatten readout 2 · H·W (32×32×3 images: ~21k pairs per
CPU-second, 2n = 2048 in 100 CPU-seconds). Memory stays bounded by
the block size either way (`pair_entries`: the pixel-pixel covariance, or its diagonal).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _sharding
from sslntk import _validate as V
from sslntk.kernels import _sharded
from sslntk.kernels._arch import Arch, check_arch
from sslntk.kernels._recursion import native_kernels
from sslntk.kernels._reference import nt_block

METHODS = ("auto", "native", "nt")
#: `backend=` of ntk/nngp/ntk_and_nngp: sslntk's own recursion, or neural-tangents' kernel_fn (the
#: reference, through `_nt_compat`; the same as method="nt").
BACKENDS = ("sslntk", "neural_tangents")
GETS = ("ntk", "nngp")

# Peak memory (bytes) that one block's intermediates may use; block sizes are derived from it with
# a per-pair footprint of `PAIR_ARRAYS` copies of the padded pixel-pixel covariance. Conservative:
# `benchmarks/bench_kernels.py` measured ~420 MiB of peak RSS (compilation included) for the 48-row
# blocks this gives a depth-2 CNN on 8×8 images (estimate 737 MB), plus the (2n)² output.
BLOCK_MEMORY_BUDGET = 768 * 2**20
PAIR_ARRAYS = 8
_MAX_BLOCK = 2048
_MIN_BLOCK = 8


def ntk(arch: Arch, x1, x2=None, *, block_size: int | None = None, dtype=None,
        method: str = "auto", progress: bool = False, mesh=None, sharding=None,
        memory_limit: int | None = None, backend: str = "sslntk") -> jax.Array:
    """Infinite-width NTK of `arch` (one output), `(n1, n2)`; equal to neural-tangents'
    `stax_network(arch)[2](x1, x2, "ntk")`.

    Args:
      arch: the `Arch` spec.
      x1: `(n1, d)` or images `(n1, H, W, C)` (MLP: flattened); CNN: `(n1, H, W, C)` NHWC. A
        single-draw `sslntk.data.Views` is accepted and means its stacked views `(2n, ...)`.
      x2: like `x1` (same per-example shape and dtype), or None for `x2 = x1` (then only the
        upper block triangle is computed and the result is exactly symmetric).
      block_size: rows/columns per block (None: derived from `BLOCK_MEMORY_BUDGET`, 768 MiB of
        intermediates: 2048 for MLPs, 48 for a GAP CNN on 8×8 images, 144 for a flatten CNN on
        32×32 images). Inputs up to `block_size` rows are one unblocked call.
      dtype: compute dtype (float32/float64); None keeps the inputs' dtype (float32 default).
      method: "native" (sslntk's recursion; "auto" picks it) or "nt" (neural-tangents'
        `kernel_fn` per block, the reference). They agree to round-off except on identical inputs,
        where neural-tangents' arc-cosine angle comes out O(sqrt(eps)) instead of 0 (see `_dual`).
      backend: "sslntk" (default) or "neural_tangents": the latter computes every block with
        neural-tangents' `kernel_fn` (the same as `method="nt"`; needs neural-tangents installed,
        see `kernels._nt_compat`).
      progress: print block progress to stderr.
      mesh, sharding: build K row-sharded (`kernels._sharded`, docs/how-to/scale-out.md): a 1-D
        `jax.sharding.Mesh` (`jax.make_mesh((D,), ("rows",))`) or a `NamedSharding(mesh,
        P(axis, None))`. The result is a `jax.Array` with that sharding: device d holds rows
        `[d·R, (d+1)·R)`, `R = n1 / D` (D must divide n1), computed there; the full kernel is never
        gathered on one device. Works across processes under `jax.distributed.initialize` (every
        process passes the same inputs). Both triangles are computed (2× the work of the
        symmetric single-device path, no communication).
      memory_limit: sharded only: bytes per device the compiled program may use (default: the
        device's memory, or the host's available memory shared by its local CPU devices); a
        larger plan (from the compiled `memory_analysis()`) raises MemoryError before running.
    """
    return ntk_and_nngp(arch, x1, x2, block_size=block_size, dtype=dtype, method=method,
                        progress=progress, get=("ntk",), mesh=mesh, sharding=sharding,
                        memory_limit=memory_limit, backend=backend)[0]


def nngp(arch: Arch, x1, x2=None, *, block_size: int | None = None, dtype=None,
         method: str = "auto", progress: bool = False, mesh=None, sharding=None,
         memory_limit: int | None = None, backend: str = "sslntk") -> jax.Array:
    """Infinite-width NNGP kernel of `arch` (one output), `(n1, n2)`; arguments as `ntk`."""
    return ntk_and_nngp(arch, x1, x2, block_size=block_size, dtype=dtype, method=method,
                        progress=progress, get=("nngp",), mesh=mesh, sharding=sharding,
                        memory_limit=memory_limit, backend=backend)[0]


def ntk_and_nngp(arch: Arch, x1, x2=None, *, block_size: int | None = None, dtype=None,
                 method: str = "auto", progress: bool = False,
                 get: tuple[str, ...] = ("ntk", "nngp"), mesh=None, sharding=None,
                 memory_limit: int | None = None, backend: str = "sslntk") -> tuple[jax.Array, ...]:
    """Both kernels in one pass (the NTK recursion computes the NNGP anyway): `(ntk, nngp)`, each
    `(n1, n2)`; `get` selects and orders them. Arguments as `ntk` (with `mesh=`/`sharding=`
    both come back row-sharded)."""
    check_arch(arch)
    V.choice("method", method, METHODS)
    V.choice("backend", backend, BACKENDS)
    if backend == "neural_tangents":
        if method == "native":
            raise ValueError("backend: 'neural_tangents' computes the kernel with neural-tangents' "
                             "kernel_fn; it cannot be combined with method='native'")
        method = "nt"
    if isinstance(get, str):
        get = (get,)
    get = tuple(get)
    if not get or any(g not in GETS for g in get) or len(set(get)) != len(get):
        raise ValueError(f"get: expected distinct names from {list(GETS)}, got {get!r}")
    x1, x2 = _check_inputs(arch, x1, x2, dtype)
    if block_size is not None:
        block_size = V.positive_int("block_size", block_size)
    if method == "auto":
        method = "native"
    layout = _sharding.resolve(mesh, sharding)
    if memory_limit is not None:
        memory_limit = V.positive_int("memory_limit", memory_limit)
    if layout is not None:
        if not (V.is_concrete(x1) and (x2 is None or V.is_concrete(x2))):
            raise ValueError("mesh, sharding: sharded construction needs concrete inputs (it is "
                             "not traceable under jit/grad); call it outside the transformation")
        out = _sharded.sharded_kernels(arch, x1, x2, get, block_size, method, layout,
                                       memory_limit)
        bad = [g for g, k in zip(get, out, strict=True)
               if not bool(_sharding.to_host(_all_finite(k)))]
        if bad:
            raise ValueError(f"{bad[0]}: the kernel has NaN/inf entries (inputs with zero variance "
                             f"and b_std = 0, or overflow in {x1.dtype}?)")
        return out
    if not (V.is_concrete(x1) and (x2 is None or V.is_concrete(x2))):
        # traced inputs (jax.grad / vmap w.r.t. augmentation strength, data, ...): assemble the
        # blocks with jnp so the kernel stays differentiable; no host copy, no value checks
        return _blocked_traced(arch, x1, x2, get, block_size, method)
    out = _blocked(arch, x1, x2, get, block_size, method, progress)
    bad = [g for g, k in zip(get, out, strict=True) if not np.all(np.isfinite(k))]
    if bad:
        raise ValueError(f"{bad[0]}: the kernel has NaN/inf entries (inputs with zero variance "
                         f"and b_std = 0, or overflow in {x1.dtype}?)")
    return tuple(jnp.asarray(k) for k in out)


@jax.jit
def _all_finite(k):
    return jnp.all(jnp.isfinite(k))


def _unwrap_views(name: str, x):
    """A single-draw `sslntk.data.Views` → its stacked `(2n, ...)` array (duck-typed)."""
    if hasattr(x, "stacked") and hasattr(x, "has_draws"):
        if x.has_draws:
            raise ValueError(f"{name}: expected a single-draw Views, got one with {x.n_draws} "
                             f"augmentation draws; use averaged_kernel for E_aug[K]")
        return x.stacked
    return x


def _check_batch(name: str, arch: Arch, x) -> jax.Array:
    x = V.as_float_array(name, _unwrap_views(name, x))
    if arch.kind == "cnn":
        if x.ndim != 4:
            raise ValueError(f"{name}: expected images (N, H, W, C) (NHWC) for a CNN, got shape "
                             f"{tuple(x.shape)}")
    elif x.ndim < 2:
        raise ValueError(f"{name}: expected a batch (N, d) or images (N, H, W, C), got shape "
                         f"{tuple(x.shape)}")
    if x.shape[0] == 0 or math.prod(x.shape[1:]) == 0:
        raise ValueError(f"{name}: expected a non-empty batch with non-empty examples, got shape "
                         f"{tuple(x.shape)}")
    if arch.kind == "cnn" and arch.padding == "VALID":
        fh, fw = arch.filter_shape
        h, w = x.shape[1] - arch.depth * (fh - 1), x.shape[2] - arch.depth * (fw - 1)
        if h < 1 or w < 1:
            raise ValueError(f"{name}: images {x.shape[1]}×{x.shape[2]} are too small for "
                             f"{arch.depth} VALID {fh}×{fw} convolutions")
    return x


def _check_inputs(arch, x1, x2, dtype):
    same = x2 is None or x2 is x1
    x1 = _check_batch("x1", arch, x1)
    x2 = None if same else _check_batch("x2", arch, x2)
    if x2 is not None:
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(f"x2: expected examples of shape {tuple(x1.shape[1:])} like x1, got "
                             f"shape {tuple(x2.shape)}")
    if dtype is None:
        V.same_dtype(x1=x1, x2=x2)
    else:
        dt = V.float_dtype(dtype)
        x1 = x1.astype(dt)
        x2 = None if x2 is None else x2.astype(dt)
    return x1, x2


def pair_entries(arch: Arch, shape: tuple[int, ...]) -> int:
    """Entries of the (padded) per-pair covariance: `((H + fh − 1)(W + fw − 1))²` for a CNN with
    global average pooling, its pixel diagonal `(H + fh − 1)(W + fw − 1)` with the flatten readout."""
    if arch.kind == "mlp":
        return 1
    fh, fw = arch.filter_shape
    pixels = (shape[1] + fh - 1) * (shape[2] + fw - 1)
    return pixels if arch.readout == "flatten" else pixels ** 2


def auto_block_size(arch: Arch, shape: tuple[int, ...], dtype=jnp.float32) -> int:
    """The block size `ntk`/`nngp` use for examples of `shape` (`(N, ...)`; N is ignored): the
    largest multiple of 8 in [8, 2048] whose block intermediates fit `BLOCK_MEMORY_BUDGET`."""
    per_pair = PAIR_ARRAYS * pair_entries(arch, tuple(shape)) * np.dtype(dtype).itemsize
    b = int(math.isqrt(BLOCK_MEMORY_BUDGET // per_pair))
    return int(min(_MAX_BLOCK, max(_MIN_BLOCK, b - b % 8)))


def _partition(N: int, b: int) -> tuple[int, int]:
    """Balanced blocks: (number of blocks, rows per block); the last block is padded."""
    if N <= b:
        return 1, N
    nb = -(-N // b)
    rows = -(-N // nb)
    rows += -rows % 8
    return -(-N // rows), rows


def _padded(x: jax.Array, start: int, rows: int) -> tuple[jax.Array, int]:
    """Rows `start:start+rows` of x; a short last block is padded by repeating its last row (so
    the padding is a valid input: no 0/0 for zero-variance rows)."""
    blk = x[start:start + rows]
    r = blk.shape[0]
    if r < rows:
        blk = jnp.concatenate([blk, jnp.repeat(blk[-1:], rows - r, axis=0)])
    return blk, r


@functools.lru_cache(maxsize=64)
def _block_fn(arch: Arch, get: tuple[str, ...], method: str):
    """jitted `(a, b or None) -> tuple of kernels` for one block (traced once per block shape)."""
    if method == "nt":
        fn = nt_block(arch, get)
    else:
        def fn(a, b):
            return native_kernels(arch, get, a, b)
    return jax.jit(fn)
    return jax.jit(fn)


def _blocked(arch, x1, x2, get, block_size, method, progress) -> list[np.ndarray]:
    from sslntk._progress import Progress

    fn = _block_fn(arch, get, method)
    sym = x2 is None
    N1 = x1.shape[0]
    N2 = N1 if sym else x2.shape[0]
    b = block_size or auto_block_size(arch, x1.shape, x1.dtype)
    nb1, r1 = _partition(N1, b)
    nb2, r2 = (nb1, r1) if sym else _partition(N2, b)
    out = [np.empty((N1, N2), dtype=x1.dtype) for _ in get]
    total = nb1 * (nb1 + 1) // 2 if sym else nb1 * nb2
    with jax.default_matmul_precision("highest"), \
            Progress(total, f"{arch.kind} kernel blocks", enabled=progress) as prog:
        for i in range(nb1):
            a, ra = _padded(x1, i * r1, r1)
            s1 = slice(i * r1, i * r1 + ra)
            for j in range(i if sym else 0, nb2):
                if sym and j == i:
                    res = fn(a, None)
                    for o, k in zip(out, res, strict=True):
                        k = np.asarray(k)[:ra, :ra]
                        o[s1, s1] = 0.5 * (k + k.T)
                else:
                    bb, rb = _padded(x1 if sym else x2, j * r2, r2)
                    s2 = slice(j * r2, j * r2 + rb)
                    res = fn(a, bb)
                    for o, k in zip(out, res, strict=True):
                        k = np.asarray(k)[:ra, :rb]
                        o[s1, s2] = k
                        if sym:
                            o[s2, s1] = k.T
                prog.update(1)
    return out


def _blocked_traced(arch, x1, x2, get, block_size, method) -> tuple[jax.Array, ...]:
    """`_blocked` for traced inputs: the same jitted block function, blocks joined with jnp."""
    fn = _block_fn(arch, get, method)
    sym = x2 is None
    xb = x1 if sym else x2
    b = block_size or auto_block_size(arch, x1.shape, x1.dtype)
    nb1, r1 = _partition(x1.shape[0], b)
    nb2, r2 = _partition(xb.shape[0], b)
    rows = [[] for _ in get]
    with jax.default_matmul_precision("highest"):
        for i in range(nb1):
            a, ra = _padded(x1, i * r1, r1)
            cols = [[] for _ in get]
            for j in range(nb2):
                bb, rb = _padded(xb, j * r2, r2)
                for c, k in zip(cols, fn(a, bb), strict=True):
                    c.append(k[:ra, :rb])
            for r, c in zip(rows, cols, strict=True):
                r.append(jnp.concatenate(c, axis=1))
    out = tuple(jnp.concatenate(r, axis=0) for r in rows)
    return tuple(0.5 * (k + k.T) for k in out) if sym else out

def averaged_kernel(arch: Arch, views, kind: str = "ntk", *, block_size: int | None = None,
                    dtype=None, method: str = "auto", progress: bool = False) -> jax.Array:
    """Augmentation-averaged kernel `E_aug[K] ≈ (1/D) Σ_d K(views_d)`, `(2n, 2n)`.

    `views`: a `sslntk.data.Views` (with or without a draw axis; `make_views(..., n_draws=D)`), or
    an array `(D, 2n, ...)` of D stacked-view draws `[a_1..a_n, b_1..b_n]` (the draw axis is
    required for arrays). `kind`: "ntk" or "nngp". Accumulated in float64 (numpy), returned in the
    compute dtype. Other arguments as `ntk`.
    """
    check_arch(arch)
    V.choice("kind", kind, GETS)
    if hasattr(views, "stacked") and hasattr(views, "has_draws"):
        stacked = views.stacked
        draws = stacked if views.has_draws else stacked[None]
    else:
        draws = V.as_float_array("views", views)
        need = 5 if arch.kind == "cnn" else 3
        if (arch.kind == "cnn" and draws.ndim != need) or draws.ndim < need:
            raise ValueError(f"views: expected stacked views with a leading draw axis "
                             f"(n_draws, 2n, {'H, W, C' if arch.kind == 'cnn' else '...'}), got "
                             f"shape {tuple(draws.shape)}")
    if draws.shape[0] < 1:
        raise ValueError(f"views: expected at least one draw, got shape {tuple(draws.shape)}")
    if draws.shape[1] % 2 or draws.shape[1] < 4:
        raise ValueError(f"views: expected stacked views [a_1..a_n, b_1..b_n] with an even number "
                         f"2n >= 4 of views per draw, got shape {tuple(draws.shape)}")
    acc = None
    for d in range(draws.shape[0]):
        k = np.asarray(ntk_and_nngp(arch, draws[d], None, block_size=block_size, dtype=dtype,
                                    method=method, progress=progress, get=(kind,))[0])
        acc = k.astype(np.float64) if acc is None else acc + k
    return jnp.asarray((acc / draws.shape[0]).astype(k.dtype))
