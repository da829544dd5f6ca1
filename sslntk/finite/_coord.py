"""μP coordinate check (Yang & Hu, Tensor Programs V §"coordinate check"): how the per-coordinate
size of the change of each hidden layer's activations after a few optimiser steps scales with width.

For each width w and seed s: `network(arch, w, k, param=..., key=fold_in(key(s), w))` is trained by
`train` for `steps` steps; for every hidden layer l (`Network.hidden`)
`Δ_l(w) = RMS over examples and units of (h_l(θ_steps; x) − h_l(θ_0; x))`. Fitting `Δ_l ∝ w^b_l`
(`fit_exponent`) gives b_l ≈ 0 under μP (feature learning at every width) and b_l ≈ −1/2 under
the NTK parametrisation (lazy: features move by O(1/√width)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np

from sslntk import _validate as V
from sslntk.finite._network import network
from sslntk.finite._sweep import ExponentFit, fit_exponent
from sslntk.finite._train import train


@dataclass(frozen=True)
class CoordCheck:
    """widths (W,); sizes (W, S, L): per-coordinate RMS change of hidden layer l after `steps`
    steps; init_sizes (W, S, L): the RMS of h_l at init; fits: one `ExponentFit` per layer;
    slopes (L,): their slopes."""

    widths: np.ndarray
    sizes: np.ndarray
    init_sizes: np.ndarray
    fits: tuple[ExponentFit, ...]

    @property
    def slopes(self) -> np.ndarray:
        return np.array([f.slope for f in self.fits])


def coord_check(arch, views, loss, widths: Sequence[int], *, param: str, lr: float, steps: int = 3,
                seeds: int = 2, out_dim: int = 4, optimizer: str = "gd", base_width: int = 64,
                optimizer_options: dict | None = None, alpha: float = 1.0) -> CoordCheck:
    """Coordinate check of `arch` under `param` on the stacked `views` `(2n, *in_shape)` (or
    `Views`): the RMS change of every hidden layer's activations after `steps` optimiser steps,
    per width, and its fitted width exponent (Yang & Hu 2021, Tensor Programs IV/V: Θ(1) in μP).

    lr: the (base) learning rate, the same at every width (μP rescales it per group itself).
    steps: optimiser steps before measuring. seeds: networks per width. alpha: the small-init
    scale of the networks (`f = g_θ − (1 − α)·g_θ₀`; α = 0 starts every width from f = 0, which
    removes the width dependence of the initial function from the first gradients).
    Returns `CoordCheck`.
    """
    widths = [V.positive_int("widths[i]", w) for w in widths]
    if len(widths) < 2 or any(b <= a for a, b in zip(widths, widths[1:], strict=False)):
        raise ValueError(f"widths: expected at least two increasing widths, got {widths}")
    seeds = V.positive_int("seeds", seeds)
    steps = V.positive_int("steps", steps)
    x = V.stacked_views("views", getattr(views, "stacked", views), ndim=range(2, 6))
    sizes, init = [], []
    for w in widths:
        row, row0 = [], []
        for s in range(seeds):
            kw = dict(base_width=base_width) if param == "mup" else {}
            m = network(arch, w, out_dim, key=jax.random.fold_in(jax.random.key(s), w),
                        in_shape=x.shape[1:], dtype=x.dtype, param=param, alpha=alpha, **kw)
            r = train(m, x, loss, lr=lr, steps=steps, optimizer=optimizer, ts=[0.0, lr * steps],
                      progress=False, check_lr=False, optimizer_options=optimizer_options)
            h0, h1 = m.hidden(x), r.model.hidden(x)
            row.append([float(np.sqrt(np.mean((np.asarray(b) - np.asarray(a)) ** 2)))
                        for a, b in zip(h0, h1, strict=True)])
            row0.append([float(np.sqrt(np.mean(np.asarray(a) ** 2))) for a in h0])
        sizes.append(row)
        init.append(row0)
    sizes, init = np.array(sizes), np.array(init)
    fits = tuple(fit_exponent(widths, sizes[:, :, layer], n_boot=200)
                 for layer in range(sizes.shape[-1]))
    return CoordCheck(np.array(widths), sizes, init, fits)
