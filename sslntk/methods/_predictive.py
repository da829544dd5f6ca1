"""BYOL, SimSiam, DirectPred and a kernel-consistent predictor in the kernel regime (function space).

State: online `f (2n, k)`; aux: the target `f_ξ (2n, k)` (BYOL: an EMA of f; SimSiam: none, the
target is f itself), the predictor (`W_p (k, k)`, or DirectPred's correlation `F̂`, or the RKHS
Gram `G`), and the time `t`. With `p = f W_pᵀ` and `y = Z f_ξ` (each view's partner):

    Euclidean (Tian et al. 2021, symmetrised J):   L = (1/2N) ‖f W_pᵀ − Z f_ξ‖²_F
    cosine (official):   BYOL  L = (1/n) Σ_r ‖p̂_r − ŷ_r‖²;   SimSiam  L = −mean_r cos(p_r, y_r)

    df/dt    = −K ∇_f L(f W_pᵀ, sg f_ξ) − eta f          (stop-gradient: only f moves through K)
    dW_p/dt  = −alpha_p ∇_{W_p} L − eta_p W_p              (trained predictor)
    df_ξ/dt  = beta(t) (f − f_ξ)                           (BYOL's EMA; beta = (1 − m)/lr)

The Euclidean flow with `K = X Xᵀ` is Tian et al.'s Lemma 1 (docs/theory/asymmetric.md). Test
points move by `−K_test,train ∇_f L − eta f_test`, and carry the target the same way.

Discrete step (the order of BYOL's official update, byol_experiment.py): online and predictor
step against the current target; then the EMA with the new online function; then DirectPred
overwrites its predictor.

References: Grill et al. 2020; Chen & He 2021; Tian, Chen & Ganguli 2021 (Lemma 1, Sec. 5);
docs/theory/asymmetric.md.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from sslntk import _validate as V
from sslntk.methods._asym_losses import swap_views
from sslntk.methods._base import Method, State
from sslntk.methods._ema import TARGET_INITS, EMARate, as_rate, init_target, with_test_points

FORMS = ("euclidean", "cosine")
PREDICTORS = ("trained", "symmetric", "fixed", "identity", "directpred", "kernel")


def _unit(x, eps=1e-12):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def _objective(kind: str, form: str, p, y):
    """The loss of predictions `p (2n, k)` against partner targets `y = Z f_ξ (2n, k)`."""
    N = p.shape[0]
    if form == "euclidean":
        return jnp.sum((p - y) ** 2) / (2 * N)
    if kind == "byol":   # byol/utils/helpers.py regression_loss, two directions summed
        return jnp.sum((_unit(p) - _unit(y)) ** 2) / (N // 2)
    nx = jnp.maximum(jnp.linalg.norm(p, axis=-1), 1e-8)   # simsiam: nn.CosineSimilarity
    ny = jnp.maximum(jnp.linalg.norm(y, axis=-1), 1e-8)
    return -jnp.mean(jnp.sum(p * y, axis=-1) / (nx * ny))


def _sqrtm_psd(S):
    lam, U = jnp.linalg.eigh((S + S.T) / 2)
    return (U * jnp.sqrt(jnp.clip(lam, 0.0))) @ U.T


def _directpred(F_hat, eps):
    # facebookresearch/luckmatters ssl/real-dataset/byol_trainer.py (boost_scale, dyn_convert=2):
    # p_j = max(sqrt(max(s_j, 0)/s_max) + eps, 1e-4)
    s, U = jnp.linalg.eigh((F_hat + F_hat.T) / 2)
    s = jnp.clip(s, 0.0)
    p = jnp.maximum(jnp.sqrt(s / jnp.maximum(s[-1], jnp.finfo(s.dtype).tiny)) + eps, 1e-4)
    return (U * p) @ U.T


def rkhs_gram(K, f) -> jax.Array:
    """`G = fᵀ K⁺ f (k, k)`: the RKHS Gram of the online function (`W Wᵀ` for `K = X Xᵀ`,
    `f = X Wᵀ`); the initial value the kernel-consistent predictor needs (`init(f0, gram0=...)`).
    Pseudo-inverse by eigh with eigenvalues below `N·eps·λ_max` dropped."""
    K = V.square_kernel("K", K)
    f = V.as_float_array("f", f, ndim=2)
    if f.shape[0] != K.shape[0]:
        raise ValueError(f"f: expected {K.shape[0]} rows (as K), got shape {tuple(f.shape)}")
    lam, U = jnp.linalg.eigh(K)
    keep = lam > K.shape[0] * jnp.finfo(K.dtype).eps * jnp.max(jnp.abs(lam))
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    c = U.T @ f
    return (c * inv[:, None]).T @ c


class Predictive(eqx.Module, Method):
    """BYOL / SimSiam / DirectPred / kernel-consistent predictor in function space (one class; the
    public constructors `BYOL`, `SimSiam`, `DirectPred`, `KernelPredictor` fix its options).

    Attributes (numbers are traced leaves; strings and flags static):
      ema: `EMARate` of the target (None: SimSiam, the target is f itself).
      alpha_p: predictor learning-rate ratio `lr_pred/lr`.
      eta, eta_p: weight decay of f and of W_p per unit time (`eta_p` None: equal to eta).
      p0: initial predictor `W_p(0) = p0·I` (PSD: a Gaussian W_p has eigenvalues of both signs).
      eps, corr_rate: DirectPred's eps and the relaxation rate of `F̂` per unit time
        (`(1 − rho)/lr`; the official rho = 0.3 at lr 0.03 gives 23.3).
      kind: "byol" or "simsiam" (which official cosine loss); form: "euclidean" or "cosine".
      predictor: "trained", "symmetric" (flow symmetrised), "identity" (no predictor),
        "fixed" (frozen at its initial value), "directpred", "kernel" (`W_p = (alpha_p G)^{1/2}`,
        G = fᵀK⁺f).
      target_init: "copy", "zero" or "independent" (pass `target0` to `init`).
      stop_gradient: False lets the gradient through the target branch (SimSiam only).
      freq: DirectPred's predictor update frequency (discrete steps; the ODE is the freq = 1 limit).
    """

    ema: Any
    alpha_p: Any
    eta: Any
    eta_p: Any
    p0: Any
    eps: Any
    corr_rate: Any
    kind: str = eqx.field(static=True)
    form: str = eqx.field(static=True)
    predictor: str = eqx.field(static=True)
    target_init: str = eqx.field(static=True)
    stop_gradient: bool = eqx.field(static=True)
    freq: int = eqx.field(static=True)

    def __init__(self, *, kind="byol", ema=None, alpha_p=1.0, eta=0.0, eta_p=None, p0=0.5,
                 eps=0.1, corr_rate=0.7 / 0.03, form="euclidean", predictor="trained",
                 target_init="copy", stop_gradient=True, freq=1):
        self.kind = V.choice("kind", kind, ("byol", "simsiam"))
        self.ema = None if ema is None else as_rate("ema", ema)
        self.alpha_p = V.positive_float("alpha_p", alpha_p)
        self.eta = V.positive_float("eta", eta, allow_zero=True)
        self.eta_p = self.eta if eta_p is None else V.positive_float("eta_p", eta_p,
                                                                     allow_zero=True)
        for nm, v in (("p0", p0), ("eps", eps)):
            if isinstance(v, (bool, str)) or v is None or jnp.ndim(v) != 0:
                raise TypeError(f"{nm}: expected a real number, got {v!r}")
        self.p0 = p0
        self.eps = eps
        self.corr_rate = V.positive_float("corr_rate", corr_rate)
        self.form = V.choice("form", form, FORMS)
        self.predictor = V.choice("predictor", predictor, PREDICTORS)
        self.target_init = V.choice("target_init", target_init, TARGET_INITS)
        if not isinstance(stop_gradient, bool):
            raise TypeError(f"stop_gradient: expected a bool, got {stop_gradient!r}")
        if not stop_gradient and ema is not None:
            raise ValueError("stop_gradient=False: expected a method whose target is the online "
                             "function itself (SimSiam, ema=None); an EMA target gets no gradient")
        self.stop_gradient = stop_gradient
        self.freq = V.positive_int("freq", freq)

    @property
    def label(self) -> str:
        name = {"directpred": "directpred", "kernel": "kernel_predictor"}.get(self.predictor,
                                                                            self.kind)
        return f"{name}({self.form})"

    # ---- state ----
    def init(self, f0, key=None, *, f0_test=None, target0=None, target0_test=None, gram0=None,
             predictor0=None):
        """`State` at t = 0: `aux = {"t", "target", predictor state}`; `target0` (and
        `target0_test`) for target_init="independent"; `gram0 = rkhs_gram(K, f0)` for
        predictor="kernel"; `predictor0 (k, k)` a trained/fixed predictor's start (default
        `p0·I`)."""
        f0 = V.stacked_views("f0", f0)
        aux = {"t": jnp.zeros((), f0.dtype)}
        if self.ema is not None:
            aux["target"] = init_target(self.label, self.target_init, f0, target0)
        k = f0.shape[1]
        if self.predictor in ("trained", "symmetric", "fixed"):
            if predictor0 is None:
                aux["W_p"] = self.p0 * jnp.eye(k, dtype=f0.dtype)
            else:
                aux["W_p"] = V.as_float_array("predictor0", predictor0, ndim=2)
                if aux["W_p"].shape != (k, k):
                    raise ValueError(f"predictor0: expected shape {(k, k)}, got "
                                     f"{tuple(aux['W_p'].shape)}")
        elif self.predictor == "directpred":   # the first batch initialises F̂
            aux["F_hat"] = f0.T @ f0 / f0.shape[0]
            aux["F_used"] = aux["F_hat"]
            aux["step"] = jnp.zeros((), f0.dtype)   # a float count: the ODE state stays float
        elif self.predictor == "kernel":
            if gram0 is None:
                raise ValueError(f"gram0: {self.label} needs the RKHS Gram G(0) = f0ᵀK⁺f0 "
                                 f"(methods.rkhs_gram(K, f0)): got none")
            G = V.as_float_array("gram0", gram0, ndim=2)
            if G.shape != (k, k):
                raise ValueError(f"gram0: expected shape {(k, k)}, got {tuple(G.shape)}")
            aux["G"] = G
        aux_test = None
        if f0_test is not None:
            f0_test = V.as_float_array("f0_test", f0_test, ndim=2)
            if self.ema is not None:
                aux_test = init_target(self.label, self.target_init, f0_test, target0_test)
        return State(f=f0, aux=aux, f_test=f0_test, aux_test=aux_test)

    def predictor_of(self, state: State) -> jax.Array:
        """The predictor `W_p (k, k)` in use at this state."""
        aux = state.aux
        k = state.f.shape[1]
        if self.predictor in ("trained", "symmetric", "fixed"):
            return aux["W_p"]
        if self.predictor == "identity":
            return jnp.eye(k, dtype=state.f.dtype)
        if self.predictor == "directpred":
            return _directpred(aux["F_used"], self.eps)
        return _sqrtm_psd(self.alpha_p * aux["G"])

    def target_of(self, state: State) -> jax.Array:
        return state.f if self.ema is None else state.aux["target"]

    def prediction_loss(self, p, target) -> jax.Array:
        """The method's loss of predictions `p (2n, k)` (any predictor's output: `f W_pᵀ`, or a
        finite-width MLP head's) against the target / projection `target (2n, k)` of the partner
        views (each row `r` against `target[Zr]`), the gradient stopped at the target unless
        `stop_gradient=False`: Euclidean `(1/2N)‖p − Z target‖²`, BYOL's `(1/n)Σ‖p̂_r − ŷ_r‖²`
        or SimSiam's `−mean cos`."""
        y = swap_views(jax.lax.stop_gradient(target) if self.stop_gradient else target)
        return _objective(self.kind, self.form, p, y)

    # ---- dynamics ----
    def _loss_fn(self, f, Wp, target):
        y = swap_views(jax.lax.stop_gradient(target) if self.stop_gradient else target)
        return _objective(self.kind, self.form, f @ Wp.T, y)

    def force(self, state: State) -> jax.Array:
        Wp = jax.lax.stop_gradient(self.predictor_of(state))
        if self.ema is None and not self.stop_gradient:
            return jax.grad(lambda f: self._loss_fn(f, Wp, f))(state.f)
        return jax.grad(self._loss_fn)(state.f, Wp, self.target_of(state))

    def _aux_rates(self, t, state: State, g):
        aux, f = state.aux, state.f
        d = {"t": jnp.ones_like(aux["t"])}
        if self.ema is not None:
            d["target"] = self.ema(t) * (f - aux["target"])
        if self.predictor in ("trained", "symmetric"):
            gW = jax.grad(lambda W: self._loss_fn(f, W, self.target_of(state)))(aux["W_p"])
            dW = -self.alpha_p * gW - self.eta_p * aux["W_p"]
            d["W_p"] = (dW + dW.T) / 2 if self.predictor == "symmetric" else dW
        elif self.predictor == "fixed":
            d["W_p"] = jnp.zeros_like(aux["W_p"])
        elif self.predictor == "directpred":
            dF = self.corr_rate * (f.T @ f / f.shape[0] - aux["F_hat"])
            d["F_hat"] = dF
            d["F_used"] = dF        # the ODE is the freq = 1 limit: F_used = F̂
            d["step"] = jnp.zeros_like(aux["step"])
        elif self.predictor == "kernel":
            # d(fᵀK⁺f)/dt = −(gᵀf + fᵀg) − 2 eta G for df = −K g − eta f, f in range(K)
            d["G"] = -(g.T @ f + f.T @ g) - 2 * self.eta * aux["G"]
        return d

    def vector_field(self, t, state: State, apply_K) -> State:
        g = self.force(state)
        df = -apply_K(g) - self.eta * state.f
        aux = self._aux_rates(t, state, g)
        if state.f_test is None:
            return State(f=df, aux=aux)
        df_test = -apply_K.test(g) - self.eta * state.f_test
        aux_test = (None if self.ema is None
                    else self.ema(t) * (state.f_test - state.aux_test))
        return State(f=df, aux=aux, f_test=df_test, aux_test=aux_test)

    def step(self, state: State, lr, apply_K) -> State:
        """One step in the official order: online f (and a trained W_p) against the current
        target; then the EMA `f_ξ ← m f_ξ + (1 − m) f_new` with `m = 1 − lr·beta(t)`; then
        DirectPred's `F̂ ← rho F̂ + (1 − rho) C_s`, `rho = 1 − lr·corr_rate`, its predictor
        overwritten every `freq` steps; the kernel predictor's G updated exactly."""
        aux, f = state.aux, state.f
        t = aux["t"]
        g = self.force(state)
        Kg = apply_K(g)
        decay = 1.0 - lr * self.eta
        f_new = decay * f - lr * Kg
        new = dict(aux, t=t + lr)
        if self.ema is not None:
            m = 1.0 - lr * self.ema(t)
            new["target"] = m * aux["target"] + (1 - m) * f_new
        if self.predictor in ("trained", "symmetric"):
            gW = jax.grad(lambda W: self._loss_fn(f, W, self.target_of(state)))(aux["W_p"])
            dW = -self.alpha_p * gW - self.eta_p * aux["W_p"]
            if self.predictor == "symmetric":
                dW = (dW + dW.T) / 2
            new["W_p"] = aux["W_p"] + lr * dW
        elif self.predictor == "directpred":
            rho = 1.0 - lr * self.corr_rate
            F_hat = rho * aux["F_hat"] + (1 - rho) * f.T @ f / f.shape[0]
            step = aux["step"] + 1
            new["F_hat"] = F_hat
            new["F_used"] = jnp.where(jnp.mod(step, self.freq) == 0, F_hat, aux["F_used"])
            new["step"] = step
        elif self.predictor == "kernel":
            # exact: (f_new)ᵀK⁺(f_new) with f_new = decay·f − lr·K g
            new["G"] = (decay ** 2 * aux["G"] - decay * lr * (g.T @ f + f.T @ g)
                        + lr ** 2 * g.T @ Kg)
        ft_new = None if state.f_test is None else decay * state.f_test - lr * apply_K.test(g)
        return with_test_points(state, f_new, new, ft_new, self.ema, lr, t)

    # ---- objective ----
    def loss(self, state: State) -> jax.Array:
        return self._loss_fn(state.f, self.predictor_of(state), self.target_of(state))

    def terms(self, state: State) -> dict:
        """`loss`, and the diagnostics worth logging (not summed): none are loss terms, so the
        dict holds the loss alone; see `diagnostics` for the predictor/target measures."""
        return {"loss": self.loss(state)}

    def diagnostics(self, state: State) -> dict:
        """Predictor and invariance measures: eigenvalues of W_p's symmetric part and of
        `C_s = fᵀf/N`, `‖[W_p, C_s]‖_F`, and `‖f − Zf‖/‖f‖` (0 for exactly invariant f)."""
        f = state.f
        Wp = self.predictor_of(state)
        Cs = f.T @ f / f.shape[0]
        return {
            "eig_W_p": jnp.linalg.eigvalsh((Wp + Wp.T) / 2),   # of its symmetric part
            "eig_C_s": jnp.linalg.eigvalsh(Cs),
            "commutator_W_p_C_s": jnp.linalg.norm(Wp @ Cs - Cs @ Wp),
            "invariance_gap": jnp.linalg.norm(f - swap_views(f)) / jnp.linalg.norm(f),
        }


def BYOL(*, ema=0.4, alpha_p=1.0, eta=0.0, eta_p=None, p0=0.5, form="euclidean",
         predictor="trained", target_init="copy") -> Predictive:
    """BYOL in function space (Grill et al. 2020): trained predictor, EMA target at rate `ema`
    (`EMARate`, e.g. `EMARate.from_momentum(0.996, lr=lr, t_end=T)` for the official cosine
    schedule; a number is a constant rate), stop-gradient. `predictor="identity"` is the
    no-predictor ablation. Official target init is an independent network (`target_init=
    "independent"`); the default "copy" is the one consistent with the kernel regime.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from sslntk import methods
      >>> m = methods.BYOL(ema=0.4, alpha_p=2.0)
      >>> s = m.init(0.1 * jax.random.normal(jax.random.key(0), (8, 3)))
      >>> d = m.vector_field(0.0, s, methods.KernelOp(jnp.eye(8)))
    """
    if ema is None:
        raise ValueError("ema: BYOL needs an EMA target rate (SimSiam is ema=None), got None")
    return Predictive(kind="byol", ema=ema, alpha_p=alpha_p, eta=eta, eta_p=eta_p, p0=p0,
                      form=form, predictor=predictor, target_init=target_init)


def SimSiam(*, alpha_p=1.0, eta=0.0, eta_p=None, p0=0.5, form="euclidean", predictor="trained",
            stop_gradient=True) -> Predictive:
    """SimSiam in function space (Chen & He 2021): trained predictor, the target is the online
    function under stop-gradient. Ablations: `predictor="identity"`, `stop_gradient=False`."""
    return Predictive(kind="simsiam", ema=None, alpha_p=alpha_p, eta=eta, eta_p=eta_p, p0=p0,
                      form=form, predictor=predictor, stop_gradient=stop_gradient)


def DirectPred(*, ema=None, eps=0.1, corr_rate=0.7 / 0.03, freq=1, eta=0.0, form="cosine",
               kind="byol", target_init="copy") -> Predictive:
    """DirectPred (Tian et al. 2021, Sec. 5; official code's predictor form): `W_p = U diag(p_j)
    Uᵀ` from `F̂ = U diag(s_j) Uᵀ`, `p_j = max(sqrt(s_j/s_max) + eps, 1e-4)`; `F̂` relaxes to
    `C_s = fᵀf/N` at `corr_rate` per unit time and the predictor is overwritten every `freq`
    steps. `ema=None` uses the online function as target (SimSiam-style)."""
    return Predictive(kind=kind, ema=ema, eps=eps, corr_rate=corr_rate, freq=freq, eta=eta,
                      form=form, predictor="directpred", target_init=target_init)


def KernelPredictor(*, ema=None, alpha_p=1.0, eta=0.0, form="euclidean", kind="simsiam",
                    target_init="copy") -> Predictive:
    """The kernel-consistent predictor `W_p = (alpha_p G)^{1/2}`, `G = fᵀK⁺f`: what the trained
    predictor becomes when it is symmetric and balanced (Tian Thm 1 in function space). This
    project's construction, not a published method (docs/theory/asymmetric.md). Needs
    `init(f0, gram0=rkhs_gram(K, f0))`."""
    return Predictive(kind=kind, ema=ema, alpha_p=alpha_p, eta=eta, form=form,
                      predictor="kernel", target_init=target_init)


__all__ = ["Predictive", "BYOL", "SimSiam", "DirectPred", "KernelPredictor", "EMARate",
           "rkhs_gram", "FORMS", "PREDICTORS"]
