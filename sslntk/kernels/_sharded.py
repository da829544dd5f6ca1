"""Sharded construction of the kernels (docs/how-to/scale-out.md): `K (N1, N2)` built as row blocks, each
on its device of a 1-D mesh (`NamedSharding(mesh, P(axis, None))`), never gathered on one device.

One `jax.shard_map` program: the inputs are replicated (they are small: `N × d`), device `d` takes
its rows `[d·R, (d+1)·R)` (`R = N1 / D`) and fills its `(R, N2)` block tile by tile with the same
per-block recursion as the single-device path (`_recursion.native_kernels`, or neural-tangents'
`kernel_fn` for `method="nt"`) inside two `lax.fori_loop`s (rows × columns, in-place
`dynamic_update_slice`; a short last tile is shifted back to end at the boundary, recomputing a few
entries instead of padding). Tile sizes follow `BLOCK_MEMORY_BUDGET`: `br = min(R, block)` rows
by as many columns as the budget allows, so a device's memory is its `R × N2` block plus one
tile's intermediates. Every entry is computed on the device that owns its row: both triangles are
evaluated (2× the symmetric single-device work, no communication at all), and `K[i, j]`,
`K[j, i]` agree to round-off (the recursion is symmetric in its arguments up to rounding).

Before it runs, the compiled program's `memory_analysis()` is checked against the device memory
(`_sharding.check_memory`): a plan that does not fit raises `MemoryError` instead of being killed.
`memory_plan` returns those byte counts for any size without building anything (shapes only).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from sslntk import _sharding as S
from sslntk.kernels._arch import Arch
from sslntk.kernels._recursion import native_kernels
from sslntk.kernels._reference import nt_block


def tiles(arch: Arch, shape, dtype, R: int, N2: int, block_size: int | None,
          budget: int) -> tuple[int, int]:
    """(rows, columns) of one tile of a device's `(R, N2)` block."""
    from sslntk.kernels._assembly import PAIR_ARRAYS, auto_block_size, pair_entries

    b = block_size or auto_block_size(arch, tuple(shape), dtype)
    br = min(R, b)
    if block_size is None:
        per_pair = PAIR_ARRAYS * pair_entries(arch, tuple(shape)) * np.dtype(dtype).itemsize
        bc = max(b, (budget // per_pair) // br)
    else:
        bc = block_size
    bc = min(N2, bc)

    def balanced(total, size):
        nt = -(-total // size)
        return -(-total // nt)

    return balanced(R, br), balanced(N2, bc)


@functools.lru_cache(maxsize=32)
def _program(arch: Arch, get: tuple[str, ...], method: str, layout: S.RowLayout, br: int, bc: int):
    """jitted `(x1 replicated, x2 replicated) -> tuple of (N1, N2) row-sharded kernels`."""
    blk = nt_block(arch, get) if method == "nt" else (
        lambda a, b: native_kernels(arch, get, a, b))
    ax = layout.axis
    D = layout.size

    def local(x1, x2):
        N1, N2 = x1.shape[0], x2.shape[0]
        R = N1 // D
        xr = jax.lax.dynamic_slice_in_dim(x1, jax.lax.axis_index(ax) * R, R, axis=0)
        bufs = tuple(jnp.zeros((R, N2), x1.dtype) for _ in get)
        nr, nc = -(-R // br), -(-N2 // bc)

        def row(i, bufs):
            r0 = jnp.minimum(i * br, R - br)
            a = jax.lax.dynamic_slice_in_dim(xr, r0, br, axis=0)

            def col(j, bufs):
                c0 = jnp.minimum(j * bc, N2 - bc)
                b = jax.lax.dynamic_slice_in_dim(x2, c0, bc, axis=0)
                ks = blk(a, b)
                return tuple(jax.lax.dynamic_update_slice(o, k.astype(o.dtype), (r0, c0))
                             for o, k in zip(bufs, ks, strict=True))

            return jax.lax.fori_loop(0, nc, col, bufs)

        return jax.lax.fori_loop(0, nr, row, bufs)

    f = jax.shard_map(local, mesh=layout.mesh, in_specs=(P(), P()),
                      out_specs=tuple(P(ax, None) for _ in get), check_vma=False)
    return jax.jit(f, out_shardings=tuple(layout.rows for _ in get))


def _lowered(arch, x1, x2, get, block_size, method, layout, budget):
    N1 = x1.shape[0]
    N2 = N1 if x2 is None else x2.shape[0]
    S.check_rows("mesh", N1, layout)
    br, bc = tiles(arch, x1.shape, x1.dtype, N1 // layout.size, N2, block_size, budget)
    prog = _program(arch, get, "native" if method == "auto" else method, layout, br, bc)
    with jax.default_matmul_precision("highest"):
        return prog.lower(x1, x1 if x2 is None else x2)


def sharded_kernels(arch: Arch, x1, x2, get, block_size, method, layout: S.RowLayout,
                    memory_limit=None) -> tuple[jax.Array, ...]:
    """Row-sharded `(N1, N2)` kernels (x2 None: `x2 = x1`), memory-checked before running."""
    from sslntk.kernels._assembly import BLOCK_MEMORY_BUDGET

    xs = S.place(x1, layout)
    xc = None if x2 is None else S.place(x2, layout)
    N1 = xs.shape[0]
    N2 = N1 if xc is None else xc.shape[0]
    S.check_rows("mesh", N1, layout)
    br, bc = tiles(arch, xs.shape, xs.dtype, N1 // layout.size, N2, block_size,
                   BLOCK_MEMORY_BUDGET)
    prog = _program(arch, get, "native" if method == "auto" else method, layout, br, bc)
    with jax.default_matmul_precision("highest"):
        return tuple(S.checked_call(f"{arch.kind} kernel ({N1} × {N2}, sharded over "
                                    f"{layout.describe()})", prog, (xs, xs if xc is None else xc),
                                    {}, layout, memory_limit))


def memory_plan(arch: Arch, shape, *, mesh=None, sharding=None, dtype=jnp.float32,
                get=("ntk",), block_size: int | None = None, x2_rows: int | None = None) -> dict:
    """Per-device memory of the sharded kernel program for inputs of `shape` `(N, ...)`, from the
    compiled program's own `memory_analysis()` (shapes only: nothing is computed or allocated).

    Returns a dict with `arguments`, `outputs`, `temporaries`, `aliased`, `peak` (bytes per
    device), `limit` (what this machine's devices offer, see `_sharding.device_memory_limit`),
    `devices`, and `tile` (rows, columns of one tile)."""
    from sslntk import _validate as V
    from sslntk.kernels._arch import check_arch
    from sslntk.kernels._assembly import BLOCK_MEMORY_BUDGET, GETS

    check_arch(arch)
    layout = S.resolve(mesh, sharding)
    if layout is None:
        raise ValueError("mesh, sharding: expected one of them (the plan is for a sharded kernel)")
    shape = tuple(V.positive_int("shape", int(s)) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape: expected (N, d) or (N, H, W, C), got {shape}")
    get = (get,) if isinstance(get, str) else tuple(get)
    for g in get:
        V.choice("get", g, GETS)
    dt = V.float_dtype(dtype)
    if block_size is not None:
        block_size = V.positive_int("block_size", block_size)
    x1 = jax.ShapeDtypeStruct(shape, dt, sharding=layout.replicated)
    x2 = None if x2_rows is None else jax.ShapeDtypeStruct(
        (V.positive_int("x2_rows", x2_rows),) + shape[1:], dt, sharding=layout.replicated)
    compiled = _lowered(arch, x1, x2, get, block_size, "native", layout,
                        BLOCK_MEMORY_BUDGET).compile()
    b = S.compiled_bytes(compiled)
    b["limit"] = S.device_memory_limit(layout)[0]
    b["devices"] = layout.size
    N2 = shape[0] if x2_rows is None else x2_rows
    b["tile"] = tiles(arch, shape, dt, shape[0] // layout.size, N2, block_size,
                      BLOCK_MEMORY_BUDGET)
    b["kernel_bytes_total"] = len(get) * shape[0] * N2 * dt.itemsize
    return b


def contrastive_kernel_sharded(K: jax.Array, layout: S.RowLayout) -> jax.Array:
    """`K Z K / 2n` for a row-sharded K, row-sharded, by a ring of `ppermute`s: each device keeps
    its row block `K_i` and, in D steps, receives every other row block `K_j` once, accumulating
    `K_i[:, Z(rows_j)] @ K_j` (memory: three `R × N` blocks per device; no gather of K)."""
    return _contrastive_program(layout)(K)


@functools.lru_cache(maxsize=8)
def _contrastive_program(layout: S.RowLayout):
    ax, D = layout.axis, layout.size
    perm = [(i, (i - 1) % D) for i in range(D)]

    def local(k):
        R, N = k.shape
        n = N // 2
        me = jax.lax.axis_index(ax)

        def step(s, carry):
            blk, acc = carry
            j = (me + s) % D                        # owner of `blk` (rows j·R ... j·R + R)
            cols = (j * R + jnp.arange(R) + n) % N  # (Z K)[c, :] = K[(c + n) mod N, :]
            acc = acc + jnp.matmul(jnp.take(k, cols, axis=1), blk,
                                   precision=jax.lax.Precision.HIGHEST)
            return jax.lax.ppermute(blk, ax, perm), acc

        _, acc = jax.lax.fori_loop(0, D, step, (k, jnp.zeros_like(k)))
        return acc / N

    f = jax.shard_map(local, mesh=layout.mesh, in_specs=P(ax, None), out_specs=P(ax, None),
                      check_vma=False)
    return jax.jit(f, out_shardings=layout.rows)

