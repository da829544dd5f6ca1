"""Run status codes shared by every solver and trainer (never a silent NaN, DESIGN.md "Errors").

| code | name | meaning |
| --- | --- | --- |
| 0 `SUCCESS` | success | every requested time / step reached, all saved values finite |
| 1 `MAX_STEPS` | max_steps | a solver's step budget ran out before the last requested time |
| 2 `NONFINITE` | nonfinite | NaN/inf appeared (state, derivative or loss); `failed_step` says when |
| 3 `FAILED` | failed | any other solver failure (e.g. implicit-solver non-convergence) |
| 4 `DIVERGED` | diverged | finite but exploding: `|loss| > DIVERGE_FACTOR · max(1, |loss(0)|)` |
| 5 `STATIONARY` | stationary | nothing moved: the start is a stationary point of the loss |
|   |   | (`∇_f L(f0) = 0`, e.g. the saddle `f0 = 0` of Barlow Twins: start from α > 0) |

`warn_status(where, status, ...)` issues the one RuntimeWarning every public entry point gives
outside jit when a run did not succeed (`raise_if_failed()` on the result makes it an error).
"""

from __future__ import annotations

import warnings

import numpy as np

SUCCESS = 0
MAX_STEPS = 1
NONFINITE = 2
FAILED = 3
DIVERGED = 4
STATIONARY = 5
STATUS_NAMES = {SUCCESS: "success", MAX_STEPS: "max_steps", NONFINITE: "nonfinite",
                FAILED: "failed", DIVERGED: "diverged", STATIONARY: "stationary"}

#: a training run whose loss grows beyond this factor times `max(1, |loss(0)|)` is DIVERGED
DIVERGE_FACTOR = 1e6


def names(status) -> str:
    """Comma-joined status names of a scalar or array status."""
    s = np.asarray(status)
    return ",".join(STATUS_NAMES.get(int(v), "?") for v in s.ravel())


def warn_status(where: str, status, *, detail: str = "", stacklevel: int = 3) -> None:
    """RuntimeWarning `where: ... did not succeed (status=...)` unless every status is SUCCESS."""
    s = np.asarray(status)
    if np.all(s == SUCCESS):
        return
    hint = ""
    if np.any(s == STATIONARY):
        hint = ("; the start is a stationary point of the loss (e.g. f0 = 0 / alpha = 0, a saddle "
                "of Barlow Twins): nothing moves, start from a small random f0 (alpha > 0)")
    elif np.any(s == NONFINITE) or np.any(s == DIVERGED):
        hint = "; a smaller learning rate / time step usually cures this"
    warnings.warn(f"{where}: did not succeed (status={names(s)}{', ' + detail if detail else ''})"
                  f"{hint}; call .raise_if_failed() to make this an error", RuntimeWarning,
                  stacklevel=stacklevel)


__all__ = ["SUCCESS", "MAX_STEPS", "NONFINITE", "FAILED", "DIVERGED", "STATIONARY",
           "STATUS_NAMES", "DIVERGE_FACTOR", "names", "warn_status"]
