"""Argument checks shared by `finite`'s public entry points (validated once there; the engine and
the kernels trust what these return): the model, the stacked views, test inputs, the loss, the
save points and the optimiser."""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx

from sslntk import _validate as V
from sslntk import losses as L
from sslntk.finite import _optim, _param
from sslntk.finite._network import ensure_built

OPTIMIZERS = _optim.OPTIMIZERS


def check_model(model):
    """A callable `flax.nnx.Module` (raises TypeError otherwise). Returns it."""
    if not isinstance(model, nnx.Module) or not callable(model):
        raise TypeError(f"model: expected a flax.nnx.Module such as sslntk.finite.network(...), "
                        f"got {type(model).__name__}")
    return model


def param_dtype(model):
    """The dtype of the model's trainable parameters (raises when it has none)."""
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    if not leaves:
        raise ValueError("model: has no trainable nnx.Param variables")
    return leaves[0].dtype


def stacked_inputs(views, model) -> jax.Array:
    """The stacked views `(2n, *in_shape)` of `views` (`Views` with one draw, or an array),
    checked against the model's input shape; a model made without `in_shape` is built here."""
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


def test_inputs(x_test, x, model) -> jax.Array | None:
    """Held-out inputs `(m, *in_shape)` like the views `x` (same dtype), or None."""
    if x_test is None:
        return None
    xt = V.as_float_array("x_test", x_test)
    if xt.ndim < 2 or xt.shape[0] == 0 or xt.shape[1:] != x.shape[1:]:
        raise ValueError(f"x_test: expected a non-empty batch of shape (m, "
                         f"{', '.join(map(str, x.shape[1:]))}) like the views, got {tuple(xt.shape)}")
    V.same_dtype(views=x, x_test=xt)
    return xt


test_inputs.__test__ = False   # not a pytest test despite its name


def check_loss(loss, x, model):
    """`loss` as a `sslntk.losses.Loss` (a name or a Loss) or a jit-ready plain callable
    `loss(f: (2n, k)) -> scalar` (wrapped in `jax.tree_util.Partial`), evaluated abstractly on
    embeddings of the views `x` to check that it takes them and returns a scalar."""
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


def optimizer_for(name, lr, batch_size, n, steps=1, options=None, model=None):
    """`(tx, batch_pairs)`: the optax transformation of `name` (one of `OPTIMIZERS`, or an
    `optax.GradientTransformation` used as is) with μP's per-group factors for a μP model, and the
    minibatch size in positive pairs (None: full batch)."""
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


__all__ = ["OPTIMIZERS", "check_model", "param_dtype", "stacked_inputs", "test_inputs",
           "check_loss", "save_steps", "optimizer_for"]
