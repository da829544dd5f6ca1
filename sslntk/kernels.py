"""Architectures and their infinite-width kernels over augmented views.

The ONLY module of sslntk that imports `neural_tangents` (DESIGN.md). One `Arch` spec builds the
neural-tangents `stax` network (kernel and finite reference) here and the matching Flax NNX module in
`sslntk.finite`.

Kernel convention: `(n1, n2)` kernels of ONE output (neural-tangents `trace_axes=(-1,)`); the full
kernel of a k-output network is `K ⊗ I_k`. NTK parametrisation throughout.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

# neural-tangents 0.6.5 imports `neural_tangents.experimental` (TF→JAX conversion via tensorflow and
# tf2jax) at package import; sslntk uses none of it and drops both dependencies (pyproject override),
# so an empty stand-in module is registered first to keep tensorflow out of the process.
sys.modules.setdefault("neural_tangents.experimental", types.ModuleType("neural_tangents.experimental"))

import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

from sslntk import _validate as V  # noqa: E402

ACTIVATIONS = ("relu", "erf", "gelu", "leaky_relu", "abs", "abs_relu")
KINDS = ("mlp", "cnn")


@dataclass(frozen=True)
class Arch:
    """One architecture spec, shared by the kernels and the finite networks (hashable, static).

    kind="mlp": `depth` hidden blocks (Dense → activation) then a Dense readout; input `(N, d)` or
        images `(N, H, W, C)` (flattened first).
    kind="cnn": `depth` blocks (Conv `filter_shape`, `padding` → activation), global average pooling,
        Dense readout; input images `(N, H, W, C)` (NHWC).
    Every layer uses the same `W_std`/`b_std` in NTK parametrisation: `W ~ N(0, 1)` stored, the forward
    pass multiplies by `W_std / sqrt(fan_in)` and the bias by `b_std`, exactly as `stax.Dense/Conv`.
    `leaky_slope` is the negative-side slope of `leaky_relu`; `abs_relu` is `stax.ABRelu(-a, 1)` with
    `a = leaky_slope` (a=1 gives |x|)... see `activation_layer`.
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
        if self.kind == "cnn":
            if (len(self.filter_shape) != 2
                    or any(not isinstance(s, int) or s < 1 for s in self.filter_shape)):
                raise ValueError(f"filter_shape: expected two positive ints, got {self.filter_shape!r}")
            V.choice("padding", self.padding, ("SAME", "VALID", "CIRCULAR"))


def mlp(depth: int = 1, activation: str = "relu", W_std: float = 1.0, b_std: float = 0.0,
        **kw) -> Arch:
    """MLP spec: `depth` hidden (Dense → activation) blocks and a Dense readout (NTK param.)."""
    return Arch(kind="mlp", depth=depth, activation=activation, W_std=W_std, b_std=b_std, **kw)


def cnn(depth: int = 1, activation: str = "relu", W_std: float = 1.0, b_std: float = 0.0,
        filter_shape: tuple[int, int] = (3, 3), padding: str = "SAME", **kw) -> Arch:
    """CNN spec for NHWC images: (Conv → activation) × depth, global average pool, Dense readout."""
    return Arch(kind="cnn", depth=depth, activation=activation, W_std=W_std, b_std=b_std,
                filter_shape=tuple(filter_shape), padding=padding, **kw)


def activation_layer(arch: Arch):
    """The stax layer for `arch.activation`."""
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
    V.positive_int("width", width)
    V.positive_int("out_dim", out_dim)
    layers = []
    if arch.kind == "mlp":
        layers.append(stax.Flatten())
        for _ in range(arch.depth):
            layers += [stax.Dense(width, W_std=arch.W_std, b_std=arch.b_std), activation_layer(arch)]
    else:
        for _ in range(arch.depth):
            layers += [stax.Conv(width, arch.filter_shape, padding=arch.padding,
                                 W_std=arch.W_std, b_std=arch.b_std), activation_layer(arch)]
        layers.append(stax.GlobalAvgPool())
    layers.append(stax.Dense(out_dim, W_std=arch.W_std, b_std=arch.b_std))
    return stax.serial(*layers)
