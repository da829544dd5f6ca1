"""Architecture specs: `Arch` (with `mlp`, `cnn`) and its neural-tangents `stax` triple.

One `Arch` spec describes an architecture once; it builds the neural-tangents `stax` network here
(`stax_network`: `(init_fn, apply_fn, kernel_fn)`, the reference) and the matching Flax NNX module in
`sslntk.finite`, and it is the static argument of the native kernels (`_recursion`, `_assembly`).
neural-tangents is reached only through `_nt_compat.load()`, on first use of `stax_network` /
`activation_layer`, so building and using specs never needs it. The nonlinearity is an
`Activation` object (`sslntk.kernels._activation`), the one place that defines its function and its
dual kernel rule; a name in `ACTIVATIONS` is shorthand for one.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass

import numpy as np

from sslntk import _validate as V
from sslntk.kernels import _nt_compat
from sslntk.kernels._activation import ACTIVATIONS, Activation, as_activation

__all__ = ["ACTIVATIONS", "KINDS", "PADDINGS", "READOUTS", "Arch", "mlp", "cnn", "activation_layer",
           "stax_network"]

KINDS = ("mlp", "cnn")
PADDINGS = ("SAME", "VALID", "CIRCULAR")
READOUTS = ("gap", "flatten")


@dataclass(frozen=True)
class Arch:
    """One architecture spec, shared by the kernels and the finite networks (hashable, static).

    kind="mlp": `depth` hidden blocks (Dense → activation) then a Dense readout; input `(N, d)` or
        images `(N, H, W, C)` (flattened first).
    kind="cnn": `depth` blocks (Conv `filter_shape`, `padding`, stride 1 → activation), then the
        `readout`: "gap" (global average pooling, then Dense) or "flatten" (`stax.Flatten`, then
        Dense on all pixels × channels); input images `(N, H, W, C)` (NHWC). An MLP has no readout
        choice (it is a Dense on its flattened input) and keeps the default "gap".
    Every layer uses the same `W_std`/`b_std` in NTK parametrisation: `W ~ N(0, 1)` stored, the
    forward pass multiplies by `W_std / sqrt(fan_in)` and the bias by `b_std`, exactly as
    `stax.Dense/Conv`.

    `activation` is an `Activation` object (`kernels.Relu()`, `kernels.Erf()`,
    `kernels.LeakyRelu(0.2)`, ...), or one of the names `ACTIVATIONS` as shorthand, resolved to the
    object on construction (`arch.activation` is always the object). `leaky_slope` (init-only,
    default 0.1) completes the names "leaky_relu" (`LeakyRelu(leaky_slope)`) and "abs_relu"
    (`AbsRelu(-leaky_slope, 1)`, i.e. `φ(x) = max(x, 0) − leaky_slope·min(x, 0)`).
    """

    kind: str = "mlp"
    depth: int = 1
    activation: Activation | str = "relu"
    W_std: float = 1.0
    b_std: float = 0.0
    filter_shape: tuple[int, int] = (3, 3)
    padding: str = "SAME"
    leaky_slope: InitVar[float | None] = None
    readout: str = "gap"

    def __post_init__(self, leaky_slope):
        V.choice("kind", self.kind, KINDS)
        V.positive_int("depth", self.depth, minimum=1)
        object.__setattr__(self, "activation", as_activation(self.activation,
                                                             leaky_slope=leaky_slope))
        V.positive_float("W_std", self.W_std)
        V.positive_float("b_std", self.b_std, allow_zero=True)
        if self.kind == "cnn":
            fs = self.filter_shape
            if (not isinstance(fs, tuple) or len(fs) != 2
                    or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
                           for s in fs)):
                raise ValueError(f"filter_shape: expected a tuple of two positive ints, got {fs!r}")
            V.choice("padding", self.padding, PADDINGS)
            V.choice("readout", self.readout, READOUTS)
        elif self.readout != "gap":
            raise ValueError(f"readout: only a cnn has a readout choice (an mlp is Dense layers on "
                             f"its flattened input), got readout={self.readout!r} for kind='mlp'")


def mlp(depth: int = 1, activation: Activation | str = "relu", W_std: float = 1.0, b_std: float = 0.0,
        **kw) -> Arch:
    """MLP spec: `depth` hidden (Dense → activation) blocks and a Dense readout (NTK param.).

    `activation`: an `Activation` object or its name (`ACTIVATIONS`); `**kw` the other `Arch`
    fields (`leaky_slope`). Example: `kernels.mlp(2, kernels.Erf(), b_std=0.1)`."""
    return Arch(kind="mlp", depth=depth, activation=activation, W_std=W_std, b_std=b_std, **kw)


def cnn(depth: int = 1, activation: Activation | str = "relu", W_std: float = 1.0, b_std: float = 0.0,
        filter_shape: tuple[int, int] = (3, 3), padding: str = "SAME", readout: str = "gap",
        **kw) -> Arch:
    """CNN spec for NHWC images: (Conv → activation) × depth, then the readout: `readout="gap"`
    (global average pooling, Dense; the default) or `"flatten"` (Flatten, Dense).

    Kernel cost per pair of images (H×W pixels, F = fh·fw filter taps, L = depth): "gap" needs the
    full pixel-pixel covariance, O(L·F·(H·W)²); "flatten" only its pixel diagonal, O(L·F·H·W)
    (Novak et al. 2019; see `sslntk.kernels._recursion`)."""
    try:
        filter_shape = tuple(filter_shape)
    except TypeError as e:
        raise ValueError(f"filter_shape: expected a tuple of two positive ints, got "
                         f"{filter_shape!r}") from e
    return Arch(kind="cnn", depth=depth, activation=activation, W_std=W_std, b_std=b_std,
                filter_shape=filter_shape, padding=padding, readout=readout, **kw)


# `leaky_slope` is init-only: drop the class attribute the dataclass leaves behind, so that
# `arch.leaky_slope` raises instead of reading None (the slope lives in `arch.activation`).
del Arch.leaky_slope


def activation_layer(arch: Arch):
    """The neural-tangents stax layer of `arch.activation` (`arch.activation.stax_layer()`)."""
    return check_arch(arch).activation.stax_layer()


def stax_network(arch: Arch, width: int = 512, out_dim: int = 1):
    """neural-tangents `(init_fn, apply_fn, kernel_fn)` for `arch` at hidden width `width`."""
    check_arch(arch)
    V.positive_int("width", width)
    V.positive_int("out_dim", out_dim)
    stax = _nt_compat.load().stax
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
        layers.append(stax.GlobalAvgPool() if arch.readout == "gap" else stax.Flatten())
    layers.append(stax.Dense(out_dim, W_std=arch.W_std, b_std=arch.b_std))
    return stax.serial(*layers)


def check_arch(arch) -> Arch:
    """`arch` if it is an `Arch`, else a TypeError naming the argument (the kernels' entry check)."""
    if not isinstance(arch, Arch):
        raise TypeError(f"arch: expected a sslntk.kernels.Arch (kernels.mlp(...) / kernels.cnn(...)),"
                        f" got {type(arch).__name__}")
    return arch
