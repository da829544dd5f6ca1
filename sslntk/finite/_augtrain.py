"""Training as practitioners do it: fresh augmented views every step, minibatches, any optimiser.

`train_augmented(model, x, augment, loss, *, key, lr, steps, ...)` draws, at every step `s`,
a minibatch of `batch_size` source samples (without replacement; all `n` when None) and two NEW
views of each with the `sslntk.data` augmentation (`augment(k, x_batch)` with `k` from
`fold_in(key, s)`), stacks them `[a_1..a_B, b_1..b_B]` and takes one optimiser step on
`loss(f(views))`. The small-init offset `(1 − α)·g_θ₀` is evaluated on each step's views (they are
new), so a step costs one forward/backward of `g_θ` plus one forward of `g_θ₀` when α ≠ 1.

At the save times (`ts`, t = lr·step with the peak lr, a clock) it records, on FIXED evaluation
views (`eval_views`, default: one draw `data.make_views(x, augment, fold_in(key, 2**31 − 1))`):
the embeddings `f (T, 2m, k)`, the loss, the eigenvalues of the embedding covariance
(`metrics.embedding_spectrum`, `(T, k)`, descending) and of the cross-correlation `C`
(`metrics.cross_correlation_spectrum`), and the wall time per step of each chunk between save
points (`step_seconds (T,)`, the first chunk includes compilation; `step_seconds[0]` is 0).
`step_times` (per mode, `metrics.step_times` on the covariance spectrum) is computed at the end.
It is a thin entry point over the one training engine (`_engine`, view source `FreshViews`):
checkpoint/resume, failure replay and statuses work as in `train` (a resumed run ends
bit-identical; NONFINITE / DIVERGED with the exact step; STATIONARY when nothing moved).
The kernel-side counterpart is `augmented_kernel_prediction`.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sslntk import _validate as V
from sslntk import data, metrics
from sslntk._status import Outcome
from sslntk.finite import _loop
from sslntk.finite._engine import Engine, FreshViews, GradientStep, StepRule, describe_model, run
from sslntk.finite._inputs import check_loss, check_model, optimizer_for, param_dtype, save_steps
from sslntk.finite._network import ensure_built
from sslntk.finite._outcome import finish
from sslntk.finite._state import split_trainable, trainable_output


@dataclass(frozen=True)
class AugmentedResult(Outcome):
    """What `train_augmented` returns. ts (T,), steps (T,); f (T, 2m, k) on the evaluation views;
    loss (T,) on them; spectrum (T, k) covariance eigenvalues; cc_spectrum (T, k) eig(C);
    step_times (k,) per mode (t units); step_seconds (T,) wall seconds per step of the chunk
    ending at each save point; status: a `sslntk._status.Status` code as `train`'s (SUCCESS,
    NONFINITE / DIVERGED with `failed_step`, STATIONARY); failed_step: the first failing step (−1:
    none); model: the trained network; eval_views: the evaluation `Views`; rule_state: the final
    state of the step rule. `ok`, `status_name`, `raise_if_failed()` come from `Outcome`."""

    ts: np.ndarray
    steps: np.ndarray
    f: np.ndarray
    loss: np.ndarray
    spectrum: np.ndarray
    cc_spectrum: np.ndarray
    step_times: np.ndarray
    step_seconds: np.ndarray
    status: int
    model: nnx.Module
    eval_views: data.Views
    failed_step: int = -1
    rule_state: object = None

    outcome_label = "finite.train_augmented"

    def failure_detail(self) -> str:
        return "" if int(self.failed_step) < 0 else f"failed_step={int(self.failed_step)}"


def check_eval_views(eval_views, x, augment, key):
    """The fixed evaluation `Views` (default: one draw with `fold_in(key, 2**31 − 1)`), checked
    against the source samples `x`, and their stacked array."""
    if eval_views is None:
        eval_views = data.make_views(x, augment, jax.random.fold_in(key, 2**31 - 1))
    if not isinstance(eval_views, data.Views) or eval_views.has_draws:
        raise TypeError("eval_views: expected single-draw sslntk.data.Views")
    xe = eval_views.stacked
    if xe.shape[1:] != x.shape[1:] or xe.dtype != x.dtype:
        raise ValueError(f"eval_views: expected views of samples {tuple(x.shape[1:])} ({x.dtype}),"
                         f" got {tuple(xe.shape[1:])} ({xe.dtype})")
    return eval_views, xe


def check_source_samples(x, model):
    """Source samples `(n, *in_shape)`, n >= 2, matching the model (built from them if needed)."""
    x = V.as_float_array("x", x)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"x: expected source samples (n, *in_shape) with n >= 2, got "
                         f"{tuple(x.shape)}")
    ensure_built(model, x)
    in_shape = getattr(model, "in_shape", None)
    if in_shape is not None and tuple(x.shape[1:]) != in_shape:
        raise ValueError(f"x: expected samples of shape (n, {', '.join(map(str, in_shape))}), got "
                         f"{tuple(x.shape)}")
    return x


def train_augmented(model, x, augment, loss, *, key, lr: float, steps: int,
                    optimizer: str = "sgd", batch_size: int | None = None,
                    optimizer_options: dict | None = None, ts=None, eval_views=None,
                    checkpoint=None, progress: bool = True, loop: str = "auto"
                    ) -> AugmentedResult:
    """Train `model` with fresh augmentations every step (see the module docstring).

    Args:
      model: a `sslntk.finite.network(...)` (or any NNX module `(N, ...) → (N, k)`); not modified.
      x: source samples `(n, *in_shape)` (not views). augment: a `sslntk.data` augmentation
        (`data.gaussian_noise(0.3)`, `data.translate(1)`, `data.compose(...)`) or any jittable
        `augment(key, x) -> x` of the same shape.
      loss: `sslntk.losses.Loss`, name, callable `loss(f: (2B, k)) -> scalar`, or a
        `finite.StepRule` (as `train`).
      key: `jax.random` key (views, minibatches and the default evaluation views).
      lr: peak learning rate; steps: optimiser steps; time t = lr·step.
      optimizer, optimizer_options: as `train` ("sgd", "momentum", "adam", "adamw", "lars", "gd";
        warm-up + cosine via `optimizer_options=dict(schedule="cosine", warmup_steps=...)`; μP
        models get their per-group factors). batch_size: source samples per step (None: all n).
      ts: save times (default 101 points); eval_views: fixed `Views` for the records.
      checkpoint: `.npz` path; resumes as `train` does. loop: as `train` ("auto": one compiled
        step per iteration from the host for convolutional models on CPU, else a `fori_loop`).

    Outcome: as `train`: a RuntimeWarning names the status and step unless SUCCESS
    (`result.raise_if_failed()` makes it an error).

    Example::

        r = finite.train_augmented(model, x, data.gaussian_noise(0.3), "barlow_twins",
                                   key=jax.random.key(0), lr=0.05, steps=2000, batch_size=64)
        r.step_times                     # per mode, in units of lr·steps
    """
    check_model(model)
    x = check_source_samples(x, model)
    if not callable(augment):
        raise TypeError(f"augment: expected a sslntk.data augmentation or a callable (key, x) -> x,"
                        f" got {type(augment).__name__}")
    V.check_key("key", key)
    V.choice("loop", loop, _loop.LOOPS)
    V.positive_float("lr", lr)
    steps = V.positive_int("steps", steps)
    n = x.shape[0]
    bs = None if batch_size is None else V.positive_int("batch_size", batch_size, minimum=2)
    if bs is not None and bs > n:
        raise ValueError(f"batch_size: expected at most n = {n} source samples, got {bs}")
    if bs == n:
        bs = None
    source = FreshViews(augment=augment, batch=bs)
    probe = jax.eval_shape(lambda k: source.views(0, k, x, None)[0], key)
    if probe.shape[1:] != x.shape[1:]:
        raise ValueError(f"augment: expected output of the input's shape {tuple(x.shape[1:])} per "
                         f"sample, got {tuple(probe.shape[1:])}")
    rule = loss if isinstance(loss, StepRule) else GradientStep(
        check_loss(loss, jnp.zeros(probe.shape, x.dtype), model))
    eval_views, xe = check_eval_views(eval_views, x, augment, key)
    if param_dtype(model) != x.dtype:
        raise TypeError(f"x: expected the model's dtype {param_dtype(model)}, got {x.dtype}")
    tx, _ = optimizer_for(optimizer, float(lr), n, n, steps, optimizer_options, model)
    s_save = save_steps(float(lr), steps, ts)
    graphdef, params, rest = split_trainable(model)
    host = _loop.use_host_loop(loop, lambda p, xx: trainable_output(graphdef, p, rest, xx),
                               params, x)
    r = run(Engine(graphdef, rule, tx, source, host_loop=host), params, rest, key, x, xe, None,
            steps=steps, s_save=s_save, checkpoint=checkpoint, progress=progress,
            label=f"train_augmented {type(model).__name__}",
            fingerprint_parts=(describe_model(model), repr(optimizer), float(lr),
                               repr(sorted((optimizer_options or {}).items())), "augmented"),
            differ="model, data, augmentation, loss, optimiser or schedule")
    f_hist = r.f
    fz = jnp.asarray(np.nan_to_num(f_hist))
    spec = np.asarray(metrics.embedding_spectrum(fz))
    cc = np.asarray(metrics.cross_correlation_spectrum(fz))
    tgrid = s_save * float(lr)
    T = len(s_save)
    st = np.asarray(metrics.step_times(spec, tgrid)) if T >= 2 else np.full(spec.shape[-1], np.nan)
    res = AugmentedResult(ts=tgrid, steps=s_save, f=f_hist, loss=r.loss, spectrum=spec,
                          cc_spectrum=cc, step_times=st, step_seconds=r.seconds,
                          status=int(r.status), model=nnx.merge(graphdef, r.params, rest),
                          eval_views=eval_views, failed_step=int(r.failed_step),
                          rule_state=r.state)
    return finish(res, None, record_terms=False, diagnostics=False, collapse_threshold=None,
                  batched=False, where="finite.train_augmented")


__all__ = ["AugmentedResult", "train_augmented", "check_eval_views", "check_source_samples"]
