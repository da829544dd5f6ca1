"""Downstream probes: what a representation is worth on labelled held-out data.

Three probes, as SSL papers and evaluators report them, each a small object with one job:

- `Ridge`: closed-form ridge regression on ±1 one-vs-all targets with an unpenalised intercept,
  predicting the arg-max score (scikit-learn's ``RidgeClassifier`` with ``alpha = λ``):
  ``min_{W, b} Σ_i ‖Y_i − W x_i − b‖² + λ ‖W‖_F²``, ``Y_ic = +1`` if ``y_i = c`` else ``−1``.
- `Logistic`: multinomial logistic regression (softmax over all C classes, intercept unpenalised)
  trained with optax's L-BFGS (zoom line search) to a gradient-norm tolerance:
  ``min_{W, b} (1/n) Σ_i CE(softmax(W x_i + b), y_i) + (λ/2) ‖W‖_F²`` — scikit-learn's
  ``LogisticRegression(C = 1/(n λ))`` (its objective is ``C Σ_i CE_i + ½‖W‖²``). Gradients with
  respect to the features (and λ) come by implicit differentiation of the optimality condition
  (Blondel et al. 2022, "Efficient and modular implicit differentiation"), not by unrolling.
- `KNN`: weighted k-nearest neighbours with cosine similarity and temperature weighting, the
  evaluator of InstDisc (Wu et al. 2018, eq. 8) as solo-learn implements it
  (``solo/utils/knn.py``, defaults k = 20, T = 0.07): L2-normalise, take the k most similar
  training points, class score ``Σ_{j ∈ top-k} exp(s_j / T) [y_j = c]``, predict the arg-max.

The linear probes standardise the features (``standardize="coordinate"``: each coordinate to zero
mean, unit variance over the probe's training rows, scikit-learn's ``StandardScaler``; "global":
centre, then divide every coordinate by ONE common scale, which keeps the relative sizes of the
embedding's directions; "none") and choose λ from a grid by accuracy on a validation split of the
training rows (every ``round(1/val_fraction)``-th row, deterministic), then refit on all training
rows with the chosen λ.

Shapes: features ``(m, k)``; labels ``(m,)`` integers in ``0..C−1``. Every probe also takes a
leading time axis ``(T, m, k)`` (a trajectory's saved times) and maps over it with `jax.vmap`; the
core functions (`ridge_fit`, `logistic_fit`, `knn_scores`) are pure, jittable and vmappable.

Example::

    import jax, jax.numpy as jnp
    from sslntk import probes
    x = jax.random.normal(jax.random.key(0), (60, 4)); y = jnp.arange(60) % 3
    x = x + 2.0 * jax.nn.one_hot(y, 4)
    res = probes.get("ridge")(x[:40], y[:40], x[40:], y[40:])
    print(float(res.accuracy), res.status_name)

Theory and conventions: docs/theory/downstream.md.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from sslntk import _validate as V
from sslntk._status import MAX_STEPS, NONFINITE, SUCCESS, Outcome

__all__ = ["Probe", "Ridge", "Logistic", "KNN", "ProbeResult", "PROBES", "STANDARDIZE", "get",
           "standardize", "ridge_fit", "logistic_fit", "knn_scores", "accuracy"]

STANDARDIZE = ("coordinate", "global", "none")
_HI = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------
# Results


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class ProbeResult(Outcome):
    """A probe's verdict on one representation (or one per saved time, with a leading ``T`` axis).

    Attributes:
      accuracy: ``()`` or ``(T,)`` top-1 accuracy on the test rows, in [0, 1].
      loss: ``()`` or ``(T,)`` the probe's own loss on the test rows (ridge: mean over rows of
        ``‖Y_i − W x_i − b‖²``; logistic: mean cross-entropy; kNN: mean negative log of the
        normalised class score of the true class), differentiable in the features.
      lam: ``()`` or ``(T,)`` the regularisation chosen on the validation split (NaN for kNN).
      val_accuracy: ``()`` or ``(T,)`` validation accuracy at the chosen λ (NaN for kNN).
      predictions: ``(m_test,)`` or ``(T, m_test)`` predicted classes.
      W, b: ``(k, C)`` and ``(C,)`` (leading ``T``) the linear probe refitted on all training rows,
        in standardised feature units (None for kNN).
      status: int code (`sslntk._status.Status`): SUCCESS, MAX_STEPS (L-BFGS ran out of
        iterations), NONFINITE (NaN/inf features or fit).
    """

    accuracy: jax.Array
    loss: jax.Array
    lam: jax.Array
    val_accuracy: jax.Array
    predictions: jax.Array
    status: jax.Array
    W: jax.Array | None = None
    b: jax.Array | None = None

    outcome_label = "probe"


# ----------------------------------------------------------------------------------------------
# Core numerics (pure, jittable, vmappable)


def accuracy(scores, y):
    """Top-1 accuracy of ``scores (m, C)`` against labels ``y (m,)`` (first index wins ties)."""
    return jnp.mean((jnp.argmax(scores, axis=-1) == y).astype(scores.dtype))


def standardize(x_fit, *xs, mode: str = "coordinate"):
    """Standardise features with statistics of ``x_fit (m, k)`` only; returns the transformed
    ``x_fit`` followed by each of ``xs``.

    "coordinate": ``(x − μ) / σ`` per coordinate, population std (ddof 0) and σ < 10 eps → 1, as
    scikit-learn's ``StandardScaler``; "global": ``(x − μ) / s`` with one scale
    ``s = sqrt(mean_j σ_j²)``; "none": unchanged.
    """
    if mode == "none":
        return (x_fit, *xs)
    mu = jnp.mean(x_fit, axis=0)
    var = jnp.mean((x_fit - mu) ** 2, axis=0)
    sd = jnp.sqrt(var) if mode == "coordinate" else jnp.sqrt(jnp.mean(var))
    tiny = 10 * jnp.finfo(x_fit.dtype).eps
    sd = jnp.where(sd < tiny, 1.0, sd)     # constant features stay (sklearn _handle_zeros_in_scale)
    return tuple((x - mu) / sd for x in (x_fit, *xs))


def _pm_one(y, n_classes, dtype):
    return 2.0 * jax.nn.one_hot(y, n_classes, dtype=dtype) - 1.0


@functools.partial(jax.jit, static_argnames=("n_classes",))
def ridge_fit(x, y, n_classes: int, lam):
    """Closed-form ridge on ±1 one-vs-all targets with an unpenalised intercept.

    ``min Σ_i ‖Y_i − W x_i − b‖² + λ ‖W‖_F²`` ⇒ ``W = (X̃ᵀX̃ + λ I)⁻¹ X̃ᵀ Ỹ`` (X̃, Ỹ centred),
    ``b = Ȳ − x̄ W``. Equals scikit-learn's ``RidgeClassifier(alpha=λ)`` (for C = 2 classes it
    keeps one column per class; sklearn's single column is the class-1 column).

    Args: x ``(m, k)``, y ``(m,)`` ints, n_classes C (static), lam ``λ > 0``.
    Returns ``(W (k, C), b (C,))``.
    """
    Y = _pm_one(y, n_classes, x.dtype)
    xm, ym = jnp.mean(x, 0), jnp.mean(Y, 0)
    Xc, Yc = x - xm, Y - ym
    A = jnp.matmul(Xc.T, Xc, precision=_HI) + lam * jnp.eye(x.shape[1], dtype=x.dtype)
    W = jax.scipy.linalg.solve(A, jnp.matmul(Xc.T, Yc, precision=_HI), assume_a="pos")
    return W, ym - xm @ W


def _ridge_loss(W, b, x, y, n_classes):
    r = _pm_one(y, n_classes, x.dtype) - (jnp.matmul(x, W, precision=_HI) + b)
    return jnp.mean(jnp.sum(r**2, axis=-1))


def _logistic_objective(params, x, Y, lam):
    """Mean cross-entropy + (λ/2)‖W‖² + ½ (Σ_c b_c)² / C. The last term only pins the intercepts'
    free common shift (softmax is invariant to it; at the optimum Σ_c b_c = 0 and the term is 0),
    so the Hessian is non-singular for the implicit gradient."""
    W, b = params
    z = jnp.matmul(x, W, precision=_HI) + b
    ce = jnp.mean(jax.nn.logsumexp(z, axis=-1) - jnp.sum(Y * z, axis=-1))
    return ce + 0.5 * lam * jnp.sum(W**2) + 0.5 * jnp.sum(b) ** 2 / b.shape[0]


def _lbfgs(x, Y, lam, max_iter, tol):
    k, C = x.shape[1], Y.shape[1]
    p0 = (jnp.zeros((k, C), x.dtype), jnp.zeros((C,), x.dtype))

    def fun(p):
        return _logistic_objective(p, x, Y, lam)

    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(fun)

    def body(carry):
        p, st, _ = carry
        v, g = vg(p, state=st)
        upd, st = opt.update(g, st, p, value=v, grad=g, value_fn=fun)
        return optax.apply_updates(p, upd), st, optax.tree_utils.tree_norm(g)

    def cond(carry):
        _, st, gn = carry
        it = optax.tree_utils.tree_get(st, "count")
        return (it == 0) | ((it < max_iter) & (gn >= tol))

    p, st, _ = jax.lax.while_loop(cond, body, (p0, opt.init(p0), jnp.asarray(jnp.inf, x.dtype)))
    gn = optax.tree_utils.tree_norm(jax.grad(fun)(p))
    return p, gn


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _logistic_solve(x, Y, lam, max_iter, tol):
    return _lbfgs(x, Y, lam, max_iter, tol)


def _logistic_fwd(x, Y, lam, max_iter, tol):
    p, gn = _lbfgs(x, Y, lam, max_iter, tol)
    return (p, gn), (x, Y, lam, p)


def _logistic_bwd(max_iter, tol, res, ct):
    # implicit function theorem at ∇_p J(p*, x, λ) = 0:  dp* = −H⁻¹ ∂_{x,λ} ∇_p J
    x, Y, lam, p = res
    ct_p = ct[0]
    flat, unravel = jax.flatten_util.ravel_pytree(p)

    def grad_p(fl, x_, lam_):
        return jax.flatten_util.ravel_pytree(
            jax.grad(_logistic_objective)(unravel(fl), x_, Y, lam_))[0]

    H = jax.jacfwd(grad_p)(flat, x, lam)
    v = jax.scipy.linalg.solve(H, jax.flatten_util.ravel_pytree(ct_p)[0], assume_a="pos")
    _, vjp = jax.vjp(lambda x_, lam_: grad_p(flat, x_, lam_), x, lam)
    gx, glam = vjp(-v)
    return gx, jnp.zeros_like(Y), glam


_logistic_solve.defvjp(_logistic_fwd, _logistic_bwd)


@functools.partial(jax.jit, static_argnames=("n_classes", "max_iter", "tol"))
def logistic_fit(x, y, n_classes: int, lam, *, max_iter: int = 500, tol: float | None = None):
    """Multinomial logistic regression (all C softmax columns, intercept unpenalised), optax L-BFGS.

    ``min (1/m) Σ_i CE(softmax(W x_i + b), y_i) + (λ/2)‖W‖_F²`` — scikit-learn's
    ``LogisticRegression(C=1/(m λ))``; its intercepts are defined up to a common shift, here fixed
    by ``Σ_c b_c = 0``. Differentiable in ``x`` and ``λ`` (implicit differentiation).

    Args: x ``(m, k)``, y ``(m,)`` ints, n_classes C (static), lam ``λ > 0``, max_iter (static),
      tol: gradient-norm tolerance (default ``1e-10`` in float64, ``1e-5`` in float32).
    Returns ``(W (k, C), b (C,), converged (bool))``.
    """
    if tol is None:
        tol = 1e-10 if x.dtype == jnp.float64 else 1e-5
    Y = jax.nn.one_hot(y, n_classes, dtype=x.dtype)
    (W, b), gn = _logistic_solve(x, Y, jnp.asarray(lam, x.dtype), int(max_iter), float(tol))
    # the zoom line search stops making progress at round-off; accept 100 tol there
    return W, b, jax.lax.stop_gradient(gn) < 100 * tol


def _logistic_loss(W, b, x, y, n_classes):
    z = jnp.matmul(x, W, precision=_HI) + b
    return jnp.mean(jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, y[:, None], -1)[:, 0])


def knn_scores(x_train, y_train, x_test, n_classes: int, k: int = 20, temperature: float = 0.07):
    """Weighted kNN class scores ``(m_test, C)``: cosine similarity (rows L2-normalised with a
    1e-12 floor, as ``torch.nn.functional.normalize``), the ``min(k, m_train)`` most similar
    training rows, weights ``exp(s / T)`` summed per class (InstDisc eq. 8; solo-learn)."""
    def unit(a):
        return a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)

    sim = jnp.matmul(unit(x_test), unit(x_train).T, precision=_HI)
    kk = min(int(k), x_train.shape[0])
    s, idx = jax.lax.top_k(sim, kk)
    w = jnp.exp(s / temperature)
    onehot = jax.nn.one_hot(y_train[idx], n_classes, dtype=w.dtype)       # (m, kk, C)
    return jnp.einsum("mj,mjc->mc", w, onehot, precision=_HI)


# ----------------------------------------------------------------------------------------------
# Probe objects


def _split(m: int, val_fraction: float):
    every = max(2, round(1.0 / val_fraction))
    idx = np.arange(m)
    return idx[idx % every != every - 1], idx[idx % every == every - 1]


@dataclass(frozen=True)
class Probe:
    """Base of the probes. ``probe(x_train, y_train, x_test, y_test, n_classes=None)`` validates
    once and returns a `ProbeResult`; features may carry a leading time axis ``(T, m, k)``."""

    name = "probe"

    def __call__(self, x_train, y_train, x_test, y_test, *, n_classes: int | None = None
                 ) -> ProbeResult:
        x_train, y_train, x_test, y_test, C = _check(x_train, y_train, x_test, y_test, n_classes)
        res = _compiled(self, C, x_train.ndim == 3)(x_train, y_train, x_test, y_test)
        bad = ~jnp.isfinite(res.loss) | ~jnp.isfinite(res.accuracy)
        return dataclasses.replace(res, status=jnp.where(bad, NONFINITE, res.status))

    def _run(self, x_tr, y_tr, x_te, y_te, *, n_classes):
        raise NotImplementedError


@functools.lru_cache(maxsize=64)
def _compiled(probe, n_classes, batched):
    """One jitted function per (probe settings, C, time axis or not): probes are frozen dataclasses,
    so equal settings share the compiled code across calls."""
    fn = functools.partial(probe._run, n_classes=n_classes)
    if batched:
        fn = jax.vmap(fn, in_axes=(0, None, 0, None))
    return jax.jit(fn)


@dataclass(frozen=True)
class _Linear(Probe):
    lams: tuple | None = None
    val_fraction: float = 0.2
    standardize: str = "coordinate"

    def __post_init__(self):
        V.choice("standardize", self.standardize, STANDARDIZE)
        if not (isinstance(self.val_fraction, (int, float)) and 0 < self.val_fraction < 1):
            raise ValueError(f"val_fraction: expected a number in (0, 1), got {self.val_fraction!r}")
        if self.lams is not None:
            lams = np.asarray(self.lams, dtype=float).ravel()
            if lams.size == 0 or not np.all(np.isfinite(lams)) or np.any(lams <= 0):
                raise ValueError(f"lams: expected a non-empty sequence of finite numbers > 0, got "
                                 f"{self.lams!r}")
            object.__setattr__(self, "lams", tuple(float(v) for v in lams))

    def grid(self, m: int) -> np.ndarray:
        return np.asarray(self.lams if self.lams is not None else self._default_grid(m))

    def _run(self, x_tr, y_tr, x_te, y_te, *, n_classes):
        m = x_tr.shape[0]
        fit, val = _split(m, self.val_fraction)
        lams = jnp.asarray(self.grid(len(fit)), x_tr.dtype)
        a, v = standardize(x_tr[fit], x_tr[val], mode=self.standardize)

        def val_acc(lam):
            W, b, ok = self._fit(a, y_tr[fit], n_classes, lam)
            return accuracy(jnp.matmul(v, W, precision=_HI) + b, y_tr[val]), ok

        accs, _ = jax.vmap(val_acc)(lams)
        accs = jax.lax.stop_gradient(accs)
        # ties → the larger λ (the simpler probe): arg-max over the reversed grid
        i = lams.shape[0] - 1 - jnp.argmax(accs[::-1])
        lam_full = lams[i] * (m / len(fit)) if self._scales_with_m else lams[i]
        xs, xt = standardize(x_tr, x_te, mode=self.standardize)
        W, b, ok = self._fit(xs, y_tr, n_classes, lam_full)
        scores = jnp.matmul(xt, W, precision=_HI) + b
        return ProbeResult(accuracy=accuracy(scores, y_te), loss=self._loss(W, b, xt, y_te, n_classes),
                           lam=lam_full, val_accuracy=accs[i],
                           predictions=jnp.argmax(scores, -1),
                           status=jnp.where(ok, SUCCESS, MAX_STEPS).astype(jnp.int32), W=W, b=b)


@dataclass(frozen=True)
class Ridge(_Linear):
    """Ridge probe (`ridge_fit`). ``lams``: grid of ``λ`` (sklearn's ``alpha``, a sum-of-squares
    penalty, so it grows with the number of rows: chosen on the fit split, refitted on all
    training rows with ``λ · m / m_fit``); default ``m_fit · 10^{−4..2}`` (7 values).

    Example: ``probes.Ridge()(x_tr, y_tr, x_te, y_te).accuracy``."""

    name = "ridge"
    _scales_with_m = True

    @staticmethod
    def _default_grid(m):
        return m * np.logspace(-4, 2, 7)

    @staticmethod
    def _fit(x, y, C, lam):
        W, b = ridge_fit(x, y, C, lam)
        return W, b, jnp.asarray(True)

    @staticmethod
    def _loss(W, b, x, y, C):
        return _ridge_loss(W, b, x, y, C)


@dataclass(frozen=True)
class Logistic(_Linear):
    """Multinomial logistic probe (`logistic_fit`, optax L-BFGS). ``lams``: grid of ``λ`` (per-row
    penalty of the mean cross-entropy; sklearn ``C = 1/(m λ)``); default ``10^{−6..0}`` (7 values).
    ``max_iter``: L-BFGS iterations (status MAX_STEPS when the tolerance is not reached)."""

    name = "logistic"
    _scales_with_m = False
    max_iter: int = 500

    @staticmethod
    def _default_grid(m):
        return np.logspace(-6, 0, 7)

    def _fit(self, x, y, C, lam):
        return logistic_fit(x, y, C, lam, max_iter=self.max_iter)

    @staticmethod
    def _loss(W, b, x, y, C):
        return _logistic_loss(W, b, x, y, C)


@dataclass(frozen=True)
class KNN(Probe):
    """Weighted kNN probe (`knn_scores`): ``k`` neighbours, temperature ``T`` (solo-learn defaults
    20 and 0.07). No standardisation (cosine similarity of the raw embedding) and no λ."""

    name = "knn"
    k: int = 20
    temperature: float = 0.07

    def __post_init__(self):
        V.positive_int("k", self.k)
        V.positive_float("temperature", self.temperature)

    def _run(self, x_tr, y_tr, x_te, y_te, *, n_classes):
        s = knn_scores(x_tr, y_tr, x_te, n_classes, self.k, self.temperature)
        p = s / jnp.sum(s, -1, keepdims=True)
        true = jnp.take_along_axis(p, y_te[:, None], -1)[:, 0]
        nan = jnp.asarray(jnp.nan, x_tr.dtype)
        return ProbeResult(accuracy=accuracy(s, y_te),
                           loss=-jnp.mean(jnp.log(jnp.maximum(true, jnp.finfo(p.dtype).tiny))),
                           lam=nan, val_accuracy=nan, predictions=jnp.argmax(s, -1),
                           status=jnp.asarray(SUCCESS, jnp.int32))


PROBES = {"ridge": Ridge, "logistic": Logistic, "knn": KNN}


def get(probe, **options) -> Probe:
    """A probe object from its name ("ridge", "logistic", "knn") and options, or the object itself."""
    if isinstance(probe, Probe):
        if options:
            raise TypeError(f"options: a probe object takes no options here, got {sorted(options)}")
        return probe
    if not isinstance(probe, str):
        raise TypeError(f"probe: expected a name in {sorted(PROBES)} or a Probe, got "
                        f"{type(probe).__name__}")
    V.choice("probe", probe, PROBES)
    return PROBES[probe](**options)


# ----------------------------------------------------------------------------------------------
# Input checks (once, at the public entry)


def _labels(name, y):
    if isinstance(y, (str, bytes)) or y is None:
        raise TypeError(f"{name}: expected integer labels, got {type(y).__name__}")
    arr = np.asarray(y) if V.is_concrete(y) else y
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(f"{name}: expected integer labels, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected shape (m,), got {tuple(arr.shape)}")
    if V.is_concrete(arr) and arr.size and np.min(arr) < 0:
        raise ValueError(f"{name}: expected labels >= 0, got {int(np.min(arr))}")
    return jnp.asarray(arr, jnp.int32)


def _check(x_train, y_train, x_test, y_test, n_classes):
    x_train = V.as_float_array("x_train", x_train, ndim=(2, 3))
    x_test = V.as_float_array("x_test", x_test, ndim=(2, 3))
    V.same_dtype(x_train=x_train, x_test=x_test)
    if x_train.ndim != x_test.ndim or x_train.shape[-1] != x_test.shape[-1] or \
            (x_train.ndim == 3 and x_train.shape[0] != x_test.shape[0]):
        raise ValueError(f"x_test: expected the layout of x_train {tuple(x_train.shape)} "
                         f"((m, k) or (T, m, k), same k and T), got {tuple(x_test.shape)}")
    y_train, y_test = _labels("y_train", y_train), _labels("y_test", y_test)
    if y_train.shape[0] != x_train.shape[-2]:
        raise ValueError(f"y_train: expected {x_train.shape[-2]} labels (one per row of x_train), "
                         f"got {y_train.shape[0]}")
    if y_test.shape[0] != x_test.shape[-2]:
        raise ValueError(f"y_test: expected {x_test.shape[-2]} labels (one per row of x_test), "
                         f"got {y_test.shape[0]}")
    if x_train.shape[-2] < 5:
        raise ValueError(f"x_train: expected at least 5 rows (fit + validation split), got "
                         f"{x_train.shape[-2]}")
    seen = int(max(np.max(np.asarray(y_train)), np.max(np.asarray(y_test)))) + 1
    if n_classes is None:
        n_classes = max(seen, 2)
    n_classes = V.positive_int("n_classes", n_classes, minimum=2)
    if seen > n_classes:
        raise ValueError(f"n_classes: expected more than the largest label {seen - 1}, got "
                         f"{n_classes}")
    return x_train, y_train, x_test, y_test, n_classes

