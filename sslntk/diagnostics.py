"""Collapse diagnostics of a run over time, and the warning when a run collapses.

`collapse(fs)` takes the embeddings of a run, `(..., T, 2n, k)` in stacked view order
(`Trajectory.f`, `TrainResult.f`), and returns a dict of `(..., T)` arrays built from
`sslntk.metrics` (one definition of every metric):

| key | what | collapsed | healthy |
| --- | --- | --- | --- |
| `rankme` | RankMe of the raw embeddings (Garrido et al. 2023; ε = 1e-7, no centring) | ≈ 1 | ≈ k |
| `effective_rank` | effective rank of the CENTRED embeddings (Roy & Vetterli), mean-blind | ≈ 1 | ≈ k |
| `center_norm` | `‖ŝ‖`, centre vector of the L2-normalised views (Jha et al. §3.1) | → 1 | ≈ 1/sqrt(n) |
| `center_ratio` | `R = ‖ŝ‖ / E_n‖μ̂_n‖` ∈ [0, 1] (Jha §1.3.5) | 1 | small |
| `alignment_u` | `E_n‖μ_n‖²_U = mean_n z(a_n)·z(b_n)` (invariance; Jha §3.1) | 1 | → 1 |
| `embedding_rms` | RMS of the embeddings (0: collapsed to zero, e.g. every ReLU died) | 0 | > 0 |

Frames with NaN/inf embeddings (a failed run) give NaN. All-zero embeddings (an α = 0 start) give
NaN ranks (`metrics` convention: undefined, not 0). Sources: Jha et al. 2024 (§3.1 estimators, §3.2 RankMe);
Garrido et al. 2023 (RankMe).

`check_collapse(diag, threshold=...)` warns (`CollapseWarning`, a RuntimeWarning) when the
embeddings at the last finite time are all zero, or their RankMe is below `threshold` (default
`COLLAPSE_RANK = 1.5`: the embeddings span about one direction). Only the end of a run is
checked: from a small initialisation a healthy stepwise run passes through low-rank plateaus (one
mode learned at a time) on its way.
Runs with k = 1 cannot collapse dimensionally and are not checked.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk import metrics

COLLAPSE_RANK = 1.5
KEYS = ("rankme", "effective_rank", "center_norm", "center_ratio", "alignment_u",
        "embedding_rms")


class CollapseWarning(RuntimeWarning):
    """A run ended with (nearly) rank-one embeddings."""


def collapse(fs, *, eps: float = 1e-7) -> dict[str, jnp.ndarray]:
    """Collapse diagnostics over time, `fs: (..., T, 2n, k)` (or one frame `(2n, k)`) → dict of
    `(..., T)` arrays (see the module docstring). `eps`: RankMe's ε."""
    f = V.as_float_array("fs", fs, finite=False)
    if f.ndim < 2 or f.shape[-2] % 2 or f.shape[-2] < 4 or f.shape[-1] < 1:
        raise ValueError(f"fs: expected embeddings (..., T, 2n, k) in stacked view order with "
                         f"2n >= 4 even and k >= 1, got shape {tuple(f.shape)}")
    V.positive_float("eps", eps, allow_zero=True)
    good = jnp.all(jnp.isfinite(f), axis=(-2, -1))
    f = jnp.where(good[..., None, None], f, 0.0)
    st = metrics.stability(metrics.group_views(f))
    out = {"rankme": metrics.rankme(f, eps=eps),
           "effective_rank": metrics.effective_rank(f, center=True),
           "center_norm": st.center_norm,
           "center_ratio": st.ratio,
           "alignment_u": st.mean_norm_sq_u,
           "embedding_rms": jnp.sqrt(jnp.mean(f**2, axis=(-2, -1)))}
    return {k: jnp.where(good, v, jnp.nan) for k, v in out.items()}


def final_rank(diag: dict, key: str = "rankme") -> np.ndarray:
    """`diag[key]` (RankMe) at the last time with a finite value, `(...,)` (NaN when none)."""
    r = np.asarray(diag[key], dtype=np.float64)
    fin = np.isfinite(r)
    idx = np.where(fin.any(-1), r.shape[-1] - 1 - np.argmax(fin[..., ::-1], axis=-1), 0)
    last = np.take_along_axis(r, idx[..., None], axis=-1)[..., 0]
    return np.where(fin.any(-1), last, np.nan)


def check_collapse(diag: dict, *, threshold: float = COLLAPSE_RANK, k: int | None = None,
                   where: str = "run", warn: bool = True, mask=None) -> np.ndarray:
    """True where the run collapsed: final RankMe < `threshold` (`(...,)` bool). Warns with a
    `CollapseWarning` naming `where` and the numbers unless `warn=False`. `k`: embedding dimension
    (k = 1 is never flagged). `mask (...,)`: only these runs are checked (e.g. the successful ones;
    a failed run has its own status warning). `threshold=None` disables the check."""
    if threshold is None:
        return np.zeros(np.shape(diag["rankme"])[:-1], bool)
    threshold = float(V.positive_float("threshold", threshold))
    r = final_rank(diag)
    zero = final_rank(diag, "embedding_rms") == 0 if "embedding_rms" in diag else np.isnan(r) & False
    bad = (np.isfinite(r) & (r < threshold)) | zero
    if mask is not None:
        bad = bad & np.asarray(mask, bool)
    if k is not None and k <= 1:
        bad = bad & zero
    if warn and np.any(bad & zero):
        warnings.warn(f"{where}: the embeddings collapsed to zero in {int(np.sum(bad & zero))} of "
                      f"{bad.size} run(s) (f = 0 at the end: e.g. every ReLU died at a large "
                      f"learning rate)", CollapseWarning, stacklevel=3)
    elif warn and np.any(bad):
        c = np.asarray(diag["center_ratio"], dtype=np.float64)
        c = np.take_along_axis(c, np.full(c.shape[:-1] + (1,), c.shape[-1] - 1), -1)[..., 0]
        warnings.warn(
            f"{where}: the embeddings collapsed: final RankMe {float(np.nanmin(r[bad])):.3g} < "
            f"threshold {threshold:g}{f' (k = {k})' if k else ''} in {int(np.sum(bad))} of "
            f"{bad.size} run(s); centre-vector ratio ‖s‖/E‖μ‖ = {float(np.nanmax(c[bad])):.3g} "
            f"(1 = complete collapse). Set collapse_threshold=... to change the threshold",
            CollapseWarning, stacklevel=3)
    return bad


__all__ = ["collapse", "check_collapse", "final_rank", "CollapseWarning", "COLLAPSE_RANK", "KEYS"]
