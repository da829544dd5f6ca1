"""`Trajectory`: what every kernel-regime solver returns (an `sslntk._status.Outcome`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from sslntk._status import (  # noqa: F401  (re-exported: the status codes of every Trajectory)
    DIVERGED,
    FAILED,
    MAX_STEPS,
    NONFINITE,
    STATIONARY,
    STATUS_NAMES,
    SUCCESS,
    Outcome,
)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Trajectory(Outcome):
    """Kernel-regime training trajectory (`ok`, `status_name`, `raise_if_failed`, `warn` from
    `sslntk._status.Outcome`).

    Attributes:
      ts: `(T,)` times, in units of learning-rate × steps.
      f: `(T, 2n, k)` online function on the stacked training views `[a_1..a_n, b_1..b_n]`.
      loss: `(T,)` the method's loss at each time.
      status: int scalar (one per run in a batch), a `sslntk._status.Status` code.
      n_steps: int scalar, solver steps taken (ODE accepted steps, GD iterations, ...); for a
        failed gd run, the step at which it failed.
      f_test: `(T, m, k)` online function at the test points when a cross kernel was given.
      bound: solver-specific error bound (e.g. discarded spectral mass for `eigen`), else None.
      method: the name of the solver that produced it (static; "auto" records its choice here).
      reason: why that solver was used (static; "auto" says which rule picked it).
      terms: with `solve(..., record_terms=True)`, `{name: (T,)}` the method's named terms over
        time (they sum to `loss`), else None.
      diagnostics: with `solve(..., diagnostics=True)`, `{name: (T,)}` collapse diagnostics over
        time (`sslntk.diagnostics.collapse`: RankMe, effective rank, centre-vector norm, ...).
      aux, aux_test: the method's auxiliary state over time (leading axis T; e.g. an EMA target),
        None for a gradient flow.
    """

    ts: jax.Array
    f: jax.Array
    loss: jax.Array
    status: jax.Array
    n_steps: jax.Array
    f_test: jax.Array | None = None
    bound: jax.Array | None = None
    method: str = dataclasses.field(default="", metadata=dict(static=True))
    terms: dict | None = None
    diagnostics: dict | None = None
    aux: Any = None
    aux_test: Any = None
    reason: str = dataclasses.field(default="", metadata=dict(static=True))

    @property
    def outcome_label(self) -> str:
        return f"solver {self.method!r}"

    def failure_detail(self) -> str:
        return f"n_steps={np.asarray(self.n_steps).tolist()}"
