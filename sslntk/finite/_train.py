"""Training finite networks on SSL losses with optax (full-batch GD by default).

Time axis (DESIGN.md "Time"): a network trained by full-batch GD with learning rate `lr` for `s`
steps sits at `t = lr·s`, the time of the kernel gradient flow `df/dt = −K ∇_f L`. The same axis is
used for minibatch SGD and Adam (there it is only a clock).

The pure train state is `(graphdef, params, opt_state)` from `nnx.split(model, nnx.Param, ...)`;
the frozen init θ₀ and other non-parameter variables ride along in `rest`. The constant part of the
small-init function, `offset(x) = (1 − α)·g_θ₀(x)`, is computed once per input set, so a step costs
one forward/backward pass of `g_θ`. Steps between two save points run inside one jitted
`lax.fori_loop` (compiled once for any chunk length), or, for convolutional models on CPU, as one
jitted step per iteration queued from the host (`_loop`); the same chunk boundaries are used with
and without a checkpoint, so a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sslntk import _io
from sslntk import _validate as V
from sslntk import losses as L
from sslntk._progress import Progress
from sslntk._status import STATIONARY, SUCCESS
from sslntk._status import names as _status_names
from sslntk.finite import _loop, _optim, _param
from sslntk.finite._network import _check_key, ensure_built
from sslntk.finite._ntk import _f, split_trainable
from sslntk.finite._outcome import _failure, _finish, _first_failure

OPTIMIZERS = _optim.OPTIMIZERS

#: `train` warns when lr·ρ exceeds this (ρ: see `flow_rate`); the expected relative error of the
#: BT step times of GD against the gradient flow is ≈ lr·ρ/2 (stepwise digest §9 check 3: 2ηγ_j,
#: with ρ = 4γ₁ at f ≈ 0), so 0.05 keeps that error below ≈ 2.5 %.
MAX_LR_RATE = 0.05


@dataclass(frozen=True)
class TrainResult:
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
    For `train_batched`, every array has a leading seed axis and `model` is None; `params` then
    holds the stacked final parameter state.
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

    @property
    def ok(self) -> bool:
        return bool(np.all(np.asarray(self.status) == SUCCESS))

    @property
    def status_name(self) -> str:
        return _status_names(self.status)

    def raise_if_failed(self) -> TrainResult:
        """Raise `RuntimeError` naming the status and step unless every run succeeded."""
        if not self.ok:
            raise RuntimeError(f"training failed: status={self.status_name}, failed_step="
                               f"{np.asarray(self.failed_step).tolist()}")
        return self


# ------------------------------------------------------------------------------------------------
# argument checks


def _stacked_inputs(views, model) -> jax.Array:
    x = getattr(views, "stacked", views)
    if getattr(views, "has_draws", False):
        raise ValueError("views: expected single-draw Views (no draw axis), got n_draws = "
                         f"{views.n_draws}; pick one with views.draw(i)")
    x = V.stacked_views("views", x, ndim=range(2, 6))
    ensure_built(model, x)
    in_shape = getattr(model, "in_shape", None)
    if in_shape is not None and tuple(x.shape[1:]) != in_shape:
        raise ValueError(f"views: expected stacked views of shape (2n, {', '.join(map(str, in_shape))})"
                         f" for this {model.arch.kind} network, got {tuple(x.shape)}")
    return x


def _test_inputs(x_test, x, model) -> jax.Array | None:
    if x_test is None:
        return None
    xt = V.as_float_array("x_test", x_test)
    if xt.ndim < 2 or xt.shape[0] == 0 or xt.shape[1:] != x.shape[1:]:
        raise ValueError(f"x_test: expected a non-empty batch of shape (m, "
                         f"{', '.join(map(str, x.shape[1:]))}) like the views, got {tuple(xt.shape)}")
    V.same_dtype(views=x, x_test=xt)
    return xt


def _check_loss(loss, x, model):
    loss = L.as_loss(loss) if isinstance(loss, (str, L.Loss)) else loss
    if not callable(loss):
        raise TypeError(f"loss: expected a sslntk.losses.Loss, a loss name or a callable "
                        f"loss(f) -> scalar, got {type(loss).__name__}")
    k = getattr(model, "out_dim", None)
    f_shape = jax.ShapeDtypeStruct((x.shape[0], k), x.dtype) if k else None
    if f_shape is not None:
        try:
            out = jax.eval_shape(loss, f_shape)
        except Exception as e:  # noqa: BLE001 - report what the loss could not take
            raise ValueError(f"loss: cannot be evaluated on embeddings of shape {f_shape.shape} "
                             f"(2n views × k = {k} outputs): {e}") from e
        if getattr(out, "shape", None) != ():
            raise ValueError(f"loss: expected a scalar for embeddings {f_shape.shape}, got shape "
                             f"{getattr(out, 'shape', out)}")
    if not isinstance(loss, L.Loss):  # a plain function: make it a (static) pytree for jax.jit
        loss = jax.tree_util.Partial(loss)
    return loss


def save_steps(lr: float, steps: int, ts=None) -> np.ndarray:
    """Step indices of the save points: `rint(ts / lr)` (default: 101 evenly spaced points over
    `[0, steps]`, or every step when `steps < 100`). Raises when `ts` is not finite, negative,
    not increasing, beyond `lr·steps`, or two times fall on the same step."""
    V.positive_float("lr", lr)
    steps = V.positive_int("steps", steps)
    if ts is None:
        return np.unique(np.rint(np.linspace(0, steps, min(steps, 100) + 1)).astype(np.int64))
    t = np.asarray(ts, dtype=np.float64)
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)):
        raise ValueError(f"ts: expected a non-empty 1-D array of finite times, got {ts!r}")
    if np.any(t < 0) or np.any(np.diff(t) <= 0):
        raise ValueError(f"ts: expected non-negative, strictly increasing times, got {t}")
    s = np.rint(t / lr).astype(np.int64)
    if s[-1] > steps:
        raise ValueError(f"ts: expected times <= lr·steps = {lr * steps:g}, got max {t[-1]:g}")
    if np.any(np.diff(s) <= 0):
        raise ValueError(f"ts: two times fall on the same GD step at lr = {lr:g} (spacing below "
                         f"lr); got steps {s.tolist()}")
    return s


def _optimizer(name, lr, batch_size, n, steps=1, options=None, model=None):
    if isinstance(name, optax.GradientTransformation):
        if options:
            raise ValueError("optimizer_options: not used with an optax GradientTransformation")
        if getattr(model, "param", "ntk") == "mup":
            raise ValueError("optimizer: a μP model needs its per-group learning rates; pass the "
                             "optimiser by name (e.g. 'sgd', 'adam') so that train applies them")
        return name, (None if batch_size in (None, n) else V.positive_int("batch_size",
                                                                           batch_size))
    V.choice("optimizer", name, OPTIMIZERS)
    if batch_size is not None:
        batch_size = V.positive_int("batch_size", batch_size)
        if batch_size > n:
            raise ValueError(f"batch_size: expected at most n = {n} positive pairs, got {batch_size}")
    if name == "gd":
        if batch_size not in (None, n):
            raise ValueError(f"batch_size: optimizer='gd' is full-batch; got batch_size="
                             f"{batch_size} (use optimizer='sgd' for minibatches)")
        batch_size = None
    elif name == "sgd" and batch_size is None:
        raise ValueError("batch_size: optimizer='sgd' needs a minibatch size (positive pairs per "
                         "step); use optimizer='gd' for full batch")
    if batch_size == n:
        batch_size = None
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"optimizer_options: expected a dict, got {type(options).__name__}")
    tx = _optim.make_optimizer(name, lr, steps, **(options or {}))
    if model is not None and getattr(model, "param", "ntk") == "mup":
        _param.lr_multiplier("mup", "hidden.W", name, 1, 1)       # raises for LARS
        tx = _param.with_param_groups(tx, model, nnx.state(model, nnx.Param), name)
    return tx, batch_size


# ------------------------------------------------------------------------------------------------
# the pure engine (single model, or vmapped over a leading seed axis)


def _offsets(graphdef, params, rest, x):
    m = nnx.merge(graphdef, params, rest)
    if hasattr(m, "offset"):
        return m.offset(x)
    return jnp.zeros((x.shape[0], jax.eval_shape(m, x).shape[-1]), x.dtype)


def _over_seeds(fn, in_axes, unrolled=False):
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
                     if ax is not None)
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


@dataclass(frozen=True)
class _Engine:
    graphdef: object
    loss: Callable
    tx: optax.GradientTransformation
    batch_pairs: int | None
    n: int
    vmapped: bool
    host_loop: bool = False     # step from the host (`_loop`: convolutions on CPU)

    def _step(self, step, carry, rest, key, x, off):
        """One optimiser step number `step` (traced int) on `carry = (params, opt_state)`."""
        gd, loss = self.graphdef, self.loss

        def loss_fn(p, xb, ob):
            return loss(_f(gd, p, rest, xb) - ob)

        p, o = carry
        if self.batch_pairs is None:
            xb, ob = x, off
        else:
            idx = jax.random.choice(jax.random.fold_in(key, step), self.n,
                                    (self.batch_pairs,), replace=False)
            sel = jnp.concatenate([idx, idx + self.n])  # keep [a.., b..] pairing
            xb, ob = x[sel], off[sel]
        g = jax.grad(loss_fn)(p, xb, ob)
        u, o = self.tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    def _record(self, params, rest, x, off, xt, offt):
        f = _f(self.graphdef, params, rest, x) - off
        ft = None if xt is None else _f(self.graphdef, params, rest, xt) - offt
        return f, self.loss(f), ft

    def __post_init__(self):
        step, rec, offs = self._step, self._record, lambda p, r, x: _offsets(self.graphdef, p, r, x)
        if self.vmapped:
            inner, u = step, self.host_loop
            step = lambda i, c, r, k, x, o: _over_seeds(  # noqa: E731
                lambda c_, r_, k_, o_: inner(i, c_, r_, k_, x, o_), (0, 0, 0, 0), u)(c, r, k, o)
            rec = _over_seeds(rec, (0, 0, None, 0, None, 0), u)
            offs = _over_seeds(offs, (0, 0, None), u)
        loop = _loop.make_advance(step, self.host_loop)
        object.__setattr__(self, "advance", lambda params, opt_state, rest, key, x, off, start,
                           nsteps: loop((params, opt_state), start, nsteps, rest, key, x, off))
        object.__setattr__(self, "record", jax.jit(rec))
        object.__setattr__(self, "offsets", jax.jit(offs))

    def __hash__(self):
        return id(self)


def _describe(model) -> str:
    """A stable description of the model for checkpoint fingerprints (no object ids)."""
    attrs = ("arch", "width", "out_dim", "in_shape", "alpha", "param", "base_width", "projector")
    return type(model).__name__ + repr({a: getattr(model, a, None) for a in attrs})


def _fingerprint(*parts) -> str:
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


def _run(engine, params, rest, keys, x, xt, loss, lr, steps, s_save, *, checkpoint, progress,
         label, callback, fingerprint_parts):
    """Shared driver: initial optimiser state, offsets, chunks between save points, checkpoints."""
    opt_state = (jax.vmap(engine.tx.init) if engine.vmapped else engine.tx.init)(params)
    off = engine.offsets(params, rest, x)
    offt = None if xt is None else engine.offsets(params, rest, xt)
    T = len(s_save)
    lead = (jax.tree.leaves(params)[0].shape[0],) if engine.vmapped else ()
    f_hist = np.full((T, *lead, x.shape[0], off.shape[-1]), np.nan, dtype=x.dtype)
    l_hist = np.full((T, *lead), np.nan, dtype=x.dtype)
    ft_hist = None if xt is None else np.full((T, *lead, xt.shape[0], off.shape[-1]), np.nan,
                                              dtype=x.dtype)
    status = np.full(lead, SUCCESS, dtype=np.int32)
    failed_step = np.full(lead, -1, dtype=np.int64)
    l0 = None
    treedef = jax.tree.structure((params, opt_state))
    fp = _fingerprint(*jax.tree.leaves(params), *jax.tree.leaves(rest), keys, x,
                      xt if xt is not None else "no-test", repr(loss), lr, steps, s_save,
                      engine.batch_pairs, str(jax.tree.structure((params, rest))),
                      *fingerprint_parts)
    i0, step = 0, 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    z, state = _io.load_checkpoint(ckpt, fp, treedef, differ="model, data, loss, optimiser or "
                                                             "schedule")
    if z is not None:
        params, opt_state = state
        i0, step = int(z["next_save"]), int(z["step"])
        f_hist, l_hist, status = z["f"], z["loss"], z["status"]
        failed_step = z["failed_step"] if "failed_step" in z else failed_step
        l0 = z["loss0"] if "loss0" in z else None
        if ft_hist is not None:
            ft_hist = z["f_test"]
    with Progress(steps, label, enabled=progress) as prog:
        prog.update(step)
        for i in range(i0, T):
            if np.all(status != SUCCESS):
                break
            n_adv = int(s_save[i]) - step
            prev = (params, opt_state, step)
            if n_adv:
                params, opt_state = engine.advance(params, opt_state, rest, keys, x, off, step,
                                                   n_adv)
                step = int(s_save[i])
            f, lv, ft = engine.record(params, rest, x, off, xt, offt)
            lv = np.asarray(lv)
            if l0 is None:
                l0 = lv
            code = _failure(lv, l0)
            bad = (code != SUCCESS) & (status == SUCCESS)
            if np.any(bad):
                first = _first_failure(engine, prev, rest, keys, x, off, n_adv, bad, l0)
                failed_step = np.where(bad, np.where(first >= 0, first, step), failed_step)
            status = np.where(bad, code, status).astype(np.int32)
            keep = status == SUCCESS
            f_hist[i] = np.where(keep[..., None, None], np.asarray(f), np.nan)
            l_hist[i] = np.where(keep, lv, np.nan)
            if ft_hist is not None:
                ft_hist[i] = np.where(keep[..., None, None], np.asarray(ft), np.nan)
            prog.update(n_adv, loss=float(np.nanmean(lv)) if np.any(np.isfinite(lv)) else np.nan)
            if ckpt is not None:
                leaves = jax.tree.leaves((params, opt_state))
                arrays = {f"state_{j}": np.asarray(a) for j, a in enumerate(leaves)}
                arrays.update(fingerprint=np.array(fp), next_save=np.array(i + 1),
                              step=np.array(step), f=f_hist, loss=l_hist, status=status,
                              failed_step=failed_step, loss0=np.asarray(l0))
                if ft_hist is not None:
                    arrays["f_test"] = ft_hist
                _io.atomic_write_npz(ckpt, **arrays)
            if callback is not None:
                callback(i, step, l_hist[i])
        if np.any(status == SUCCESS) and step < steps:
            params, opt_state = engine.advance(params, opt_state, rest, keys, x, off, step,
                                               steps - step)
            prog.update(steps - step)
    # nothing moved at all (e.g. α = 0 with Barlow Twins: f0 = 0 is a saddle, ∇L = 0)
    moved = np.max(np.abs(f_hist - f_hist[:1]), axis=(0, -2, -1))
    scale = np.max(np.abs(f_hist[:1]), axis=(0, -2, -1))
    still = (status == SUCCESS) & (moved <= 8 * np.finfo(f_hist.dtype).eps * scale) \
        & (len(s_save) > 1)
    status = np.where(still, STATIONARY, status).astype(np.int32)
    return params, f_hist, l_hist, ft_hist, status, failed_step


# ------------------------------------------------------------------------------------------------
# step-size check


def flow_rate(model, x, loss, *, iters: int = 30, key=None) -> float:
    """ρ: spectral radius of the linearised function-space GD map at init, `Θ·∇²_f L(f₀)`.

    `Θ = J Jᵀ` is the model's full tangent kernel on the stacked views (all outputs; `K ⊗ I_k` at
    infinite width; `J S Jᵀ` for a μP model, S its per-group GD learning-rate factors) and
    `∇²_f L(f₀)` the loss Hessian at the initial embeddings `f₀`. A GD step
    `f ← f − lr·Θ∇L(f)` follows the gradient flow only while `lr·ρ ≪ 1` (and is unstable past
    `lr·ρ = 2`). For Barlow Twins near `f = 0`, `∇²L = −(4/2n)·Z ⊗ I`, so `ρ = 4γ₁` with γ₁ the top
    eigenvalue of `M = K^{1/2} Z K^{1/2}/2n` (stepwise digest §6); the learned modes' own rate
    reaches `8γ_j` as `C → I`. Estimated by power iteration on `A²` (`A = Θ·∇²L`, similar to a
    symmetric matrix, so its eigenvalues are real and `A²` has a unique dominant modulus) using
    one VJP, one JVP and one Hessian-vector product per application.
    """
    x = _stacked_inputs(x, model)
    loss = _check_loss(loss, x, model)
    iters = V.positive_int("iters", iters)
    graphdef, params, rest = split_trainable(model)
    return float(_flow_rate(graphdef, params, rest, x, loss, iters,
                            jax.random.key(0) if key is None else key,
                            _gd_scales(model, params)))


def _gd_scales(model, params):
    """μP's per-group SGD learning-rate factors as a pytree like `params` (None otherwise): full-
    batch GD on a μP model runs the kernel `Θ = J S Jᵀ`, not `J Jᵀ`."""
    if getattr(model, "param", "ntk") != "mup":
        return None
    groups = _param.param_groups(model, params)
    return jax.tree.map(lambda g: _param.lr_multiplier("mup", g, "gd", model.width,
                                                       model.base_width), groups)


def _flow_rate(graphdef, params, rest, x, loss, iters, key, scales=None):
    off = _offsets(graphdef, params, rest, x)
    fwd = lambda p: _f(graphdef, p, rest, x)
    f0 = fwd(params) - off

    def A(v):
        hv = jax.jvp(jax.grad(loss), (f0,), (v,))[1]
        _, vjp = jax.vjp(fwd, params)
        (ct,) = vjp(hv)
        if scales is not None:
            ct = jax.tree.map(lambda a, s: a * s, ct, scales)
        return jax.jvp(fwd, (params,), (ct,))[1]

    def body(_, c):
        v, _ = c
        w = A(A(v))
        nw = jnp.linalg.norm(w)
        return w / jnp.where(nw > 0, nw, 1), nw

    v = jax.random.normal(key, f0.shape, f0.dtype)
    v, nw = jax.lax.fori_loop(0, iters, body, (v / jnp.linalg.norm(v), jnp.zeros((), f0.dtype)))
    return jnp.sqrt(nw)


_flow_rate = jax.jit(_flow_rate, static_argnums=(0, 5))


def _warn_rate(lr, rho, where=""):
    rate = lr * rho
    if np.any(rate > MAX_LR_RATE):
        rmax = float(np.max(rate))
        warnings.warn(
            f"{where}lr·ρ = {rmax:.3g} > {MAX_LR_RATE} (lr = {lr:g}, ρ = {float(np.max(rho)):.4g}, "
            f"the fastest rate of the linearised flow Θ·∇²L at init): full-batch GD is too coarse "
            f"for a gradient-flow comparison (expected relative step-time error ≈ lr·ρ/2 = "
            f"{rmax / 2:.2%}); lower lr below {MAX_LR_RATE / float(np.max(rho)):.3g}",
            RuntimeWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------
# public entry points


def _common_checks(model, views, loss, lr, steps, optimizer, batch_size, ts, x_test,
                   optimizer_options=None, loop="auto"):
    V.choice("loop", loop, _loop.LOOPS)
    if not isinstance(model, nnx.Module) or not callable(model):
        raise TypeError(f"model: expected a flax.nnx.Module such as sslntk.finite.network(...), "
                        f"got {type(model).__name__}")
    x = _stacked_inputs(views, model)
    V.positive_float("lr", lr)
    steps = V.positive_int("steps", steps)
    loss = _check_loss(loss, x, model)
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    if not leaves:
        raise ValueError("model: has no trainable nnx.Param variables")
    if x.dtype != leaves[0].dtype:
        raise TypeError(f"views: expected the model's dtype {leaves[0].dtype}, got {x.dtype}")
    xt = _test_inputs(x_test, x, model)
    tx, bp = _optimizer(optimizer, float(lr), batch_size, x.shape[0] // 2, steps,
                        optimizer_options, model)
    if bp is not None and getattr(model, "couples_batch", False) and getattr(model, "alpha", 1) != 1:
        raise ValueError("batch_size: a BatchNorm model with alpha != 1 needs its offset on each "
                         "minibatch; use finite.train_augmented (offsets per step) or full batch")
    s_save = save_steps(float(lr), steps, ts)
    return x, xt, loss, steps, tx, bp, s_save


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
      loss: `sslntk.losses.Loss`, a loss name, or a callable `loss(f: (2n, k)) -> scalar`.
      lr: learning rate. steps: optimiser steps; time `t = lr·step` (DESIGN.md "Time").
      optimizer: "gd" (full-batch `optax.sgd`, the gradient-flow comparison), "sgd" (minibatches
        of `batch_size` positive pairs drawn without replacement each step, both views kept),
        "momentum", "adam", "adamw" or "lars" (full batch unless `batch_size`; see
        `sslntk.finite._optim`), or any `optax.GradientTransformation`. A μP model
        (`param="mup"`) gets its per-group learning-rate factors (`_param`) on top.
      optimizer_options: dict for `_optim.make_optimizer`: momentum, nesterov, weight_decay,
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
      loop: "auto", "device" or "host": how the steps between save points run (`_loop`): one
        compiled `lax.fori_loop` ("device"), or one compiled step per iteration queued from the
        host ("host"; the default "auto" picks it on CPU for models with convolutions, which XLA:CPU
        runs several times slower inside a loop body).

    Outcome: `status` / `failed_step` (see `TrainResult`); a RuntimeWarning names the status and
    the step when a run did not succeed (`result.raise_if_failed()` makes it an error).
    """
    x, xt, loss, steps, tx, bp, s_save = _common_checks(model, views, loss, lr, steps, optimizer,
                                                        batch_size, ts, x_test, optimizer_options,
                                                        loop)
    if key is None:
        if bp is not None:
            raise ValueError(f"key: minibatch training (optimizer={optimizer!r}, batch_size="
                             f"{batch_size}) draws random batches and needs a jax.random key")
        key = jax.random.key(0)
    _check_key(key)
    graphdef, params, rest = split_trainable(model)
    rate = None
    if check_lr and optimizer == "gd":
        rho = float(_flow_rate(graphdef, params, rest, x, loss, 30, jax.random.fold_in(key, 1),
                               _gd_scales(model, params)))
        rate = np.asarray(lr * rho)
        _warn_rate(float(lr), rho)
    host = _loop.use_host_loop(loop, lambda p, xx: _f(graphdef, p, rest, xx), params, x)
    engine = _Engine(graphdef, loss, tx, bp, x.shape[0] // 2, False, host)
    params, f, lv, ft, status, fstep = _run(
        engine, params, rest, key, x, xt, loss, float(lr), steps, s_save, checkpoint=checkpoint,
        progress=progress, label=f"train {type(model).__name__} width "
                                 f"{getattr(model, 'width', '?')}",
        callback=callback, fingerprint_parts=(_describe(model), optimizer,
                                              repr(sorted((optimizer_options or {}).items()))))
    res = TrainResult(ts=s_save * float(lr), steps=s_save, f=jnp.asarray(f), loss=jnp.asarray(lv),
                      f_test=None if ft is None else jnp.asarray(ft), status=status,
                      model=nnx.merge(graphdef, params, rest), lr_rate=rate, failed_step=fstep)
    return _finish(res, loss, record_terms=record_terms, diagnostics=diagnostics,
                   collapse_threshold=collapse_threshold, batched=False, where="finite.train")


def train_batched(models_state, views, loss, *, lr: float, steps: int, optimizer: str = "gd",
                  batch_size: int | None = None, ts=None, x_test=None, keys, checkpoint=None,
                  progress: bool = True, check_lr: bool = True, record_terms: bool = False,
                  diagnostics: bool = False, collapse_threshold: float | None = None,
                  loop: str = "auto") -> TrainResult:
    """`train` for several same-shaped networks at once, over a leading seed axis (one compiled
    call: `jax.vmap` on GPU/TPU, a `lax.map` on CPU, see `_over_seeds`).

    `models_state = (graphdef, params, rest)` with every leaf of `params`/`rest` stacked along axis 0
    (see `stack_models`); `keys`: `(S,)` keys. Results carry a leading seed axis after time:
    `f: (T, S, 2n, k)`, `loss: (T, S)`, `status: (S,)`, `failed_step: (S,)`, terms and
    diagnostics `(T, S)`; `params` holds the final stacked state.
    """
    graphdef, params, rest = models_state
    model0 = nnx.merge(graphdef, *jax.tree.map(lambda a: a[0], (params, rest)))
    x, xt, loss, steps, tx, bp, s_save = _common_checks(model0, views, loss, lr, steps, optimizer,
                                                        batch_size, ts, x_test, loop=loop)
    rate = None
    if check_lr and optimizer == "gd":
        sc = _gd_scales(model0, jax.tree.map(lambda a: a[0], params))
        rho = np.asarray(jax.vmap(lambda p, r, k: _flow_rate(graphdef, p, r, x, loss, 30, k, sc))(
            params, rest, jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)))
        rate = lr * rho
        _warn_rate(float(lr), rho)
    g0, p0, r0 = split_trainable(model0)
    host = _loop.use_host_loop(loop, lambda p, xx: _f(g0, p, r0, xx), p0, x)
    engine = _Engine(graphdef, loss, tx, bp, x.shape[0] // 2, True, host)
    params, f, lv, ft, status, fstep = _run(
        engine, params, rest, keys, x, xt, loss, float(lr), steps, s_save, checkpoint=checkpoint,
        progress=progress, label=f"train {keys.shape[0]} seeds width {getattr(model0, 'width', '?')}",
        callback=None, fingerprint_parts=(_describe(model0), optimizer, "batched"))
    res = TrainResult(ts=s_save * float(lr), steps=s_save, f=jnp.asarray(f), loss=jnp.asarray(lv),
                      f_test=None if ft is None else jnp.asarray(ft), status=status,
                      model=None, lr_rate=rate, params=(graphdef, params, rest),
                      failed_step=fstep)
    return _finish(res, loss, record_terms=record_terms, diagnostics=diagnostics,
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
