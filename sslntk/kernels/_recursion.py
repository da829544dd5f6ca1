"""The native infinite-width recursion: NNGP and NTK of an `Arch` for one block of inputs.

`native_kernels(arch, get, x1, x2)` computes the same kernels as neural-tangents' `stax`
`kernel_fn` (the reference, `_reference`), by the layer recursion of the NTK/NNGP literature:

* NNGP recursion through Dense/Conv layers, NTK parametrisation: Lee et al. 2018 ("Deep neural
  networks as Gaussian processes"), Novak et al. 2019 ("Bayesian deep convolutional networks with
  many channels are Gaussian processes", the CNN-GP: per-pixel-pair covariances, the conv as the
  mean over filter offsets, global average pooling as the mean over pixel pairs).
* NTK recursion `Θˡ⁺¹ = σ_w² conv(E[φ'φ'] ⊙ Θˡ) + Σˡ⁺¹`: Jacot et al. 2018 (MLP), Arora et al. 2019
  ("On exact computation with an infinitely wide neural net", the CNTK with GAP).
* Dual activations (`_dual`): the `Activation` object of the `Arch` (`arch.activation.dual`,
  `.variance`; `sslntk.kernels._activation`): the degree-1 arc-cosine kernel for ReLU / leaky
  ReLU / |x| / ABReLU (Cho & Saul 2009), the arcsine kernel for erf (Williams 1997), the closed
  form of neural-tangents' `stax.Gelu` for GELU; `atan2` from Cephes `atan` / `atanf` (Moshier).

Why not neural-tangents' `kernel_fn`: on CPU, neural-tangents evaluates the CNN's pixel-pixel
covariance convolution as a loop of single-channel `lax.conv` calls over a `(N1·N2, H, H, W, W)`
tensor: ~10× slower than `native_kernels`, which computes the same recursion with the first layer
as a patch Gram matrix, the convolution as a shift-and-add over the filter offsets on
`(N1, H, W, N2, H, W)`, and the dual activations on its free 2-D view with a polynomial `atan2`
(XLA's is ~4× slower). The tests check it against `kernel_fn` to float32 round-off. The MLP uses
the same code (the 1×1-image case), which also keeps the arc-cosine angle of identical inputs
exactly 0 (neural-tangents' comes out O(sqrt(eps)): a 1e-9 relative NTK error in float64 and ~2e-4
in float32 on the diagonal and on un-augmented view pairs).

Complexity per pair of images (H×W pixels, C channels, F = fh·fw filter taps, L = depth):
* readout "gap" (`native_kernels`): the full pixel-pixel covariance, `L·(H·W)²` dual-activation
  evaluations, `L·F·(H·W)²` adds (×2 with the NTK) and `F·C·(H·W)²` for the first-layer patch Gram;
  memory `(H+fh−1)²(W+fw−1)²` floats per pair and array. Inherent to GAP: the pooled kernel
  averages the last layer over all `(p, p')`, and the conv reads every pixel pair at every layer.
* readout "flatten" (`_native_flatten`): only the pixel diagonal, `L·H·W` dual evaluations and
  `L·F·H·W` adds (plus `C·H·W` for the per-pixel Gram); memory `(H+fh−1)(W+fw−1)` per pair.
Measured (benchmarks/bench_kernels.py, float32, depth 2, 2 shared cores at load 11-16): GAP on
8×8 images ~5.8k pairs per CPU-second (2n = 2048: 362 CPU-s, 17 min wall), GAP on 32×32×3 ~22
(2n = 64 measured; 2n = 2048 would be ~27 CPU-hours), flatten on 32×32×3 ~21k (2n = 2048: 100
CPU-s, 4.3-5.6 min wall).
The constant factor is set by XLA's CPU fusion: `_barrier` keeps the conv's F-term shift-and-add
one loop over a materialised input (2.8× less CPU for GAP, 3.5× for flatten than without it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sslntk.kernels._arch import Arch


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
    `S'(p, p') = (1/F) Σ_δ S(p + δ, p' + δ)` on `S: (N1, H, W, N2, H, W)` (Novak et al. 2019,
    eq. 7; Arora et al. 2019, §4)."""
    fh, fw = _filter(arch)
    P = _pad_spatial(_barrier(S), ((1, 2), (4, 5)), arch)
    Ho, Wo = P.shape[1] - fh + 1, P.shape[2] - fw + 1
    acc = None
    for a in range(fh):
        for c in range(fw):
            t = P[:, a:a + Ho, c:c + Wo, :, a:a + Ho, c:c + Wo]
            acc = t if acc is None else acc + t
    return _barrier(acc / (fh * fw))


def _barrier(S):
    """Materialise `S` (`lax.optimization_barrier`) on both sides of a convolution's shift-and-add.
    Without it XLA's CPU fusion splits the F-term sum into F fusions that each re-evaluate the
    producing dual activation, and fuses the sum into its consumers: 2.4× slower for a depth-2 CNN
    on 8×8 images with GAP (benchmarks/bench_kernels.py); values are unchanged up to FMA
    contraction (round-off)."""
    return jax.lax.optimization_barrier(S)


def _conv_diag(q, arch, axis: int = 1):
    """The same on the pixel diagonal, spatial axes `(axis, axis + 1)`: `q: (N, H, W)` (the
    self-variances, axis 1) or `(H, W, N1, N2)` (the flatten readout's pair covariances, axis 0):
    `q'(p) = (1/F) Σ_δ q(p + δ)`, since the diagonal `p = p'` only ever reads the diagonal."""
    fh, fw = _filter(arch)
    P = _pad_spatial(_barrier(q), ((axis, axis + 1),), arch)
    Ho, Wo = P.shape[axis] - fh + 1, P.shape[axis + 1] - fw + 1
    lead = (slice(None),) * axis
    acc = None
    for a in range(fh):
        for c in range(fw):
            t = P[(*lead, slice(a, a + Ho), slice(c, c + Wo))]
            acc = t if acc is None else acc + t
    return _barrier(acc / (fh * fw))


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


def _dual(arch, c, q1, q2, need_dot: bool):
    """Dual activation: `(E[φ(u)φ(v)], E[φ'(u)φ'(v)], E[φ(u)²], E[φ(v)²])` for centred Gaussians
    with Var u = q1, Var v = q2, Cov = c (closed forms as neural-tangents' elementwise kernels).
    `c: (N1, H, W, N2, H, W)`, `q1: (N1, H, W)`, `q2: (N2, H, W)`. Evaluated on the free 2-D view
    `(N1·H·W, N2·H·W)` of c, where XLA's CPU loops vectorise (~1.7× faster than 6-D broadcasts).

    The closed forms (arcsine kernel for erf, arc-cosine kernel for the ReLU family, GELU) live in
    the activation objects (`sslntk.kernels._activation`), each with its source."""
    shape = c.shape
    new, dot, diag = _dual_core(arch, c.reshape(q1.size, q2.size), q1.reshape(-1, 1),
                                q2.reshape(1, -1), need_dot)
    return (new.reshape(shape), None if dot is None else dot.reshape(shape), diag(q1), diag(q2))


def _dual_core(arch, c, o1, o2, need_dot: bool):
    """`_dual` on broadcastable arrays: `c` the covariances, `o1`, `o2` the two variances (already
    shaped to broadcast against `c`) → `(E[φφ], E[φ'φ'] or None, diag)`, `diag(q) = E[φ(u)²]`.
    The closed forms are the activation object's own (`arch.activation.dual` / `.variance`)."""
    act = arch.activation
    new, dot = act.dual(c, o1, o2, need_dot)
    return new, dot, act.variance


def _spatial_mean(S):
    """Global average pooling of `S: (N1, H, W, N2, H, W)` → `(N1, N2)`, as two reductions of H·W
    terms each (float32 round-off grows with the length of one reduction)."""
    return jnp.mean(jnp.mean(S, axis=(4, 5)), axis=(1, 2))


def _native_flatten(arch: Arch, get: tuple[str, ...], x1, x2):
    """`native_kernels` for a CNN with the flatten readout: the recursion on the pixel diagonal.

    Flatten → Dense averages the last layer's covariance over the pixel diagonal only,
    `Σ = σ_w² (1/HW) Σ_p E[φφ](p, p) + σ_b²`, and a conv maps the diagonal to itself,
    `S'(p, p) = (1/F) Σ_δ S(p + δ, p + δ)`; so every layer needs only the `H·W` covariances
    `Σˡ(p, p)` of each pair, not the `(H·W)²` of the pixel-pixel matrix (Novak et al. 2019, §3:
    without pooling the CNN-GP depends only on the diagonal, a "local" recursion; neural-tangents'
    `diagonal_spatial`). Layout `(H, W, N1, N2)`: the filter offsets are slices of the leading axes
    (contiguous `N1·N2` runs) and the dual activation broadcasts the variances `(H, W, N, 1)`.
    Layer 1 is the per-pixel Gram `G(p) = ⟨x1(p), x2(p)⟩` convolved: `Σ¹ = σ_w²/C · conv(G) + σ_b²`.
    Cost per pair: O(L·F·H·W) adds and `L·H·W` dual-activation evaluations.
    """
    sym = x2 is None
    w2, b2 = float(arch.W_std) ** 2, float(arch.b_std) ** 2
    C = x1.shape[-1]
    s = w2 / C
    nngp_ = s * _conv_diag(jnp.einsum("aijc,bijc->ijab", x1, x1 if sym else x2), arch, 0) + b2
    if not sym:
        q1 = s * _conv_diag(jnp.einsum("aijc,aijc->ija", x1, x1), arch, 0) + b2
        q2 = s * _conv_diag(jnp.einsum("aijc,aijc->ija", x2, x2), arch, 0) + b2
    need_ntk = "ntk" in get
    ntk_ = nngp_ if need_ntk else None
    for layer in range(arch.depth):
        if layer:
            new = w2 * _conv_diag(nngp_, arch, 0) + b2
            if need_ntk:
                ntk_ = w2 * _conv_diag(ntk_, arch, 0) + new
            nngp_ = new
            if not sym:
                q1 = w2 * _conv_diag(q1, arch, 0) + b2
                q2 = w2 * _conv_diag(q2, arch, 0) + b2
        if sym:
            # as in `native_kernels`: the variances ARE the diagonal, so c == q exactly there
            q1 = q2 = jnp.diagonal(nngp_, axis1=2, axis2=3)
        nngp_, dot, diag = _dual_core(arch, nngp_, q1[..., :, None], q2[..., None, :], need_ntk)
        q1, q2 = diag(q1), diag(q2)
        if need_ntk:
            ntk_ = ntk_ * dot

    def pixel_mean(S):                 # two reductions of H and W terms (float32 round-off)
        return jnp.mean(jnp.mean(S, axis=1), axis=0)
    nngp_ = w2 * pixel_mean(nngp_) + b2
    res = {"nngp": nngp_}
    if need_ntk:
        res["ntk"] = w2 * pixel_mean(ntk_) + nngp_
    return tuple(res[g] for g in get)


def native_kernels(arch: Arch, get: tuple[str, ...], x1, x2):
    """NNGP/NTK of `stax_network(arch)` for one block, `(N1, N2)` each (x2=None: x2 = x1).

    Recursion (NTK parametrisation, `F = fh·fw`, `C` input channels, `σ_w² = W_std²`, `σ_b² = b_std²`):
    `Σ¹(p,p') = σ_w²/(F C) ⟨patch₁(p), patch₂(p')⟩ + σ_b²`, `Θ¹ = Σ¹`; per block after the first,
    `Σˡ⁺¹ = σ_w² conv(E[φφ]) + σ_b²`, `Θˡ⁺¹ = σ_w² conv(E[φ'φ'] ⊙ Θˡ) + Σˡ⁺¹` with
    `conv(S)(p,p') = (1/F) Σ_δ S(p+δ, p'+δ)`; then global average pooling (mean over p, p') and the
    Dense readout `Σ = σ_w² Σ̄ + σ_b²`, `Θ = σ_w² Θ̄ + Σ`. An MLP is the 1×1 case (`C = d`).
    Sources: Lee et al. 2018 (NNGP of an MLP), Jacot et al. 2018 (NTK recursion), Novak et al. 2019
    (CNN-GP: per-pixel-pair covariances, conv and pooling), Arora et al. 2019 (CNTK with GAP).
    """
    if arch.kind == "cnn" and arch.readout == "flatten":
        return _native_flatten(arch, get, x1, x2)
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
