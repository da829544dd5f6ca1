"""The solver base: a small frozen object holding its options, with one method `solve`.

Solvers know nothing about which SSL method runs: each asks the method for the structure it needs
(`sslntk.methods.require`: `potential`, `moment_form`, `stepwise_form`) and refuses a method that
lacks it with an error naming the method and what it lacks. See `docs/how-to/choose-a-solver.md`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import diffrax

from sslntk import _validate as V

DEFAULT_MAX_STEPS = 100_000

#: diffrax integrators by name (the `integrator` option of the diffrax-based solvers)
INTEGRATORS = {
    "tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3, "heun": diffrax.Heun, "kvaerno3": diffrax.Kvaerno3,
    "kvaerno4": diffrax.Kvaerno4, "kvaerno5": diffrax.Kvaerno5,
}


def check_integrator(integrator, name: str = "integrator") -> None:
    """A name in `INTEGRATORS` or an adaptive diffrax solver instance, else a clear error."""
    if isinstance(integrator, str):
        V.choice(name, integrator, list(INTEGRATORS))
        return
    if not isinstance(integrator, diffrax.AbstractAdaptiveSolver):
        raise TypeError(f"{name}: expected one of {sorted(INTEGRATORS)} or an adaptive diffrax "
                        f"solver instance, got {integrator!r}")


@dataclasses.dataclass(frozen=True)
class Solver:
    """Base of the kernel-regime solvers. Subclasses are frozen dataclasses of their options
    (validated on construction) with a class-level `name` and

        solve(K, method, state0, ts, *, K_test_train=None, progress=False) -> Trajectory

    on inputs validated by `sslntk.dynamics.solve` (they trust them). `sharded`: whether a
    row-sharded K is supported. `check(method, state0)` refuses, before any work, a method that
    lacks the structure the solver needs (default: accepts every method)."""

    name: ClassVar[str] = ""
    sharded: ClassVar[bool] = False

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_options(cls, **options) -> Solver:
        """The solver with these options; unknown ones raise ValueError listing the valid ones."""
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            raise ValueError(f"solver {cls.name!r}: unknown option(s) {unknown}; valid options "
                             f"are {sorted(cls.option_names())}")
        return cls(**options)

    def replace(self, **options) -> Solver:
        """A copy with some options changed (validated)."""
        if not options:
            return self
        self.from_options(**options)    # names checked
        return dataclasses.replace(self, **options)

    def check(self, method, state0) -> None:
        return None

    def solve(self, K, method, state0, ts, *, K_test_train=None, progress=False):
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class DiffraxOptions:
    """Options shared by the diffrax-based solvers (`Ode`, `Eigen`, `Constrained`).

    Attributes:
      integrator: a name in `INTEGRATORS` ("tsit5" default, "dopri5", "dopri8", "bosh3", "heun",
        "kvaerno3/4/5") or an adaptive diffrax solver instance.
      rtol, atol: PID controller tolerances (None: rtol 1e-8 in float64 / 1e-5 in float32, atol
        from rtol and the state's scale, see each solver).
      dt0: initial step (None: 0.01, as `diffrax.diffeqsolve` takes it; the controller then
        grows the step by up to 10× per accepted step).
      max_steps: step budget (default 100_000); running out gives status MAX_STEPS and NaN at the
        times not reached.
      pcoeff, icoeff: PID coefficients (defaults 0, 1: the classic I-controller).
      adjoint: diffrax adjoint (default: `RecursiveCheckpointAdjoint()` when the inputs are
        traced — `jax.grad` through the solve differentiates the discretised solve exactly — and
        `ForwardMode()` on concrete inputs, which traces and lowers faster). Under these two, the
        explicit integrators run in sslntk's own loop (`_rk`: the same steps as `diffeqsolve`,
        traced in a fraction of the time); any other adjoint or an implicit integrator goes
        through `diffrax.diffeqsolve`.
    """

    integrator: Any = "tsit5"
    rtol: Any = None
    atol: Any = None
    dt0: Any = None
    max_steps: int = DEFAULT_MAX_STEPS
    pcoeff: Any = 0.0
    icoeff: Any = 1.0
    adjoint: Any = None

    def __post_init__(self):
        check_integrator(self.integrator)
        V.positive_int("max_steps", self.max_steps)
        for nm in ("rtol", "atol", "dt0"):
            if getattr(self, nm) is not None:
                V.positive_float(nm, getattr(self, nm))

    def diffrax_kwargs(self) -> dict:
        return dict(solver=self.integrator, rtol=self.rtol, atol=self.atol, dt0=self.dt0,
                    max_steps=self.max_steps, pcoeff=self.pcoeff, icoeff=self.icoeff,
                    adjoint=self.adjoint)
