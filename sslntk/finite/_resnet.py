"""A small pre-activation ResNet for NHWC images (finite width only).

    h = Conv_stem(x)                                         (role "input", C → width)
    for each of `blocks` blocks:                             (He et al. 2016, "identity mappings")
        u = Conv_2(act(N_2(Conv_1(act(N_1(h))))))             (roles "hidden", width → width)
        h = h + u
    h = GlobalAvgPool(act(N_out(h)))                          (width)
    [projector: `projector` × (Dense width → width, N, act)]  (roles "hidden")
    f = Dense_readout(h)                                      (role "output", width → out_dim)

`N` is the optional normalisation: None, "batch" (BatchNorm with the statistics of the batch being
evaluated, over the batch and spatial axes per channel, no running averages: every call of the
network, in training and when recording embeddings, normalises with its own batch, as SSL training
does; a ResNet with BatchNorm therefore couples the examples of a batch) or "layer" (LayerNorm over
the channel axis of each example and position). Norm layers store `scale` (init 1) and `shift`
(init 0) as the `(W, b)` pair of the layer (role "norm", multiplier 1 in every parametrisation).
Convolutions are stride 1, padding SAME, filter `filter_shape`. Parametrisation of the affine
layers as in `_param` (NTK / standard / μP).

`kernels.ntk` has no infinite-width kernel for this architecture: compare a ResNet with its own
empirical NTK (`finite.kernel_prediction`).
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk import kernels
from sslntk.finite import _param

NORMS = (None, "batch", "layer")
NORM_EPS = 1e-5


@dataclass(frozen=True)
class ResNet:
    """Pre-activation ResNet spec (hashable, static; see the module docstring).

    blocks: residual blocks (>= 1). activation: a `kernels.Activation` object or one of the names
    `kernels.ACTIVATIONS` (resolved to the object, as in `kernels.Arch`). norm: None, "batch" or
    "layer". W_std, b_std: as `kernels.Arch` (NTK multipliers / standard init scales).
    filter_shape: conv filter `(fh, fw)`. leaky_slope (init-only): completes the names
    "leaky_relu" / "abs_relu".
    """

    blocks: int = 2
    activation: kernels.Activation | str = "relu"
    norm: str | None = None
    W_std: float = 2.0**0.5
    b_std: float = 0.0
    filter_shape: tuple[int, int] = (3, 3)
    leaky_slope: InitVar[float | None] = None
    kind: str = "resnet"

    def __post_init__(self, leaky_slope):
        V.positive_int("blocks", self.blocks, minimum=1)
        object.__setattr__(self, "activation",
                           kernels.as_activation(self.activation, leaky_slope=leaky_slope))
        if self.norm not in NORMS:
            raise ValueError(f"norm: expected one of {list(NORMS)}, got {self.norm!r}")
        V.positive_float("W_std", self.W_std)
        V.positive_float("b_std", self.b_std, allow_zero=True)
        fs = self.filter_shape
        if (not isinstance(fs, tuple) or len(fs) != 2
                or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
                       for s in fs)):
            raise ValueError(f"filter_shape: expected a tuple of two positive ints, got {fs!r}")
        if self.kind != "resnet":
            raise ValueError(f"kind: a ResNet spec has kind 'resnet', got {self.kind!r}")

    @property
    def couples_batch(self) -> bool:
        """True with BatchNorm: the output of one example depends on the rest of its batch."""
        return self.norm == "batch"


del ResNet.leaky_slope   # init-only (the slope lives in `spec.activation`)


def resnet(blocks: int = 2, activation: kernels.Activation | str = "relu", norm: str | None = None,
           W_std: float = 2.0**0.5, b_std: float = 0.0, filter_shape=(3, 3), **kw) -> ResNet:
    """Pre-activation ResNet spec for `finite.network` (finite width only; no infinite-width
    kernel: `kernels.ntk` raises for it)."""
    try:
        filter_shape = tuple(filter_shape)
    except TypeError as e:
        raise ValueError(f"filter_shape: expected a tuple of two positive ints, got "
                         f"{filter_shape!r}") from e
    return ResNet(blocks=blocks, activation=activation, norm=norm, W_std=W_std, b_std=b_std,
                  filter_shape=filter_shape, **kw)


def plan(spec: ResNet, width: int, out_dim: int, in_shape, projector: int):
    """`(kind, W_shape, b_shape, role)` per layer in forward order."""
    fh, fw = spec.filter_shape
    c = in_shape[-1]
    norm = spec.norm is not None
    nrm = ("norm", (width,), (width,), "norm")
    out = [("conv", (fh, fw, c, width), (1, 1, 1, width), "input")]
    for _ in range(spec.blocks):
        for _ in range(2):
            if norm:
                out.append(nrm)
            out.append(("conv", (fh, fw, width, width), (1, 1, 1, width), "hidden"))
    if norm:
        out.append(nrm)
    for _ in range(projector):
        out.append(("dense", (width, width), (1, width), "hidden"))
        if norm:
            out.append(nrm)
    out.append(("dense", (width, out_dim), (1, out_dim), "output"))
    return out


def _norm(kind, h, scale, shift):
    axes = tuple(range(h.ndim - 1)) if kind == "batch" else (-1,)
    mu = jnp.mean(h, axis=axes, keepdims=True)
    var = jnp.mean((h - mu) ** 2, axis=axes, keepdims=True)
    return scale * (h - mu) * jax.lax.rsqrt(var + NORM_EPS) + shift


def _conv(x, W):
    return jax.lax.conv_general_dilated(x, W, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def forward(spec: ResNet, theta, x, *, param: str, act, projector: int, taps=None):
    """`g_θ(x)` for `x: (N, H, W, C)` → `(N, out_dim)`; `theta` = the `(W, b)` pairs of `plan`."""
    it = iter(theta)
    norm = spec.norm

    def affine(h, conv):
        W, b = next(it)
        mw, mb = _param.multipliers(param, _param.fan_in("", W.shape), spec.W_std, spec.b_std)
        z = _conv(h, W) if conv else h @ W
        return (z if mw == 1.0 else mw * z) + (b if mb == 1.0 else mb * b)

    def pre(h):
        if norm is not None:
            s, b = next(it)
            h = _norm(norm, h, s, b)
        return act(h)

    h = affine(x, True)
    for _ in range(spec.blocks):
        u = affine(pre(h), True)
        u = affine(pre(u), True)
        h = h + u
        if taps is not None:
            taps.append(h)
    h = jnp.mean(pre(h), axis=(1, 2))
    for _ in range(projector):
        h = affine(h, False)
        h = pre(h)
        if taps is not None:
            taps.append(h)
    return affine(h, False)
