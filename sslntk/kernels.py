"""Architectures and their infinite-width kernels over augmented views.

neural-tangents (the reference) is reached only through `sslntk._nt_compat`, the one module that
imports it (DESIGN.md). One `Arch` spec builds the
neural-tangents `stax` network (kernel and finite reference) here and the matching Flax NNX module
in `sslntk.finite`.

Conventions (DESIGN.md):

* Kernels are `(n1, n2)` kernels of ONE output (neural-tangents `trace_axes=(-1,)`); the full kernel
  of a k-output network is `K ⊗ I_k`. NTK parametrisation throughout.
* Views are stacked `[a_1..a_n, b_1..b_n]`, `(2n, ...)`; the positive-pair matrix is
  `Z = [[0, I], [I, 0]]` (`pair_matrix`).
* float32 by default; every function keeps its input dtype (float64 needs `jax_enable_x64`).

Contents:

* `Arch`, `mlp`, `cnn`, `activation_layer`, `stax_network`: the architecture spec and its stax triple.
* `ntk`, `nngp`, `ntk_and_nngp`: infinite-width kernels computed in blocks (memory bounded for
  2n = 8192 views), `averaged_kernel`: mean over augmentation draws.
* `pair_matrix`, `contrastive_kernel`, `contrastive_spectrum`, `kernel_spectrum`: the contrastive
  eigenproblem of the stepwise digest §6 and the PSD check.
* `reference_empirical_ntk`, `reference_gradient_descent`: thin wrappers around neural-tangents,
  "the peer" that tests and benchmarks compare against.

Why the kernels are not neural-tangents' `kernel_fn`: on CPU, neural-tangents evaluates the CNN's
pixel-pixel covariance convolution as a loop of single-channel `lax.conv` calls over a
`(N1·N2, H, H, W, W)` tensor: ~10× slower than `_native_kernels`, which computes the same recursion
(Novak et al. 2019; Arora et al. 2019) with the first layer as a patch Gram matrix, the convolution
as a shift-and-add over the filter offsets on `(N1, H, W, N2, H, W)`, and the dual activations on
its free 2-D view with a polynomial `atan2` (`_atan2`; XLA's is ~4× slower). The tests check it
against `kernel_fn` to float32 round-off. The MLP uses the same code (the 1×1-image case), which
also keeps the arc-cosine angle of identical inputs exactly 0 (neural-tangents' comes out
O(sqrt(eps)): a 1e-9 relative NTK error in float64 and ~2e-4 in float32 on the diagonal and on
un-augmented view pairs). `method="nt"` forces neural-tangents' `kernel_fn` (per block).

Cost (benchmarks/bench_kernels.py, 2 shared cores): a depth-2 MLP kernel on 2n = 8192 digits views
takes seconds; a depth-2 CNN on 8×8 images needs 2 · 64² dual-activation evaluations per pair of
views, ~1.2k pairs/s, i.e. ~0.2 CPU-hour at 2n = 2048 and ~3.4 CPU-hours at 2n = 8192 (memory stays
bounded by the block size either way). Under `jax.jit`/`jax.grad` (traced inputs) the blocks are
joined with jnp instead of a host array, so the kernel stays differentiable.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _nt_compat
from sslntk import _validate as V


def _nt():
    """neural-tangents, imported on first use through `sslntk._nt_compat` (the shim that makes its
    final release load on current JAX): only the stax triple and the reference wrappers (the peer)
    need it; the native kernels below do not, so sslntk runs with neural-tangents absent."""
    return _nt_compat.load()


__all__ = [
    "ACTIVATIONS", "KINDS", "PADDINGS", "METHODS", "Arch", "mlp", "cnn", "activation_layer",
    "stax_network", "ntk", "nngp", "ntk_and_nngp", "averaged_kernel", "pair_matrix",
    "contrastive_kernel", "KernelSpectrum", "kernel_spectrum", "ContrastiveSpectrum",
    "contrastive_spectrum", "reference_empirical_ntk", "reference_gradient_descent",
]

ACTIVATIONS = ("relu", "erf", "gelu", "leaky_relu", "abs", "abs_relu")
KINDS = ("mlp", "cnn")
PADDINGS = ("SAME", "VALID", "CIRCULAR")


@dataclass(frozen=True)
class Arch:
    """One architecture spec, shared by the kernels and the finite networks (hashable, static).

    kind="mlp": `depth` hidden blocks (Dense → activation) then a Dense readout; input `(N, d)` or
        images `(N, H, W, C)` (flattened first).
    kind="cnn": `depth` blocks (Conv `filter_shape`, `padding`, stride 1 → activation), global
        average pooling, Dense readout; input images `(N, H, W, C)` (NHWC).
    Every layer uses the same `W_std`/`b_std` in NTK parametrisation: `W ~ N(0, 1)` stored, the
    forward pass multiplies by `W_std / sqrt(fan_in)` and the bias by `b_std`, exactly as
    `stax.Dense/Conv`. `leaky_slope` is the negative-side slope of `leaky_relu`; `abs_relu` is
    `stax.ABRelu(-a, 1)`, i.e. `φ(x) = max(x, 0) − a·min(x, 0)` with `a = leaky_slope` (a = 1 gives
    |x|); see `activation_layer`.
    """

    kind: str = "mlp"
    depth: int = 1
    activation: str = "relu"
    W_std: float = 1.0
    b_std: float = 0.0
    filter_shape: tuple[int, int] = (3, 3)
    padding: str = "SAME"
    leaky_slope: float = 0.1

    def __post_init__(self):
        V.choice("kind", self.kind, KINDS)
        V.positive_int("depth", self.depth, minimum=1)
        V.choice("activation", self.activation, ACTIVATIONS)
        V.positive_float("W_std", self.W_std)
        V.positive_float("b_std", self.b_std, allow_zero=True)
        if isinstance(self.leaky_slope, bool) or not isinstance(
                self.leaky_slope, (int, float, np.integer, np.floating)) or not np.isfinite(
                self.leaky_slope):
            raise ValueError(f"leaky_slope: expected a finite number, got {self.leaky_slope!r}")
        if self.kind == "cnn":
            fs = self.filter_shape
            if (not isinstance(fs, tuple) or len(fs) != 2
                    or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
                           for s in fs)):
                raise ValueError(f"filter_shape: expected a tuple of two positive ints, got {fs!r}")
            V.choice("padding", self.padding, PADDINGS)


def mlp(depth: int = 1, activation: str = "relu", W_std: float = 1.0, b_std: float = 0.0,
        **kw) -> Arch:
    """MLP spec: `depth` hidden (Dense → activation) blocks and a Dense readout (NTK param.)."""
    return Arch(kind="mlp", depth=depth, activation=activation, W_std=W_std, b_std=b_std, **kw)


def cnn(depth: int = 1, activation: str = "relu", W_std: float = 1.0, b_std: float = 0.0,
        filter_shape: tuple[int, int] = (3, 3), padding: str = "SAME", **kw) -> Arch:
    """CNN spec for NHWC images: (Conv → activation) × depth, global average pool, Dense readout."""
    try:
        filter_shape = tuple(filter_shape)
    except TypeError as e:
        raise ValueError(f"filter_shape: expected a tuple of two positive ints, got "
                         f"{filter_shape!r}") from e
    return Arch(kind="cnn", depth=depth, activation=activation, W_std=W_std, b_std=b_std,
                filter_shape=filter_shape, padding=padding, **kw)


def activation_layer(arch: Arch):
    """The stax layer for `arch.activation`."""
    stax = _nt().stax
    a = arch.activation
    if a == "relu":
        return stax.Relu()
    if a == "erf":
        return stax.Erf()
    if a == "gelu":
        return stax.Gelu()
    if a == "leaky_relu":
        return stax.LeakyRelu(arch.leaky_slope)
    if a == "abs":
        return stax.Abs()
    if a == "abs_relu":
        return stax.ABRelu(-arch.leaky_slope, 1.0)
    raise ValueError(f"activation: unknown {a!r}; valid choices are {list(ACTIVATIONS)}")


def stax_network(arch: Arch, width: int = 512, out_dim: int = 1):
    """neural-tangents `(init_fn, apply_fn, kernel_fn)` for `arch` at hidden width `width`."""
    _check_arch(arch)
    V.positive_int("width", width)
    V.positive_int("out_dim", out_dim)
    stax = _nt().stax
    layers = []
    if arch.kind == "mlp":
        layers.append(stax.Flatten())
        for _ in range(arch.depth):
            layers += [stax.Dense(width, W_std=arch.W_std, b_std=arch.b_std),
                       activation_layer(arch)]
    else:
        for _ in range(arch.depth):
            layers += [stax.Conv(width, arch.filter_shape, padding=arch.padding,
                                 W_std=arch.W_std, b_std=arch.b_std), activation_layer(arch)]
        layers.append(stax.GlobalAvgPool())
    layers.append(stax.Dense(out_dim, W_std=arch.W_std, b_std=arch.b_std))
    return stax.serial(*layers)


def _check_arch(arch) -> Arch:
    if not isinstance(arch, Arch):
        raise TypeError(f"arch: expected a sslntk.kernels.Arch (kernels.mlp(...) / kernels.cnn(...)),"
                        f" got {type(arch).__name__}")
    return arch


# ------------------------------------------------------------------------------------------------
# Infinite-width kernels, in blocks
# ------------------------------------------------------------------------------------------------

METHODS = ("auto", "native", "nt")
GETS = ("ntk", "nngp")

# Peak memory (bytes) that one block's intermediates may use; block sizes are derived from it with
# a per-pair footprint of `_PAIR_ARRAYS` copies of the padded pixel-pixel covariance. Conservative:
# `benchmarks/bench_kernels.py` measured ~420 MiB of peak RSS (compilation included) for the 48-row
# blocks this gives a depth-2 CNN on 8×8 images (estimate 737 MB), plus the (2n)² output.
BLOCK_MEMORY_BUDGET = 768 * 2**20
_PAIR_ARRAYS = 8
_MAX_BLOCK = 2048
_MIN_BLOCK = 8


def ntk(arch: Arch, x1, x2=None, *, block_size: int | None = None, dtype=None,
        method: str = "auto", progress: bool = False) -> jax.Array:
    """Infinite-width NTK of `arch` (one output), `(n1, n2)`; equal to neural-tangents'
    `stax_network(arch)[2](x1, x2, "ntk")`.

    Args:
      arch: the `Arch` spec.
      x1: `(n1, d)` or images `(n1, H, W, C)` (MLP: flattened); CNN: `(n1, H, W, C)` NHWC. A
        single-draw `sslntk.data.Views` is accepted and means its stacked views `(2n, ...)`.
      x2: like `x1` (same per-example shape and dtype), or None for `x2 = x1` (then only the
        upper block triangle is computed and the result is exactly symmetric).
      block_size: rows/columns per block (None: derived from `BLOCK_MEMORY_BUDGET`, 768 MiB of
        intermediates: 2048 for MLPs, 48 for a CNN on 8×8 images). Inputs up to `block_size`
        rows are one unblocked call.
      dtype: compute dtype (float32/float64); None keeps the inputs' dtype (float32 default).
      method: "native" (sslntk's recursion; "auto" picks it) or "nt" (neural-tangents'
        `kernel_fn` per block, the reference). They agree to round-off except on identical inputs,
        where neural-tangents' arc-cosine angle comes out O(sqrt(eps)) instead of 0 (see `_dual`).
      progress: print block progress to stderr.
    """
    return ntk_and_nngp(arch, x1, x2, block_size=block_size, dtype=dtype, method=method,
                        progress=progress, get=("ntk",))[0]


def nngp(arch: Arch, x1, x2=None, *, block_size: int | None = None, dtype=None,
         method: str = "auto", progress: bool = False) -> jax.Array:
    """Infinite-width NNGP kernel of `arch` (one output), `(n1, n2)`; arguments as `ntk`."""
    return ntk_and_nngp(arch, x1, x2, block_size=block_size, dtype=dtype, method=method,
                        progress=progress, get=("nngp",))[0]


def ntk_and_nngp(arch: Arch, x1, x2=None, *, block_size: int | None = None, dtype=None,
                 method: str = "auto", progress: bool = False,
                 get: tuple[str, ...] = ("ntk", "nngp")) -> tuple[jax.Array, ...]:
    """Both kernels in one pass (the NTK recursion computes the NNGP anyway): `(ntk, nngp)`, each
    `(n1, n2)`; `get` selects and orders them. Arguments as `ntk`."""
    _check_arch(arch)
    V.choice("method", method, METHODS)
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


def _pair_entries(arch: Arch, shape: tuple[int, ...]) -> int:
    """Entries of the (padded) per-pair covariance: `((H + fh − 1)(W + fw − 1))²` for a CNN."""
    if arch.kind == "mlp":
        return 1
    fh, fw = arch.filter_shape
    return ((shape[1] + fh - 1) * (shape[2] + fw - 1)) ** 2


def auto_block_size(arch: Arch, shape: tuple[int, ...], dtype=jnp.float32) -> int:
    """The block size `ntk`/`nngp` use for examples of `shape` (`(N, ...)`; N is ignored): the
    largest multiple of 8 in [8, 2048] whose block intermediates fit `BLOCK_MEMORY_BUDGET`."""
    per_pair = _PAIR_ARRAYS * _pair_entries(arch, tuple(shape)) * np.dtype(dtype).itemsize
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
        kernel_fn = stax_network(arch)[2]

        def fn(a, b):
            k = kernel_fn(a, b, get)
            return tuple(k)
    else:
        def fn(a, b):
            return _native_kernels(arch, get, a, b)
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


# --- the native recursion (same maths as neural-tangents' stax kernels) ---------------------------

def _pads(arch: Arch) -> tuple[tuple[int, int], tuple[int, int]]:
    """(low, high) padding per spatial axis, lax's convention for SAME (and CIRCULAR)."""
    if arch.kind == "mlp" or arch.padding == "VALID":
        return (0, 0), (0, 0)
    return tuple(((f - 1) // 2, f - 1 - (f - 1) // 2) for f in arch.filter_shape)


def _pad_spatial(x, axes, arch):
    """Pad spatial `axes` (pairs (h, w)) for the conv: zeros for SAME, wrap for CIRCULAR."""
    ph, pw = _pads(arch)
    if ph == (0, 0) and pw == (0, 0):
        return x
    widths = [(0, 0)] * x.ndim
    for ah, aw in axes:
        widths[ah], widths[aw] = ph, pw
    return jnp.pad(x, widths, mode="wrap" if arch.padding == "CIRCULAR" else "constant")


def _filter(arch):
    return (1, 1) if arch.kind == "mlp" else arch.filter_shape


def _conv_pair(S, arch):
    """Covariance through a conv with i.i.d. weights (1/F of the filter per offset):
    `S'(p, p') = (1/F) Σ_δ S(p + δ, p' + δ)` on `S: (N1, H, W, N2, H, W)`."""
    fh, fw = _filter(arch)
    H, W = S.shape[1], S.shape[2]
    P = _pad_spatial(S, ((1, 2), (4, 5)), arch)
    Ho, Wo = P.shape[1] - fh + 1, P.shape[2] - fw + 1
    acc = None
    for a in range(fh):
        for c in range(fw):
            t = P[:, a:a + Ho, c:c + Wo, :, a:a + Ho, c:c + Wo]
            acc = t if acc is None else acc + t
    del H, W
    return acc / (fh * fw)


def _conv_diag(q, arch):
    """The same on the pixel diagonal `q: (N, H, W)` (self-variances)."""
    fh, fw = _filter(arch)
    P = _pad_spatial(q, ((1, 2),), arch)
    Ho, Wo = P.shape[1] - fh + 1, P.shape[2] - fw + 1
    acc = None
    for a in range(fh):
        for c in range(fw):
            t = P[:, a:a + Ho, c:c + Wo]
            acc = t if acc is None else acc + t
    return acc / (fh * fw)


def _pixel_diag(S):
    """`S: (N, H, W, N, H, W)` → `(N, H, W)`: entries `S[a, i, j, a, i, j]`."""
    N, H, W = S.shape[:3]
    m = N * H * W
    return jnp.diagonal(S.reshape(m, m)).reshape(N, H, W)


def _patches(x, arch):
    """`(N, H, W, C)` → `(N, Ho, Wo, F·C)`: the (padded) receptive field of every output pixel."""
    fh, fw = _filter(arch)
    P = _pad_spatial(x, ((1, 2),), arch)
    Ho, Wo = P.shape[1] - fh + 1, P.shape[2] - fw + 1
    return jnp.concatenate([P[:, a:a + Ho, c:c + Wo, :] for a in range(fh) for c in range(fw)],
                           axis=-1)


# Cephes `atan` (double: rational P/Q on [0, 0.66] after reduction, ~2 ulp) and `atanf` (float:
# degree-4 polynomial on [0, tan(π/8)], ~2 ulp); XLA's CPU arctan2 is ~4× slower than this, and
# the arc-cosine kernels evaluate one per pixel pair and layer.
_ATAN_P = (-8.750608600031904122785e-1, -1.615753718733365076637e1, -7.500855792314704667340e1,
           -1.228866684490136173410e2, -6.485021904942025371773e1)
_ATAN_Q = (2.485846490142306297962e1, 1.650270098316988542046e2, 4.328810604912902668951e2,
           4.853903996359136964868e2, 1.945506571482613964425e2)
_ATANF = (8.05374449538e-2, -1.38776856032e-1, 1.99777106478e-1, -3.33329491539e-1)


def _atan2(y, x):
    """`arctan2(y, x)` (numpy's conventions, `atan2(0, 0) = 0`) from mul/add/div/select only."""
    ay, ax = jnp.abs(y), jnp.abs(x)
    hi, lo = jnp.maximum(ay, ax), jnp.minimum(ay, ax)
    f64 = jnp.dtype(jnp.result_type(y, x)) == jnp.float64
    big = lo > (0.66 if f64 else 0.41421356237309503) * hi
    t = jnp.where(big, lo - hi, lo) / jnp.where(big, lo + hi, jnp.where(hi > 0, hi, 1))
    z = t * t
    if f64:
        P, Q = _ATAN_P, _ATAN_Q
        p = (((P[0] * z + P[1]) * z + P[2]) * z + P[3]) * z + P[4]
        q = ((((z + Q[0]) * z + Q[1]) * z + Q[2]) * z + Q[3]) * z + Q[4]
        r = t + t * (z * p / q)
    else:
        F = _ATANF
        r = t + t * z * (((F[0] * z + F[1]) * z + F[2]) * z + F[3])
    a = jnp.where(big, jnp.pi / 4 + r, r)
    a = jnp.where(ay > ax, jnp.pi / 2 - a, a)
    a = jnp.where(x < 0, jnp.pi - a, a)
    return jnp.where(y < 0, -a, a)


def _abrelu_ab(arch):
    return {"relu": (0.0, 1.0), "leaky_relu": (arch.leaky_slope, 1.0), "abs": (-1.0, 1.0),
            "abs_relu": (-arch.leaky_slope, 1.0)}[arch.activation]


def _dual(arch, c, q1, q2, need_dot: bool):
    """Dual activation: `(E[φ(u)φ(v)], E[φ'(u)φ'(v)], E[φ(u)²], E[φ(v)²])` for centred Gaussians
    with Var u = q1, Var v = q2, Cov = c (closed forms as neural-tangents' elementwise kernels).
    `c: (N1, H, W, N2, H, W)`, `q1: (N1, H, W)`, `q2: (N2, H, W)`. Evaluated on the free 2-D view
    `(N1·H·W, N2·H·W)` of c, where XLA's CPU loops vectorise (~1.7× faster than 6-D broadcasts)."""
    shape = c.shape
    c = c.reshape(q1.size, q2.size)
    o1 = q1.reshape(-1, 1)
    o2 = q2.reshape(1, -1)
    act = arch.activation
    dot = None
    if act == "erf":
        prod = (1 + 2 * o1) * (1 + 2 * o2)
        root = jnp.sqrt(jnp.maximum(prod - 4 * c**2, 0.0))
        new = (2 / jnp.pi) * _atan2(2 * c, root)
        if need_dot:
            dot = (4 / jnp.pi) / root

        def diag(q):
            return (2 / jnp.pi) * _atan2(q, jnp.sqrt(q + 0.25))
    elif act == "gelu":
        prod = o1 * o2
        prod1 = (o1 + 1) * (o2 + 1)
        d2 = prod1 - c**2
        d = jnp.sqrt(jnp.maximum(d2, 0.0))
        ang = _atan2(c, d)
        new = ((c**2 + prod * d2) / (prod1 * d) + c * ang) / (2 * jnp.pi) + 0.25 * c
        if need_dot:
            first = (1 / d2 + (1 - prod) / prod1 + 1) * c / d / (2 * jnp.pi)
            dot = first + 0.25 + ang / (2 * jnp.pi)

        def diag(q):
            r = jnp.sqrt(1 + 2 * q)
            return q * ((q / ((q + 1) * r) + _atan2(q, r) / 2) / jnp.pi + 0.25)
    else:
        a, b = _abrelu_ab(arch)
        # sin²θ·q1·q2 = q1 q2 − c². Where sin²θ is below round-off (identical inputs; c and q
        # rounded differently, or an FMA-contracted q·q − c·c) it is set to 0: otherwise θ comes
        # out O(sqrt(eps)) instead of 0 and the NTK factor E[φ'φ'] = (a²+b²)/2 − (a−b)²θ/2π is off
        # by O(sqrt(eps)) (3e-4 in float32) on every duplicate pair. The change is below the
        # arc-cosine's own conditioning error there.
        prod = o1 * o2
        r2 = prod - c**2
        pos = r2 > 8 * jnp.finfo(c.dtype).eps * prod
        # double `where`: no sqrt'(0) = inf reaches jax.grad through the masked branch
        root = jnp.where(pos, jnp.sqrt(jnp.where(pos, r2, 1.0)), 0.0)
        ang = jnp.where((root == 0) & (c == 0), jnp.pi / 2, _atan2(root, c))  # nt's fill
        factor = (a - b) ** 2 / (2 * jnp.pi)
        dsig = (a**2 + b**2) / 2 - factor * ang
        new = factor * root + dsig * c
        dot = dsig if need_dot else None

        def diag(q):
            return (a**2 + b**2) / 2 * q
    return (new.reshape(shape), None if dot is None else dot.reshape(shape), diag(q1), diag(q2))


def _spatial_mean(S):
    """Global average pooling of `S: (N1, H, W, N2, H, W)` → `(N1, N2)`, as two reductions of H·W
    terms each (float32 round-off grows with the length of one reduction)."""
    return jnp.mean(jnp.mean(S, axis=(4, 5)), axis=(1, 2))


def _native_kernels(arch: Arch, get: tuple[str, ...], x1, x2):
    """NNGP/NTK of `stax_network(arch)` for one block, `(N1, N2)` each (x2=None: x2 = x1).

    Recursion (NTK parametrisation, `F = fh·fw`, `C` input channels, `σ_w² = W_std²`, `σ_b² = b_std²`):
    `Σ¹(p,p') = σ_w²/(F C) ⟨patch₁(p), patch₂(p')⟩ + σ_b²`, `Θ¹ = Σ¹`; per block after the first,
    `Σˡ⁺¹ = σ_w² conv(E[φφ]) + σ_b²`, `Θˡ⁺¹ = σ_w² conv(E[φ'φ'] ⊙ Θˡ) + Σˡ⁺¹` with
    `conv(S)(p,p') = (1/F) Σ_δ S(p+δ, p'+δ)`; then global average pooling (mean over p, p') and the
    Dense readout `Σ = σ_w² Σ̄ + σ_b²`, `Θ = σ_w² Θ̄ + Σ`. An MLP is the 1×1 case (`C = d`).
    """
    sym = x2 is None
    if arch.kind == "mlp":
        x1 = x1.reshape(x1.shape[0], 1, 1, -1)
        x2 = None if sym else x2.reshape(x2.shape[0], 1, 1, -1)
    w2, b2 = float(arch.W_std) ** 2, float(arch.b_std) ** 2
    fh, fw = _filter(arch)
    C = x1.shape[-1]
    P1 = _patches(x1, arch)
    P2 = P1 if sym else _patches(x2, arch)
    s = w2 / (fh * fw * C)
    nngp_ = s * jnp.einsum("aijk,bxyk->aijbxy", P1, P2) + b2
    if not sym:
        q1 = s * jnp.sum(P1 * P1, axis=-1) + b2
        q2 = s * jnp.sum(P2 * P2, axis=-1) + b2
    need_ntk = "ntk" in get
    ntk_ = nngp_ if need_ntk else None
    for layer in range(arch.depth):
        if layer:
            new = w2 * _conv_pair(nngp_, arch) + b2
            if need_ntk:
                ntk_ = w2 * _conv_pair(ntk_, arch) + new
            nngp_ = new
            if not sym:
                q1 = w2 * _conv_diag(q1, arch) + b2
                q2 = w2 * _conv_diag(q2, arch) + b2
        if sym:
            # The variances ARE the pixel diagonal of the covariance (as in neural-tangents'
            # x2=None path): on the diagonal c == q exactly, so the arc-cosine angle is exactly 0
            # instead of O(sqrt(eps)) from two differently rounded computations.
            q1 = q2 = _pixel_diag(nngp_)
        nngp_, dot, q1, q2 = _dual(arch, nngp_, q1, q2, need_ntk)
        if need_ntk:
            ntk_ = ntk_ * dot
    nngp_ = w2 * _spatial_mean(nngp_) + b2
    res = {"nngp": nngp_}
    if need_ntk:
        res["ntk"] = w2 * _spatial_mean(ntk_) + nngp_
    return tuple(res[g] for g in get)


def averaged_kernel(arch: Arch, views, kind: str = "ntk", *, block_size: int | None = None,
                    dtype=None, method: str = "auto", progress: bool = False) -> jax.Array:
    """Augmentation-averaged kernel `E_aug[K] ≈ (1/D) Σ_d K(views_d)`, `(2n, 2n)`.

    `views`: a `sslntk.data.Views` (with or without a draw axis; `make_views(..., n_draws=D)`), or
    an array `(D, 2n, ...)` of D stacked-view draws `[a_1..a_n, b_1..b_n]` (the draw axis is
    required for arrays). `kind`: "ntk" or "nngp". Accumulated in float64 (numpy), returned in the
    compute dtype. Other arguments as `ntk`.
    """
    _check_arch(arch)
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


# ------------------------------------------------------------------------------------------------
# Spectra and the contrastive kernel (stepwise digest §6)
# ------------------------------------------------------------------------------------------------

def pair_matrix(n: int, dtype=jnp.float32) -> jax.Array:
    """The positive-pair matrix `Z = [[0, I_n], [I_n, 0]]`, `(2n, 2n)`, for stacked views
    `[a_1..a_n, b_1..b_n]`."""
    n = V.positive_int("n", n)
    dt = V.float_dtype(dtype)
    eye = jnp.eye(n, dtype=dt)
    zero = jnp.zeros((n, n), dt)
    return jnp.block([[zero, eye], [eye, zero]])


def _swap_halves(k: jax.Array) -> jax.Array:
    """`k Z` for `k: (m, 2n)` (Z symmetric): swap the a- and b-halves of the columns."""
    n = k.shape[-1] // 2
    return jnp.concatenate([k[..., n:], k[..., :n]], axis=-1)


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
    """Contrastive kernel `K^Γ(x, x') = (1/2n) k_X(x)ᵀ Z k_X(x')` (stepwise digest §6).

    `K`: `(2n, 2n)` base kernel over the stacked views (sets n; checked). `k_x1`: `(m1, 2n)` rows
    `k_X(x) = [K(x, x_1..x_n), K(x, x'_1..x'_n)]`, or None for the training views (`k_X = K`);
    `k_x2`: `(m2, 2n)`, None for `k_x2 = k_x1`. Returns `(m1, m2)`; on the training views it is
    `K Z K / 2n`.
    """
    K = _even_kernel("K", K)
    k1 = K if k_x1 is None else _cross("k_x1", k_x1, K)
    k2 = k1 if k_x2 is None else _cross("k_x2", k_x2, K)
    V.same_dtype(K=K, k_x1=k1, k_x2=k2)
    return (k1 @ _swap_halves(k2).T) / K.shape[0]


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
    """Eigen-decomposition of a kernel matrix with the symmetry and PSD checks of DESIGN.md.

    Checks that `K` is square and symmetric to round-off (`_validate.square_kernel`), computes its
    eigenvalues (`eigh` on the symmetrised matrix, in K's dtype) and raises a ValueError when the
    smallest one is below `−tol · λ_max`. Default relative tolerance `max(N, 10) · eps(dtype)`: the
    size of the eigenvalue perturbation that round-off of order `eps·|K|` in the N² entries can cause
    (`‖E‖₂ ≤ N·max|E_ij|`). The eigenvalues are returned as computed (never clipped); see
    `KernelSpectrum.psd_values` for the clipped copy.
    """
    K = V.square_kernel(name, K)
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
    """Eigenpairs of `M = K^{1/2} Z K^{1/2} / 2n` (stepwise digest §6) and what is needed to
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
        """The α → 0 Barlow Twins embedding (digest §6), up to a rotation U:
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
    """Eigen-decomposition of the contrastive matrix `M = K^{1/2} Z K^{1/2} / 2n` (digest §6).

    `K`: `(2n, 2n)` PSD base kernel over stacked views (checked by `kernel_spectrum` with `tol`).
    `ridge` ≥ 0 is added to K first (`K + ridge·I` replaces K everywhere, then the g_j reconstruct
    the ridged K^Γ exactly). `K^{±1/2}` use the eigenvalues of K above `rcond·λ_max` (default
    `2n·eps(dtype)`), the rest is treated as an exact null space (pseudo-inverse): with
    `k_X(x)` in the range of K (true for any x when K is a Gram matrix `Φ Φᵀ`), still
    `Σ_j γ_j g_j(x) g_j(x') = K^Γ(x, x')`. The nonzero γ_j equal the eigenvalues of the
    non-symmetric `Z K / 2n` and of `Γ_φ = Φᵀ Z Φ / 2n` (digest check 8). Computed in K's dtype;
    use float64 for closed-form work.
    """
    K = _even_kernel("K", K)
    ridge = float(V.positive_float("ridge", ridge, allow_zero=True))
    N = K.shape[0]
    if ridge:
        K = K + ridge * jnp.eye(N, dtype=K.dtype)
    spec = kernel_spectrum(K, tol=tol)
    lam, U = spec.values, spec.vectors
    rc = N * float(jnp.finfo(K.dtype).eps) if rcond is None else float(
        V.positive_float("rcond", rcond, allow_zero=True))
    keep = lam > rc * spec.max_eigenvalue
    safe = jnp.where(keep, lam, 1.0)
    root = jnp.where(keep, jnp.sqrt(safe), 0.0)
    iroot = jnp.where(keep, 1.0 / jnp.sqrt(safe), 0.0)
    Kh = (U * root) @ U.T
    M = (Kh @ _swap_halves(Kh).T) / N          # K^{1/2} Z K^{1/2} / 2n  (Kh symmetric)
    g, B = jnp.linalg.eigh(0.5 * (M + M.T))
    g, B = g[::-1], B[:, ::-1]
    A = (U * iroot) @ (U.T @ B)
    return ContrastiveSpectrum(values=g, vectors=B, coef=A, kernel=spec,
                               rank=int(jnp.sum(keep)), ridge=ridge)


# ------------------------------------------------------------------------------------------------
# Reference wrappers around neural-tangents ("the peer" for tests and benchmarks)
# ------------------------------------------------------------------------------------------------

_EMPIRICAL_IMPLEMENTATIONS = (1, 2)


@functools.lru_cache(maxsize=64)
def _empirical_ntk_jit(apply_fn, implementation: int):
    return jax.jit(_nt().empirical_ntk_fn(apply_fn, trace_axes=(-1,), implementation=implementation))


def reference_empirical_ntk(apply_fn, params, x1, x2=None, implementation: int = 2) -> jax.Array:
    """Empirical NTK of a finite network from neural-tangents, `(n1, n2)`, ONE-output convention.

    `apply_fn(params, x) -> (N, k)` (e.g. from `stax_network(arch, width, out_dim=k)`).
    neural-tangents' `empirical_ntk_fn(..., trace_axes=(-1,))` contracts the output pair of axes and
    divides by `k` (`_trace_and_diagonal` returns `trace / contract_size`), so the result is the MEAN
    over outputs of the per-output kernels, `(1/k) Σ_j J_j(x1) J_j(x2)ᵀ` — the single-output kernel
    `K` of the convention "full kernel = K ⊗ I_k" (exactly so at infinite width, where the
    output-output blocks are `K δ_jj'`). For `k = 1` it is `J(x1) J(x2)ᵀ` exactly.

    `implementation`: 1 (Jacobian contraction) or 2 (NTK-vector products). neural-tangents'
    implementations 0 (auto) and 3 (structured derivatives) are broken (on JAX 0.5.3 already, and
    their jaxpr-walking internals are gone from current JAX) and are rejected. `x2=None` means `x2 = x1`.
    """
    if isinstance(implementation, bool) or implementation not in _EMPIRICAL_IMPLEMENTATIONS:
        raise ValueError(f"implementation: expected 1 (Jacobian contraction) or 2 (NTK-vector "
                         f"products), got {implementation!r}; neural-tangents' 0 (auto) and 3 "
                         f"(structured derivatives) are broken")
    if not callable(apply_fn):
        raise TypeError(f"apply_fn: expected a callable apply_fn(params, x), got "
                        f"{type(apply_fn).__name__}")
    x1 = V.as_float_array("x1", x1)
    if x1.ndim < 2 or x1.shape[0] == 0:
        raise ValueError(f"x1: expected a non-empty batch (N, ...), got shape {tuple(x1.shape)}")
    if x2 is not None:
        x2 = V.as_float_array("x2", x2)
        if x2.shape[1:] != x1.shape[1:] or x2.shape[0] == 0:
            raise ValueError(f"x2: expected a non-empty batch with per-example shape "
                             f"{tuple(x1.shape[1:])} like x1, got shape {tuple(x2.shape)}")
        V.same_dtype(x1=x1, x2=x2)
    out = jax.eval_shape(apply_fn, params, x1[:1])
    if not hasattr(out, "shape") or len(out.shape) != 2:
        raise ValueError(f"apply_fn: expected outputs of shape (N, k), got {out}")
    return _empirical_ntk_jit(apply_fn, int(implementation))(x1, x2, params)


def _as_pytree_callable(fn):
    """A pytree for `jax.jit`: `Loss` objects (constants as leaves) pass through; an opaque
    callable becomes a `Partial` (the function itself is static)."""
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(fn)):
        return jax.tree_util.Partial(fn)
    return fn


@jax.jit
def _nt_gradient_descent(loss, K, f0, ts, K_test_train, f0_test):
    predict_fn = _nt().predict.gradient_descent(
        lambda fx, y: loss(fx), K, jnp.zeros_like(f0), learning_rate=1.0, trace_axes=(-1,))
    if K_test_train is None:
        return predict_fn(ts, f0), None
    return predict_fn(ts, f0, f0_test, K_test_train)


def reference_gradient_descent(loss, K, f0, ts, K_test_train=None, f0_test=None):
    """Kernel gradient flow by neural-tangents' `predict.gradient_descent` (the reference peer).

    Solves `df/dt = -K ∇_f L(f)` (and `df_test/dt = -K_test_train ∇_f L(f)`) over the full `(2n, k)`
    system with JAX's Dormand–Prince `odeint` at neural-tangents' fixed tolerances (rtol = atol =
    1.4e-8, no step limit). `learning_rate=1`, so `t` is in units of learning-rate × steps
    (DESIGN.md "Time"). `trace_axes=(-1,)`: `K` is the one-output kernel, applied to each output.

    Args:
      loss: `loss(f) -> scalar` on `(2n, k)` embeddings (an `sslntk.losses.Loss` or any callable);
        adapted to neural-tangents' `loss(fx, y)` with an unused dummy target.
      K: `(2n, 2n)` symmetric kernel over the stacked views. f0: `(2n, k)` initial embeddings.
      ts: `(T,)` non-negative, strictly increasing times (cast to K's dtype).
      K_test_train: `(m, 2n)` cross kernel and f0_test: `(m, k)` initial test outputs (both or none).

    Returns:
      `(f_t, f_test_t)`: `(T, 2n, k)` and `(T, m, k)` (or None without test points). jitted.
    """
    if not callable(loss):
        raise TypeError(f"loss: expected a callable loss(f) -> scalar, got {type(loss).__name__}")
    f0 = V.stacked_views("f0", f0, ndim=2)
    K = V.square_kernel("K", K)
    if K.shape[0] != f0.shape[0]:
        raise ValueError(f"K: expected shape ({f0.shape[0]}, {f0.shape[0]}) to match f0 "
                         f"{tuple(f0.shape)}, got {tuple(K.shape)}")
    ts = _check_times("ts", ts)
    K_test_train, f0_test = V.check_test_pair(K_test_train, f0_test, K.shape[0], f0.shape[1])
    V.same_dtype(K=K, f0=f0, K_test_train=K_test_train, f0_test=f0_test)
    ts = ts.astype(K.dtype)          # neural-tangents integrates in K's dtype
    return _nt_gradient_descent(_as_pytree_callable(loss), K, f0, ts, K_test_train, f0_test)


def _check_times(name: str, ts) -> jax.Array:
    ts = V.as_float_array(name, ts, ndim=1)
    if ts.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one time, got an empty array")
    if V.is_concrete(ts):   # numpy: inside a jit trace jnp ops on a captured array are staged
        t = np.asarray(ts)
        if np.any(t < 0):
            raise ValueError(f"{name}: expected non-negative times, got min {float(t.min())}")
        if t.shape[0] > 1 and not np.all(np.diff(t) > 0):
            raise ValueError(f"{name}: expected strictly increasing times, got {t}")
    return ts
