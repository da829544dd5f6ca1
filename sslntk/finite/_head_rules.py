"""Finite-width step rules with a trained head: BYOL / SimSiam with an MLP predictor
(`PredictorHeadRule`) and DINO with its projection head, centring and teacher-temperature
schedule (`DINOHeadRule`). Both are `finite.StepRule`s on the one training engine, built by
`finite.train_method(..., head=...)`; the linear predictor `W_p (k, k)` and DINO on raw logits
stay with `MethodRule` (`_asymmetric`).

Order of one step (the official code's):

- BYOL (deepmind-research byol/byol_experiment.py `_update_fn`): the loss of the online
  predictions `q(f_θ)` against the target network's projections `sg f_ξ` (SimSiam: `sg f_θ`);
  one optax step of the network and, at `alpha_p × lr`, of the predictor head; then the EMA
  `ξ ← m ξ + (1 − m) θ_new`, `m = 1 − lr·beta(t)` (the target has no predictor).
- DINO (facebookresearch/dino main_dino.py `train_one_epoch`): teacher logits `h_ξ(f_ξ)` and
  student logits `h_θ(f_θ)`; the loss with the current centre and the teacher temperature
  `tau_t(t)` of the warm-up schedule; the centre `c ← m_c c + (1 − m_c) mean(teacher logits)`
  (`DINOLoss.update_center`, after the loss; `m_c = 1 − lr·center_rate`); one optax step of the
  student network and head; then the EMA of the teacher (network AND head) with the new student,
  `m = 1 − lr·beta(t)`. The teacher starts as a copy of the student (official).

The head's parameters are trained by the same optax optimiser as the network (a separate
optimiser state; its updates scaled by the learning-rate ratio), so for `optimizer="gd"` the
head moves at `ratio × lr`. Weight decay: `optimizer_options` (the methods' `eta`, `eta_p` are
function-space constants and are not used here). DINO's last layer can be frozen at first
(`DINOHead(freeze_last_layer=...)`, official: one epoch). Not modelled: multi-crop, BatchNorm.
See docs/theory/asymmetric.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sslntk.finite._engine import StepRule

sg = jax.lax.stop_gradient


def _split_last(head):
    """DINO head parameters as (MLP body, last layer `v`/`g`)."""
    last = ("v", "g")
    return ({k: v for k, v in head.items() if k not in last},
            {k: v for k, v in head.items() if k in last})


def _ema(m, target, new):
    return jax.tree.map(lambda a, b: m * a + (1 - m) * b, target, new)


@dataclasses.dataclass(frozen=True)
class PredictorHeadRule(StepRule):
    """BYOL / SimSiam (a `methods.Predictive` with `predictor="trained"`) with a head
    (`finite.MLPPredictor`) as the predictor.

    Attributes:
      method: the method (its kind, loss form, `alpha_p`, EMA rate `ema` or None for SimSiam,
        `stop_gradient`). lr: the learning rate (for `t = lr·step` and the EMA's per-step decay).
      head: the head spec; head0: its initial parameters.
      head_tx: the head's optax transformation (the network's optimiser followed by
        `optax.scale(alpha_p)`). target0: the target network's initial parameters (None: a copy
        of the online network).

    State: `{"opt", "head", "head_opt", "target", "t"}` (`target` None for SimSiam; `t` the
    time `lr·step`).
    """

    method: Any
    lr: float
    head: Any
    head0: Any
    head_tx: Any
    target0: Any = None

    def __repr__(self):   # the checkpoint fingerprint: constants, not arrays or functions
        return (f"PredictorHeadRule({self.method!r}, lr={self.lr!r}, head={self.head!r}, "
                f"target={'copy' if self.target0 is None else 'given'})")

    def init(self, params, tx):
        target = None
        if self.method.ema is not None:
            target = params if self.target0 is None else self.target0
        dt = jnp.result_type(jax.tree.leaves(params)[0])
        return {"opt": tx.init(params), "head": self.head0,
                "head_opt": self.head_tx.init(self.head0), "target": target,
                "t": jnp.zeros((), dt)}

    def _loss(self, params, head, target, embed):
        f = embed(params)
        y = f if self.method.ema is None else sg(embed(target))
        return self.method.prediction_loss(self.head.apply(head, f), y)

    def update(self, params, state, embed, tx, step):
        gp, gh = jax.grad(self._loss, argnums=(0, 1))(params, state["head"], state["target"],
                                                      embed)
        u, opt = tx.update(gp, state["opt"], params)
        params_new = optax.apply_updates(params, u)
        uh, hopt = self.head_tx.update(gh, state["head_opt"], state["head"])
        head = optax.apply_updates(state["head"], uh)
        target = state["target"]
        if self.method.ema is not None:
            target = _ema(1.0 - self.lr * self.method.ema(state["t"]), target, params_new)
        return params_new, {"opt": opt, "head": head, "head_opt": hopt, "target": target,
                            "t": state["t"] + self.lr}

    def value(self, params, state, embed):
        return self._loss(params, state["head"], state["target"], embed)


@dataclasses.dataclass(frozen=True)
class DINOHeadRule(StepRule):
    """DINO (`methods.DINO`: temperatures and their warm-up, centre rate and centring mode, EMA
    rate or None for no momentum) with a `finite.DINOHead` on student and teacher.

    Attributes: method, lr, head, head0 (the student head's initial parameters), head_tx.

    State: `{"opt", "head", "head_opt": {"body", "last"}, "teacher": (network params, head
    params) or None, "center": (K,), "t"}`. The last layer (`v`, and `g` when trainable) has its
    own optimiser state: while `t < head.freeze_last_layer` it is not updated at all, as
    main_dino.py's `cancel_gradients_last_layer` (its gradient set to None, so PyTorch's optimiser
    skips it, Adam's per-parameter step count included). A learning-rate schedule of the
    optimiser therefore starts for the last layer when it is released.
    """

    method: Any
    lr: float
    head: Any
    head0: Any
    head_tx: Any

    def __repr__(self):
        return f"DINOHeadRule({self.method!r}, lr={self.lr!r}, head={self.head!r})"

    def init(self, params, tx):
        K = self.head.n_prototypes
        dt = jnp.result_type(jax.tree.leaves(params)[0])
        teacher = None if self.method.ema is None else (params, self.head0)   # copy (official)
        body, last = _split_last(self.head0)
        return {"opt": tx.init(params), "head": self.head0,
                "head_opt": {"body": self.head_tx.init(body), "last": self.head_tx.init(last)},
                "teacher": teacher, "center": jnp.zeros((K,), dt), "t": jnp.zeros((), dt)}

    def logits(self, params, head, embed):
        """`h(f)`: the head's logits `(2B, K)` on this step's views."""
        return self.head.apply(head, embed(params))

    def _teacher_logits(self, params, state, embed):
        if state["teacher"] is None:
            return sg(self.logits(params, state["head"], embed))
        return sg(self.logits(*state["teacher"], embed))

    def _center(self, state, teacher):
        c = self.method.centering
        if c == "ema":
            return state["center"]
        if c == "instant":
            return jnp.mean(teacher, axis=0)
        return jnp.zeros_like(state["center"])

    def _loss(self, params, head, teacher, center, t, embed):
        return self.method.cross_entropy(self.logits(params, head, embed), teacher, center, t)

    def update(self, params, state, embed, tx, step):
        t = state["t"]
        teacher = self._teacher_logits(params, state, embed)
        center = self._center(state, teacher)
        gp, gh = jax.grad(self._loss, argnums=(0, 1))(params, state["head"], teacher, center, t,
                                                      embed)
        new_center = state["center"]
        if self.method.centering == "ema":    # after the loss, from the current teacher
            mc = 1.0 - self.lr * self.method.center_rate
            new_center = mc * state["center"] + (1 - mc) * jnp.mean(teacher, axis=0)
        u, opt = tx.update(gp, state["opt"], params)
        params_new = optax.apply_updates(params, u)
        (gb, gl), (hb, hl) = _split_last(gh), _split_last(state["head"])
        ub, ob = self.head_tx.update(gb, state["head_opt"]["body"], hb)
        hb = optax.apply_updates(hb, ub)

        def release(args):
            g, o, h = args
            u, o = self.head_tx.update(g, o, h)
            return optax.apply_updates(h, u), o

        hl, ol = jax.lax.cond(t < self.head.freeze_last_layer, lambda a: (a[2], a[1]), release,
                              (gl, state["head_opt"]["last"], hl))
        head, hopt = {**hb, **hl}, {"body": ob, "last": ol}
        tstate = state["teacher"]
        if tstate is not None:
            tstate = _ema(1.0 - self.lr * self.method.ema(t), tstate, (params_new, head))
        return params_new, {"opt": opt, "head": head, "head_opt": hopt, "teacher": tstate,
                            "center": new_center, "t": t + self.lr}

    def value(self, params, state, embed):
        teacher = self._teacher_logits(params, state, embed)
        return self._loss(params, state["head"], teacher, self._center(state, teacher),
                          state["t"], embed)


__all__ = ["PredictorHeadRule", "DINOHeadRule"]
