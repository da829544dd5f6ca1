"""Row-sharded kernels over a 1-D device mesh (docs/how-to/scale-out.md): the one home of sslntk's sharding.

A kernel `K (N, N)` is *row-sharded* when it is a `jax.Array` with a `NamedSharding(mesh,
P(axis, None))`: device `d` of the mesh axis holds the rows `[d·R, (d+1)·R)`, `R = N / D`.
Everything that touches such a K goes through this module, so the full `(N, N)` matrix is never
gathered on one device:

* `RowLayout` (mesh + axis; hashable, a static argument under jit) and `layout_of(K)`.
* `row_matmul(K, X, layout)`: `K @ X` for a tall-skinny `X (N, b)`, as a `jax.shard_map`: each
  device multiplies its row block by the replicated X, the result blocks are joined by an
  `all_gather` collective and come back replicated (`O(N·b)` per device, never `O(N²)`).
* `row_trace`, `row_diagonal`: trace / diagonal from the local blocks (a `psum` / `all_gather`).
* `place(x, layout)`: a small array replicated on the mesh (`make_array_from_callback`, so the same
  code runs under `jax.distributed`, each process passing the same values).
* `check_kernel(name, K, layout)`: the kernel input checks (docs/concepts.md) without a host copy:
  finiteness by a sharded reduction, symmetry by a random probe `|xᵀKy − yᵀKx|` (two sharded
  products; a dense `|K − Kᵀ|` would need a transpose, i.e. an all-to-all of the whole matrix).
* `compiled_bytes`, `check_memory`: the compiled program's own `memory_analysis()` per device
  against the device memory (or, for host devices, the host's available memory shared by its local
  devices), raising `MemoryError` BEFORE the program runs.

Multi-process: under `jax.distributed.initialize` a mesh over `jax.devices()` spans processes; the
same functions work unchanged (the collectives are JAX's: gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


@dataclass(frozen=True)
class RowLayout:
    """Rows of an `(N, ...)` array split over mesh axis `axis` (other mesh axes replicate)."""

    mesh: Mesh
    axis: str

    @property
    def size(self) -> int:
        return int(self.mesh.shape[self.axis])

    @property
    def rows(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(self.axis, None))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def n_local_devices(self) -> int:
        pid = jax.process_index()
        return sum(1 for d in self.mesh.devices.flat if d.process_index == pid)

    def describe(self) -> str:
        return f"mesh axis {self.axis!r} of {self.size} device(s)"


def resolve(mesh=None, sharding=None, *, name_mesh: str = "mesh",
            name_sharding: str = "sharding") -> RowLayout | None:
    """The `RowLayout` of a public `mesh=` / `sharding=` option pair (at most one given).

    `mesh`: a 1-D `jax.sharding.Mesh` (e.g. `jax.make_mesh((D,), ("rows",))`): rows over its axis.
    `sharding`: a `NamedSharding(mesh, P(axis))` or `P(axis, None)` with ONE mesh axis name on the
    rows (any other mesh axes replicate)."""
    if mesh is not None and sharding is not None:
        raise ValueError(f"{name_mesh}, {name_sharding}: expected at most one of them, got both")
    if mesh is not None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"{name_mesh}: expected a jax.sharding.Mesh (jax.make_mesh((D,), "
                            f"('rows',))), got {type(mesh).__name__}")
        if len(mesh.axis_names) != 1:
            raise ValueError(f"{name_mesh}: expected a 1-D mesh (one axis for the kernel's rows), "
                             f"got axes {dict(mesh.shape)}; pass sharding=NamedSharding(mesh, "
                             f"P(axis, None)) to choose one axis of a larger mesh")
        return RowLayout(mesh, mesh.axis_names[0])
    if sharding is not None:
        lay = _from_named(sharding)
        if lay is None:
            raise ValueError(f"{name_sharding}: expected a NamedSharding(mesh, P(axis, None)) with "
                             f"one mesh axis on the rows and the columns unsharded, got "
                             f"{sharding!r}")
        return lay
    return None


def _from_named(s) -> RowLayout | None:
    if not isinstance(s, NamedSharding):
        return None
    spec = tuple(s.spec) + (None,) * (2 - len(tuple(s.spec)))
    if len(spec) != 2 or spec[1] is not None:
        return None
    ax = spec[0]
    if isinstance(ax, tuple):
        if len(ax) != 1:
            return None
        ax = ax[0]
    if not isinstance(ax, str) or ax not in s.mesh.axis_names:
        return None
    return RowLayout(s.mesh, ax)


def layout_of(K) -> RowLayout | None:
    """The `RowLayout` of a concrete row-sharded 2-D `jax.Array`, else None (dense path)."""
    if not isinstance(K, jax.Array) or isinstance(K, jax.core.Tracer) or K.ndim != 2:
        return None
    try:
        s = K.sharding
    except Exception:  # noqa: BLE001  (deleted/donated arrays)
        return None
    return _from_named(s)


def check_rows(name: str, N: int, layout: RowLayout) -> None:
    """The mesh axis must divide the rows: equal row blocks, no padding to get wrong."""
    if N % layout.size:
        divs = [d for d in range(1, min(N, 64) + 1) if N % d == 0]
        raise ValueError(f"{name}: {layout.describe()} does not divide 2n = {N} rows into equal "
                         f"blocks; use a mesh size that divides {N} (e.g. one of {divs}) or a "
                         f"number of views divisible by {layout.size}")


# ----------------------------------------------------------------------------------------------
# Sharded products (usable inside jit: `layout` is static)


def row_matmul(K, X, layout: RowLayout | None, precision=None):
    """`K @ X` (`X (N, b)`, replicated result). Dense `K @ X` when `layout` is None."""
    if layout is None:
        return jnp.matmul(K, X, precision=precision)
    ax = layout.axis

    def local(k, x):
        return jax.lax.all_gather(jnp.matmul(k, x, precision=precision), ax, axis=0, tiled=True)

    return jax.shard_map(local, mesh=layout.mesh, in_specs=(P(ax, None), P()), out_specs=P(),
                         check_vma=False)(K, X)  # all_gather: replicated by construction


def row_diagonal(K, layout: RowLayout | None):
    """`diag(K)`, `(N,)`, replicated."""
    if layout is None:
        return jnp.diagonal(K)
    ax = layout.axis

    def local(k):
        R = k.shape[0]
        start = jax.lax.axis_index(ax) * R
        cols = jax.lax.dynamic_slice_in_dim(k, start, R, axis=1)
        return jax.lax.all_gather(jnp.diagonal(cols), ax, axis=0, tiled=True)

    return jax.shard_map(local, mesh=layout.mesh, in_specs=P(ax, None), out_specs=P(),
                         check_vma=False)(K)


def row_trace(K, layout: RowLayout | None):
    """`tr K`, replicated: the sum of the diagonal read alone (`jnp.trace` reads all of K on CPU:
    0.15 s at N = 8192)."""
    return jnp.sum(row_diagonal(K, layout))


def place(x, layout: RowLayout):
    """A (small) array replicated over the mesh. Arrays already on the mesh keep their values
    (re-laid out as replicated by XLA); host/single-device arrays are copied (under
    `jax.distributed` every process must pass the same values)."""
    if x is None or isinstance(x, jax.core.Tracer):
        return x
    if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) \
            and x.sharding.mesh == layout.mesh and x.is_fully_replicated:
        return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.jit(lambda a: a, out_shardings=layout.replicated)(x)
    a = np.asarray(x)
    return jax.make_array_from_callback(a.shape, layout.replicated, lambda idx: a[idx])


def to_host(x) -> np.ndarray:
    """A replicated (or single-process) array as numpy, also under `jax.distributed`, where a
    replicated array spans processes and only its local copies are addressable."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            raise ValueError("expected a replicated array (a sharded one spans other processes)")
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def place_rows(x, layout: RowLayout):
    """A host array `(N, ...)` split by rows over the mesh (each device gets its row block)."""
    a = np.asarray(x)
    spec = NamedSharding(layout.mesh, P(layout.axis, *([None] * (a.ndim - 1))))
    return jax.make_array_from_callback(a.shape, spec, lambda idx: a[idx])


def check_same_mesh(name: str, x, layout: RowLayout) -> None:
    """`x` (e.g. f0) must be unsharded (host / one device, then it is replicated onto K's mesh) or
    live on K's mesh; anything else is a clear error instead of XLA's device-mismatch message."""
    if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
        return
    s = x.sharding
    if isinstance(s, NamedSharding) and s.mesh == layout.mesh:
        return
    if len(s.device_set) == 1 and x.is_fully_addressable:
        return
    raise ValueError(f"{name}: expected an unsharded array or one on K's mesh "
                     f"({layout.describe()}: {sorted(d.id for d in layout.mesh.devices.flat)}), got "
                     f"sharding {s} on devices {sorted(d.id for d in s.device_set)}; put it on K's "
                     f"mesh (jax.device_put(x, NamedSharding(K.sharding.mesh, P()))) or pass a host "
                     f"array")


@partial(jax.jit, static_argnames=("layout",))
def _probe(K, key, *, layout):
    N = K.shape[0]
    X = jax.random.normal(key, (N, 2), K.dtype)
    Y = row_matmul(K, X, layout, precision=jax.lax.Precision.HIGHEST)
    asym = jnp.abs(jnp.dot(X[:, 0], Y[:, 1]) - jnp.dot(X[:, 1], Y[:, 0]))
    scale = jnp.linalg.norm(X[:, 0]) * jnp.linalg.norm(Y[:, 1]) + jnp.linalg.norm(X[:, 1]) \
        * jnp.linalg.norm(Y[:, 0])
    return jnp.all(jnp.isfinite(K)), asym / jnp.where(scale > 0, scale, 1.0), jnp.max(jnp.abs(K))


def check_kernel(name: str, K, layout: RowLayout, sym_tol: float | None = None) -> None:
    """Finite entries (sharded reduction) and symmetry to round-off (random probe), no host copy."""
    check_rows(name, K.shape[0], layout)
    finite, asym, _ = (to_host(v) for v in _probe(K, place(jax.random.PRNGKey(7), layout),
                                                    layout=layout))
    if not bool(finite):
        raise ValueError(f"{name}: expected finite values, got NaN/inf entries (sharded kernel)")
    tol = sym_tol if sym_tol is not None else 100 * float(jnp.finfo(K.dtype).eps)
    if float(asym) > tol:
        raise ValueError(f"{name}: expected a symmetric kernel, got a random probe "
                         f"|xᵀKy − yᵀKx| / (‖x‖‖Ky‖ + ‖y‖‖Kx‖) = {float(asym):.3g} > {tol:.1g}")


# ----------------------------------------------------------------------------------------------
# Memory plans from the compiled programs


def compiled_bytes(compiled) -> dict:
    """Per-device bytes of a compiled program (`.lower(...).compile()`): arguments, outputs,
    temporaries, aliased, and `peak = arguments + outputs + temporaries − aliased`."""
    ma = compiled.memory_analysis()
    if ma is None:
        return {}
    arg = int(ma.argument_size_in_bytes)
    out = int(ma.output_size_in_bytes)
    tmp = int(ma.temp_size_in_bytes)
    alias = int(ma.alias_size_in_bytes)
    return dict(arguments=arg, outputs=out, temporaries=tmp, aliased=alias,
                peak=arg + out + tmp - alias)


def device_memory_limit(layout: RowLayout | None) -> tuple[int | None, str]:
    """Bytes one device of `layout` may use, and where the figure comes from: the accelerator's
    `memory_stats()['bytes_limit']`, or for host (CPU) devices the host's available memory
    divided by the process's local devices on the mesh (they share it)."""
    dev = (layout.mesh.devices.flat[0] if layout is not None else jax.devices()[0])
    local = [d for d in (layout.mesh.devices.flat if layout is not None else [dev])
             if d.process_index == jax.process_index()]
    if local:
        dev = local[0]
    try:
        stats = dev.memory_stats()
    except Exception:  # noqa: BLE001
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{dev.platform} device memory"
    avail = _host_available()
    if avail is None:
        return None, "unknown"
    n = max(1, len(local))
    return avail // n, f"host available memory / {n} local device(s)"


def _host_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(what: str, compiled, layout: RowLayout | None, memory_limit=None,
                 name: str = "memory_limit") -> dict:
    """Raise `MemoryError` when the compiled program's per-device peak exceeds the limit
    (`memory_limit` bytes per device, or `device_memory_limit`); return the byte counts."""
    b = compiled_bytes(compiled)
    if not b:
        return b
    if memory_limit is not None:
        from sslntk import _validate as V

        limit, src = int(V.positive_int(name, memory_limit)), f"{name}="
    else:
        limit, src = device_memory_limit(layout)
    b["limit"] = limit
    if limit is not None and b["peak"] > limit:
        ndev = layout.size if layout is not None else 1
        raise MemoryError(
            f"{what}: the compiled program needs {_gib(b['peak'])} per device (arguments "
            f"{_gib(b['arguments'])}, outputs {_gib(b['outputs'])}, temporaries "
            f"{_gib(b['temporaries'])}; from its memory_analysis(), before running) on "
            f"{ndev} device(s), more than the {_gib(limit)} available per device ({src}); use "
            f"more devices (a larger mesh / more processes), float32, or fewer views")
    return b


_COMPILED: dict = {}


def checked_call(what: str, jitted, args: tuple, static: dict, layout: RowLayout | None,
                 memory_limit=None):
    """`jitted(*args, **static)` through its compiled program, after `check_memory` (the
    compiled executables are cached by argument shapes, dtypes, shardings and static options)."""
    sig = tuple((a.shape, str(a.dtype), getattr(a, "sharding", None)) for a in args)
    key = (id(jitted), sig, tuple(sorted(static.items())))
    hit = _COMPILED.get(key)
    if hit is None:
        compiled = jitted.lower(*args, **static).compile()
        hit = _COMPILED[key] = (jitted, compiled)   # keeps `jitted` alive: its id stays unique
        if len(_COMPILED) > 64:
            _COMPILED.pop(next(iter(_COMPILED)))
    check_memory(what, hit[1], layout, memory_limit)
    return hit[1](*args)


def _gib(x: int) -> str:
    return f"{x / 2**30:.3g} GiB"

