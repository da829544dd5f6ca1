"""DINO in the kernel regime: student logits move through K, the teacher is an EMA of the student,
the centre an EMA of the teacher's batch mean (Caron et al. 2021; main_dino.py).

State: student logits `f (2n, k)` (k "prototypes"); aux: teacher logits `f_ξ (2n, k)`, centre
`c (k,)`, time `t`. With `P_t = softmax((Z f_ξ − 1cᵀ)/tau_t)` (stop-gradient):

    L = −(1/N) Σ_r ⟨P_t[r], log softmax(f_r/tau_s)⟩            (methods.dino_loss)
    df/dt   = −(1/(N tau_s)) K [softmax(f/tau_s) − P_t] − eta f
    df_ξ/dt = beta(t) (f − f_ξ),     dc/dt = beta_c (mean_r f_ξ,r − c)

`beta = (1 − m)/lr`, `beta_c = (1 − m_c)/lr` (per-step decays m, m_c). The teacher temperature
warms up linearly from `warmup_teacher_temp` to `teacher_temp` over `warmup_time` (units of t).
Ablations: `centering="none"` (no centre), `"instant"` (the current batch mean), `ema=None`
(teacher = student, no momentum), `teacher_temp = student_temp` (no sharpening).

Discrete step (main_dino.py order): loss with the current centre; centre updated from the current
teacher outputs; student step; EMA teacher with the new student.

Not modelled: the weight-normalised (bounded) last layer and multi-crop (docs/theory/asymmetric.md).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from sslntk import _validate as V
from sslntk.methods._asym_losses import dino_objective, swap_views
from sslntk.methods._base import Method, State
from sslntk.methods._ema import TARGET_INITS, as_rate, init_target, with_test_points

CENTERINGS = ("ema", "instant", "none")


def _entropy(p, axis=-1):
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=axis)


class DINO(eqx.Module, Method):
    """DINO in function space (see the module docstring for the equations).

    Args:
      ema: teacher EMA rate (`EMARate` or a number; `EMARate.from_momentum(0.996, lr=lr,
        t_end=T)` is DINO's cosine schedule to 1); None: the teacher is the student (stop-grad).
      center_rate: beta_c per unit time (official m_c = 0.9: `0.1/lr`).
      student_temp: tau_s (0.1). teacher_temp: final tau_t (0.04 default; paper recipe 0.07).
      warmup_teacher_temp, warmup_time: tau_t rises linearly from this over [0, warmup_time].
      eta: weight decay of the student per unit time.
      centering: "ema" (official), "instant", "none".
      teacher_init: "copy" (official), "zero", "independent" (pass `target0` to init).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sslntk import methods
      >>> m = methods.DINO(ema=0.5, center_rate=5.0)
      >>> s = m.init(0.05 * jax.random.normal(jax.random.key(0), (8, 4)))
      >>> d = m.vector_field(0.0, s, methods.KernelOp(jnp.eye(8)))
    """

    ema: Any
    center_rate: Any
    student_temp: Any
    teacher_temp: Any
    warmup_teacher_temp: Any
    warmup_time: Any
    eta: Any
    centering: str = eqx.field(static=True)
    teacher_init: str = eqx.field(static=True)

    def __init__(self, *, ema=0.5, center_rate=5.0, student_temp=0.1, teacher_temp=0.04,
                 warmup_teacher_temp=None, warmup_time=0.0, eta=0.0, centering="ema",
                 teacher_init="copy"):
        self.ema = None if ema is None else as_rate("ema", ema)
        self.center_rate = V.positive_float("center_rate", center_rate, allow_zero=True)
        self.student_temp = V.positive_float("student_temp", student_temp)
        self.teacher_temp = V.positive_float("teacher_temp", teacher_temp)
        self.warmup_teacher_temp = (self.teacher_temp if warmup_teacher_temp is None else
                                    V.positive_float("warmup_teacher_temp", warmup_teacher_temp))
        self.warmup_time = V.positive_float("warmup_time", warmup_time, allow_zero=True)
        self.eta = V.positive_float("eta", eta, allow_zero=True)
        self.centering = V.choice("centering", centering, CENTERINGS)
        self.teacher_init = V.choice("teacher_init", teacher_init, TARGET_INITS)

    @property
    def label(self) -> str:
        return "dino"

    @property
    def jump_times(self) -> tuple:
        """Times where the vector field has a kink (end of the temperature warm-up): an adaptive
        ODE solver may end a step there (diffrax `PIDController(jump_ts=...)`)."""
        return (float(self.warmup_time),) if float(self.warmup_time) > 0 else ()

    # ---- state ----
    def init(self, f0, key=None, *, f0_test=None, target0=None, target0_test=None,
             center0=None):
        """`State` at t = 0: aux `{"t", "teacher", "center"}` (centre zeros, as the official
        buffer, unless `center0 (k,)`)."""
        f0 = V.stacked_views("f0", f0)
        aux = {"t": jnp.zeros((), f0.dtype)}
        if self.ema is not None:
            aux["teacher"] = init_target(self.label, self.teacher_init, f0, target0)
        if self.centering == "ema":
            aux["center"] = (jnp.zeros((f0.shape[1],), f0.dtype) if center0 is None
                             else V.as_float_array("center0", center0, ndim=1))
        aux_test = None
        if f0_test is not None and self.ema is not None:
            f0_test = V.as_float_array("f0_test", f0_test, ndim=2)
            aux_test = init_target(self.label, self.teacher_init, f0_test, target0_test)
        return State(f=f0, aux=aux, f_test=f0_test, aux_test=aux_test)

    def teacher_of(self, state: State) -> jax.Array:
        return state.f if self.ema is None else state.aux["teacher"]

    def center_of(self, state: State) -> jax.Array:
        if self.centering == "ema":
            return state.aux["center"]
        if self.centering == "instant":
            return jnp.mean(self.teacher_of(state), axis=0)
        return jnp.zeros((state.f.shape[1],), state.f.dtype)

    def teacher_temperature(self, t):
        """tau_t(t): linear warm-up over [0, warmup_time], then `teacher_temp`."""
        w = jnp.asarray(self.warmup_time)
        frac = jnp.where(w > 0, jnp.clip(t / jnp.where(w > 0, w, 1.0), 0.0, 1.0), 1.0)
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * frac

    def teacher_probs(self, state: State) -> jax.Array:
        """`P_t (2n, k)`: the centred, sharpened teacher distribution of each view."""
        tau_t = self.teacher_temperature(state.aux["t"])
        return jax.nn.softmax((self.teacher_of(state) - self.center_of(state)) / tau_t, axis=-1)

    def cross_entropy(self, student, teacher, center, t) -> jax.Array:
        """DINO's loss of student logits `(2n, K)` against teacher logits `(2n, K)` (gradient
        stopped) with centre `center (K,)` and the teacher temperature at time `t`
        (`teacher_temperature(t)`): `−mean_r ⟨softmax((teacher[Zr] − c)/tau_t),
        log softmax(student_r/tau_s)⟩` (main_dino.py `DINOLoss`, two global crops)."""
        return dino_objective(student, teacher, center, self.student_temp,
                              self.teacher_temperature(t))

    # ---- dynamics ----
    def force(self, state: State) -> jax.Array:
        tau_t = self.teacher_temperature(state.aux["t"])
        teacher = jax.lax.stop_gradient(self.teacher_of(state))
        center = jax.lax.stop_gradient(self.center_of(state))
        return jax.grad(dino_objective)(state.f, teacher, center, self.student_temp, tau_t)

    def vector_field(self, t, state: State, apply_K) -> State:
        g = self.force(state)
        df = -apply_K(g) - self.eta * state.f
        aux = {"t": jnp.ones_like(state.aux["t"])}
        if self.ema is not None:
            aux["teacher"] = self.ema(t) * (state.f - state.aux["teacher"])
        if self.centering == "ema":
            aux["center"] = self.center_rate * (jnp.mean(self.teacher_of(state), axis=0)
                                                - state.aux["center"])
        if state.f_test is None:
            return State(f=df, aux=aux)
        df_test = -apply_K.test(g) - self.eta * state.f_test
        at = None if self.ema is None else self.ema(t) * (state.f_test - state.aux_test)
        return State(f=df, aux=aux, f_test=df_test, aux_test=at)

    def step(self, state: State, lr, apply_K) -> State:
        """main_dino.py order: loss (current centre) → centre from the current teacher →
        student step → EMA teacher `m f_ξ + (1 − m) f_new`, `m = 1 − lr·beta(t)`."""
        aux, t = state.aux, state.aux["t"]
        g = self.force(state)
        f_new = (1.0 - lr * self.eta) * state.f - lr * apply_K(g)
        new = dict(aux, t=t + lr)
        if self.centering == "ema":
            mc = 1.0 - lr * self.center_rate
            new["center"] = mc * aux["center"] + (1 - mc) * jnp.mean(self.teacher_of(state), axis=0)
        if self.ema is not None:
            m = 1.0 - lr * self.ema(t)
            new["teacher"] = m * aux["teacher"] + (1 - m) * f_new
        ft_new = None if state.f_test is None else (1.0 - lr * self.eta) * state.f_test - lr * apply_K.test(g)
        return with_test_points(state, f_new, new, ft_new, self.ema, lr, t)

    # ---- objective and diagnostics ----
    def loss(self, state: State) -> jax.Array:
        tau_t = self.teacher_temperature(state.aux["t"])
        return dino_objective(state.f, self.teacher_of(state), self.center_of(state), self.student_temp,
                     tau_t)

    def diagnostics(self, state: State) -> dict:
        """Collapse measures of DINO Sec. 5.3 on the teacher distribution `P_t`: `entropy` (mean
        per-sample entropy h; → 0 for one-hot targets), `batch_entropy` (entropy of the batch-mean
        target h̄; ln k when classes are balanced, 0 when one class wins), `top_share` (share of
        samples whose argmax is the most frequent class) and `kl` = KL(P_t‖P_s) (→ 0 even when
        healthy: not a collapse test)."""
        P = self.teacher_probs(state)
        logPs = jax.nn.log_softmax(state.f / self.student_temp, axis=-1)
        Pz = swap_views(P)
        counts = jnp.sum(jax.nn.one_hot(jnp.argmax(P, axis=-1), P.shape[1], dtype=P.dtype), 0)
        return {
            "entropy": jnp.mean(_entropy(P)),
            "batch_entropy": _entropy(jnp.mean(P, axis=0)),
            "top_share": jnp.max(counts) / P.shape[0],
            "kl": jnp.mean(jnp.sum(Pz * (jnp.log(jnp.clip(Pz, 1e-300)) - logPs), axis=-1)),
        }


def dino_linear_operator(K, n_classes: int, *, student_temp=0.1, teacher_temp=0.04,
                         centering=True):
    """The small-logit linearisation of DINO with teacher = student and an instantaneous centre
    (docs/theory/asymmetric.md): with `softmax(u) ≈ (1 + Πu)/k` (`Π` = class centring),
    `df/dt = A f Π` where

        A = −(1/(N tau_s k)) K [I/tau_s − (I − 11ᵀ/N) Z/tau_t]

    (`(I − 11ᵀ/N)` dropped without centering). Only sharpening (`tau_t < tau_s`) makes a mode
    grow; without centering the constant mode (top of K) wins. Returns A `(N, N)`.

    Example:
      >>> import jax.numpy as jnp
      >>> A = dino_linear_operator(jnp.eye(4) + 1.0, 8)
    """
    K = V.square_kernel("K", K)
    k = V.positive_int("n_classes", n_classes)
    V.positive_float("student_temp", student_temp)
    V.positive_float("teacher_temp", teacher_temp)
    N = K.shape[0]
    n = N // 2
    I = jnp.eye(N, dtype=K.dtype)
    Z = jnp.concatenate([I[n:], I[:n]])
    Cn = I - jnp.ones((N, N), K.dtype) / N if centering else I
    return -(1.0 / (N * student_temp * k)) * K @ (I / student_temp - Cn @ Z / teacher_temp)
