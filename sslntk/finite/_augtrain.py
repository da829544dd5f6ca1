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
Checkpoint/resume works as in `train` (same fingerprinting; a resumed run ends bit-identical).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sslntk import _io, data, metrics
from sslntk import _validate as V
from sslntk._progress import Progress
from sslntk.dynamics._trajectory import NONFINITE, SUCCESS
from sslntk.finite import _loop
from sslntk.finite._network import _check_key, ensure_built
from sslntk.finite._ntk import _f, split_trainable
from sslntk.finite._train import (
    _check_loss,
    _describe,
    _fingerprint,
    _offsets,
    _optimizer,
    save_steps,
)


@dataclass(frozen=True)
class AugmentedResult:
    """What `train_augmented` returns. ts (T,), steps (T,); f (T, 2m, k) on the evaluation views;
    loss (T,) on them; spectrum (T, k) covariance eigenvalues; cc_spectrum (T, k) eig(C);
    step_times (k,) per mode (t units); step_seconds (T,) wall seconds per step of the chunk
    ending at each save point; status (SUCCESS / NONFINITE); model: the trained network;
    eval_views: the evaluation `Views`."""

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

    @property
    def ok(self) -> bool:
        return int(self.status) == SUCCESS


def _draw_views(augment, x, key, step, batch):
    ks = jax.random.fold_in(key, step)
    n = x.shape[0]
    xb = x if batch is None else x[jax.random.choice(jax.random.fold_in(ks, 0), n, (batch,),
                                                     replace=False)]
    ka, kb = jax.random.split(jax.random.fold_in(ks, 1))
    return jnp.concatenate([augment(ka, xb), augment(kb, xb)])


def _eval_views(eval_views, x, augment, key):
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
      loss: `sslntk.losses.Loss`, name or callable `loss(f: (2B, k)) -> scalar`.
      key: `jax.random` key (views, minibatches and the default evaluation views).
      lr: peak learning rate; steps: optimiser steps; time t = lr·step.
      optimizer, optimizer_options: as `train` ("sgd", "momentum", "adam", "adamw", "lars", "gd";
        warm-up + cosine via `optimizer_options=dict(schedule="cosine", warmup_steps=...)`; μP
        models get their per-group factors). batch_size: source samples per step (None: all n).
      ts: save times (default 101 points); eval_views: fixed `Views` for the records.
      checkpoint: `.npz` path; resumes as `train` does. loop: as `train` ("auto": one compiled
        step per iteration from the host for convolutional models on CPU, else a `fori_loop`).
    """
    if not isinstance(model, nnx.Module) or not callable(model):
        raise TypeError(f"model: expected a flax.nnx.Module such as sslntk.finite.network(...), "
                        f"got {type(model).__name__}")
    x = V.as_float_array("x", x)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"x: expected source samples (n, *in_shape) with n >= 2, got "
                         f"{tuple(x.shape)}")
    if not callable(augment):
        raise TypeError(f"augment: expected a sslntk.data augmentation or a callable (key, x) -> x,"
                        f" got {type(augment).__name__}")
    _check_key(key)
    V.choice("loop", loop, _loop.LOOPS)
    ensure_built(model, x)
    in_shape = getattr(model, "in_shape", None)
    if in_shape is not None and tuple(x.shape[1:]) != in_shape:
        raise ValueError(f"x: expected samples of shape (n, {', '.join(map(str, in_shape))}), got "
                         f"{tuple(x.shape)}")
    V.positive_float("lr", lr)
    steps = V.positive_int("steps", steps)
    n = x.shape[0]
    bs = None if batch_size is None else V.positive_int("batch_size", batch_size, minimum=2)
    if bs is not None and bs > n:
        raise ValueError(f"batch_size: expected at most n = {n} source samples, got {bs}")
    if bs == n:
        bs = None
    probe = jax.eval_shape(lambda k: _draw_views(augment, x, k, 0, bs), key)
    if probe.shape[1:] != x.shape[1:]:
        raise ValueError(f"augment: expected output of the input's shape {tuple(x.shape[1:])} per "
                         f"sample, got {tuple(probe.shape[1:])}")
    loss = _check_loss(loss, jnp.zeros(probe.shape, x.dtype), model)
    eval_views, xe = _eval_views(eval_views, x, augment, key)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    if not leaves:
        raise ValueError("model: has no trainable nnx.Param variables")
    if leaves[0].dtype != x.dtype:
        raise TypeError(f"x: expected the model's dtype {leaves[0].dtype}, got {x.dtype}")
    tx, _ = _optimizer(optimizer, float(lr), n, n, steps, optimizer_options, model)
    s_save = save_steps(float(lr), steps, ts)
    graphdef, params, rest = split_trainable(model)

    def full_f(p, xb):
        return _f(graphdef, p, rest, xb) - _offsets(graphdef, p, rest, xb)

    def body(step, carry):
        p, o = carry
        xb = _draw_views(augment, x, key, step, bs)
        g = jax.grad(lambda q: loss(full_f(q, xb)))(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    loop_ = _loop.make_advance(body, _loop.use_host_loop(
        loop, lambda p, xx: _f(graphdef, p, rest, xx), params, x))
    advance = lambda p, o, start, nsteps: loop_((p, o), start, nsteps)  # noqa: E731

    @jax.jit
    def record(p):
        f = full_f(p, xe)
        return f, loss(f)

    opt_state = tx.init(params)
    T = len(s_save)
    f_hist, l_hist, sec = None, np.full(T, np.nan), np.zeros(T)
    status = SUCCESS
    fp = _fingerprint(*jax.tree.leaves(params), *jax.tree.leaves(rest), key, x, xe, repr(loss),
                      repr(augment), lr, steps, s_save, bs, _describe(model), repr(optimizer),
                      repr(sorted((optimizer_options or {}).items())), "augmented")
    treedef = jax.tree.structure((params, opt_state))
    i0, step = 0, 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    z, state = _io.load_checkpoint(ckpt, fp, treedef, differ="model, data, augmentation, loss, "
                                                             "optimiser or schedule")
    if z is not None:
        params, opt_state = state
        i0, step = int(z["next_save"]), int(z["step"])
        f_hist, l_hist, sec, status = z["f"], z["loss"], z["seconds"], int(z["status"])
    with Progress(steps, f"train_augmented {type(model).__name__}", enabled=progress) as prog:
        prog.update(step)
        for i in range(i0, T):
            if status != SUCCESS:
                break
            n_adv = int(s_save[i]) - step
            t0 = time.perf_counter()
            if n_adv:
                params, opt_state = advance(params, opt_state, step, n_adv)
                jax.block_until_ready(params)
                step = int(s_save[i])
            sec[i] = (time.perf_counter() - t0) / n_adv if n_adv else 0.0
            f, lv = record(params)
            f, lv = np.asarray(f), float(lv)
            if f_hist is None:
                f_hist = np.full((T, *f.shape), np.nan, dtype=f.dtype)
            if not np.isfinite(lv):
                status = NONFINITE
            else:
                f_hist[i], l_hist[i] = f, lv
            prog.update(n_adv, loss=lv)
            if ckpt is not None:
                arrays = {f"state_{j}": np.asarray(a)
                          for j, a in enumerate(jax.tree.leaves((params, opt_state)))}
                _io.atomic_write_npz(ckpt, fingerprint=np.array(fp), next_save=np.array(i + 1),
                                     step=np.array(step), f=f_hist, loss=l_hist, seconds=sec,
                                     status=np.array(status), **arrays)
        if status == SUCCESS and step < steps:
            params, opt_state = advance(params, opt_state, step, steps - step)
            prog.update(steps - step)
    spec = np.asarray(metrics.embedding_spectrum(jnp.asarray(np.nan_to_num(f_hist))))
    cc = np.asarray(metrics.cross_correlation_spectrum(jnp.asarray(np.nan_to_num(f_hist))))
    tgrid = s_save * float(lr)
    st = np.asarray(metrics.step_times(spec, tgrid)) if T >= 2 else np.full(spec.shape[-1], np.nan)
    return AugmentedResult(ts=tgrid, steps=s_save, f=f_hist, loss=l_hist, spectrum=spec,
                           cc_spectrum=cc, step_times=st, step_seconds=sec, status=status,
                           model=nnx.merge(graphdef, params, rest), eval_views=eval_views)
