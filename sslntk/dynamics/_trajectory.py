"""`Trajectory`: what every kernel-regime solver returns (DESIGN.md, "Solvers")."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp

# Solver status codes carried by every Trajectory (never a silent NaN); shared with the finite
# trainer in sslntk/_status.py (SUCCESS, MAX_STEPS, NONFINITE, FAILED, DIVERGED, STATIONARY).
from sslntk._status import (  # noqa: F401
    DIVERGED,
    FAILED,
    MAX_STEPS,
    NONFINITE,
    STATIONARY,
    STATUS_NAMES,
    SUCCESS,
)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Trajectory:
    """Kernel-regime training trajectory.

    Attributes:
      ts: `(T,)` times, in units of learning-rate × steps (DESIGN.md "Time").
      f: `(T, 2n, k)` embeddings of the stacked training views `[a_1..a_n, b_1..b_n]`.
      loss: `(T,)` loss at each time.
      status: int scalar, one of SUCCESS / MAX_STEPS / NONFINITE / FAILED.
      n_steps: int scalar, solver steps taken (ODE accepted steps, GD iterations, ...).
      f_test: `(T, m, k)` predictions at test points when a cross kernel was given, else None.
      bound: method-specific error bound (e.g. discarded spectral mass for `eigen`), else None.
      method: which solver produced it (static; `auto` records its choice here).
      terms: with `solve(..., record_terms=True)`, `{name: (T,)}` the loss's named terms over time
        (`Loss.terms`; they sum to `loss`), else None.
      diagnostics: with `solve(..., diagnostics=True)`, `{name: (T,)}` collapse diagnostics over
        time (`sslntk.diagnostics.collapse`: RankMe, effective rank, centre-vector norm, ...).
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

    @property
    def ok(self) -> bool:
        return bool(jnp.all(self.status == SUCCESS))

    @property
    def status_name(self) -> str:
        s = jnp.asarray(self.status)
        if s.ndim:
            return ",".join(STATUS_NAMES.get(int(v), "?") for v in s.ravel())
        return STATUS_NAMES.get(int(s), "?")

    def raise_if_failed(self) -> Trajectory:
        """Raise `RuntimeError` with the status when the solve did not succeed; else return self."""
        if not self.ok:
            raise RuntimeError(f"solver {self.method!r} failed: status={self.status_name}, "
                               f"n_steps={jnp.asarray(self.n_steps).tolist()}")
        return self
