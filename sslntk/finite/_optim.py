"""Practitioners' optimisers for the finite networks (optax), with schedules and weight decay.

`make_optimizer(name, lr, steps, **options)` → `optax.GradientTransformation`:

| name | optax | notes |
| --- | --- | --- |
| "gd" / "sgd" | `optax.sgd(η)` | plain (full-batch / minibatch) gradient descent |
| "momentum" | `optax.sgd(η, momentum=μ, nesterov=...)` | heavy-ball SGD, μ = `momentum` (0.9) |
| "adam" | `optax.adam(η, b1, b2, eps)` | weight decay, if any, as an L2 term added to the gradient |
| "adamw" | `optax.adamw(η, b1, b2, eps, weight_decay)` | decoupled weight decay (scaled by η) |
| "lars" | `optax.lars(η, weight_decay, trust_coefficient, momentum=μ)` | layer-wise trust ratio |

Weight decay `wd` for "gd"/"sgd"/"momentum"/"adam" is coupled (`optax.add_decayed_weights(wd)`
before the optimiser, i.e. the gradient of `wd/2·‖θ‖²`); "adamw" and "lars" use their own
(decoupled) form. The learning rate `η(step)` is `lr` ("constant") or a linear warm-up over
`warmup_steps` from 0 to `lr` followed by a cosine decay to `end_lr` at `steps` ("cosine",
`optax.warmup_cosine_decay_schedule`); "constant" with `warmup_steps > 0` warms up and then stays.
Time stays `t = lr·step` with the PEAK `lr` (a clock; it is the gradient-flow time only for
constant-lr "gd").
"""

from __future__ import annotations

import optax

from sslntk import _validate as V

OPTIMIZERS = ("gd", "sgd", "momentum", "adam", "adamw", "lars")
SCHEDULES = ("constant", "cosine")
#: options accepted by `make_optimizer` (and `train(..., optimizer_options=...)`)
OPTIONS = ("momentum", "nesterov", "weight_decay", "warmup_steps", "schedule", "end_lr", "b1", "b2",
           "eps", "trust_coefficient")


def learning_rate(lr: float, steps: int, *, warmup_steps: int = 0, schedule: str = "constant",
                  end_lr: float = 0.0):
    """`lr` or an optax schedule `η(step)` (see the module docstring)."""
    V.positive_float("lr", lr)
    steps = V.positive_int("steps", steps)
    warmup_steps = V.positive_int("warmup_steps", warmup_steps, minimum=0)
    V.choice("schedule", schedule, SCHEDULES)
    V.positive_float("end_lr", end_lr, allow_zero=True)
    if warmup_steps > steps:
        raise ValueError(f"warmup_steps: expected at most steps = {steps}, got {warmup_steps}")
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, float(lr), warmup_steps, steps,
                                                  end_value=float(end_lr))
    if warmup_steps:
        return optax.join_schedules([optax.linear_schedule(0.0, float(lr), warmup_steps),
                                     optax.constant_schedule(float(lr))], [warmup_steps])
    return float(lr)


def make_optimizer(name: str, lr: float, steps: int, **options) -> optax.GradientTransformation:
    """The optax optimiser `name` (one of `OPTIMIZERS`) at peak learning rate `lr` over `steps`.

    options: momentum (0.9; "momentum", "lars"), nesterov (False), weight_decay (0 for every
    optimiser, "adamw" included: optax.adamw's own default 1e-4 is not used), warmup_steps
    (0), schedule ("constant" | "cosine"), end_lr (0, cosine), b1 (0.9), b2 (0.999), eps (1e-8;
    Adam), trust_coefficient (1e-3; LARS). Unknown options, or options the optimiser does not use,
    raise ValueError naming them.
    """
    V.choice("optimizer", name, OPTIMIZERS)
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"optimizer_options: unknown {sorted(unknown)}; valid: {list(OPTIONS)}")
    used = {"gd": {"weight_decay"}, "sgd": {"weight_decay"},
            "momentum": {"momentum", "nesterov", "weight_decay"},
            "adam": {"b1", "b2", "eps", "weight_decay"}, "adamw": {"b1", "b2", "eps", "weight_decay"},
            "lars": {"momentum", "nesterov", "weight_decay", "trust_coefficient"}}[name]
    used |= {"warmup_steps", "schedule", "end_lr"}
    extra = set(options) - used
    if extra:
        raise ValueError(f"optimizer_options: {sorted(extra)} not used by optimizer={name!r} "
                         f"(it takes {sorted(used)})")
    sched = learning_rate(lr, steps, warmup_steps=options.get("warmup_steps", 0),
                          schedule=options.get("schedule", "constant"),
                          end_lr=options.get("end_lr", 0.0))
    wd = V.positive_float("weight_decay", options.get("weight_decay", 0.0), allow_zero=True)
    mom = V.positive_float("momentum", options.get("momentum", 0.9), allow_zero=True)
    if not 0 <= float(mom) < 1:
        raise ValueError(f"momentum: expected 0 <= momentum < 1, got {mom}")
    nesterov = options.get("nesterov", False)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov: expected a bool, got {nesterov!r}")
    b1 = float(options.get("b1", 0.9))
    b2 = float(options.get("b2", 0.999))
    for nm, v in (("b1", b1), ("b2", b2)):
        if not 0 <= v < 1:
            raise ValueError(f"{nm}: expected 0 <= {nm} < 1, got {v}")
    eps = float(V.positive_float("eps", options.get("eps", 1e-8)))
    if name in ("gd", "sgd"):
        tx = optax.sgd(sched)
    elif name == "momentum":
        tx = optax.sgd(sched, momentum=float(mom), nesterov=nesterov)
    elif name == "adam":
        tx = optax.adam(sched, b1=b1, b2=b2, eps=eps)
    elif name == "adamw":
        return optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=float(wd))
    else:
        tc = float(V.positive_float("trust_coefficient", options.get("trust_coefficient", 1e-3)))
        return optax.lars(sched, weight_decay=float(wd), trust_coefficient=tc, momentum=float(mom),
                          nesterov=nesterov)
    if wd:
        tx = optax.chain(optax.add_decayed_weights(float(wd)), tx)
    return tx
