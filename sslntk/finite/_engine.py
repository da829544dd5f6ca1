"""The one training engine of `sslntk.finite`: every trainer (`train`, `train_batched`,
`train_augmented`) is a thin entry point over `Engine` + `run`.

The engine owns what every training run needs, in one place: the initial state, the loop over the
steps between save points (one compiled `lax.fori_loop`, or one compiled step per iteration queued
from the host for convolutional models on CPU, see `_loop`), the records at the save points, the
status of every run (NONFINITE / DIVERGED from the recorded loss, STATIONARY when nothing moved),
the exact failing step (the chunk before a failing save point is replayed one step at a time),
resumable checkpoints (a resumed run ends bit-identical to an uninterrupted one: the chunk
boundaries are the same with and without a checkpoint), progress and the wall time per step.

Two parts are pluggable:

- the SOURCE of each step's views (`ViewSource`): `FixedViews` (the full batch of stacked views,
  every step), `Minibatches` (B positive pairs drawn without replacement each step, both views of a
  pair kept) and `FreshViews` (two new augmentations of a minibatch of source samples each step);
- the per-step UPDATE (`StepRule`): `GradientStep(loss)` is one optax step on `loss(f)`; a rule
  with its own state (the EMA target network of BYOL (Grill et al. 2020), DINO's centre (Caron et
  al. 2021), SwAV's prototypes (Caron et al. 2020), a predictor head) and stop-gradients between
  its parts plugs in without editing this module (the protocol is in `StepRule`'s docstring).

Time: a run of `s` steps at learning rate `lr` sits at `t = lr·s`, the time of the kernel gradient
flow `df/dt = −K ∇_f L` for full-batch GD (Jacot et al. 2018; Lee et al. 2019); for minibatches,
fresh views or adaptive optimisers it is only a clock (`docs/concepts.md`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslntk import _io
from sslntk._progress import Progress
from sslntk._status import STATIONARY, SUCCESS
from sslntk.finite import _loop
from sslntk.finite._outcome import failure_code
from sslntk.finite._state import offsets, trainable_output

#: at most this many steps are replayed one by one to find the exact failing step
REPLAY_MAX = 20000


# ------------------------------------------------------------------------------------------------
# the per-step update


class StepRule:
    """The per-step update of a training run (the pattern of an optax `GradientTransformation`:
    pure functions over a state pytree). Subclass it and pass an instance where `finite.train`,
    `train_batched` or `train_augmented` take `loss`; the engine does everything else (views,
    loops, save points, checkpoints, failure replay, status).

    A rule keeps a STATE pytree beside the network parameters `params` (the `nnx.Param` pytree of
    the model): the optimiser state, plus whatever else it evolves (an EMA target network, a
    predictor head and its optimiser state, a centre, prototypes). Methods (all traced under
    `jax.jit`, so pure JAX):

    - `init(params, tx) -> state`: the initial state; `tx` is the optax transformation built from
      the trainer's `optimizer` / `lr` / `optimizer_options` (use it, or carry your own).
      Default: `tx.init(params)`.
    - `update(params, state, embed, tx, step) -> (params, state)`: one step. `embed(p)` returns the
      embeddings `(2B, k)` of this step's views (order `[a_1..a_B, b_1..b_B]`) under network
      parameters `p`, any pytree shaped like `params` (the online parameters, or an EMA copy of
      them kept in the state); it is differentiable in `p`. Wrap a part in `jax.lax.stop_gradient`
      to stop gradients through it. `step` is the (traced) integer step number, for schedules
      (e.g. BYOL's EMA rate).
    - `value(params, state, embed) -> scalar`: the loss recorded at the save points (on the
      recording views) and watched for NONFINITE / DIVERGED.

    The rule is part of the checkpoint fingerprint through `repr(rule)`: give it a `__repr__`
    that names its constants (a frozen dataclass does). State leaves are checkpointed like the
    parameters.

    Example (a toy asymmetric method: online net against an EMA target with stop-gradient)::

        @dataclasses.dataclass(frozen=True)
        class EmaTarget(finite.StepRule):
            tau: float = 0.9

            def init(self, params, tx):
                return tx.init(params), params          # (optimiser state, target params)

            def _loss(self, p, target, embed):
                f, g = embed(p), jax.lax.stop_gradient(embed(target))
                n = f.shape[0] // 2                     # online(a) vs target(b), and back
                return jnp.mean((f[:n] - g[n:]) ** 2) + jnp.mean((f[n:] - g[:n]) ** 2)

            def update(self, params, state, embed, tx, step):
                opt, target = state
                grads = jax.grad(self._loss)(params, target, embed)
                u, opt = tx.update(grads, opt, params)
                params = optax.apply_updates(params, u)
                target = jax.tree.map(lambda t, p: self.tau * t + (1 - self.tau) * p,
                                      target, params)   # EMA after the optimiser step
                return params, (opt, target)

            def value(self, params, state, embed):
                return self._loss(params, state[1], embed)

        r = finite.train(model, views, EmaTarget(0.99), lr=0.05, steps=100)
        r.rule_state[1]                                  # the final target parameters
    """

    def init(self, params, tx: optax.GradientTransformation):
        return tx.init(params)

    def update(self, params, state, embed: Callable, tx: optax.GradientTransformation, step):
        raise NotImplementedError(f"{type(self).__name__}.update: a StepRule must define "
                                  "update(params, state, embed, tx, step) -> (params, state)")

    def value(self, params, state, embed: Callable):
        raise NotImplementedError(f"{type(self).__name__}.value: a StepRule must define "
                                  "value(params, state, embed) -> scalar")


@dataclass(frozen=True)
class GradientStep(StepRule):
    """The default rule: one optax step on the gradient of `loss(f)`, `f = embed(params)`.

    loss: a `sslntk.losses.Loss` or a callable `loss(f: (2B, k)) -> scalar` (checked by the
    trainers). With `optax.sgd(lr)` over the full batch this is gradient descent on the SSL loss,
    whose small-lr limit is the NTK gradient flow `df/dt = −Θ ∇_f L` (Jacot et al. 2018)."""

    loss: Callable

    def update(self, params, state, embed, tx, step):
        g = jax.grad(lambda p: self.loss(embed(p)))(params)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    def value(self, params, state, embed):
        return self.loss(embed(params))


# ------------------------------------------------------------------------------------------------
# where a step's views come from


class ViewSource:
    """Where each step's views come from. `views(step, key, inputs, off) -> (x_b, off_b)`: the
    stacked views `(2B, *in_shape)` of step `step` (a traced int; `key` the run's key) from the
    run's `inputs`, and their small-init offsets `(2B, k)` (sliced from `off`, the offsets of
    `inputs` when `precomputed_offsets`), or None to have them evaluated on the new views."""

    precomputed_offsets = True

    def views(self, step, key, inputs, off):
        raise NotImplementedError


@dataclass(frozen=True)
class FixedViews(ViewSource):
    """The full batch of stacked views `(2n, *in_shape)` at every step (full-batch GD/Adam/...)."""

    def views(self, step, key, inputs, off):
        return inputs, off


@dataclass(frozen=True)
class Minibatches(ViewSource):
    """`pairs` positive pairs drawn without replacement at every step from the n pairs of the
    stacked views (`fold_in(key, step)`), both views of each pair kept: `[a_idx, b_idx]`."""

    pairs: int
    n: int

    def views(self, step, key, inputs, off):
        idx = jax.random.choice(jax.random.fold_in(key, step), self.n, (self.pairs,),
                                replace=False)
        sel = jnp.concatenate([idx, idx + self.n])  # keep the [a.., b..] pairing
        return inputs[sel], off[sel]


@dataclass(frozen=True)
class FreshViews(ViewSource):
    """Two NEW augmentations of `batch` source samples (all when None) at every step: with
    `ks = fold_in(key, step)`, the samples `choice(fold_in(ks, 0), n, batch, replace=False)` and
    the views `augment(ka, x_b), augment(kb, x_b)` with `ka, kb = split(fold_in(ks, 1))`. `inputs`
    are the source samples `(n, *in_shape)`; the offsets are evaluated on the new views."""

    augment: Callable
    batch: int | None = None

    precomputed_offsets = False

    def views(self, step, key, inputs, off):
        ks = jax.random.fold_in(key, step)
        n = inputs.shape[0]
        xb = inputs if self.batch is None else inputs[jax.random.choice(
            jax.random.fold_in(ks, 0), n, (self.batch,), replace=False)]
        ka, kb = jax.random.split(jax.random.fold_in(ks, 1))
        return jnp.concatenate([self.augment(ka, xb), self.augment(kb, xb)]), None


# ------------------------------------------------------------------------------------------------
# the compiled pieces


def embedder(graphdef, rest, x, off) -> Callable:
    """`embed(p) = trainable_output(p, x) − off` (offsets evaluated on `x` when `off` is None)."""
    def embed(p):
        o = offsets(graphdef, p, rest, x) if off is None else off
        return trainable_output(graphdef, p, rest, x) - o
    return embed


def over_seeds(fn, in_axes, unrolled=False):
    """`fn` over a leading seed axis of the arguments with axis 0: `jax.vmap` on GPU/TPU; on CPU a
    `lax.map` (a loop over the seeds inside the one compiled call), because XLA's CPU batched
    matmuls are ~3x slower than a loop of plain ones (measured: 8 seeds, width 1024, 50 steps:
    1.43 s vmapped vs 0.47 s looped). With `unrolled` (convolutional models on CPU, see `_loop`:
    a convolution inside a loop body is slow there) the seeds are unrolled at trace time."""
    if jax.default_backend() != "cpu":
        return jax.vmap(fn, in_axes=in_axes)
    if unrolled:
        def unrolled_map(*args):
            S = next(jax.tree.leaves(a)[0].shape[0] for a, ax in zip(args, in_axes, strict=True)
                     if ax is not None and jax.tree.leaves(a))
            outs = [fn(*[a if ax is None else jax.tree.map(lambda v, s=s: v[s], a)
                         for a, ax in zip(args, in_axes, strict=True)]) for s in range(S)]
            return jax.tree.map(lambda *v: jnp.stack(v), *outs)
        return unrolled_map

    def mapped(*args):
        def one(batched):
            it = iter(batched)
            return fn(*[next(it) if ax is not None else a for a, ax in zip(args, in_axes,
                                                                            strict=True)])
        return jax.lax.map(one, tuple(a for a, ax in zip(args, in_axes, strict=True)
                                      if ax is not None))
    return mapped


class Engine:
    """The compiled pieces of one training run: `init(params)`, `offsets(params, rest, x)`,
    `advance(params, state, rest, key, inputs, off, start, nsteps)` (steps `start ..
    start+nsteps−1`) and `record(params, state, rest, x, off, xt, offt) -> (f, loss, f_test)`.

    graphdef: the model's NNX graph; rule: a `StepRule`; tx: the optax transformation handed to
    the rule; source: a `ViewSource`; seeds: every state leaf has a leading seed axis (one
    compiled call for all seeds, `over_seeds`); host_loop: step from the host (`_loop`)."""

    def __init__(self, graphdef, rule: StepRule, tx, source: ViewSource, *, seeds: bool = False,
                 host_loop: bool = False):
        self.graphdef, self.rule, self.tx, self.source = graphdef, rule, tx, source
        self.seeds, self.host_loop = seeds, host_loop

        def step(i, carry, rest, key, inputs, off):
            params, state = carry
            xb, ob = source.views(i, key, inputs, off)
            return rule.update(params, state, embedder(graphdef, rest, xb, ob), tx, i)

        def record(params, state, rest, x, off, xt, offt):
            embed = embedder(graphdef, rest, x, off)
            f = embed(params)
            ft = None if xt is None else trainable_output(graphdef, params, rest, xt) - offt
            return f, rule.value(params, state, embed), ft

        init = lambda p: rule.init(p, tx)  # noqa: E731
        offs = lambda p, r, x: offsets(graphdef, p, r, x)  # noqa: E731
        if seeds:
            inner, u = step, host_loop
            step = lambda i, c, r, k, x, o: over_seeds(  # noqa: E731
                lambda c_, r_, k_, o_: inner(i, c_, r_, k_, x, o_), (0, 0, 0, 0), u)(c, r, k, o)
            record = over_seeds(record, (0, 0, 0, None, 0, None, 0), u)
            offs = over_seeds(offs, (0, 0, None), u)
            init = jax.vmap(init)
        loop = _loop.make_advance(step, host_loop)
        self.advance = lambda params, state, rest, key, inputs, off, start, nsteps: loop(
            (params, state), start, nsteps, rest, key, inputs, off)
        self.record = jax.jit(record)
        self.offsets = jax.jit(offs)
        self.init = init


# ------------------------------------------------------------------------------------------------
# the driver


def describe_model(model) -> str:
    """A stable description of the model for checkpoint fingerprints (no object ids)."""
    attrs = ("arch", "width", "out_dim", "in_shape", "alpha", "param", "base_width", "projector")
    return type(model).__name__ + repr({a: getattr(model, a, None) for a in attrs})


def fingerprint(*parts) -> str:
    """sha256 of the parts (arrays by shape, dtype and bytes; keys by their data; else repr)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, (jax.Array, np.ndarray)):
            a = np.asarray(jax.random.key_data(p) if jnp.issubdtype(p.dtype, jax.dtypes.prng_key)
                           else p)
            h.update(str((a.shape, a.dtype)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Run:
    """What `run` returns: the final `params` and rule `state`; records at the save points (NaN
    after a run failed): `f (T, [S,] N, k)`, `loss (T, [S])`, `f_test`; `status ([S])` and
    `failed_step ([S])` (−1: none); `seconds (T,)` wall seconds per step of the chunk that ends at
    each save point (the first chunk includes compilation; 0 where no step ran)."""

    params: object
    state: object
    f: np.ndarray
    loss: np.ndarray
    f_test: np.ndarray | None
    status: np.ndarray
    failed_step: np.ndarray
    seconds: np.ndarray


def first_failure(engine, prev, rest, key, inputs, off, rec, n_adv, bad, l0) -> np.ndarray:
    """Replay the chunk before a failing save point one step at a time (runs flagged `bad`) and
    return the first step whose recorded loss fails (`failure_code`), −1 where not found / not
    replayed (chunks longer than `REPLAY_MAX`)."""
    params, state, s0 = prev
    first = np.full(np.shape(bad), -1, dtype=np.int64)
    if n_adv <= 0 or n_adv > REPLAY_MAX:
        return first
    for j in range(n_adv):
        params, state = engine.advance(params, state, rest, key, inputs, off, s0 + j, 1)
        _, lv, _ = engine.record(params, state, rest, *rec, None, None)
        hit = bad & (first < 0) & (failure_code(np.asarray(lv), l0) != SUCCESS)
        first = np.where(hit, s0 + j + 1, first)
        if np.all(first[bad] >= 0):
            break
    return first


def run(engine: Engine, params, rest, key, inputs, x_rec, xt, *, steps: int, s_save,
        checkpoint=None, progress: bool = True, label: str = "train", callback=None,
        fingerprint_parts=(), differ: str = "model, data, loss, optimiser or schedule") -> Run:
    """Run `steps` steps of `engine` from `params`, recording at the step indices `s_save`.

    inputs: what the view source draws from (stacked views, or source samples); x_rec: the views
    recorded at the save points (`f`, the loss), often `inputs` itself; xt: test inputs or None;
    key: the run's key (`(S,)` keys with seeds). checkpoint: `.npz` path written atomically at
    every save point and resumed from when it exists and its fingerprint (parameters, data, rule,
    source, schedule, `fingerprint_parts`) matches; `differ` names what may differ in the error.
    callback(i, step, loss) after save point i."""
    state = engine.init(params)
    same = x_rec is inputs
    off = engine.offsets(params, rest, inputs) if engine.source.precomputed_offsets else None
    off_rec = off if same and off is not None else engine.offsets(params, rest, x_rec)
    offt = None if xt is None else engine.offsets(params, rest, xt)
    rec = (x_rec, off_rec)
    T = len(s_save)
    lead = (jax.tree.leaves(params)[0].shape[0],) if engine.seeds else ()
    k = off_rec.shape[-1]
    f_hist = np.full((T, *lead, x_rec.shape[0], k), np.nan, dtype=x_rec.dtype)
    l_hist = np.full((T, *lead), np.nan, dtype=x_rec.dtype)
    ft_hist = None if xt is None else np.full((T, *lead, xt.shape[0], k), np.nan, dtype=x_rec.dtype)
    sec = np.zeros(T)
    status = np.full(lead, SUCCESS, dtype=np.int32)
    failed_step = np.full(lead, -1, dtype=np.int64)
    l0 = None
    treedef = jax.tree.structure((params, state))
    fp = fingerprint(*jax.tree.leaves(params), *jax.tree.leaves(rest), key, inputs,
                     x_rec if not same else "same", xt if xt is not None else "no-test",
                     repr(engine.rule), repr(engine.source), steps, s_save,
                     str(jax.tree.structure((params, rest))), *fingerprint_parts)
    i0, step = 0, 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    z, saved = _io.load_checkpoint(ckpt, fp, treedef, differ=differ)
    if z is not None:
        params, state = saved
        i0, step = int(z["next_save"]), int(z["step"])
        f_hist, l_hist, status, sec = z["f"], z["loss"], z["status"], z["seconds"]
        failed_step, l0 = z["failed_step"], z["loss0"]
        if ft_hist is not None:
            ft_hist = z["f_test"]
    with Progress(steps, label, enabled=progress) as prog:
        prog.update(step)
        for i in range(i0, T):
            if np.all(status != SUCCESS):
                break
            n_adv = int(s_save[i]) - step
            prev = (params, state, step)
            t0 = time.perf_counter()
            if n_adv:
                params, state = engine.advance(params, state, rest, key, inputs, off, step, n_adv)
                jax.block_until_ready(params)
                step = int(s_save[i])
            sec[i] = (time.perf_counter() - t0) / n_adv if n_adv else 0.0
            f, lv, ft = engine.record(params, state, rest, *rec, xt, offt)
            lv = np.asarray(lv)
            if l0 is None:
                l0 = lv
            code = failure_code(lv, l0)
            bad = (code != SUCCESS) & (status == SUCCESS)
            if np.any(bad):
                first = first_failure(engine, prev, rest, key, inputs, off, rec, n_adv, bad, l0)
                failed_step = np.where(bad, np.where(first >= 0, first, step), failed_step)
            status = np.where(bad, code, status).astype(np.int32)
            keep = status == SUCCESS
            f_hist[i] = np.where(keep[..., None, None], np.asarray(f), np.nan)
            l_hist[i] = np.where(keep, lv, np.nan)
            if ft_hist is not None:
                ft_hist[i] = np.where(keep[..., None, None], np.asarray(ft), np.nan)
            prog.update(n_adv, loss=float(np.nanmean(lv)) if np.any(np.isfinite(lv)) else np.nan)
            if ckpt is not None:
                arrays = {f"state_{j}": np.asarray(a)
                          for j, a in enumerate(jax.tree.leaves((params, state)))}
                arrays.update(fingerprint=np.array(fp), next_save=np.array(i + 1),
                              step=np.array(step), f=f_hist, loss=l_hist, status=status,
                              failed_step=failed_step, loss0=np.asarray(l0), seconds=sec)
                if ft_hist is not None:
                    arrays["f_test"] = ft_hist
                _io.atomic_write_npz(ckpt, **arrays)
            if callback is not None:
                callback(i, step, l_hist[i])
        if np.any(status == SUCCESS) and step < steps:
            params, state = engine.advance(params, state, rest, key, inputs, off, step,
                                           steps - step)
            prog.update(steps - step)
    # nothing moved at all (e.g. α = 0 with Barlow Twins: f0 = 0 is a saddle, ∇L = 0)
    moved = np.max(np.abs(f_hist - f_hist[:1]), axis=(0, -2, -1))
    scale = np.max(np.abs(f_hist[:1]), axis=(0, -2, -1))
    still = (status == SUCCESS) & (moved <= 8 * np.finfo(f_hist.dtype).eps * scale) & (T > 1)
    status = np.where(still, STATIONARY, status).astype(np.int32)
    return Run(params=params, state=state, f=f_hist, loss=l_hist, f_test=ft_hist, status=status,
               failed_step=failed_step, seconds=sec)


__all__ = ["StepRule", "GradientStep", "ViewSource", "FixedViews", "Minibatches", "FreshViews",
           "Engine", "Run", "run", "first_failure", "embedder", "over_seeds", "describe_model",
           "fingerprint", "REPLAY_MAX"]
