"""Training finite networks on SSL losses with optax (full-batch GD by default): `train`,
`train_batched` (several seeds in one compiled call), both thin entry points over the one engine
(`_engine`: save points, checkpoints, failure replay, progress, the device/host loop).

Time axis: a network trained by full-batch GD with learning rate `lr` for `s` steps sits at
`t = lr·s`, the time of the kernel gradient flow `df/dt = −K ∇_f L` (Jacot et al. 2018; Lee et al.
2019; `docs/concepts.md`). The same axis is used for minibatch SGD and Adam (there it is only a
clock). The comparison with the kernel regime is `docs/how-to/finite-vs-kernel.md`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sslntk import _validate as V
from sslntk._status import Outcome
from sslntk.finite import _loop
from sslntk.finite._engine import (
    Engine,
    FixedViews,
    GradientStep,
    Minibatches,
    StepRule,
    describe_model,
    run,
)
from sslntk.finite._inputs import (
    OPTIMIZERS,
    check_loss,
    check_model,
    optimizer_for,
    param_dtype,
    save_steps,
    stacked_inputs,
    test_inputs,
)
from sslntk.finite._outcome import finish
from sslntk.finite._param import gd_scales
from sslntk.finite._rate import MAX_LR_RATE, flow_rate, flow_rate_of, warn_rate
from sslntk.finite._state import split_trainable, trainable_output


@dataclass(frozen=True)
class TrainResult(Outcome):
    """What `train` returns (arrays on the same `ts` grid as a kernel `Trajectory`).

    ts: `(T,)` times `lr·steps[i]` of the save points. steps: `(T,)` int step counts.
    f: `(T, 2n, k)` embeddings of the stacked training views (the full set, also for SGD).
    loss: `(T,)` full-batch loss at the save points. f_test: `(T, m, k)` or None.
    status: `sslntk._status` code: SUCCESS; NONFINITE (the loss became NaN/inf) or DIVERGED
      (`|loss| > DIVERGE_FACTOR·max(1, |loss(0)|)`): training of that run stopped there and later
      saved values are NaN; STATIONARY (nothing moved: the start is a stationary point of the
      loss, e.g. α = 0 with Barlow Twins). `train` warns (RuntimeWarning) unless SUCCESS.
    failed_step: the first optimiser step whose loss was non-finite / diverged (exact: the chunk
      before the failing save point is replayed step by step), −1 when none.
    model: the trained network (a new module; the input model is unchanged).
    lr_rate: `lr·ρ` of the GD step-size check (`flow_rate`), or None when not computed.
    terms: with `record_terms=True`, `{name: (T,)}` the loss's named terms (`Loss.terms`).
    diagnostics: with `diagnostics=True`, `{name: (T,)}` collapse diagnostics
      (`sslntk.diagnostics.collapse`).
    rule_state: the final state of the step rule (`StepRule.init`/`update`: the optimiser state
      for a loss; e.g. `(optimiser state, target parameters)` for an EMA-target rule).
    loop: "device" or "host", how the steps ran (`loop` argument of `train`).
    For `train_batched`, every array has a leading seed axis and `model` is None; `params` then
    holds the stacked final parameter state. `ok`, `status_name`, `raise_if_failed()`, `warn()`
    come from `sslntk._status.Outcome`.
    """

    ts: np.ndarray
    steps: np.ndarray
    f: jax.Array
    loss: jax.Array
    f_test: jax.Array | None
    status: np.ndarray
    model: nnx.Module | None = None
    lr_rate: np.ndarray | None = None
    params: object = None
    failed_step: np.ndarray | None = None
    terms: dict | None = None
    diagnostics: dict | None = None

    rule_state: object = None
    loop: str | None = None

    outcome_label = "finite.train"

    def failure_detail(self) -> str:
        fs = np.asarray(self.failed_step) if self.failed_step is not None else None
        return "" if fs is None or np.all(fs < 0) else f"failed_step={fs.tolist()}"


def _rule_of(loss, x, model) -> StepRule:
    """`loss` as a step rule: a `StepRule` as is, else `GradientStep(check_loss(loss))`."""
    if isinstance(loss, StepRule):
        return loss
    return GradientStep(check_loss(loss, x, model))


def _common_checks(model, views, loss, lr, steps, optimizer, batch_size, ts, x_test,
                   optimizer_options, loop, record_terms):
    """The checks `train` and `train_batched` share; returns the stacked views, test inputs,
    step rule, steps, optax transformation, minibatch size (pairs) and save steps."""
    V.choice("loop", loop, _loop.LOOPS)
    check_model(model)
    x = stacked_inputs(views, model)
    V.positive_float("lr", lr)
    steps = V.positive_int("steps", steps)
    rule = _rule_of(loss, x, model)
    if record_terms and not (isinstance(rule, GradientStep) and hasattr(rule.loss, "terms")):
        raise ValueError("record_terms: needs a sslntk.losses.Loss (or a loss name); a plain "
                         "callable loss or a StepRule has no named terms")
    if x.dtype != param_dtype(model):
        raise TypeError(f"views: expected the model's dtype {param_dtype(model)}, got {x.dtype}")
    xt = test_inputs(x_test, x, model)
    tx, bp = optimizer_for(optimizer, float(lr), batch_size, x.shape[0] // 2, steps,
                           optimizer_options, model)
    if bp is not None and getattr(model, "couples_batch", False) and getattr(model, "alpha", 1) != 1:
        raise ValueError("batch_size: a BatchNorm model with alpha != 1 needs its offset on each "
                         "minibatch; use finite.train_augmented (offsets per step) or full batch")
    s_save = save_steps(float(lr), steps, ts)
    source = FixedViews() if bp is None else Minibatches(pairs=bp, n=x.shape[0] // 2)
    return x, xt, rule, steps, tx, source, s_save


def _gd_check(rule, optimizer, check_lr) -> bool:
    return bool(check_lr) and optimizer == "gd" and isinstance(rule, GradientStep)


def _loss_of(rule):
    return rule.loss if isinstance(rule, GradientStep) else None


def train(model, views, loss, *, lr: float, steps: int, optimizer: str = "gd",
          batch_size: int | None = None, ts=None, x_test=None, key=None, checkpoint=None,
          progress: bool = True, check_lr: bool = True,
          callback: Callable | None = None, optimizer_options: dict | None = None,
          record_terms: bool = False, diagnostics: bool = False,
          collapse_threshold: float | None = None, loop: str = "auto") -> TrainResult:
    """Train `model` on the SSL `loss` of the stacked `views` and record it over time.

    Args:
      model: a `sslntk.finite.network(...)` / `linearize(...)` (any NNX module `(N, ...) → (N, k)`;
        its `nnx.Param`s are trained). Not modified: the result holds the trained copy.
      views: `sslntk.data.Views` (single draw) or stacked inputs `(2n, *in_shape)`,
        order `[a_1..a_n, b_1..b_n]`.
      loss: `sslntk.losses.Loss`, a loss name, a callable `loss(f: (2n, k)) -> scalar` (one
        optax step on its gradient per step, `GradientStep`), or a `finite.StepRule` (a method
        with its own state and update, e.g. an EMA target network; see `StepRule`).
      lr: learning rate. steps: optimiser steps; time `t = lr·step` (`docs/concepts.md`).
      optimizer: "gd" (full-batch `optax.sgd`, the gradient-flow comparison), "sgd" (minibatches
        of `batch_size` positive pairs drawn without replacement each step, both views kept),
        "momentum", "adam", "adamw" or "lars" (full batch unless `batch_size`; see
        `finite.make_optimizer`), or any `optax.GradientTransformation`. A μP model
        (`param="mup"`) gets its per-group learning-rate factors on top (Yang & Hu 2021).
      optimizer_options: dict for `finite.make_optimizer`: momentum, nesterov, weight_decay,
        warmup_steps, schedule ("constant" | "cosine"), end_lr, b1, b2, eps, trust_coefficient.
      ts: save times (rounded to steps `rint(t/lr)`; the result's `ts` are the exact `lr·step`);
        default: 101 points over `[0, lr·steps]`. Training always runs all `steps`.
      x_test: held-out inputs `(m, *in_shape)` whose embeddings are recorded too.
      key: a `jax.random` key (minibatch draws use `fold_in(key, step)`); same key, same result.
        Required for minibatch training (`batch_size` set); full-batch runs are deterministic and
        default to `jax.random.key(0)` (used only by the `check_lr` power iteration).
      checkpoint: a file path (`.npz`): written atomically at every save point; if it exists and
        was written by the same run (fingerprint of parameters, data, loss, optimiser, schedule and
        key), training resumes from it and ends bit-identical to an uninterrupted run.
      progress: print progress to stderr. check_lr: for "gd", estimate ρ (`flow_rate`) and warn
        (RuntimeWarning, with the numbers) when `lr·ρ > MAX_LR_RATE`.
      callback: `callback(i, step, loss)` after save point i is recorded (and checkpointed).
      record_terms: also record `TrainResult.terms` (the loss's named terms at the save points).
      diagnostics: also record `TrainResult.diagnostics` (collapse diagnostics over time) and warn
        (`CollapseWarning`) when the final RankMe < `collapse_threshold` (default 1.5; setting it
        turns diagnostics on).
      loop: "auto", "device" or "host": how the steps between save points run: one
        compiled `lax.fori_loop` ("device"), or one compiled step per iteration queued from the
        host ("host"; the default "auto" picks it on CPU for models with convolutions, which XLA:CPU
        runs several times slower inside a loop body).

    Outcome: `status` / `failed_step` (see `TrainResult`); a RuntimeWarning names the status and
    the step when a run did not succeed (`result.raise_if_failed()` makes it an error).

    Example::

        m = finite.network(kernels.mlp(2, "relu"), 512, 3, key=jax.random.key(0),
                           in_shape=(64,), alpha=1e-2)
        r = finite.train(m, views, "barlow_twins", lr=0.01, steps=2000).raise_if_failed()
        r.ts, r.loss                       # t = lr·step, the kernel trajectory's time axis
    """
    x, xt, rule, steps, tx, source, s_save = _common_checks(
        model, views, loss, lr, steps, optimizer, batch_size, ts, x_test, optimizer_options, loop,
        record_terms)
    if key is None:
        if isinstance(source, Minibatches):
            raise ValueError(f"key: minibatch training (optimizer={optimizer!r}, batch_size="
                             f"{batch_size}) draws random batches and needs a jax.random key")
        key = jax.random.key(0)
    V.check_key("key", key)
    graphdef, params, rest = split_trainable(model)
    rate = None
    if _gd_check(rule, optimizer, check_lr):
        rho = float(flow_rate_of(graphdef, params, rest, x, rule.loss, 30,
                                 jax.random.fold_in(key, 1), gd_scales(model, params)))
        rate = np.asarray(lr * rho)
        warn_rate(float(lr), rho)
    host = _loop.use_host_loop(loop, lambda p, xx: trainable_output(graphdef, p, rest, xx),
                               params, x)
    r = run(Engine(graphdef, rule, tx, source, host_loop=host), params, rest, key, x, x, xt,
            steps=steps, s_save=s_save, checkpoint=checkpoint, progress=progress,
            label=f"train {type(model).__name__} width {getattr(model, 'width', '?')}",
            callback=callback,
            fingerprint_parts=(describe_model(model), optimizer, float(lr),
                               repr(sorted((optimizer_options or {}).items()))))
    res = TrainResult(ts=s_save * float(lr), steps=s_save, f=jnp.asarray(r.f),
                      loss=jnp.asarray(r.loss),
                      f_test=None if r.f_test is None else jnp.asarray(r.f_test), status=r.status,
                      model=nnx.merge(graphdef, r.params, rest), lr_rate=rate,
                      failed_step=r.failed_step, rule_state=r.state,
                      loop="host" if host else "device")
    return finish(res, _loss_of(rule), record_terms=record_terms, diagnostics=diagnostics,
                  collapse_threshold=collapse_threshold, batched=False, where="finite.train")


def train_batched(models_state, views, loss, *, lr: float, steps: int, optimizer: str = "gd",
                  batch_size: int | None = None, ts=None, x_test=None, keys, checkpoint=None,
                  progress: bool = True, check_lr: bool = True, record_terms: bool = False,
                  diagnostics: bool = False, collapse_threshold: float | None = None,
                  optimizer_options: dict | None = None, loop: str = "auto") -> TrainResult:
    """`train` for several same-shaped networks at once, over a leading seed axis (one compiled
    call: `jax.vmap` on GPU/TPU, a `lax.map` on CPU, see `_engine.over_seeds`).

    `models_state = (graphdef, params, rest)` with every leaf of `params`/`rest` stacked along axis 0
    (see `stack_models`); `keys`: `(S,)` keys, one per network. The other arguments are those of
    `train` (`loss`: a Loss, a name, a callable `f -> scalar` or a `StepRule`). Results carry a
    leading seed axis after time: `f: (T, S, 2n, k)`, `loss: (T, S)`, `status: (S,)`,
    `failed_step: (S,)`, terms and diagnostics `(T, S)`; `params` holds the final stacked state.

    Example::

        state = finite.stack_models([finite.network(arch, 256, 3, key=jax.random.key(s),
                                                    in_shape=(64,)) for s in range(4)])
        r = finite.train_batched(state, views, "barlow_twins", lr=0.01, steps=500,
                                 keys=jnp.stack([jax.random.key(s) for s in range(4)]))
    """
    graphdef, params, rest = models_state
    model0 = nnx.merge(graphdef, *jax.tree.map(lambda a: a[0], (params, rest)))
    x, xt, rule, steps, tx, source, s_save = _common_checks(
        model0, views, loss, lr, steps, optimizer, batch_size, ts, x_test, optimizer_options, loop,
        record_terms)
    kd = getattr(keys, "dtype", None)
    S = jax.tree.leaves(params)[0].shape[0]
    if kd is None or not (jnp.issubdtype(kd, jax.dtypes.prng_key) and keys.shape == (S,)
                          or kd == jnp.uint32 and keys.shape == (S, 2)):
        raise TypeError(f"keys: expected {S} jax.random keys stacked (jnp.stack([jax.random.key(s)"
                        f" ...])), got {getattr(keys, 'shape', type(keys).__name__)}")
    rate = None
    if _gd_check(rule, optimizer, check_lr):
        sc = gd_scales(model0, jax.tree.map(lambda a: a[0], params))
        rho = np.asarray(jax.vmap(lambda p, r, k: flow_rate_of(graphdef, p, r, x, rule.loss, 30,
                                                               k, sc))(
            params, rest, jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)))
        rate = lr * rho
        warn_rate(float(lr), rho)
    g0, p0, r0 = split_trainable(model0)
    host = _loop.use_host_loop(loop, lambda p, xx: trainable_output(g0, p, r0, xx), p0, x)
    r = run(Engine(graphdef, rule, tx, source, seeds=True, host_loop=host), params, rest, keys,
            x, x, xt, steps=steps, s_save=s_save, checkpoint=checkpoint, progress=progress,
            label=f"train {S} seeds width {getattr(model0, 'width', '?')}",
            fingerprint_parts=(describe_model(model0), optimizer, float(lr), "batched",
                               repr(sorted((optimizer_options or {}).items()))))
    res = TrainResult(ts=s_save * float(lr), steps=s_save, f=jnp.asarray(r.f),
                      loss=jnp.asarray(r.loss),
                      f_test=None if r.f_test is None else jnp.asarray(r.f_test), status=r.status,
                      model=None, lr_rate=rate, params=(graphdef, r.params, rest),
                      failed_step=r.failed_step, rule_state=r.state,
                      loop="host" if host else "device")
    return finish(res, _loss_of(rule), record_terms=record_terms, diagnostics=diagnostics,
                  collapse_threshold=collapse_threshold, batched=True,
                  where="finite.train_batched")


def stack_models(models) -> tuple:
    """`(graphdef, params, rest)` with each leaf stacked over `models` (same graph and shapes)."""
    models = list(models)
    if not models:
        raise ValueError("models: expected at least one model")
    for m in models:
        if getattr(m, "built", True) is False:
            m._require_built("stack_models")
    splits = [split_trainable(m) for m in models]
    gd = splits[0][0]
    if any(s[0] != gd for s in splits[1:]):
        raise ValueError("models: expected networks of one architecture, width and dtype")
    params = jax.tree.map(lambda *a: jnp.stack(a), *[s[1] for s in splits])
    rest = jax.tree.map(lambda *a: jnp.stack(a), *[s[2] for s in splits])
    return gd, params, rest


def unstack_model(models_state, i: int) -> nnx.Module:
    """Model `i` of a stacked `(graphdef, params, rest)`."""
    graphdef, params, rest = models_state
    S = jax.tree.leaves(params)[0].shape[0]
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -S <= i < S:
        raise IndexError(f"i: expected an index into {S} stacked models, got {i!r}")
    return nnx.merge(graphdef, *jax.tree.map(lambda a: a[i], (params, rest)))


__all__ = ["train", "train_batched", "stack_models", "unstack_model", "flow_rate", "TrainResult",
           "save_steps", "MAX_LR_RATE", "OPTIMIZERS"]
