"""Linear-network dynamics of BYOL / SimSiam / DirectPred (Tian, Chen & Ganguli, ICML 2021).

Model (Tian et al. 2021, Sec. 3): online weights `W: (k, m)`, linear predictor `W_p: (k, k)`,
target `W_a: (k, m)`, all bias-free and linear; two views `x_1, x_2` of one input with single-view
second moment `Σ_s = E[x_1 x_1ᵀ]` (Tian's `X + X'`) and cross-view moment `Σ_d = E[x_1 x_2ᵀ]`
(Tian's `X`). Loss `J = ½ E‖W_p W x_1 − StopGrad(W_a x_2)‖²`. Time `t` is learning rate × steps;
weight decay `eta` is the coupled per-unit-time decay (SGD `weight_decay`), the EMA rate is
`beta = (1 − m)/lr` for a per-step decay `m`, and `alpha_p = lr_pred/lr` (docs/theory/asymmetric.md).

Lemma 1 of Tian et al. (large batch, gradient flow, weight decay):

    dW_p/dt = alpha_p (−W_p W Σ_s + W_a Σ_d) Wᵀ − eta_p W_p
    dW/dt   = W_pᵀ (−W_p W Σ_s + W_a Σ_d) − eta W
    dW_a/dt = beta (W − W_a)

SimSiam: `W_a ≡ W` (the stop-gradient stays). No stop-gradient (Tian Thm 2): the gradient flows
through the target branch too. DirectPred (Tian Sec. 5): `W_p` is set from the eigendecomposition
of the predictor-input correlation `F̂ = W Σ_s Wᵀ` instead of being trained.

In a common eigenbasis (Tian Assumptions 1-3, Eqs. 11-13) each mode is a scalar system; its fixed
points on the invariant parabola `s = p²/alpha_p` are (Tian Eq. 16)

    p*_± = [tau ± sqrt(tau² − 4 eta lambda_s)] / (2 lambda_s),   p*_0 = 0,

with `lambda_s = 1 + sigma²` (isotropic) and `tau` the target/online ratio; `p*_−` bounds the
collapse basin and `eta > tau²/(4 lambda_s)` makes collapse certain.

References: Tian, Chen, Ganguli, "Understanding self-supervised learning dynamics without contrastive
pairs", ICML 2021 (arXiv:2102.06810), Lemma 1, Thms 1-3, Eqs. 7, 11-13, 16-18, App. D;
docs/theory/asymmetric.md.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk._status import FAILED, MAX_STEPS, NONFINITE, SUCCESS, Outcome
from sslntk.theory import checks as C

__all__ = [
    "LinearState",
    "LinearSSL",
    "LinearTrajectory",
    "simulate_linear",
    "ModeSystem",
    "ModeTrajectory",
    "simulate_mode",
    "mode_rates",
    "fixed_points",
    "certain_collapse_decay",
    "classify_modes",
    "balance_residual",
    "alignment_operator",
    "isotropic_views",
    "view_moments",
    "directpred_predictor",
    "kernel_consistent_predictor",
    "PREDICTORS",
    "COLLAPSE_TOL",
]

#: predictor kinds of `LinearSSL`: trained by gradient flow (Lemma 1), trained with its flow
#: symmetrised (Tian Assumption 3), fixed at the identity (no predictor), or DirectPred (Sec. 5)
PREDICTORS = ("trained", "symmetric", "identity", "directpred")

#: a mode with `|p| < COLLAPSE_TOL` at the end of a run is classified as collapsed
COLLAPSE_TOL = 1e-3


# ----------------------------------------------------------------------------------------------
# integration (diffrax, adaptive Dopri8: the systems are small and the checks need ~1e-10)


def _integrate(rhs, y0, ts, rtol, atol, max_steps):
    ts = jnp.asarray(ts, dtype=jax.tree_util.tree_leaves(y0)[0].dtype)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: rhs(y)), diffrax.Dopri8(), t0=ts[0], t1=ts[-1],
        dt0=None, y0=y0, saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps, throw=False)
    ys = sol.ys
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(y)) for y in jax.tree_util.tree_leaves(ys)]))
    ok = sol.result == diffrax.RESULTS.successful
    max_steps_hit = sol.result == diffrax.RESULTS.max_steps_reached
    status = jnp.where(ok, jnp.where(finite, SUCCESS, NONFINITE),
                       jnp.where(max_steps_hit, MAX_STEPS, jnp.where(finite, FAILED, NONFINITE)))
    return ys, status


def _check_times(ts):
    ts = V.as_float_array("ts", ts, ndim=1)
    if ts.shape[0] < 2:
        raise ValueError(f"ts: expected at least 2 increasing times, got shape {tuple(ts.shape)}")
    if np.any(np.diff(np.asarray(ts)) <= 0):
        raise ValueError("ts: expected strictly increasing times, got a non-increasing sequence")
    return ts


# ----------------------------------------------------------------------------------------------
# full linear network (Lemma 1, Thm 2, DirectPred)


class LinearState(NamedTuple):
    """State of the linear network: online `W (k, m)`, predictor `W_p (k, k)`, target `W_a (k, m)`.

    For SimSiam (`LinearSSL.beta is None`) `W_a` is carried but ignored (`W_a ≡ W`)."""

    W: jax.Array
    W_p: jax.Array
    W_a: jax.Array


def _sym_sqrt(S):
    return C.sym_sqrt(S)


def directpred_predictor(F_hat, *, eps=0.01, form: str = "code"):
    """DirectPred's predictor `W_p = U diag(p_j) Uᵀ` from `F̂ = U diag(s_j) Uᵀ` (Tian et al. Sec. 5).

    `form="code"` (default; facebookresearch/luckmatters ssl/real-dataset/byol_trainer.py,
    `balance_type="boost_scale"`, `dyn_convert=2`): `p_j = max(sqrt(max(s_j, 0)/s_max) + eps, 1e-4)`.
    `form="paper"` (Tian Eq. 18): `p_j = sqrt(max(s_j, 0)) + eps·s_max`. The two eps terms have
    different units; under an l2-normalised loss only ratios of `p_j` matter.

    Args:
      F_hat: `(k, k)` symmetric PSD predictor-input correlation `E[f fᵀ]` (uncentred).
      eps: the boost added to every eigenvalue (README run of the official code: 0.01; Tian
        Tbl. 6 best: 0.1).
      form: "code" or "paper".

    Returns: `(k, k)` symmetric predictor.

    Example:
      >>> import jax.numpy as jnp
      >>> from sslntk.theory.noncontrastive import directpred_predictor
      >>> directpred_predictor(jnp.diag(jnp.array([4.0, 1.0])), eps=0.0)  # diag(1, 0.5)
    """
    F_hat = C.psd("F_hat", F_hat, what="a symmetric PSD correlation E[f fᵀ]")
    eps = C.real("eps", eps)
    form = V.choice("form", form, ("code", "paper"))
    return _directpred(F_hat, eps, form)


def _directpred(F_hat, eps, form):
    s, U = jnp.linalg.eigh((F_hat + F_hat.T) / 2)
    s = jnp.clip(s, 0.0)
    s_max = jnp.maximum(s[-1], jnp.finfo(s.dtype).tiny)
    if form == "code":
        p = jnp.maximum(jnp.sqrt(s / s_max) + eps, 1e-4)
    else:
        p = jnp.sqrt(s) + eps * s_max
    return (U * p) @ U.T


def kernel_consistent_predictor(G, alpha_p=1.0):
    """`W_p = (alpha_p G)^{1/2}`: the predictor the gradient-trained flow reaches when `W_p` is
    symmetric PSD and the balance constant vanishes (Tian Thm 1 with `C = 0`).

    In function space `G = fᵀ K⁺ f` (the RKHS Gram of the online function; `W Wᵀ` for the linear
    model). This is a kernel-consistent alternative to DirectPred's `F̂^{1/2}`; it is this
    project's construction, not a method of the paper (docs/theory/asymmetric.md).

    Args:
      G: `(k, k)` symmetric PSD Gram.
      alpha_p: predictor learning-rate ratio (> 0).

    Example:
      >>> import jax.numpy as jnp
      >>> kernel_consistent_predictor(jnp.eye(2) * 4.0, alpha_p=1.0)  # 2·I
    """
    G = C.psd("G", G, what="a symmetric PSD Gram")
    alpha_p = C.positive("alpha_p", alpha_p)
    return _sym_sqrt(alpha_p * G)


@dataclass(frozen=True)
class LinearSSL:
    """BYOL / SimSiam / DirectPred on a bias-free linear network (Tian et al. 2021, Lemma 1).

    Attributes:
      Sigma_s: `(m, m)` single-view second moment `E[x_1 x_1ᵀ]` (Tian `X + X'`).
      Sigma_d: `(m, m)` symmetric cross-view moment `E[x_1 x_2ᵀ]` (Tian `X`).
      alpha_p: predictor learning-rate ratio `lr_pred/lr`.
      beta: EMA rate per unit time `(1 − m)/lr` (BYOL); `None` is SimSiam (`W_a ≡ W`).
      eta: weight decay of `W` per unit time.
      eta_p: weight decay of `W_p` (`None`: equal to `eta`, Tian's setting).
      predictor: one of `PREDICTORS`.
      stop_gradient: False lets the gradient through the target branch (Tian Thm 2; needs
        `beta is None`).
      directpred_eps: DirectPred's eps.
      directpred_form: "paper" (default; Tian Eq. 18, whose scale `sqrt(s_j)` matches the
        trained predictor's parabola `s = p²/alpha_p` of this Euclidean loss) or "code" (the
        official code's form, normalised by `sqrt(s_max)`: meant for the l2-normalised loss, where
        the scale of `W_p` does not matter; under this Euclidean loss its top eigenvalue
        `1 + eps > tau/λ_s` shrinks every mode).

    Example:
      >>> import jax.numpy as jnp
      >>> model = LinearSSL(Sigma_s=1.5 * jnp.eye(3), Sigma_d=jnp.eye(3), alpha_p=1.0, eta=0.1)
      >>> st = LinearState(W=0.5 * jnp.eye(2, 3), W_p=0.6 * jnp.eye(2), W_a=jnp.zeros((2, 3)))
      >>> d = model.vector_field(st)  # LinearState of time derivatives
    """

    Sigma_s: jax.Array
    Sigma_d: jax.Array
    alpha_p: float = 1.0
    beta: float | None = None
    eta: float = 0.0
    eta_p: float | None = None
    predictor: str = "trained"
    stop_gradient: bool = True
    directpred_eps: float = 0.01
    directpred_form: str = "paper"

    def __post_init__(self):
        Ss = C.psd("Sigma_s", self.Sigma_s, what="a symmetric PSD single-view moment")
        Sd = C.symmetric("Sigma_d", self.Sigma_d)
        if Ss.shape != Sd.shape:
            raise ValueError(f"Sigma_d: expected shape {tuple(Ss.shape)} (as Sigma_s), got "
                             f"{tuple(Sd.shape)}")
        object.__setattr__(self, "Sigma_s", Ss)
        object.__setattr__(self, "Sigma_d", Sd)
        object.__setattr__(self, "alpha_p", C.positive("alpha_p", self.alpha_p))
        object.__setattr__(self, "eta", C.nonneg("eta", self.eta))
        eta_p = self.eta if self.eta_p is None else C.nonneg("eta_p", self.eta_p)
        object.__setattr__(self, "eta_p", eta_p)
        if self.beta is not None:
            object.__setattr__(self, "beta", C.nonneg("beta", self.beta))
        V.choice("predictor", self.predictor, PREDICTORS)
        if not isinstance(self.stop_gradient, bool):
            raise TypeError(f"stop_gradient: expected a bool, got {self.stop_gradient!r}")
        if not self.stop_gradient and self.beta is not None:
            raise ValueError("stop_gradient=False: expected beta=None (Tian Thm 2 drops the "
                             f"stop-gradient with W_a = W), got beta={self.beta}")
        object.__setattr__(self, "directpred_eps", C.real("directpred_eps", self.directpred_eps))
        V.choice("directpred_form", self.directpred_form, ("code", "paper"))

    def predictor_of(self, state: LinearState) -> jax.Array:
        """The predictor in use: `W_p` (trained), `I`, or DirectPred of `F̂ = W Σ_s Wᵀ`."""
        if self.predictor == "identity":
            return jnp.eye(state.W.shape[0], dtype=state.W.dtype)
        if self.predictor == "directpred":
            return _directpred(state.W @ self.Sigma_s @ state.W.T, self.directpred_eps,
                               self.directpred_form)
        return state.W_p

    def vector_field(self, state: LinearState) -> LinearState:
        """Time derivatives `(dW, dW_p, dW_a)` of Lemma 1 (or Thm 2 without stop-gradient)."""
        W, W_a = state.W, state.W_a
        Wp = self.predictor_of(state)
        target = W if self.beta is None else W_a
        E = -Wp @ W @ self.Sigma_s + target @ self.Sigma_d   # −∂J/∂(W_p W), Lemma 1
        dW = Wp.T @ E - self.eta * W
        if not self.stop_gradient:
            # gradient through the target branch as well (Tian Thm 2):
            # −∂J/∂W gains −(W Σ_s − W_p W Σ_d)
            dW = dW - (W @ self.Sigma_s - Wp @ W @ self.Sigma_d)
        if self.predictor in ("trained", "symmetric"):
            dWp = self.alpha_p * E @ W.T - self.eta_p * state.W_p
            if self.predictor == "symmetric":
                dWp = (dWp + dWp.T) / 2   # Tian Assumption 3
        else:
            dWp = jnp.zeros_like(state.W_p)
        dWa = (jnp.zeros_like(W_a) if self.beta is None else self.beta * (W - W_a))
        return LinearState(dW, dWp, dWa)


_LIN_DATA = ("Sigma_s", "Sigma_d", "alpha_p", "beta", "eta", "eta_p", "directpred_eps")
_LIN_META = ("predictor", "stop_gradient", "directpred_form")


def _register(cls, data, meta):
    """Pytree with `data` leaves and static `meta`; unflattening bypasses `__post_init__` (the
    inputs were validated when the object was built)."""

    def unflatten(aux, children):
        obj = object.__new__(cls)
        for k, v in zip(data + meta, tuple(children) + tuple(aux), strict=True):
            object.__setattr__(obj, k, v)
        return obj

    jax.tree_util.register_pytree_node(
        cls, lambda o: (tuple(getattr(o, k) for k in data), tuple(getattr(o, k) for k in meta)),
        unflatten)


_register(LinearSSL, _LIN_DATA, _LIN_META)


@functools.partial(jax.jit, static_argnames=("rtol", "atol", "max_steps"))
def _solve(system, y0, ts, rtol, atol, max_steps):
    """One compiled integration per system structure and shape (the systems are pytrees)."""
    return _integrate(system.vector_field, y0, ts, rtol, atol, max_steps)


@dataclasses.dataclass(frozen=True)
class LinearTrajectory(Outcome):
    """`simulate_linear` result: `ts (T,)`, `W (T, k, m)`, `W_p (T, k, k)` (the predictor in use,
    DirectPred's included), `W_a (T, k, m)` (equal to `W` for SimSiam), `status`."""

    ts: jax.Array
    W: jax.Array
    W_p: jax.Array
    W_a: jax.Array
    status: int
    outcome_label = "simulate_linear"

    def F(self, Sigma_d) -> jax.Array:
        """`F = W Σ_d Wᵀ (T, k, k)` (Tian Eq. 7's F; `W Wᵀ` when `Σ_d = I`)."""
        return jnp.einsum("tkm,mn,tjn->tkj", self.W, Sigma_d, self.W)


def simulate_linear(model: LinearSSL, state0: LinearState, ts, *, rtol=1e-10, atol=1e-12,
                    max_steps: int = 200_000) -> LinearTrajectory:
    """Integrate `model.vector_field` from `state0`, saving at times `ts` (adaptive Dopri8).

    Args:
      model: a `LinearSSL`.
      state0: `LinearState` with `W (k, m)`, `W_p (k, k)`, `W_a (k, m)`; for DirectPred or the
        identity predictor `W_p` is ignored.
      ts: `(T,)` increasing times (units of lr × steps), the first being the start.
      rtol, atol: integrator tolerances.

    Returns: `LinearTrajectory` (status MAX_STEPS / NONFINITE when the integration failed).
    """
    if not isinstance(model, LinearSSL):
        raise TypeError(f"model: expected a LinearSSL, got {type(model).__name__}")
    if not isinstance(state0, LinearState):
        raise TypeError(f"state0: expected a LinearState, got {type(state0).__name__}")
    m = model.Sigma_s.shape[0]
    W = V.as_float_array("state0.W", state0.W, ndim=2)
    k = W.shape[0]
    if W.shape[1] != m:
        raise ValueError(f"state0.W: expected shape (k, {m}), got {tuple(W.shape)}")
    Wp = V.as_float_array("state0.W_p", state0.W_p, ndim=2)
    if Wp.shape != (k, k):
        raise ValueError(f"state0.W_p: expected shape {(k, k)}, got {tuple(Wp.shape)}")
    Wa = V.as_float_array("state0.W_a", state0.W_a, ndim=2)
    if Wa.shape != W.shape:
        raise ValueError(f"state0.W_a: expected shape {tuple(W.shape)}, got {tuple(Wa.shape)}")
    ts = _check_times(ts)
    ys, status = _solve(model, LinearState(W, Wp, Wa), ts, float(rtol), float(atol),
                        int(max_steps))
    Wps = jax.vmap(model.predictor_of)(ys)
    Was = ys.W if model.beta is None else ys.W_a
    out = LinearTrajectory(ts, ys.W, Wps, Was, int(status))
    if V.is_concrete(status):
        out.warn("simulate_linear")
    return out


def balance_residual(W, W_p, W0, W_p0, t, *, alpha_p=1.0, eta=0.0):
    """Tian Thm 1: `W Wᵀ − W_pᵀ W_p/alpha_p − e^{−2 eta t} C₀`, `C₀ = W₀W₀ᵀ − W_p0ᵀW_p0/alpha_p`.

    Zero along the unsymmetrised trained-predictor flow with `eta_p = eta`, whatever the target
    does. `W (…, k, m)` and `W_p (…, k, k)` may carry a leading time axis matching `t`.
    Returns the residual `(…, k, k)`."""
    C0 = W0 @ W0.T - W_p0.T @ W_p0 / alpha_p
    t = jnp.asarray(t)[..., None, None]
    return (W @ jnp.swapaxes(W, -1, -2) - jnp.swapaxes(W_p, -1, -2) @ W_p / alpha_p
            - jnp.exp(-2 * eta * t) * C0)


def alignment_operator(F, W_p, *, alpha_p=1.0, sigma2=0.0, tau=1.0, eta=0.0):
    """Tian Thm 3's `K = (1+σ²)[(alpha_p/2)F + W_p² − tau W_p/(1+σ²)] + (3/2) eta I` `(k, k)`.

    `d[F, W_p]/dt = −[F, W_p]K − K[F, W_p]` along the symmetrised flow, so
    `‖[F, W_p](t)‖_F ≤ e^{−2 λ₀ t} ‖[F, W_p](0)‖_F` with `λ₀ = inf_t λ_min(K)`."""
    k = F.shape[-1]
    ls = 1.0 + sigma2
    return ls * (alpha_p / 2 * F + W_p @ W_p - tau * W_p / ls) + 1.5 * eta * jnp.eye(k, dtype=F.dtype)


def view_moments(X):
    """`(Σ_s, Σ_d) = (XᵀX/N, XᵀZX/N)` of stacked views `X (2n, m)` `[a_1..a_n, b_1..b_n]`.

    These are the moments Lemma 1 sees when `K = X Xᵀ` (function-space equivalence)."""
    X = V.stacked_views("X", X)
    N = X.shape[0]
    n = N // 2
    ZX = jnp.concatenate([X[n:], X[:n]])
    return X.T @ X / N, X.T @ ZX / N


def isotropic_views(key, n: int, m: int, sigma2: float = 0.5, *, dtype=None):
    """Stacked views `X (2n, m)` with `XᵀX/N = (1+σ²) I` and `XᵀZX/N = I` exactly.

    Construction (Tian Assumption 2 made exact for a finite sample): `a_i = u_i + e_i`,
    `b_i = u_i − e_i` with `U = Q₁·sqrt(n(1 + σ²/2))`, `E = Q₂·sqrt(nσ²/2)` and `[Q₁, Q₂]` an
    `(n, 2m)` orthonormal frame, so `Σ_s = (UᵀU + EᵀE)/n = (1+σ²)I` and `Σ_d = (UᵀU − EᵀE)/n = I`
    (needs `n >= 2m`).

    Example:
      >>> import jax
      >>> X = isotropic_views(jax.random.key(0), 16, 6, 0.5)   # (32, 6)
    """
    n = V.positive_int("n", n)
    m = V.positive_int("m", m)
    sigma2 = float(C.positive("sigma2", sigma2))
    if n < 2 * m:
        raise ValueError(f"n: expected n >= 2m = {2 * m} (U and E need orthogonal column "
                         f"spaces in R^n), got n={n}")
    V.check_key("key", key)
    dtype = V.float_dtype(dtype) if dtype is not None else jnp.result_type(float)
    Q, _ = jnp.linalg.qr(jax.random.normal(key, (n, 2 * m), dtype=dtype))
    U = Q[:, :m] * jnp.sqrt(n * (1 + sigma2 / 2))
    E = Q[:, m:] * jnp.sqrt(n * sigma2 / 2)
    return jnp.concatenate([U + E, U - E])


# ----------------------------------------------------------------------------------------------
# one mode (Tian App. D; Eqs. 11-13 with s = w², tau = w_a/w)


@dataclass(frozen=True)
class ModeSystem:
    """One commuting mode of the linear network (Tian App. D):

        w_p' = alpha_p (w_a λ_d − w_p w λ_s) w − eta_p w_p
        w'   = w_p (w_a λ_d − w_p w λ_s) − eta w
        w_a' = beta (w − w_a)                      (SimSiam, beta=None: w_a ≡ w)

    `s = w²` and `tau = w_a/w` turn it into Tian Eqs. 11-13 with `λ_s = 1 + σ²`, `λ_d = 1`.
    Fields broadcast (arrays give a batch of independent modes, e.g. a phase diagram)."""

    lambda_s: float = 1.5
    lambda_d: float = 1.0
    alpha_p: float = 1.0
    beta: float | None = None
    eta: float = 0.0
    eta_p: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "lambda_s", C.positive("lambda_s", self.lambda_s))
        object.__setattr__(self, "lambda_d", C.real("lambda_d", self.lambda_d))
        object.__setattr__(self, "alpha_p", C.positive("alpha_p", self.alpha_p))
        object.__setattr__(self, "eta", C.nonneg("eta", self.eta))
        object.__setattr__(self, "eta_p", self.eta if self.eta_p is None
                           else C.nonneg("eta_p", self.eta_p))
        if self.beta is not None:
            object.__setattr__(self, "beta", C.nonneg("beta", self.beta))

    def vector_field(self, y):
        w, wp, wa = y
        target = w if self.beta is None else wa
        e = target * self.lambda_d - wp * w * self.lambda_s
        dwa = jnp.zeros_like(wa) if self.beta is None else self.beta * (w - wa)
        return (wp * e - self.eta * w, self.alpha_p * e * w - self.eta_p * wp, dwa)


_register(ModeSystem, ("lambda_s", "lambda_d", "alpha_p", "beta", "eta", "eta_p"), ())


@dataclasses.dataclass(frozen=True)
class ModeTrajectory(Outcome):
    """`simulate_mode` result: `ts (T,)`; `w`, `p` (= `w_p`), `w_a` each `(T, *batch)`;
    `s = w²`; `tau = w_a/w` (1 for SimSiam); `status`."""

    ts: jax.Array
    w: jax.Array
    p: jax.Array
    w_a: jax.Array
    status: int
    outcome_label = "simulate_mode"

    @property
    def s(self):
        return self.w ** 2

    @property
    def tau(self):
        return self.w_a / self.w


def simulate_mode(system: ModeSystem, w0, p0, wa0=0.0, *, ts=None, t_end=4000.0,
                  rtol=1e-10, atol=1e-13, max_steps: int = 400_000) -> ModeTrajectory:
    """Integrate a batch of one-mode systems (Tian App. D) from `(w0, p0, wa0)`.

    Args:
      system: `ModeSystem` (its fields broadcast against the initial values).
      w0, p0, wa0: initial online weight, predictor, target (broadcast together); Tian's
        `tau(0) = 0` is `wa0 = 0`, a copy init is `wa0 = w0`.
      ts: save times; default `[0, t_end]`.

    Example:
      >>> sys = ModeSystem(lambda_s=1.5, eta=0.04, beta=0.1)
      >>> tr = simulate_mode(sys, 0.3, 0.3, 0.0, t_end=4000.0)
      >>> float(tr.p[-1])   # ≈ p*_+ = 0.6239
    """
    if not isinstance(system, ModeSystem):
        raise TypeError(f"system: expected a ModeSystem, got {type(system).__name__}")
    w0, p0, wa0 = (C.real(nm, v) for nm, v in (("w0", w0), ("p0", p0), ("wa0", wa0)))
    ts = _check_times(jnp.array([0.0, float(C.positive("t_end", t_end))]) if ts is None else ts)
    shape = jnp.broadcast_shapes(w0.shape, p0.shape, wa0.shape, *(
        jnp.shape(getattr(system, f)) for f in ("lambda_s", "lambda_d", "alpha_p", "eta", "eta_p")),
        () if system.beta is None else jnp.shape(system.beta))
    y0 = tuple(jnp.broadcast_to(v, shape).astype(ts.dtype) for v in (w0, p0, wa0))
    ys, status = _solve(system, y0, ts, float(rtol), float(atol), int(max_steps))
    w, p, wa = ys
    if system.beta is None:
        wa = w
    out = ModeTrajectory(ts, w, p, wa, int(status))
    out.warn("simulate_mode")
    return out


def mode_rates(p, s, *, tau=1.0, alpha_p=1.0, sigma2=0.5, eta=0.0):
    """Tian Eqs. 11-12 `(dp/dt, ds/dt)` for eigenvalues `p` of `W_p` and `s` of `F`:

        p' = alpha_p s [tau − (1+σ²) p] − eta p,    s' = 2 p s [tau − (1+σ²) p] − 2 eta s."""
    g = tau - (1.0 + sigma2) * p
    return alpha_p * s * g - eta * p, 2 * p * s * g - 2 * eta * s


def fixed_points(*, tau=1.0, lambda_s=1.5, eta=0.0):
    """Tian Eq. 16: `(p*_−, p*_+) = [tau ∓ sqrt(tau² − 4 eta λ_s)]/(2 λ_s)` on the parabola.

    NaN where `eta > tau²/(4 λ_s)` (no non-zero fixed point: collapse is certain). `λ_s = 1+σ²`.

    Example:
      >>> fixed_points(tau=1.0, lambda_s=1.5, eta=0.13)[1]   # 0.48968
    """
    tau = C.real("tau", tau)
    lambda_s = C.positive("lambda_s", lambda_s)
    eta = C.nonneg("eta", eta)
    disc = tau ** 2 - 4 * eta * lambda_s
    r = jnp.where(disc >= 0, jnp.sqrt(jnp.clip(disc, 0.0)), jnp.nan)
    return (tau - r) / (2 * lambda_s), (tau + r) / (2 * lambda_s)


def certain_collapse_decay(*, tau=1.0, lambda_s=1.5):
    """The weight decay above which every mode collapses: `tau²/(4 λ_s)` (Tian Sec. 4; 1/6 at
    `tau = 1`, `σ² = 0.5`)."""
    return C.real("tau", tau) ** 2 / (4 * C.positive("lambda_s", lambda_s))


def classify_modes(p_final, *, tol: float = COLLAPSE_TOL):
    """Boolean array: True where a mode collapsed (`|p| < tol` at the end of the run)."""
    p_final = V.as_float_array("p_final", p_final)
    return jnp.abs(p_final) < tol
