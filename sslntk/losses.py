"""SSL losses as pure functions of embeddings `f: (2n, k)` in stacked view order `[a_1..a_n, b_1..b_n]`.

`get(name, **constants)` returns a `Loss`: a pytree whose numeric constants are leaves (so `jax.vmap`
and `jax.grad` over loss constants work) and whose name and string options (e.g. SimCLR's
`similarity`) are static (hashed by `jax.jit`, never traced). Call it as `loss(f) -> scalar`;
`loss.terms(f)` returns its named, weighted terms (a dict of scalars that sums to `loss(f)`).
VICReg's `convention` is "paper" (default) or "official" (the reference code's normalisation).

| name | constants (default) | static options | `cross_moment_only` |
| --- | --- | --- | --- |
| `barlow_twins` | `lam` (1.0) | | True |
| `barlow_twins_standardized` | `lam` (5e-3), `eps` (1e-5) | | False |
| `vicreg` | `lam_inv` (25), `mu` (25), `nu` (1), `eps` (1e-4), `gamma` (1) | `convention` | False |
| `simclr` | `temperature` (0.5) | `similarity` ("cosine" / "dot") | False |
| `spectral` | | | False |
| `kernel_pca` | | | True |
| `naive` | | `negatives` ("none" / "shift") | True for "none" |

Notation used in every docstring: `f_a = f[:n]`, `f_b = f[n:]` (row i of each is the embedding of
the two views of source sample i); `C = (f_aᵀ f_b + f_bᵀ f_a) / (2n) = fᵀ Z f / (2n)` is the
symmetrised, uncentred cross-correlation (`cross_correlation`), `Z = [[0, I],[I, 0]]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk.methods import Method, MomentForm, StepwiseForm, as_state


def split_views(f: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(2n, k)` stacked embeddings → `(f_a, f_b)`, each `(n, k)`."""
    n = f.shape[0] // 2
    return f[:n], f[n:]


def cross_correlation(f: jax.Array) -> jax.Array:
    """Symmetrised, uncentred cross-view correlation `C = (f_aᵀ f_b + f_bᵀ f_a) / (2n)`, `(k, k)`.

    For a linear model `f = W x` this is `C = W Γ Wᵀ` (Simon et al. 2023, §2)."""
    fa, fb = split_views(f)
    n2 = f.shape[0]
    return (fa.T @ fb + fb.T @ fa) / n2


def _diag(C: jax.Array) -> jax.Array:
    """The diagonal of a square `C` as a masked row sum (exact: the other terms are zeros), not
    `jnp.diagonal`, a jitted helper whose nested trace under `grad`/`vmap` the solvers' first call
    in a process pays again."""
    return jnp.sum(C * jnp.eye(C.shape[0], dtype=C.dtype), axis=1)


def _bt_from_c(C: jax.Array, lam) -> jax.Array:
    d = _diag(C)
    off = jnp.sum(C**2) - jnp.sum(d**2)
    return jnp.sum((d - 1.0) ** 2) + lam * off


def _bt_terms_from_c(C: jax.Array, lam) -> dict:
    d = _diag(C)
    return {"on_diagonal": jnp.sum((d - 1.0) ** 2),
            "off_diagonal": lam * (jnp.sum(C**2) - jnp.sum(d**2))}


def _neg_trace(C: jax.Array, **_) -> jax.Array:
    return -jnp.trace(C)


def barlow_twins(f: jax.Array, lam=1.0) -> jax.Array:
    """Barlow Twins, theory form (Simon et al. 2023, §2; `docs/concepts.md`):
    `L = Σ_i (C_ii − 1)² + λ Σ_{i≠j} C_ij²`, `C = (f_aᵀ f_b + f_bᵀ f_a)/(2n)`. λ = 1 is the
    rotation-invariant case the stepwise theory solves (then `L = ‖C − I‖_F²`,
    ∇_W L = 4 (C − I) W Γ, Simon et al. 2023 §2; in function space `∇_f L = (2/n)·Z f (C − I)` at
    λ = 1). No centring, no standardisation (the form the stepwise theory solves)."""
    return _bt_from_c(cross_correlation(f), lam)


def _bt_terms(f, lam=1.0):
    return _bt_terms_from_c(cross_correlation(f), lam)


def _standardize(x: jax.Array, eps) -> jax.Array:
    # BatchNorm1d(affine=False) in training mode: biased batch variance, eps inside the sqrt.
    mu = jnp.mean(x, axis=0)
    var = jnp.mean((x - mu) ** 2, axis=0)
    return (x - mu) / jnp.sqrt(var + eps)


def barlow_twins_standardized(f: jax.Array, lam=5e-3, eps=1e-5) -> jax.Array:
    """Barlow Twins, practical form (Zbontar et al. 2021).

    Each view is standardised per embedding dimension over the batch, as `BatchNorm1d(affine=False)`
    in training mode does: `z_a = (f_a − mean_a) / sqrt(var_a + eps)` with the biased (1/n) batch
    variance, likewise `z_b`. Then `C = z_aᵀ z_b / n` (not symmetrised, as in the official code) and
    `L = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²`.

    Constants: `lam` = λ (default 5e-3; the paper's value, 0.0051 in the official code),
    `eps` (default 1e-5, the BatchNorm default). A different dynamical system from the theory form:
    near small initialisation the standardisation divides by tiny standard deviations.
    """
    return _bt_from_c(_standardized_c(f, eps), lam)


def _standardized_c(f, eps):
    fa, fb = split_views(f)
    return _standardize(fa, eps).T @ _standardize(fb, eps) / fa.shape[0]


def _bt_std_terms(f, lam=5e-3, eps=1e-5):
    return _bt_terms_from_c(_standardized_c(f, eps), lam)


def _vicreg_var_cov(x: jax.Array, eps, gamma) -> tuple[jax.Array, jax.Array]:
    n, k = x.shape
    xc = x - jnp.mean(x, axis=0)
    cov = xc.T @ xc / (n - 1)                         # unbiased, as in the paper
    std = jnp.sqrt(jnp.diagonal(cov) + eps)
    v = jnp.mean(jax.nn.relu(gamma - std))
    c = (jnp.sum(cov**2) - jnp.sum(jnp.diagonal(cov) ** 2)) / k
    return v, c


CONVENTIONS = ("paper", "official")


def _vicreg_terms(f, lam_inv=25.0, mu=25.0, nu=1.0, eps=1e-4, gamma=1.0, convention="paper"):
    fa, fb = split_views(f)
    n, k = fa.shape
    inv = jnp.sum((fa - fb) ** 2) / n
    va, ca = _vicreg_var_cov(fa, eps, gamma)
    vb, cb = _vicreg_var_cov(fb, eps, gamma)
    var = va + vb
    if convention == "official":
        inv = inv / k          # F.mse_loss: mean over the n·d entries
        var = var / 2          # mean(relu(1 − std_x))/2 + mean(relu(1 − std_y))/2
    return {"invariance": lam_inv * inv, "variance": mu * var, "covariance": nu * (ca + cb)}


def vicreg(f: jax.Array, lam_inv=25.0, mu=25.0, nu=1.0, eps=1e-4, gamma=1.0,
           convention: str = "paper") -> jax.Array:
    """VICReg (Bardes et al. 2022), with `Z = f_a`, `Z' = f_b`, `d = k`:

        L = lam_inv · s(Z, Z') + mu · [v(Z) + v(Z')] + nu · [c(Z) + c(Z')]
        s(Z, Z') = (1/n) Σ_i ‖z_i − z'_i‖²                          (invariance)
        v(Z)     = (1/d) Σ_j max(0, gamma − sqrt(Var(z^j) + eps))   (variance hinge)
        c(Z)     = (1/d) Σ_{i≠j} Cov(Z)_ij²                          (covariance)

    `Var`/`Cov` are the unbiased (1/(n−1)) batch estimates of the centred embeddings.
    Defaults: lam_inv = 25, mu = 25, nu = 1, eps = 1e-4, gamma = 1 (the paper's values).

    `convention` (static option): "paper" (default) is the formula above. "official" is what the
    official code (facebookresearch/vicreg `main_vicreg.py`, `VICReg.forward`) and the libraries
    that copy it (lightly, solo-learn) compute with the same constants (25, 25, 1): the invariance
    term is `F.mse_loss(x, y)` = s/d (a mean over the n·d entries) and the variance term is halved,
    `mean(relu(1 − std_x))/2 + mean(relu(1 − std_y))/2`; the covariance term is the same. So at equal
    constants "official" weighs invariance d× and variance 2× less than "paper".
    `terms(f)`: `invariance`, `variance`, `covariance` (each with its weight).
    """
    t = _vicreg_terms(f, lam_inv, mu, nu, eps, gamma, convention)
    return t["invariance"] + t["variance"] + t["covariance"]


SIMILARITIES = ("cosine", "dot")


def simclr(f: jax.Array, temperature=0.5, similarity: str = "cosine") -> jax.Array:
    """SimCLR / NT-Xent / InfoNCE (Chen et al. 2020), over all 2n anchors:

        s(u, v) = z_uᵀ z_v,  z_u = f_u/‖f_u‖ ("cosine", default) or z_u = f_u ("dot")
        ℓ_u = −s(u, p(u))/τ + log Σ_{v≠u} exp(s(u, v)/τ),    L = (1/2n) Σ_u ℓ_u

    `terms(f)`: `alignment` `−(1/2n) Σ_u s(u, p(u))/τ` (positive pairs) and `uniformity`
    `(1/2n) Σ_u log Σ_{v≠u} exp(s(u, v)/τ)` (the repulsive log-sum-exp; Wang & Isola's split).

    where `p(u)` is the other view of the same sample (`u ± n`) and the sum runs over the 2n − 1
    other views (the positive included). Constant: `temperature` τ (default 0.5, the SimCLR CIFAR
    value; 0.1–0.5 is typical). Option (static): `similarity`. With "cosine" the loss is invariant
    under `f_u → c_u f_u` for every `c_u > 0`; a zero row has no direction and gives NaN.
    """
    s_pos, lse = _simclr_parts(f, temperature, similarity)
    return jnp.mean(lse - s_pos)


def _simclr_parts(f, temperature, similarity):
    n2 = f.shape[0]
    n = n2 // 2
    if similarity == "cosine":
        z = f * jax.lax.rsqrt(jnp.sum(f * f, axis=1, keepdims=True))
    else:
        z = f
    s = (z @ z.T) / temperature
    pos = jnp.concatenate([jnp.arange(n, n2), jnp.arange(n)])
    s_pos = s[jnp.arange(n2), pos]
    s_neg = jnp.where(jnp.eye(n2, dtype=bool), -jnp.inf, s)
    return s_pos, jax.nn.logsumexp(s_neg, axis=1)


def _simclr_terms(f, temperature=0.5, similarity="cosine"):
    s_pos, lse = _simclr_parts(f, temperature, similarity)
    return {"alignment": -jnp.mean(s_pos), "uniformity": jnp.mean(lse)}


def spectral(f: jax.Array) -> jax.Array:
    """Spectral contrastive loss (HaoChen et al. 2021), `−2 E[f(x)ᵀ f(x⁺)] + E[(f(x)ᵀ f(x'))²]`.

    Estimator (plug-in for the empirical distribution of the 2n augmented views):
    - positive pairs `(x, x⁺)` are the n pairs `(a_i, b_i)` (either order), so
      `E[f(x)ᵀ f(x⁺)] = (1/n) Σ_i f(a_i)ᵀ f(b_i) = tr(C)`;
    - `x, x'` are independent draws from the 2n views, all `(2n)²` ordered pairs including `x = x'`
      (a V-statistic), so `E[(f(x)ᵀ f(x'))²] = ‖fᵀ f‖_F² / (2n)²`.

    Hence `L = −2 tr(C) + ‖S‖_F²` with `S = fᵀ f / (2n)`; no constants. Equivalently
    `L = ‖f fᵀ/(2n) − Z‖_F² − 2n`: a rank-k approximation of the pair matrix Z (HaoChen's
    matrix-factorisation view). `terms(f)`: `alignment` `−2 tr(C)`, `uniformity` `‖S‖_F²`.
    Depends on f through second moments (C and S), not through C
    alone, so `cross_moment_only` is False.
    """
    t = _spectral_terms(f)
    return t["alignment"] + t["uniformity"]


def _spectral_terms(f):
    S = f.T @ f / f.shape[0]
    return {"alignment": -2.0 * jnp.trace(cross_correlation(f)), "uniformity": jnp.sum(S**2)}


def kernel_pca(f: jax.Array) -> jax.Array:
    """Kernel-PCA objective of the contrastive kernel: `L = −tr(C) = −(1/n) Σ_i f(a_i)ᵀ f(b_i)`.

    Why this is the kernel-PCA objective BT reduces to (Simon et al. 2023, §6): write the outputs on the
    2n views as `f = K a` (RKHS coefficients `a`); then `tr(C) = tr(aᵀ K^Γ_XX a)` with
    `K^Γ_XX = K Z K / (2n)` the contrastive kernel, and the RKHS Gram of the k output functions is
    `aᵀ K a = fᵀ K⁻¹ f`. Maximising `tr(C)` over RKHS-orthonormal outputs (`fᵀ K⁻¹ f = I`) is kernel
    PCA with the pair matrix Z in place of the identity: the optimum spans the top-k eigenvectors of
    `M = K^{1/2} Z K^{1/2} / (2n)`, the same subspace the BT (λ = 1) flow learns at infinite width from
    small initialisation (BT then whitens it to C = I; kernel PCA leaves it orthonormal).

    Meaningful only with that constraint: use it with the `constrained` solver
    (`dynamics.solve(..., "constrained")`).
    Without the constraint it is unbounded below and the flow collapses to rank one (it is then
    Esser's naive loss, `naive` with `negatives="none"`, the same function of f).
    """
    return _neg_trace(cross_correlation(f))


NEGATIVES = ("none", "shift")


def naive(f: jax.Array, negatives: str = "none") -> jax.Array:
    """Esser et al.'s naive dot-product SSL loss (Esser et al. 2024, §1.3), unconstrained it collapses.

    - `negatives="none"` (default): non-contrastive `L_N = −(1/n) Σ_i f(x_i)ᵀ f(x_i⁺) = −tr(C)`
      (`x_i = a_i`, `x_i⁺ = b_i`), i.e. `L = −Tr(Wᵀ M W)` with `M = Φ S_N Φᵀ`, `S_N = Z/(2n)`.
    - `negatives="shift"`: contrastive `L_C = −(1/n) Σ_i [f(a_i)ᵀ f(b_i) − f(a_i)ᵀ f(b_{π(i)})]` with
      the fixed derangement `π(i) = i + 1 mod n` (negative = the other view of the next sample).

    No constants. Under the plain flow `df/dt = −K ∇L` the embedding grows like `e^{2 λ_1 t}` and
    becomes rank one (Esser et al. 2024, §2: a "trivial scalar representation"); under the orthogonality
    constraint (the `constrained` solver) it converges to the top-k eigenspace (Esser et al. 2024, §3).
    """
    t = _naive_terms(f, negatives)
    return t["positive"] + t["negative"] if negatives == "shift" else t["positive"]


def _naive_terms(f, negatives="none"):
    t = {"positive": kernel_pca(f)}
    if negatives == "shift":
        fa, fb = split_views(f)
        t["negative"] = jnp.sum(fa * jnp.roll(fb, -1, axis=0)) / fa.shape[0]
    return t


def _kernel_pca_terms(f):
    return {"alignment": kernel_pca(f)}


def _check_rows(f) -> None:
    """`f (2n, k)`: the loss functions split the rows into the two views (static shapes: also
    checked under jit)."""
    shape = tuple(jnp.shape(f))
    if len(shape) != 2 or shape[0] % 2 or shape[0] < 2:
        raise ValueError(f"f: expected stacked embeddings (2n, k) in view order [a_1..a_n, "
                         f"b_1..b_n] with an even number of rows, got shape {shape}")


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Loss(Method):
    """A named SSL loss with its constants, and the gradient-flow method `df/dt = −K ∇_f L(f)` of
    it (`sslntk.methods.Method`: state `State(f)`, `force = ∇_f L`). `loss(f)` with `f: (2n, k)` →
    scalar. Each named loss is a subclass (`BarlowTwins`, `VICReg`, ...) that carries its formula,
    its terms and its structure (`moment_form`, `stepwise_form`); build one with `get`.

    `constants` (dict of numbers/arrays) are pytree leaves: `jax.vmap`/`jax.grad` over them work.
    `name` and `options` (a sorted tuple of `(option, value)` string pairs) are static pytree
    metadata: they select code paths and are hashed by `jax.jit`, never traced.
    """

    constants: dict
    name: str = dataclasses.field(default="barlow_twins", metadata=dict(static=True))
    options: tuple = dataclasses.field(default=(), metadata=dict(static=True))

    # What a named loss defines (class attributes, not fields):
    #   _fn(f, **constants, **options) -> scalar; _terms(...) -> dict summing to it;
    #   _moment(C, **constants) -> ℓ(C) when the loss is a function of C alone (None otherwise);
    #   _defaults {constant: default}; _checks {constant: "positive" | "nonnegative"};
    #   _choices {option: (default, choices)}.
    _fn: ClassVar[Callable | None] = None
    _terms: ClassVar[Callable | None] = None
    _moment: ClassVar[Callable | None] = None
    _defaults: ClassVar[dict] = {}
    _checks: ClassVar[dict] = {}
    _choices: ClassVar[dict] = {}

    def _moment_only(self, options: dict) -> bool:
        """True when the loss with these static options depends on f only through C."""
        return False

    @property
    def _impl(self) -> type[Loss]:
        # a named loss carries its own formulas; a bare `Loss(constants, name)` (e.g. a subclass
        # that wraps a named loss by its fields) borrows those of the loss it names
        cls = type(self)
        return cls if cls._fn is not None else _BY_NAME[self.name]

    def __call__(self, f: jax.Array) -> jax.Array:
        _check_rows(f)
        return self._impl._fn(f, **self.constants, **dict(self.options))

    # ---- the method protocol (gradient flow of this loss) ----
    @property
    def label(self) -> str:
        return self.name

    @property
    def potential(self) -> Loss:
        return self

    def force(self, state) -> jax.Array:
        return jax.grad(self)(as_state(state).f)

    def loss(self, state) -> jax.Array:
        """The loss at a `State` (or at a bare `f (2n, k)`)."""
        return self(as_state(state).f)

    def terms(self, f) -> dict[str, jax.Array]:
        """Named, weighted terms of the loss at `f (2n, k)` (or at a `State`): a dict of scalars
        whose sum is `self(f)` (to round-off). Barlow Twins (both forms): `on_diagonal`
        `Σ_i (C_ii − 1)²`, `off_diagonal` `λ Σ_{i≠j} C_ij²`; VICReg: `invariance`, `variance`,
        `covariance`; SimCLR: `alignment` (positive pairs), `uniformity` (log-sum-exp over the other
        views); spectral: `alignment` `−2 tr C`, `uniformity` `‖fᵀf/2n‖²`; kernel PCA:
        `alignment`; naive: `positive` (and `negative` with negatives="shift"). Jittable; vmap it
        over a trajectory (`jax.vmap(loss.terms)(traj.f)`), or pass `record_terms=True` to
        `dynamics.solve` / `finite.train`."""
        f = as_state(f).f
        _check_rows(f)
        return self._impl._terms(f, **self.constants, **dict(self.options))

    @property
    def term_names(self) -> tuple[str, ...]:
        """The keys of `terms(f)` (without evaluating it)."""
        f = jax.ShapeDtypeStruct((4, 2), jnp.float32)
        return tuple(jax.eval_shape(self.terms, f))

    def grad(self, f: jax.Array) -> jax.Array:
        """∇_f L, `(2n, k)`."""
        return jax.grad(self)(f)

    @property
    def cross_moment_only(self) -> bool:
        """True iff L depends on f only through the k×k cross-view moment `f_aᵀ f_b` (symmetrised:
        `C = fᵀ Z f/(2n)`). Then `∇_f L = Z f G(C)` for a k×k `G`, and the kernel flow
        `d(K^{-1/2} f)/dt = −2n·M (K^{-1/2} f) G` keeps every eigenspace of
        `M = K^{1/2} Z K^{1/2}/(2n)` invariant, which is what the eigen-reduced solver needs.
        False for losses that also use `f_aᵀf_a`, `f_bᵀf_b` (e.g. `spectral`: K and M do not
        commute), means (standardised BT, VICReg) or per-sample nonlinearities (SimCLR)."""
        return bool(self._impl._moment_only(self, dict(self.options)))

    @property
    def has_moment_form(self) -> bool:
        """True when `of_moment` is available (a `cross_moment_only` loss with a formula in C)."""
        return self.cross_moment_only and self._impl._moment is not None

    def of_moment(self, C: jax.Array) -> jax.Array:
        """`ℓ(C)` with `L(f) = ℓ(C(f))` for a `cross_moment_only` loss, `C (k, k)` symmetric;
        raises `ValueError` for any other loss."""
        if not self.has_moment_form:
            raise ValueError(f"loss: {self.name!r} is not a function of the cross-moment C alone")
        return self._impl._moment(C, **self.constants)

    @property
    def moment_form(self) -> MomentForm | None:
        """`MomentForm` (ℓ(C) with this loss's constants) when `has_moment_form`, else None."""
        if not self.has_moment_form:
            return None
        return MomentForm(of_moment=self._impl._moment, constants=self.constants)

    def __repr__(self) -> str:
        items = [f"{k}={v!r}" for k, v in {**self.constants, **dict(self.options)}.items()]
        return f"Loss({self.name!r}{', ' if items else ''}{', '.join(items)})"


@jax.tree_util.register_dataclass
@dataclass(frozen=True, repr=False)
class BarlowTwins(Loss):
    """Barlow Twins, theory form (`barlow_twins`); constant `lam` (default 1)."""

    _fn: ClassVar = staticmethod(barlow_twins)
    _terms: ClassVar = staticmethod(_bt_terms)
    _moment: ClassVar = staticmethod(_bt_from_c)
    _defaults: ClassVar = {"lam": 1.0}
    _checks: ClassVar = {"lam": "nonnegative"}

    def _moment_only(self, options):
        return True

    @property
    def stepwise_form(self) -> StepwiseForm:
        return StepwiseForm(lam=self.constants["lam"])


@jax.tree_util.register_dataclass
@dataclass(frozen=True, repr=False)
class BarlowTwinsStandardized(Loss):
    """Barlow Twins, practical form (`barlow_twins_standardized`); `lam` (5e-3), `eps` (1e-5)."""

    _fn: ClassVar = staticmethod(barlow_twins_standardized)
    _terms: ClassVar = staticmethod(_bt_std_terms)
    _defaults: ClassVar = {"lam": 5e-3, "eps": 1e-5}
    _checks: ClassVar = {"lam": "nonnegative", "eps": "nonnegative"}


@jax.tree_util.register_dataclass
@dataclass(frozen=True, repr=False)
class VICReg(Loss):
    """VICReg (`vicreg`); constants `lam_inv`, `mu`, `nu`, `eps`, `gamma`; option `convention`."""

    _fn: ClassVar = staticmethod(vicreg)
    _terms: ClassVar = staticmethod(_vicreg_terms)
    _defaults: ClassVar = {"lam_inv": 25.0, "mu": 25.0, "nu": 1.0, "eps": 1e-4, "gamma": 1.0}
    _checks: ClassVar = {k: "nonnegative" for k in ("lam_inv", "mu", "nu", "eps", "gamma")}
    _choices: ClassVar = {"convention": ("paper", CONVENTIONS)}


@jax.tree_util.register_dataclass
@dataclass(frozen=True, repr=False)
class SimCLR(Loss):
    """SimCLR / NT-Xent (`simclr`); constant `temperature`; option `similarity`."""

    _fn: ClassVar = staticmethod(simclr)
    _terms: ClassVar = staticmethod(_simclr_terms)
    _defaults: ClassVar = {"temperature": 0.5}
    _checks: ClassVar = {"temperature": "positive"}
    _choices: ClassVar = {"similarity": ("cosine", SIMILARITIES)}


@jax.tree_util.register_dataclass
@dataclass(frozen=True, repr=False)
class Spectral(Loss):
    """Spectral contrastive loss (`spectral`); no constants."""

    _fn: ClassVar = staticmethod(spectral)
    _terms: ClassVar = staticmethod(_spectral_terms)


@jax.tree_util.register_dataclass
@dataclass(frozen=True, repr=False)
class KernelPCA(Loss):
    """Kernel-PCA objective `−tr C` (`kernel_pca`); no constants; use with the constrained solver."""

    _fn: ClassVar = staticmethod(kernel_pca)
    _terms: ClassVar = staticmethod(_kernel_pca_terms)
    _moment: ClassVar = staticmethod(_neg_trace)

    def _moment_only(self, options):
        return True


@jax.tree_util.register_dataclass
@dataclass(frozen=True, repr=False)
class Naive(Loss):
    """Esser et al.'s naive dot-product loss (`naive`); option `negatives`."""

    _fn: ClassVar = staticmethod(naive)
    _terms: ClassVar = staticmethod(_naive_terms)
    _moment: ClassVar = staticmethod(_neg_trace)
    _choices: ClassVar = {"negatives": ("none", NEGATIVES)}

    def _moment_only(self, options):
        return options["negatives"] == "none"


_BY_NAME: dict[str, type[Loss]] = {
    "barlow_twins": BarlowTwins, "barlow_twins_standardized": BarlowTwinsStandardized,
    "vicreg": VICReg, "simclr": SimCLR, "spectral": Spectral, "kernel_pca": KernelPCA,
    "naive": Naive,
}


def names() -> list[str]:
    """The registered loss names (`get`'s choices)."""
    return sorted(_BY_NAME)


def _constant(name: str, key: str, v, rule: str | None):
    """A numeric constant (a number or a numeric array: arrays batch runs under `jax.vmap`)."""
    if isinstance(v, (str, bytes, bool, np.bool_)) or v is None:
        raise TypeError(f"{name}.{key}: expected a number (or an array of numbers), got {v!r}")
    if isinstance(v, (int, float, np.integer, np.floating)):
        pass
    else:
        try:
            dt = jnp.asarray(v).dtype
        except TypeError as e:
            raise TypeError(f"{name}.{key}: expected a number (or an array of numbers), got "
                            f"{type(v).__name__}") from e
        if not (jnp.issubdtype(dt, jnp.floating) or jnp.issubdtype(dt, jnp.integer)):
            raise TypeError(f"{name}.{key}: expected a number (or an array of numbers), got an "
                            f"array of dtype {dt}")
        if jnp.ndim(v) != 0:   # a batch of constants (vmap): check every entry when concrete
            if rule is not None and V.is_concrete(v):
                a = np.asarray(v, np.float64)
                ok = np.isfinite(a) & ((a >= 0) if rule == "nonnegative" else (a > 0))
                if not np.all(ok):
                    rel = ">= 0" if rule == "nonnegative" else "> 0"
                    raise ValueError(f"{name}.{key}: expected finite numbers {rel}, got {v!r}")
            return v
    if rule is not None:
        V.positive_float(f"{name}.{key}", v, allow_zero=(rule == "nonnegative"))
    return v


def get(name: str, **constants) -> Loss:
    """Build the loss `name` with `constants` (numeric constants and static string options; defaults
    filled in). Unknown names, constants or option values raise `ValueError` listing the valid
    choices; non-numeric constants raise `TypeError` and out-of-range ones `ValueError`, naming the
    constant (e.g. `get("barlow_twins", lam="1")`: TypeError naming `barlow_twins.lam`).

        >>> float(get("barlow_twins", lam=1.0)(jnp.zeros((4, 2))))
        2.0
    """
    if isinstance(name, Loss):
        raise TypeError("name: expected a loss name (str), got a Loss; use it directly")
    if not isinstance(name, str):
        raise TypeError(f"name: expected a loss name (str), one of {names()}; got {name!r}")
    V.choice("name", name, names())
    cls = _BY_NAME[name]
    valid = set(cls._defaults) | set(cls._choices)
    unknown = set(constants) - valid
    if unknown:
        raise ValueError(f"{name}: unknown constant(s) {sorted(unknown)}; valid constants are "
                         f"{sorted(cls._defaults)}"
                         + (f" and options {sorted(cls._choices)}" if cls._choices else ""))
    c = {k: _constant(name, k, constants.get(k, v), cls._checks.get(k))
         for k, v in cls._defaults.items()}
    opts = []
    for k, (default, choices) in cls._choices.items():
        v = constants.get(k, default)
        if not isinstance(v, str):
            raise TypeError(f"{name}.{k}: expected a string option, one of {list(choices)}; "
                            f"got {v!r}")
        opts.append((k, V.choice(f"{name}.{k}", v, choices)))
    return cls(constants=c, name=name, options=tuple(sorted(opts)))


def as_loss(loss) -> Loss:
    """Accept a `Loss` or a registered name (built with default constants)."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        return get(loss)
    raise TypeError(f"loss: expected a sslntk.losses.Loss or a loss name {names()}, "
                    f"got {type(loss).__name__}")


__all__ = ["Loss", "BarlowTwins", "BarlowTwinsStandardized", "VICReg", "SimCLR", "Spectral",
           "KernelPCA", "Naive", "get", "names", "as_loss", "split_views", "cross_correlation",
           "barlow_twins", "barlow_twins_standardized", "vicreg", "simclr", "spectral",
           "kernel_pca", "naive", "CONVENTIONS", "SIMILARITIES", "NEGATIVES"]
