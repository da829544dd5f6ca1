"""Run status codes and the `Outcome` base shared by every solver, trainer and sweep (never a silent NaN).

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

import enum
import warnings

import numpy as np


class Status(enum.IntEnum):
    """The one status vocabulary of every sslntk result; `Status(code).message` says what it means.

    An `IntEnum`: results store the plain integer code (a JAX array under jit/vmap, one per batch
    element) and `Status(int(code))` reads it back."""

    SUCCESS = 0
    MAX_STEPS = 1
    NONFINITE = 2
    FAILED = 3
    DIVERGED = 4
    STATIONARY = 5

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.SUCCESS: "every requested time / step was reached and every saved value is finite",
    Status.MAX_STEPS: "the solver's step budget ran out before the last requested time; the times "
                      "not reached hold NaN",
    Status.NONFINITE: "NaN/inf appeared in the state, its derivative or the loss",
    Status.FAILED: "the solver failed (e.g. an implicit solver did not converge)",
    Status.DIVERGED: "the loss grew beyond DIVERGE_FACTOR times max(1, |loss(0)|): finite but "
                     "exploding",
    Status.STATIONARY: "nothing moved: the start is a stationary point (e.g. f0 = 0, the saddle of "
                       "Barlow Twins); start from a small random f0 (alpha > 0)",
}

SUCCESS = int(Status.SUCCESS)
MAX_STEPS = int(Status.MAX_STEPS)
NONFINITE = int(Status.NONFINITE)
FAILED = int(Status.FAILED)
DIVERGED = int(Status.DIVERGED)
STATIONARY = int(Status.STATIONARY)
STATUS_NAMES = {int(s): s.name.lower() for s in Status}

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


class Outcome:
    """The shared base of every result that carries a run status (kernel trajectories, finite
    training, augmented training, sweeps): one `ok`, `status_name`, `raise_if_failed`, `warn`.

    A subclass has a `status` attribute (an int code of `Status`, or an array of them, one per
    batch element / run) and may override `failure_detail()` (e.g. the failing step) and
    `outcome_label` (what ran, e.g. "solver 'ode'"). It adds no fields, so a dataclass or pytree
    subclass keeps its own fields and flattening.
    """

    outcome_label = "run"

    @property
    def ok(self) -> bool:
        """True when every status is SUCCESS (STATIONARY, DIVERGED, ... are not ok)."""
        return bool(np.all(np.asarray(self.status) == SUCCESS))

    @property
    def status_name(self) -> str:
        """The status name (comma-joined over a batch of runs)."""
        return names(self.status)

    @property
    def status_message(self) -> str:
        """What each distinct status of this result means (`Status.message`)."""
        codes = sorted({int(v) for v in np.asarray(self.status).ravel()})
        return "; ".join(f"{Status(c).name.lower()}: {Status(c).message}" for c in codes
                         if c in STATUS_NAMES)

    def failure_detail(self) -> str:
        """Extra context for failure messages (overridden: steps taken, failing step, ...)."""
        return ""

    def raise_if_failed(self):
        """Raise `RuntimeError` naming the status, its meaning and the detail unless every run
        succeeded; else return self (so it chains)."""
        if not self.ok:
            detail = self.failure_detail()
            raise RuntimeError(f"{self.outcome_label} did not succeed: status={self.status_name}"
                               f"{', ' + detail if detail else ''} ({self.status_message})")
        return self

    def warn(self, where: str | None = None, *, stacklevel: int = 3) -> None:
        """The one RuntimeWarning for a result that did not succeed (see `warn_status`)."""
        warn_status(where or self.outcome_label, self.status, detail=self.failure_detail(),
                    stacklevel=stacklevel + 1)


__all__ = ["Status", "Outcome", "SUCCESS", "MAX_STEPS", "NONFINITE", "FAILED", "DIVERGED", "STATIONARY",
           "STATUS_NAMES", "DIVERGE_FACTOR", "names", "warn_status"]
