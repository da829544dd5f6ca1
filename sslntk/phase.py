"""Collapse phase diagrams: simulate the linear SSL models over a grid and compare with theory.

Sweeps (x, γ) where x is the augmentation strength σ² (B = σ² I) or the minority-class fraction p of a
two-class mixture, and γ the weight decay; every cell trains the one-layer (M1) or encoder+projector
(M2) linear model of Ziyin et al. 2023 by full-batch GD on its population
landscape (`sslntk.theory.landscape`), **all cells in one jitted, doubly-vmapped call** (no Python loop
over cells). The measured rank is compared with the predicted one (Ziyin et al. 2023:
thresholds γ_c / γ_s, imbalance).

Rank measurement (documented threshold, Ziyin et al. 2023): the number of eigenvalues of the
augmented-view embedding covariance (`W Σ Wᵀ` for M1, `V Σ Vᵀ` with `V = UW` for M2) above
`rtol · τ` — τ bounds every learned variance (Ziyin et al. 2023), so a completely collapsed
representation counts as rank 0.

Initialisation (Ziyin et al. 2023 hysteresis): M1 starts small (scale 1e-2; it has no spurious minima).
M2 starts "large" — every singular value of V at `1.05 · max_i sqrt(a_i τ/3)/(a_i + b_i)`, above
every barrier of the per-direction landscape — so it lands on the metastable branch: its rank is
`#{γ < γ_s,i}`, which equals the global-minimum rank `#{γ < γ_c,i}` outside the hysteresis band
`γ_c,i <= γ < γ_s,i`. (A small init with γ > 0 stays collapsed, Ziyin et al. 2023.)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk.theory import checks as C
from sslntk.theory import landscape as L

__all__ = ["PhaseDiagram", "phase_diagram", "MODELS", "X_AXES"]

MODELS = ("one_layer", "two_layer")
X_AXES = ("augmentation", "imbalance")


@dataclass(frozen=True)
class PhaseDiagram:
    """Result of `phase_diagram` (numpy arrays; rows = x values, columns = γ values).

    x: `(G1,)` augmentation variance σ² (`x_axis="augmentation"`) or minority fraction p
        (`"imbalance"`). gamma: `(G2,)` weight decays.
    measured_rank: `(G1, G2)` rank of the simulated representation (see module docstring); -1 in a
        cell whose GD diverged (non-finite variances or loss; `phase_diagram` then warns).
    predicted_rank: `(G1, G2)` rank of the predicted global minimum.
    metastable_rank: `(G1, G2)` predicted rank of the state the chosen initialisation reaches
        (= predicted_rank for M1; `#{γ < γ_s,i}` for M2 from the large init).
    hysteresis: `(G1, G2)` bool, cells in the hysteresis band (metastable_rank != predicted_rank).
    gamma_c, gamma_s: `(G1, d)` predicted per-direction thresholds (M1: both `a_i/τ`).
    variances: `(G1, G2, k)` measured embedding-covariance eigenvalues, descending.
    grad_norm, loss: `(G1, G2)` at the end of GD.
    maps: `(G1, G2, d_out, d)` the learned linear map of each cell (M1: W; M2: V = UW).
    a: `(G1, d)` data-covariance eigenvalues per row. model, x_axis, tau, lr, steps, rtol: settings.
    """

    x: np.ndarray
    gamma: np.ndarray
    measured_rank: np.ndarray
    predicted_rank: np.ndarray
    metastable_rank: np.ndarray
    hysteresis: np.ndarray
    gamma_c: np.ndarray
    gamma_s: np.ndarray
    variances: np.ndarray
    grad_norm: np.ndarray
    loss: np.ndarray
    maps: np.ndarray
    a: np.ndarray
    model: str
    x_axis: str
    tau: float
    lr: float
    steps: int
    rtol: float

    def boundary_agreement(self) -> np.ndarray:
        """Per row (fixed x), the distance in grid cells between the measured and the predicted
        boundary along γ, outside the hysteresis band, `(G1,)` floats.

        Predicted boundaries sit between neighbouring cells whose predicted rank differs. Every cell
        outside the band whose measured rank differs from the prediction is a displacement of a
        boundary; its distance is `|j − b| + 1/2` cells to the nearest predicted boundary b (so a
        boundary measured one cell off gives 1). The row's value is the largest such distance, 0
        when all cells agree, and `inf` when a mismatch occurs in a row without predicted boundary.
        """
        out = np.zeros(self.x.shape[0])
        for i in range(self.x.shape[0]):
            pred = self.predicted_rank[i]
            bad = np.flatnonzero((self.measured_rank[i] != pred) & ~self.hysteresis[i])
            if bad.size == 0:
                continue
            bounds = np.flatnonzero(np.diff(pred) != 0) + 0.5
            if bounds.size == 0:
                out[i] = np.inf
                continue
            out[i] = max(float(np.min(np.abs(j - bounds))) + 0.5 for j in bad)
        return out

    def agreement(self) -> float:
        """Fraction of cells outside the hysteresis band where measured == predicted rank."""
        ok = ~self.hysteresis
        return float(np.mean(self.measured_rank[ok] == self.predicted_rank[ok])) if ok.any() else 1.0

    def metastable_agreement(self) -> float:
        """Fraction of ALL cells where measured == metastable_rank (the prediction for the init)."""
        return float(np.mean(self.measured_rank == self.metastable_rank))

    def summary(self) -> dict:
        ba = self.boundary_agreement()
        return {"model": self.model, "x_axis": self.x_axis, "grid": list(self.measured_rank.shape),
                "max_boundary_distance_cells": float(np.max(ba)) if ba.size else 0.0,
                "agreement_outside_band": self.agreement(),
                "metastable_agreement": self.metastable_agreement(),
                "hysteresis_cells": int(self.hysteresis.sum()),
                "max_grad_norm": float(np.max(self.grad_norm))}


@partial(jax.jit, static_argnames=("model",))
def _grid(As, Ss, gammas, tau, init, lr, steps, warmup, *, model):
    """All cells at once: vmap over rows (A, Σ) and columns (γ); returns eigenvalues, loss, |grad|."""

    def cell(A, S, gamma):
        if model == "one_layer":
            res = L.gd_m1_steps(init, A, S, tau, gamma, lr, steps)
            Vm = res.params
        else:
            res = L.gd_m2_steps(init, A, S, tau, gamma, lr, steps, warmup)
            Vm = res.params[0] @ res.params[1]
        ev = jnp.linalg.eigvalsh(Vm @ S @ Vm.T)[::-1]
        return ev, res.loss, res.grad_norm, Vm

    return jax.vmap(jax.vmap(cell, (None, None, 0)), (0, 0, None))(As, Ss, gammas)


def _covariances(x_axis, xs, *, spectrum, b, delta2, sigma_w2, dim):
    """Per-row population covariances (A, B), exactly those of `sslntk.data`'s models (tested):
    spiked `A = diag(spectrum)`, `B = σ² I`; two-class mixture with fractions (p, 1 − p), mean gap
    δ along e_1 and within-class variance σ_w²: `A = σ_w² I + p(1 − p) δ² e_1e_1ᵀ`, `B = b I`."""
    if x_axis == "augmentation":
        As = np.broadcast_to(np.diag(spectrum), (xs.size, spectrum.size, spectrum.size))
        Bs = xs[:, None, None] * np.eye(spectrum.size)
    else:
        As = np.broadcast_to(sigma_w2 * np.eye(dim), (xs.size, dim, dim)).copy()
        As[:, 0, 0] += xs * (1 - xs) * delta2
        Bs = np.broadcast_to(b * np.eye(dim), As.shape)
    return np.array(As, dtype=np.float64), np.array(Bs, dtype=np.float64)


def phase_diagram(model: str = "one_layer", x_axis: str = "augmentation", *, x, gamma, key,
                  spectrum=(4.0, 2.0, 1.0, 0.5), tau: float = 1.0, b: float = 1.0,
                  delta2: float = 4.0, sigma_w2: float = 0.1, dim: int = 2,
                  d_out: int | None = None, h: int | None = None, init_scale: float | None = None,
                  lr: float | None = None, steps: int | None = None, rtol: float = 1e-6,
                  dtype=None, progress: bool = False) -> PhaseDiagram:
    """Simulate and predict a collapse phase diagram over `x × gamma`.

    model: `"one_layer"` (M1) or `"two_layer"` (M2, square `h = d_out = d` by default).
    x_axis: `"augmentation"` — x = σ², `A = diag(spectrum)`, `B = σ² I` (the covariances of
        `data.load("spiked", spikes=spectrum, sigma=σ)`); `"imbalance"` — x = minority fraction
        p ∈ (0, 1), A the population covariance of a two-class mixture in `dim` dimensions (as
        `data.load("gaussian_mixture", weights=[p, 1 − p])`; squared mean gap `delta2`,
        within-class variance `sigma_w2`), `B = b I` (b matters for M2 only).
    gamma: weight decays (>= 0). tau: temperature of the canonical landscape.
    key: a `jax.random` key for the random orthonormal initial frames (same key, same result).
    lr, steps: GD settings; defaults: M1 `lr = τ/(4 a_1)` (curvature at the minimum <= 4a_1/τ), M2
        `lr = 1/(2·curvature bound)` at the γ = 0 minimum after a warm-up of 2τ time units at the
        rate the stiffer large init allows (`_m2_curvature`); `steps` = 200 time units / lr.
    rtol: rank threshold relative to τ (module docstring).
    progress: show the grid phase (one compiled call over all cells) with the shared progress
      display (`sslntk._progress`: a bar on a terminal, one line in logs).
    dtype: simulation dtype (default: float64 when x64 is enabled, else float32).

    Predictions: M1 rank `min(d_out, #{a_i > γτ})` (Ziyin et al. 2023, independent of σ²); M2 global rank
    `#{γ < γ_c,i}` and metastable rank `#{γ < γ_s,i}` capped by `min(d_out, h)` (Ziyin et al. 2023);
    imbalance through `a_e = σ_w² + p(1−p)δ²` (Ziyin et al. 2023).
    """
    V.choice("model", model, MODELS)
    V.choice("x_axis", x_axis, X_AXES)
    xs = np.asarray(C.nonneg("x", x), dtype=np.float64)
    gs = np.asarray(C.nonneg("gamma", gamma), dtype=np.float64)
    for nm, arr in (("x", xs), ("gamma", gs)):
        if arr.ndim != 1 or arr.size < 1:
            raise ValueError(f"{nm}: expected a non-empty 1-D grid, got shape {arr.shape}")
    if x_axis == "imbalance" and (np.any(xs <= 0) or np.any(xs >= 1)):
        raise ValueError(f"x: expected minority fractions p in (0, 1) for x_axis='imbalance', got "
                         f"[{xs.min()}, {xs.max()}]")
    tau = float(C.positive("tau", tau))
    rtol = float(C.positive("rtol", rtol))
    b = float(C.nonneg("b", b))
    dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype: expected a floating dtype, got {dtype}")
    if x_axis == "augmentation":
        spectrum = np.asarray(C.positive("spectrum", spectrum), dtype=np.float64)
        if spectrum.ndim != 1:
            raise ValueError(f"spectrum: expected a 1-D list of variances, got shape {spectrum.shape}")
        d = spectrum.size
    else:
        C.positive("delta2", delta2)
        C.positive("sigma_w2", sigma_w2)
        d = V.positive_int("dim", dim)
    d_out = d if d_out is None else V.positive_int("d_out", d_out)
    h = d if h is None else V.positive_int("h", h)

    As, Bs = _covariances(x_axis, xs, spectrum=spectrum if x_axis == "augmentation" else None,
                          b=b, delta2=float(delta2), sigma_w2=float(sigma_w2), dim=d)
    # eigenvalues in a common basis: A and B commute in both sweeps (B ∝ I, A diagonal)
    a = np.linalg.eigvalsh(As)[:, ::-1]
    bvals = np.array([np.diag(Q.T @ B @ Q) for Q, B in
                      zip(np.linalg.eigh(As)[1][:, :, ::-1], Bs, strict=True)])

    if model == "one_layer":
        gc = gsp = np.broadcast_to(a / tau, a.shape).copy()
        pred = np.asarray(L.m1_rank(a[:, None, :], tau, gs[None, :], d_out))
        meta = pred.copy()
    else:
        gc, gsp = (np.asarray(t) for t in L.m2_thresholds(a, bvals, tau))
        sol = L.m2_solution(a[:, None, :], bvals[:, None, :], tau, gs[None, :], d_out, h)
        pred, meta = np.asarray(sol.rank), np.asarray(sol.metastable_rank)

    rng = _rng(key)
    if model == "one_layer":
        scale = 1e-2 if init_scale is None else float(C.positive("init_scale", init_scale))
        init = scale * _frame(rng, d_out, d, dtype)
        # curvature at the minimum is 4(a_i − γτ)/τ <= 4 a_1/τ: lr·curvature <= 1
        lr = 0.25 * tau / float(np.max(a)) if lr is None else lr
    else:
        s_infl = np.sqrt(a * tau / 3) / (a + bvals)
        s0 = 1.05 * float(np.max(s_infl)) if init_scale is None else float(
            C.positive("init_scale", init_scale))
        c = np.sqrt(s0)
        init = (c * _frame(rng, d_out, h, dtype), c * _frame(rng, h, d, dtype))
        lr = 0.5 / _m2_curvature(a, bvals, tau, 0.0, np.sqrt(a * tau) / (a + bvals)) \
            if lr is None else lr
        warm_lr = min(float(lr), 0.5 / _m2_curvature(a, bvals, tau, float(np.max(gs)), s0))
        warmup = (int(np.ceil(2.0 * tau / warm_lr)), warm_lr)
    lr = float(C.positive("lr", lr))
    steps = int(np.ceil(200.0 / lr)) if steps is None else V.positive_int("steps", steps)
    if model == "one_layer":
        warmup = (0, lr)

    from sslntk._progress import Progress

    with Progress(xs.size * gs.size, f"phase grid ({model}, {steps} GD steps per cell)",
                  enabled=progress, unit="cell") as bar:
        ev, loss, gn, maps = _grid(jnp.asarray(As, dtype), jnp.asarray(As + Bs, dtype),
                                   jnp.asarray(gs, dtype), jnp.asarray(tau, dtype), init,
                                   jnp.asarray(lr, dtype), steps,
                                   (warmup[0], jnp.asarray(warmup[1], dtype)), model=model)
        ev = np.asarray(ev)
        bar.update(xs.size * gs.size)
    measured = np.sum(ev > rtol * tau, axis=-1)
    # a diverged cell (NaN/inf: lr too large) has no measured rank; before issue 15's audit NaN
    # variances counted as rank 0 and silently "agreed" with collapsed predictions
    bad = ~(np.all(np.isfinite(ev), axis=-1) & np.isfinite(np.asarray(loss)))
    if bad.any():
        measured = np.where(bad, -1, measured)
        cells = [(float(xs[i]), float(gs[j])) for i, j in zip(*np.nonzero(bad), strict=True)][:5]
        warnings.warn(f"phase_diagram: GD diverged in {int(bad.sum())} of {bad.size} cells (lr = "
                      f"{lr:.3g}; first (x, γ): {cells}); their measured_rank is -1 (counted as "
                      f"disagreement). Reduce lr.", RuntimeWarning, stacklevel=2)
    return PhaseDiagram(x=xs, gamma=gs, measured_rank=measured, predicted_rank=pred,
                        metastable_rank=meta, hysteresis=pred != meta, gamma_c=gc, gamma_s=gsp,
                        variances=ev, grad_norm=np.asarray(gn), loss=np.asarray(loss),
                        maps=np.asarray(maps), a=a,
                        model=model, x_axis=x_axis, tau=tau, lr=lr, steps=steps, rtol=rtol)


def _m2_curvature(a, b, tau, gamma, s):
    """Curvature bound of M2 GD in (U, W) at a balanced point with singular values s:
    `2 s |g''(s)| + |g'(s)|`, maximised over rows and directions."""
    ab2 = (a + b) ** 2
    d1 = -2 * a * s / tau + 2 * ab2 * s**3 / tau**2 + 2 * gamma
    d2 = -2 * a / tau + 6 * ab2 * s**2 / tau**2
    return float(max(np.max(2 * s * np.abs(d2) + np.abs(d1)), 1e-12))


def _rng(key) -> np.random.Generator:
    """A NumPy generator seeded by the bits of a `jax.random` key (same key, same frames), which
    avoids compiling threefry for a handful of small random matrices."""
    try:
        bits = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) \
            else key
        bits = np.asarray(bits)
    except (AttributeError, TypeError) as e:
        raise TypeError(f"key: expected a jax.random key, got {type(key).__name__}") from e
    if bits.dtype != np.uint32 or bits.ndim != 1:
        raise TypeError(f"key: expected a jax.random key, got array of dtype {bits.dtype} and "
                        f"shape {bits.shape}")
    return np.random.default_rng(bits.tolist())


def _frame(rng, rows, cols, dtype):
    """`(rows, cols)` with orthonormal rows (rows <= cols) or columns (rows > cols)."""
    q, _ = np.linalg.qr(rng.normal(size=(max(rows, cols), min(rows, cols))))
    return jnp.asarray(q.T if rows <= cols else q, dtype)
