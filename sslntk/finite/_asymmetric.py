"""Finite-width training of the asymmetric methods (BYOL, SimSiam, DirectPred, DINO, SwAV) with the
same method objects the kernel regime integrates (`sslntk.methods`).

`MethodRule(method, lr, aux0)` is a `finite.StepRule`: the online network is trained by the
optimiser on `Jᵀ g`, where `g = method.force(state)` is the gradient of the method's loss with
respect to the online embeddings with every auxiliary held fixed (stop-gradient); an EMA target
(BYOL) / teacher (DINO) is a target NETWORK whose parameters follow
`ξ ← m ξ + (1 − m) θ_new` after the optimiser step, `m = 1 − lr·beta(t)`; the predictor head
(`W_p (k, k)`, trained at `alpha_p × lr` by SGD, or DirectPred's), DINO's centre and SwAV's
prototypes are updated by the method's own discrete step, in the official order. In the kernel
regime (a linearised network) this is exactly the function-space method's `step` with the
network's empirical NTK, because the target network's output is then the EMA of the online outputs.

`train_method(model, views, method, lr=..., steps=...)` builds the rule from the network's own
initial embeddings `f0` and runs `finite.train`; the target network starts as a copy of the online
one, at zero parameters or as an independent draw (`method.target_init`). With `head=` the
predictor is an MLP (`finite.MLPPredictor`) or DINO gets its projection head (`finite.DINOHead`),
trained beside the network (`finite._head_rules`). `train_method_augmented` runs the same rules on
a new pair of augmented views every step (`finite.train_augmented`, view source `FreshViews`).

Weight decay: the function-space `eta·f` term is exact only for models linear in their parameters
with f(0) = 0; at finite width pass `optimizer_options={"weight_decay": ...}` instead (the rule
ignores `method.eta`). See docs/theory/asymmetric.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sslntk import _validate as V
from sslntk import methods as _methods
from sslntk.finite._engine import StepRule
from sslntk.finite._head_rules import DINOHeadRule, PredictorHeadRule
from sslntk.finite._heads import DINOHead, MLPPredictor
from sslntk.finite._inputs import param_dtype, stacked_inputs
from sslntk.finite._network import Linearized, Network, network
from sslntk.finite._optim import make_optimizer
from sslntk.finite._state import embeddings, split_trainable

_TARGET_KEYS = ("target", "teacher")


class _NoKernel:
    """The kernel operator handed to `method.step` for the auxiliaries: the online step is the
    optimiser's, so the function-space update of f is discarded (zeros)."""

    def __call__(self, g):
        return jnp.zeros_like(g)

    def test(self, g):
        return None


def _target_key(aux):
    for k in _TARGET_KEYS:
        if isinstance(aux, dict) and k in aux:
            return k
    return None


@dataclasses.dataclass(frozen=True)
class MethodRule(StepRule):
    """A `finite.StepRule` running an asymmetric `sslntk.methods` method on a network.

    Attributes:
      method: a `methods.Predictive` (BYOL / SimSiam / DirectPred), `methods.DINO` or
        `methods.SwAV` (`methods.KernelPredictor` needs K⁺ and is kernel-regime only).
      lr: the training learning rate (the EMA / centre / predictor rates per unit time become
        per-step factors `1 − lr·rate`, as in the function-space `step`).
      aux0: the method's initial auxiliary state (`method.init(f0, ...).aux`); its target /
        teacher entry is replaced by a target network.
      target0: the target network's initial parameters (a pytree like the online ones), or None
        for a copy of the online network (`train_method` builds it from `target_init`).

    State: `(optimiser state, target parameters or None, aux)`.
    """

    method: Any
    lr: float
    aux0: Any
    target0: Any = None

    def __repr__(self):   # the checkpoint fingerprint: the method and its constants
        return (f"MethodRule({self.method!r}, lr={self.lr!r}, "
                f"target={'copy' if self.target0 is None else 'given'})")

    def init(self, params, tx):
        aux = dict(self.aux0)
        key = _target_key(aux)
        target = None
        if key is not None:
            aux.pop(key)
            target = params if self.target0 is None else self.target0
        return tx.init(params), target, aux

    def _state(self, params, target, aux, embed):
        f = embed(params)
        full = dict(aux)
        key = _target_key(self.aux0)
        if key is not None:
            full[key] = jax.lax.stop_gradient(embed(target))
        return _methods.State(f=f, aux=full)

    def update(self, params, state, embed, tx, step):
        opt, target, aux = state
        st = self._state(params, target, aux, embed)
        g = jax.lax.stop_gradient(self.method.force(st))
        _, vjp = jax.vjp(embed, params)
        (grads,) = vjp(g)                       # Jᵀ g: the online gradient with aux fixed
        u, opt = tx.update(grads, opt, params)
        params_new = optax.apply_updates(params, u)
        new = self.method.step(st, self.lr, _NoKernel()).aux
        key = _target_key(self.aux0)
        if key is not None:
            new = dict(new)
            new.pop(key)
            m = 1.0 - self.lr * self.method.ema(aux["t"])
            target = jax.tree.map(lambda a, b: m * a + (1 - m) * b, target, params_new)
        return params_new, (opt, target, new)

    def value(self, params, state, embed):
        _, target, aux = state
        return self.method.loss(self._state(params, target, aux, embed))


def _target_params(model, method, target_key):
    """The target network's initial parameters for `method.target_init` (None: a copy)."""
    how = getattr(method, "target_init", getattr(method, "teacher_init", "copy"))
    if how == "copy" or getattr(method, "ema", None) is None:
        return None
    if isinstance(method, _methods.DINO):
        raise ValueError("method: finite-width DINO copies the teacher at init (official); got "
                         f"teacher_init={how!r}")
    if isinstance(model, Linearized) or not isinstance(model, Network) or model.alpha != 1.0:
        raise ValueError(f"method: target_init={how!r} at finite width needs a plain "
                         f"finite.network with alpha=1 (a zero or independently drawn target is "
                         f"outside the linearisation around the online init, and the small-init "
                         f"offset would shift its output); got {type(model).__name__} with "
                         f"alpha={getattr(model, 'alpha', None)}")
    _, params, _ = split_trainable(model)
    if how == "zero":     # Tian et al.'s W_a(0) = 0: zero parameters, zero output
        return jax.tree.map(jnp.zeros_like, params)
    if target_key is None:
        raise ValueError("target_key: target_init='independent' draws the target network with "
                         "its own jax.random key (official BYOL); got none")
    V.check_key("target_key", target_key)
    other = network(model.arch, model.width, model.out_dim, key=target_key,
                    in_shape=model.in_shape, dtype=model.dtype, param=model.param,
                    base_width=model.base_width, projector=model.projector)
    return split_trainable(other)[1]


def _head_tx(optimizer, lr, steps, optimizer_options, ratio):
    """The head's optimiser: the network's (by name, without μP groups, or the given optax
    transformation) with its updates scaled by the learning-rate ratio."""
    if isinstance(optimizer, optax.GradientTransformation):
        base = optimizer
    else:
        base = make_optimizer(optimizer, lr, steps, **(optimizer_options or {}))
    return optax.chain(base, optax.scale(float(ratio)))


def _check_method(method, head):
    if not isinstance(method, _methods.Method):
        raise TypeError(f"method: expected a sslntk.methods method (BYOL, SimSiam, DirectPred, "
                        f"DINO, SwAV), got {type(method).__name__}")
    if getattr(method, "predictor", None) == "kernel":
        raise ValueError("method: the kernel-consistent predictor needs the kernel's "
                         "pseudo-inverse and runs in the kernel regime only; got "
                         f"{method.label}")
    if head is None:
        return
    if isinstance(head, MLPPredictor):
        if not (isinstance(method, _methods.Predictive) and method.predictor == "trained"):
            raise ValueError(f"head: an MLPPredictor replaces the trained linear predictor of "
                             f"BYOL / SimSiam (predictor='trained'); got {method.label} with "
                             f"predictor={getattr(method, 'predictor', None)!r}")
    elif isinstance(head, DINOHead):
        if not isinstance(method, _methods.DINO):
            raise ValueError(f"head: a DINOHead goes with methods.DINO, got {method.label}")
    else:
        raise TypeError(f"head: expected a finite.MLPPredictor or finite.DINOHead, got "
                        f"{type(head).__name__}")


def _rule(model, x, method, lr, steps, key, init_options, head, head_key, target_key,
          optimizer, optimizer_options):
    """The step rule of `train_method` / `train_method_augmented` (f0 on the views `x`)."""
    target0 = _target_params(model, method, target_key)
    if head is not None:
        hk = jax.random.key(0) if head_key is None else head_key
        V.check_key("head_key", hk)
        head0 = head.init(hk, model.out_dim, param_dtype(model))
        if isinstance(head, MLPPredictor):
            return PredictorHeadRule(method, float(lr), head, head0,
                                     _head_tx(optimizer, lr, steps, optimizer_options,
                                              method.alpha_p), target0)
        return DINOHeadRule(method, float(lr), head, head0,
                            _head_tx(optimizer, lr, steps, optimizer_options, 1.0))
    f0 = jnp.asarray(model(x))
    opts = dict(init_options or {})
    if target0 is not None and isinstance(method, _methods.Predictive):
        graphdef, _, rest = split_trainable(model)
        opts.setdefault("target0", embeddings(graphdef, target0, rest, x))
    state0 = method.init(f0, key, **opts)
    return MethodRule(method, float(lr), state0.aux, target0)


def train_method(model, views, method, *, lr: float, steps: int, key=None, init_options=None,
                 head=None, head_key=None, target_key=None, **train_options):
    """Train `model` with an asymmetric `method` (BYOL, SimSiam, DirectPred, DINO, SwAV) by
    `finite.train`; the method's auxiliaries start from the network's own initial embeddings
    `f0 = model(views)` (`method.init(f0, key, **init_options)`).

    Args:
      model: a `finite.network(...)` / `finite.linearize(...)`.
      views: stacked inputs `(2n, ...)` or `Views`.
      method: a `sslntk.methods` asymmetric method.
      lr, steps: as `finite.train` (t = lr·steps). key: for the method's init (SwAV prototypes).
      init_options: extra `method.init` keywords (e.g. `predictor0`).
      head: None (the method's own predictor / raw logits), a `finite.MLPPredictor` (BYOL /
        SimSiam with `predictor="trained"`: the predictor is that MLP, trained at
        `method.alpha_p × lr` by the same optimiser; `PredictorHeadRule`) or a `finite.DINOHead`
        (DINO's projection head on student and EMA teacher; `DINOHeadRule`). head_key: the
        head's init key (default `jax.random.key(0)`).
      target_key: the key of the independently drawn target network (`target_init=
        "independent"`, official BYOL). The target network starts as a copy of the online one
        ("copy"), at zero parameters ("zero", Tian et al.'s `W_a(0) = 0`) or as an independent
        draw of the same architecture ("independent"); the last two need a plain network with
        alpha = 1.
      train_options: passed to `finite.train` (ts, optimizer, optimizer_options, progress, ...).

    Returns: the `finite.TrainResult`; `rule_state`: `(optimiser state, target parameters,
    aux)` without a head; the head rules' state dicts (`head` holds the trained head) with one.

    Example:
      >>> import jax
      >>> from sslntk import finite, kernels, methods
      >>> m = finite.network(kernels.mlp(1, "erf"), 64, 2, key=jax.random.key(0), in_shape=(3,))
      >>> x = jax.random.normal(jax.random.key(1), (8, 3))
      >>> r = finite.train_method(m, x, methods.SimSiam(), lr=0.1, steps=5, progress=False)
      >>> r = finite.train_method(m, x, methods.SimSiam(form="cosine"), lr=0.1, steps=5,
      ...                         head=finite.MLPPredictor(hidden=32), progress=False)
    """
    from sslntk.finite._train import train

    _check_method(method, head)
    V.positive_float("lr", lr)
    steps = V.positive_int("steps", steps)
    x = stacked_inputs(views, model)
    rule = _rule(model, x, method, lr, steps, key, init_options, head, head_key, target_key,
                 train_options.get("optimizer", "gd"), train_options.get("optimizer_options"))
    return train(model, x, rule, lr=lr, steps=steps, **train_options)


def train_method_augmented(model, x, augment, method, *, key, lr: float, steps: int,
                           init_options=None, head=None, head_key=None, target_key=None,
                           eval_views=None, **train_options):
    """`train_method` on fresh augmentations: at every step a NEW pair of views of (a minibatch
    of) the source samples `x (n, *in_shape)` (`finite.train_augmented`, view source
    `FreshViews`: `augment(ka, x_b), augment(kb, x_b)` with keys from `fold_in(key, step)`). The
    method's auxiliaries start from `f0` on the fixed evaluation views (`eval_views`, default one
    draw with `fold_in(key, 2**31 − 1)`), where the records are taken too.

    Args: as `train_method`, plus `augment` (a `sslntk.data` augmentation or a jittable
    `augment(key, x) -> x`), `key` (views and minibatches), `eval_views`, and `train_options`
    for `finite.train_augmented` (optimizer (default "sgd": plain SGD on each step's views),
    batch_size, optimizer_options, ts, checkpoint, progress, loop).

    Returns: the `finite.AugmentedResult` (`rule_state` as `train_method`'s).

    Example:
      >>> import jax
      >>> from sslntk import data, finite, kernels, methods
      >>> m = finite.network(kernels.mlp(1, "erf"), 64, 2, key=jax.random.key(0), in_shape=(3,))
      >>> x = jax.random.normal(jax.random.key(1), (8, 3))
      >>> r = finite.train_method_augmented(m, x, data.gaussian_noise(0.3), methods.BYOL(),
      ...                                   key=jax.random.key(2), lr=0.1, steps=5, progress=False)
    """
    from sslntk.finite._augtrain import check_eval_views, check_source_samples, train_augmented

    _check_method(method, head)
    V.check_key("key", key)
    V.positive_float("lr", lr)
    steps = V.positive_int("steps", steps)
    x = check_source_samples(x, model)
    if not callable(augment):
        raise TypeError(f"augment: expected a sslntk.data augmentation or a callable (key, x) -> x,"
                        f" got {type(augment).__name__}")
    eval_views, xe = check_eval_views(eval_views, x, augment, key)
    rule = _rule(model, xe, method, lr, steps, None if head is not None else key, init_options,
                 head, head_key, target_key, train_options.get("optimizer", "sgd"),
                 train_options.get("optimizer_options"))
    return train_augmented(model, x, augment, rule, key=key, lr=lr, steps=steps,
                           eval_views=eval_views, **train_options)


class OutputSpaceKernelOp:
    """`apply_K` for a method's `step` / `vector_field` from the full output-space empirical NTK
    `Θ (N·k, N·k)` (row-major `(i, o)`, `finite.output_space_ntk`): `g (N, k) ↦ Θ vec(g)`. At
    finite width the k outputs' kernels differ and couple, so this, not the one-output `K ⊗ I`,
    is the network's own kernel-regime operator (a linearised network trained by `MethodRule`
    equals the method's steps with it to round-off)."""

    def __init__(self, theta, theta_test=None):
        self.theta = jnp.asarray(theta)
        self.theta_test = None if theta_test is None else jnp.asarray(theta_test)

    def __call__(self, g):
        N, k = g.shape
        return (self.theta @ g.reshape(-1)).reshape(N, k)

    def test(self, g):
        if self.theta_test is None:
            return None
        return (self.theta_test @ g.reshape(-1)).reshape(-1, g.shape[1])


def method_prediction(model, views, method, *, lr: float, steps: int, save_every: int = 1,
                      key=None, init_options=None):
    """Kernel-regime prediction of `train_method(model, views, method, lr, steps)` from the
    network's own output-space empirical NTK at init: `steps` discrete steps of `method.step`
    with `OutputSpaceKernelOp(Θ)` from `f0 = model(views)`, the same order and rates as the
    network's training (full-batch gradient descent, `optimizer="gd"`).

    Returns `(ts (S,), f (S, N, k))` at steps `0, save_every, 2·save_every, …, steps`
    (`ts = lr·step`).

    Example:
      >>> import jax
      >>> from sslntk import finite, kernels, methods
      >>> m = finite.network(kernels.mlp(1, "erf"), 64, 2, key=jax.random.key(0), in_shape=(3,))
      >>> x = jax.random.normal(jax.random.key(1), (8, 3))
      >>> ts, f = finite.method_prediction(m, x, methods.SimSiam(), lr=0.1, steps=10)
    """
    from sslntk.finite._kernel_prediction import output_space_ntk

    V.positive_float("lr", lr)
    steps = V.positive_int("steps", steps, minimum=0)
    save_every = V.positive_int("save_every", save_every)
    x = stacked_inputs(views, model)
    f0 = jnp.asarray(model(x))
    theta, _ = output_space_ntk(model, x)
    op = OutputSpaceKernelOp(jnp.asarray(theta, f0.dtype))
    state = method.init(f0, key, **(init_options or {}))

    def chunk(s, _):
        s = jax.lax.fori_loop(0, save_every, lambda i, st: method.step(st, lr, op), s)
        return s, s.f

    n_save = steps // save_every
    _, fs = jax.lax.scan(chunk, state, None, length=n_save)
    f = jnp.concatenate([f0[None], fs])
    ts = lr * save_every * jnp.arange(n_save + 1, dtype=f0.dtype)
    return ts, f


__all__ = ["MethodRule", "train_method", "train_method_augmented", "OutputSpaceKernelOp",
           "method_prediction"]
