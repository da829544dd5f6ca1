"""Naive-loss collapse and orthogonality-constrained (Grassmannian) flows — closed forms.

Source: Esser, Mukherjee, Ghoshdastidar, "Representation Learning Dynamics of Self-Supervised
Models", arXiv:2309.02011 (2023). The formulas are a reconstruction of the models the paper sets up
(derived and checked numerically in tests/test_collapse.py), not quotations of its theorems; the
qualitative claims (collapse to a scalar representation, width-independent Grassmannian dynamics,
deviation from the NTK picture) are the paper's. Notation, constants and the factor 2 in the time
convention may differ from the paper. The derivation in prose: docs/theory/collapse.md.

Conventions (rows are samples, as everywhere in sslntk; column-convention texts write the transpose):

- features `phi: (m, p)`, one row per network input in stacked view order `[a_1..a_n, b_1..b_n]`
  (m = 2n); trained layer `W: (p, k)`; representation `F = phi @ W: (m, k)`; kernel
  `K = phi @ phi.T: (m, m)` (one output, as in `sslntk.kernels`).
- pair matrix `S: (m, m)`, symmetric, from `pair_matrix`; the dot-product losses (Esser et al. 2023) are
  `L(W) = −Tr(Fᵀ S F) = −Tr(Wᵀ M W)` with `M = phiᵀ S phi: (p, p)` (docs/theory/collapse.md), and the
  squared-distance loss is the same form with `S = −DᵀD/(2n)`, i.e. `M = −A/2`.
- naive gradient flow `dW/dt = −∇L = 2 M W`; function space `dF/dt = −K ∇_F L = 2 K S F`
  (`t` = learning rate × steps, docs/concepts.md).
- constrained flow `dW/dt = 2 (I − W Wᵀ) M W` on `WᵀW = I` (Stiefel / Grassmann, Esser et al. 2023).

Every prediction is a pure jittable function of the problem data; functions taking a time `t`
accept a scalar or a 1-D array of times (then outputs carry a leading time axis).

Large times. Quantities that genuinely grow like `e^{2tλ_1}` (`naive_flow`,
`naive_function_flow`, `width_free_flow`'s `G` and `F_lin`) are evaluated as a bounded, normalised
part times a scalar `e^{2tλ_1}` (exponents shifted by the largest eigenvalue), so they are exact up
to round-off wherever the float range holds them and `±inf` (never NaN) beyond it; called outside
jit, an overflow warns (RuntimeWarning) with the first time it happens, and `scaled=True` returns
the normalised part, finite at every t. Frame-invariant quantities (projectors, angles, Gram
matrices, losses) never form a growing exponential and are accurate at every t ≥ 0.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk.theory import checks as C

__all__ = [
    "pair_matrix",
    "pair_operator",
    "function_operator",
    "naive_flow",
    "naive_function_flow",
    "NaiveCollapse",
    "collapse_rates",
    "naive_limit",
    "two_layer_blowup_time",
    "FixedPoint",
    "stiefel_fixed_point",
    "ConstrainedFlow",
    "constrained_flow",
    "time_to_angle",
    "WidthFree",
    "width_free_flow",
    "width_free_limit",
    "constrained_tangent_kernel",
    "escape_time_shift",
    "StiefelPath",
    "stiefel_gd",
    "PAIR_KINDS",
    "RETRACTIONS",
]

PAIR_KINDS = ("contrastive", "dot", "distance")


# ----------------------------------------------------------------------------------------------
# helpers


def _rescale(Xs, log_scale):
    """`e^{log_scale} · Xs` without NaN: exact zeros stay 0 (not 0·inf), overflow gives ±inf; the
    scale is applied in two halves so that a tiny `Xs` times a huge scale stays representable."""
    h = jnp.exp(log_scale / 2)
    return jnp.where(Xs == 0, jnp.zeros_like(Xs), (Xs * h) * h)


def _warn_overflow(fn: str, what: str, out, t, log_scale, hint: str):
    """Outside jit: warn when `out` (an `e^{log_scale}`-scaled quantity) overflowed, naming the first
    time at which it did (`t` scalar or 1-D, `log_scale` matching)."""
    if not (V.is_concrete(out) and V.is_concrete(t)) or bool(jnp.all(jnp.isfinite(out))):
        return
    bad = ~jnp.all(jnp.isfinite(out.reshape(out.shape[:1] + (-1,) if t.ndim else (1, -1))), axis=-1)
    tt = jnp.atleast_1d(t)
    first = int(jnp.argmax(bad))
    ls = float(jnp.atleast_1d(log_scale)[first])
    warnings.warn(f"{fn}: {what} exceeds the {out.dtype} range at t = {float(tt[first]):.6g} (its "
                  f"scale is e^{ls:.4g}; max {float(jnp.finfo(out.dtype).max):.3g}); entries there are "
                  f"±inf. {hint}", RuntimeWarning, stacklevel=3)


def _eigh_desc(M):
    """Eigenpairs of a symmetric matrix, eigenvalues in DESCENDING order."""
    lam, U = jnp.linalg.eigh((M + M.T) / 2)
    return lam[::-1], U[:, ::-1]


def _times(name, t, dtype):
    t = C.nonneg(name, t)
    if t.ndim > 1:
        raise ValueError(f"{name}: expected a scalar or a 1-D array of times, got shape {t.shape}")
    return t.astype(dtype)


def _over_times(fn, t, *args):
    """Apply `fn(t_scalar, *args)` to a scalar or each entry of a 1-D `t`."""
    if t.ndim == 0:
        return fn(t, *args)
    return jax.vmap(fn, in_axes=(0,) + (None,) * len(args))(t, *args)


def _frame(name, W0, p):
    W0 = V.as_float_array(name, W0, ndim=2)
    if W0.shape[0] != p:
        raise ValueError(f"{name}: expected shape ({p}, k) to match the operator's dimension p = {p}, "
                         f"got {tuple(W0.shape)}")
    if not 1 <= W0.shape[1] <= p:
        raise ValueError(f"{name}: expected 1 <= k <= p = {p} columns, got {W0.shape[1]}")
    return W0


def _kernel_and_pairs(K, S, F0=None):
    K = C.psd("K", K, what="a symmetric PSD kernel K = phi phiᵀ")
    S = C.symmetric("S", S)
    if S.shape != K.shape:
        raise ValueError(f"S: expected shape {tuple(K.shape)} (same as K), got {tuple(S.shape)}")
    if F0 is None:
        V.same_dtype(K=K, S=S)
        return K, S
    F0 = V.as_float_array("F0", F0, ndim=2)
    if F0.shape[0] != K.shape[0]:
        raise ValueError(f"F0: expected shape ({K.shape[0]}, k), got {tuple(F0.shape)}")
    V.same_dtype(K=K, S=S, F0=F0)
    return K, S, F0


# ----------------------------------------------------------------------------------------------
# problem data (pair matrix S, operators M and N)


def pair_matrix(n: int, kind: str = "dot", negatives=None, *, dtype=None) -> jax.Array:
    """Symmetric pair matrix `S: (2n, 2n)` (Esser et al. 2023, reconstructed), stacked order `[a_1..a_n,
    b_1..b_n]`.

    - `"dot"` (non-contrastive, dot product, L_N = −(1/n) Σ_i f(a_i)·f(b_i)): `S = Z/(2n)` with
      `Z = [[0, I], [I, 0]]`.
    - `"contrastive"` (L_C = −(1/n) Σ_i [f(a_i)·f(b_i) − f(a_i)·f(x_i⁻)]) with the negative of
      sample i the positive view of another sample, `x_i⁻ = b_{π(i)}` (Esser et al. 2023): `negatives` is the
      permutation π as an `(n,)` integer array without fixed points; default the cyclic shift
      `π(i) = i + 1 mod n`. `S = (Z − P_π − P_πᵀ)/(2n)` with `P_π[i, n + π(i)] = 1`.
    - `"distance"` (L_N2 = (1/(2n)) Σ_i ||f(a_i) − f(b_i)||²): `S = −DᵀD/(2n)`, `D = [I, −I]`, so
      `M = phiᵀ S phi = −A/2` with `A = (1/n)(Φ_a − Φ_b)ᵀ(Φ_a − Φ_b)`.

    Then every loss equals `−Tr(Fᵀ S F)` for `F = phi @ W` (checked in tests/test_collapse.py).
    """
    n = V.positive_int("n", n, minimum=2)
    V.choice("kind", kind, PAIR_KINDS)
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype: expected a floating dtype, got {dtype}")
    eye = jnp.eye(n, dtype=dtype)
    if kind == "distance":
        return -jnp.block([[eye, -eye], [-eye, eye]]) / (2 * n)
    Z = jnp.block([[jnp.zeros_like(eye), eye], [eye, jnp.zeros_like(eye)]])
    if kind == "dot":
        if negatives is not None:
            raise ValueError("negatives: only used with kind='contrastive', got kind='dot'")
        return Z / (2 * n)
    perm = (np.arange(1, n + 1) % n) if negatives is None else negatives
    perm = jnp.asarray(perm)
    if perm.shape != (n,) or not jnp.issubdtype(perm.dtype, jnp.integer):
        raise ValueError(f"negatives: expected an ({n},) integer permutation, got shape "
                         f"{tuple(perm.shape)} dtype {perm.dtype}")
    if V.is_concrete(perm):
        p = np.asarray(perm)
        if sorted(p.tolist()) != list(range(n)):
            raise ValueError(f"negatives: expected a permutation of 0..{n - 1}, got {p.tolist()}")
        fixed = np.flatnonzero(p == np.arange(n)).tolist()
        if fixed:
            raise ValueError("negatives: expected a permutation without fixed points (a sample is "
                             f"not its own negative), got fixed points at {fixed}")
    P = jnp.zeros((2 * n, 2 * n), dtype).at[jnp.arange(n), n + perm].set(1.0)
    return (Z - P - P.T) / (2 * n)


def pair_operator(phi, S) -> jax.Array:
    """`M = phiᵀ S phi` (p, p), symmetrised (only sym(·) enters; an unsymmetrised `phiᵀ S phi` gives a wrong
    gradient).

    `phi: (m, p)` features of the stacked views, `S: (m, m)` from `pair_matrix`.
    Naive loss `L(W) = −Tr(Wᵀ M W)`, gradient `−2 M W`."""
    phi = V.as_float_array("phi", phi, ndim=2)
    S = C.symmetric("S", S)
    if S.shape[0] != phi.shape[0]:
        raise ValueError(f"S: expected shape ({phi.shape[0]}, {phi.shape[0]}) to match phi's "
                         f"{phi.shape[0]} rows, got {tuple(S.shape)}")
    V.same_dtype(phi=phi, S=S)
    M = phi.T @ (S @ phi)
    return (M + M.T) / 2


def function_operator(K, S) -> jax.Array:
    """`N = K^{1/2} S K^{1/2}` (m, m): the function-space twin of `M` (Esser et al. 2023, reconstructed).

    With `phi = K^{1/2} Qᵀ` (Q orthonormal), `M = Q N Qᵀ`, so N has the non-zero eigenvalues of M and
    `e^{2tKS} = I + K^{1/2} ψ(N) K^{1/2} S`; `collapse_rates(N)` gives the naive rates in function
    space (the NTK/linearised prediction)."""
    K, S = _kernel_and_pairs(K, S)
    R = C.sym_sqrt(K)
    N = R @ S @ R
    return (N + N.T) / 2


# ----------------------------------------------------------------------------------------------
# naive flow (docs/theory/collapse.md)


@jax.jit
def _naive_flow_core(t, lam, U, W0):
    # exponents shifted by λ_max: the normalised part is bounded by ||W0|| at every t
    top = jnp.max(lam)
    Ws = (U * jnp.exp(2 * t * (lam - top))) @ (U.T @ W0)
    return Ws, 2 * t * top


def naive_flow(M, W0, t, *, scaled: bool = False) -> jax.Array:
    """Exact naive gradient flow `W(t) = e^{2tM} W0` of `L = −Tr(WᵀMW)` (Esser et al. 2023, reconstructed).

    `M: (p, p)` symmetric, `W0: (p, k)`, `t` scalar or `(T,)` → `(p, k)` or `(T, p, k)`.
    For the squared-distance loss pass `M = −A/2` (the squared-distance case: `W(t) = e^{−tA} W0`).

    Evaluated as `e^{2tλ_1} · W̃(t)`, `W̃(t) = U e^{2t(Λ − λ_1)} Uᵀ W0` (λ_1 the largest eigenvalue),
    so `W(t)` is accurate wherever it fits the float range and `±inf` where it does not (warns
    outside jit; evaluated naively, M = I gives NaN from t ≈ 355 in float64). `scaled=True`
    returns `W̃(t) = e^{−2tλ_1} W(t)` instead: bounded by ||W0||, finite at every t, → `naive_limit`."""
    M = C.symmetric("M", M)
    W0 = _frame("W0", W0, M.shape[0])
    V.same_dtype(M=M, W0=W0)
    t = _times("t", t, M.dtype)
    lam, U = jnp.linalg.eigh((M + M.T) / 2)
    Ws, ls = _over_times(_naive_flow_core, t, lam, U, W0)
    if scaled:
        return Ws
    out = _rescale(Ws, ls[..., None, None])
    _warn_overflow("naive_flow", "W(t) = e^{2tM} W0", out, t, ls,
                   "Pass scaled=True for the bounded e^{-2tλ_1} W(t).")
    return out


def _exprel(x):
    """(e^x − 1)/x, accurate near 0."""
    small = jnp.abs(x) < 1e-5
    xs = jnp.where(small, 1.0, x)
    return jnp.where(small, 1 + x / 2 + x * x / 6, jnp.expm1(xs) / xs)


@jax.jit
def _function_parts(K, S):
    R = C.sym_sqrt(K)
    mu, Vn = _eigh_desc(R @ S @ R)
    return R, mu, Vn


@jax.jit
def _naive_function_core(t, R, mu, Vn, S, F0):
    # e^{2tKS} F0 = F0 + K^{1/2} V diag(ψ) Vᵀ K^{1/2} S F0, ψ = (e^{2tμ} − 1)/μ, times e^{−2ts},
    # s = max(μ_1, 0): e^{−2ts} ψ = 2t e^{2t(μ⁺ − s)} exprel(−2t|μ|) (every factor bounded)
    top = jnp.maximum(mu[0], 0.0)
    psi = 2 * t * jnp.exp(2 * t * (jnp.maximum(mu, 0.0) - top)) * _exprel(-2 * t * jnp.abs(mu))
    Fs = jnp.exp(-2 * t * top) * F0 + R @ ((Vn * psi) @ (Vn.T @ (R @ (S @ F0))))
    return Fs, 2 * t * top


def naive_function_flow(K, S, F0, t, *, scaled: bool = False) -> jax.Array:
    """Exact naive flow in function space, `F_lin(t) = e^{2tKS} F0` (Esser et al. 2023, reconstructed).

    This is the unconstrained kernel-regime (NTK / linearised) trajectory of `L = −Tr(FᵀSF)` under
    `dF/dt = −K ∇_F L`. `K: (m, m)` PSD, `S: (m, m)`, `F0: (m, k)`, `t` scalar or `(T,)`.
    Computed from one eigendecomposition of `N = K^{1/2} S K^{1/2}` (no matrix exponential), as
    `e^{2ts} · F̃(t)` with `s = max(μ_1, 0)` and every exponent of `F̃` shifted by s: accurate
    wherever `F_lin` fits the float range, `±inf` beyond (warns outside jit; evaluated naively:
    NaN from 2tμ_1 ≈ 89 in float32). `scaled=True` returns the bounded `F̃(t) = e^{−2ts} F_lin(t)`."""
    K, S, F0 = _kernel_and_pairs(K, S, F0)
    t = _times("t", t, K.dtype)
    R, mu, Vn = _function_parts(K, S)
    Fs, ls = _over_times(_naive_function_core, t, R, mu, Vn, S, F0)
    if scaled:
        return Fs
    out = _rescale(Fs, ls[..., None, None])
    _warn_overflow("naive_function_flow", "F_lin(t) = e^{2tKS} F0", out, t, ls,
                   "Pass scaled=True for the bounded e^{-2t max(μ_1, 0)} F_lin(t).")
    return out


class NaiveCollapse(NamedTuple):
    """Predicted collapse of the naive flow (reconstructed; the collapse itself is Esser et al. 2023's claim).

    eigenvalues: `(p,)` of the operator, descending.
    direction: `(p,)` top eigenvector u_1: every output of `W(t)` aligns with it (rank one).
    gap: λ_1 − λ_2 (collapse needs gap > 0; with λ_1 = … = λ_r it collapses onto that eigenspace).
    norm_rate: late-time slope of log ||W(t)||_2, 2λ_1 (negative: decay, e.g. `−a_min` for M = −A/2).
    ratio_rate: late-time slope of log σ_2/σ_1 of W(t), −2(λ_1 − λ_2).
    stable_rank_rate: slope of log(||W||_F²/||W||_2² − 1), −4(λ_1 − λ_2).
    """

    eigenvalues: jax.Array
    direction: jax.Array
    gap: jax.Array
    norm_rate: jax.Array
    ratio_rate: jax.Array
    stable_rank_rate: jax.Array


@jax.jit
def _rates_core(M):
    lam, U = _eigh_desc(M)
    gap = lam[0] - lam[1]
    return NaiveCollapse(lam, U[:, 0], gap, 2 * lam[0], -2 * gap, -4 * gap)


def collapse_rates(M) -> NaiveCollapse:
    """Collapse rates and rank-one direction of the naive flow `dW/dt = 2MW` (Esser et al. 2023,
    reconstructed).

    `M` is the parameter-space operator (`pair_operator`) or, for the kernel-regime flow
    `dF/dt = 2KSF`, the function-space operator `function_operator(K, S)` (same non-zero spectrum).
    Needs p >= 2."""
    M = C.symmetric("M", M)
    if M.shape[0] < 2:
        raise ValueError(f"M: expected p >= 2 (a rate needs two eigenvalues), got shape {M.shape}")
    return _rates_core(M)


@jax.jit
def _limit_core(M, W0, rtol):
    lam, U = _eigh_desc(M)
    scale = jnp.maximum(jnp.max(jnp.abs(lam)), jnp.finfo(lam.dtype).tiny)
    top = (lam >= lam[0] - rtol * scale).astype(M.dtype)
    return (U * top) @ (U.T @ W0)


def naive_limit(M, W0, *, rtol: float | None = None) -> jax.Array:
    """`lim_{t→∞} e^{−2λ_1 t} W(t) = U_1 U_1ᵀ W0` (Esser et al. 2023, reconstructed): the projection of W0
    onto the top eigenspace of M (eigenvalues within `rtol·max|λ|` of λ_1). With a strict gap this is the
    rank-one matrix `u_1 (u_1ᵀ W0)`: the trivial scalar representation `s(x) = u_1ᵀφ(x)` (Esser et al. 2023).

    `rtol` default: `max(1e-10, 1e3·eps)` of M's dtype (1e-10 in float64, 1.2e-4 in float32). A
    tolerance below eigh's round-off splits an exactly repeated top eigenvalue: a fixed float32 tolerance of
    1e-10 would keep one of two equal top eigenvalues (relative error 1.0)."""
    M = C.symmetric("M", M)
    W0 = _frame("W0", W0, M.shape[0])
    V.same_dtype(M=M, W0=W0)
    if rtol is None:
        rtol = max(1e-10, C._tol(M.dtype))
    V.positive_float("rtol", rtol, allow_zero=True)
    return _limit_core(M, W0, rtol)


def two_layer_blowup_time(lam, a0) -> jax.Array:
    """Finite blow-up time `t* = 1/(4 λ a0²)` of one balanced mode of the naive two-layer linear
    network `f = W2 W1 x` (reconstructed, analytic only): `a(t)^{−2} = a0^{−2} − 4λt`.
    `inf` where λ <= 0 (no blow-up). Broadcasts over `lam` and `a0`."""
    lam = C.real("lam", lam)
    a0 = C.positive("a0", a0)
    return jnp.where(lam > 0, 1.0 / (4 * jnp.where(lam > 0, lam, 1.0) * a0**2), jnp.inf)


# ----------------------------------------------------------------------------------------------
# constrained (Stiefel / Grassmann) flow (docs/theory/collapse.md)


class FixedPoint(NamedTuple):
    """Stable fixed point of the constrained flow (Esser et al. 2023, reconstructed).

    basis: `(p, k)` top-k eigenvectors U_k of M (for M = −A/2: the bottom-k of A, the most
        augmentation-invariant directions).
    eigenvalues: `(p,)` of M, descending.
    loss: optimal loss `−Σ_{j≤k} λ_j`.
    gap: λ_k − λ_{k+1} (convergence needs gap > 0).
    rate: 2(λ_k − λ_{k+1}): `tan θ_max(t) <= tan θ_max(0) e^{−rate·t}`.
    """

    basis: jax.Array
    eigenvalues: jax.Array
    loss: jax.Array
    gap: jax.Array
    rate: jax.Array


@partial(jax.jit, static_argnums=1)
def _fixed_point_core(M, k):
    lam, U = _eigh_desc(M)
    gap = lam[k - 1] - lam[k]
    return FixedPoint(U[:, :k], lam, -jnp.sum(lam[:k]), gap, 2 * gap)


def stiefel_fixed_point(M, k: int) -> FixedPoint:
    """Top-k eigenspace of M: the stable fixed point of `dW/dt = 2(I − WWᵀ)MW` (Esser et al. 2023,
    reconstructed). Needs k < p (k = p: every frame spans everything)."""
    M = C.symmetric("M", M)
    k = V.positive_int("k", k)
    if k >= M.shape[0]:
        raise ValueError(f"k: expected 1 <= k < p = {M.shape[0]}, got {k}")
    return _fixed_point_core(M, k)


class ConstrainedFlow(NamedTuple):
    """Exact constrained-flow prediction at time(s) t (Esser et al. 2023, reconstructed); leading time axis if
    t is 1-D.

    projector: `(p, p)` P(t) onto span W(t) = span e^{2tM} W0 (the frame itself is NOT predicted:
        only P, Gram matrices, losses and angles are frame-invariant).
    tan_angles: `(k,)` tangents of the principal angles between span W(t) and span U_k, descending:
        singular values of `e^{2tΛ_⊥} T_0 e^{−2tΛ_k}`, `T_0 = (U_⊥ᵀW0)(U_kᵀW0)^{−1}`.
    tan_bound: `tan θ_max(0) e^{−2(λ_k − λ_{k+1})t}` (>= tan_angles[0]).
    loss: `−Tr(P(t) M)` (non-increasing in t).
    """

    projector: jax.Array
    tan_angles: jax.Array
    tan_bound: jax.Array
    loss: jax.Array


@jax.jit
def _constrained_parts(M, W0):
    k = W0.shape[1]
    lam, U = _eigh_desc(M)
    C0 = U.T @ W0
    T0 = jnp.linalg.solve(C0[:k].T, C0[k:].T).T            # (U_⊥ᵀW0)(U_kᵀW0)^{-1}
    tan0 = jnp.linalg.svd(T0, compute_uv=False)[0]
    return lam, U, T0, tan0


@jax.jit
def _constrained_core(t, lam, U, T0, tan0, M):
    k = U.shape[1] - T0.shape[0]
    # exponents λ_{k+i} − λ_j <= 0: no overflow at any t
    T = T0 * jnp.exp(2 * t * (lam[k:, None] - lam[None, :k]))
    B = U @ jnp.concatenate([jnp.eye(k, dtype=T.dtype), T], axis=0)
    Q, _ = jnp.linalg.qr(B)
    P = Q @ Q.T
    tan = jnp.linalg.svd(T, compute_uv=False)                          # min(p − k, k) values
    tan = jnp.concatenate([tan, jnp.zeros((k - tan.shape[0],), T.dtype)])
    bound = tan0 * jnp.exp(-2 * t * (lam[k - 1] - lam[k]))
    return ConstrainedFlow(P, tan, bound, -jnp.sum(P * M))


def constrained_flow(M, W0, t) -> ConstrainedFlow:
    """Exact solution of the constrained flow `dW/dt = 2(I − WWᵀ)MW`, `W0ᵀW0 = I` (Esser et al. 2023,
    reconstructed): `span W(t) = span e^{2tM} W0`, computed in the eigenbasis of M as `span U [I; T(t)]` so
    that it neither overflows nor loses rank at large t. Needs `U_kᵀ W0` invertible (generic)."""
    M = C.symmetric("M", M)
    W0 = C.orthonormal_columns("W0", W0)
    if W0.shape[0] != M.shape[0] or W0.shape[1] >= M.shape[0]:
        raise ValueError(f"W0: expected shape ({M.shape[0]}, k) with k < p = {M.shape[0]}, got "
                         f"{tuple(W0.shape)}")
    V.same_dtype(M=M, W0=W0)
    t = _times("t", t, M.dtype)
    lam, U, T0, tan0 = _constrained_parts(M, W0)
    if V.is_concrete(T0) and not bool(jnp.all(jnp.isfinite(T0))):
        raise ValueError("W0: U_kᵀW0 is singular (W0 has no component along some top-k "
                         "eigenvector of M); the flow then does not reach the top-k eigenspace")
    return _over_times(_constrained_core, t, lam, U, T0, tan0, M)


def time_to_angle(M, W0, eps: float = 1e-6) -> jax.Array:
    """Time after which the bound guarantees `θ_max < eps`: `ln(tan θ_max(0)/tan eps)/(2(λ_k −
    λ_{k+1}))`, 0 if already there (Esser et al. 2023, reconstructed); `inf` at a zero gap
    `λ_k = λ_{k+1}` unless already there. Raises like `constrained_flow` when `U_kᵀW0` is singular."""
    M = C.symmetric("M", M)
    W0 = C.orthonormal_columns("W0", W0)
    if W0.shape[0] != M.shape[0] or W0.shape[1] >= M.shape[0]:
        raise ValueError(f"W0: expected shape ({M.shape[0]}, k) with k < p, got {tuple(W0.shape)}")
    eps = C.positive("eps", eps)
    lam, _, T0, tan0 = _constrained_parts(M, W0)
    if V.is_concrete(T0) and not bool(jnp.all(jnp.isfinite(T0))):
        raise ValueError("W0: U_kᵀW0 is singular (W0 has no component along some top-k "
                         "eigenvector of M, or λ_k = λ_{k+1} and the top-k eigenspace is not unique); "
                         "the angle to that eigenspace never closes")
    return _time_to_angle(lam, tan0, eps, W0.shape[1])


@partial(jax.jit, static_argnums=3)
def _time_to_angle(lam, tan0, eps, k):
    # 0 when already within eps (also at a zero gap, where 0/0 would give NaN); inf when
    # the gap is 0 and the angle is not yet within eps (the bound never guarantees it)
    num = jnp.maximum(jnp.log(tan0 / jnp.tan(eps)), 0.0)
    gap = lam[k - 1] - lam[k]
    return jnp.where(num == 0, jnp.zeros_like(num), num / (2 * gap))


# ----------------------------------------------------------------------------------------------
# width-independent function-space form and the deviation from the NTK (Esser et al. 2023)


class WidthFree(NamedTuple):
    """Constrained flow in function space from (F0, K) only (Esser et al. 2023, reconstructed);
    width-independent.

    F: `(m, k)` an orthonormal-weight frame of the representation, `F = phi W(t) Q` for some
        `Q ∈ O(k)` (the flow's own frame differs by that rotation — compare `gram`).
    gram: `(m, m)` `F Fᵀ = F_lin G^{−1} F_linᵀ` (FᵀF in column convention).
    G: `(k, k)` `W0ᵀ e^{4tM} W0 = I + F0ᵀ [Σ_{j≥1} (4t)^j (SK)^{j−1} S / j!] F0`.
    F_lin: `(m, k)` the unconstrained (NTK) trajectory `e^{2tKS} F0`.
    G and F_lin grow like e^{4tλ_1}, e^{2tλ_1} (λ_1 = max(largest eigenvalue of M, 0)): they are
    evaluated as `e^{4tλ_1}·G̃`, `e^{2tλ_1}·F̃_lin` with bounded normalised parts, so they are accurate
    while they fit the float range and `±inf` beyond it (float64: 4tλ_1 >~ 709; warns outside jit;
    evaluated naively they are NaN there); `width_free_flow(..., scaled=True)` returns the
    normalised `G̃ = e^{−4tλ_1} G`, `F̃_lin = e^{−2tλ_1} F_lin` instead. F and gram are computed
    without forming them and are accurate at every t.
    """

    F: jax.Array
    gram: jax.Array
    G: jax.Array
    F_lin: jax.Array


@jax.jit
def _width_free_parts(K, S, F0):
    """Exact reduction to an (m + k)-dimensional Oja flow. With the eigendecomposition
    `K = U diag(σ²) Uᵀ` and `phi = U diag(σ) Rᵀ` (R orthonormal), `M = R M_r Rᵀ` with
    `M_r = diag(σ) Uᵀ S U diag(σ)` and `W0 = R C0 + W_⊥`, `C0 = diag(σ)^{−1} Uᵀ F0`,
    `W_⊥ᵀW_⊥ = I − C0ᵀC0 =: EᵀE`. Then span e^{2tM}W0 ≅ span [e^{2tM_r} C0; E] under the
    operator diag(M_r, 0_k), and `phi` maps these coordinates by `[U diag(σ), 0]`."""
    m, k = F0.shape
    lk, Uk = jnp.linalg.eigh((K + K.T) / 2)
    keep = lk > 1e3 * jnp.finfo(K.dtype).eps * jnp.max(jnp.abs(lk))
    sig = jnp.sqrt(jnp.where(keep, lk, 1.0))
    B = Uk * jnp.where(keep, sig, 0.0)                                   # U diag(σ), (m, m)
    C0 = jnp.where(keep[:, None], (Uk.T @ F0) / sig[:, None], 0.0)       # (m, k)
    E2 = jnp.eye(k, dtype=F0.dtype) - C0.T @ C0
    le, Ue = jnp.linalg.eigh((E2 + E2.T) / 2)
    E = (Ue * jnp.sqrt(jnp.clip(le, 0.0))) @ Ue.T
    Mr = B.T @ S @ B
    M_aug = jnp.zeros((m + k, m + k), K.dtype).at[:m, :m].set((Mr + Mr.T) / 2)
    W_aug = jnp.concatenate([C0, E], axis=0)
    return B, M_aug, W_aug


@jax.jit
def _width_free_core(t, B, M_aug, W_aug, lam, U, T0):
    m = B.shape[0]
    k = W_aug.shape[1]
    T = T0 * jnp.exp(2 * t * (lam[k:, None] - lam[None, :k]))
    Q, _ = jnp.linalg.qr(U @ jnp.concatenate([jnp.eye(k, dtype=T.dtype), T], axis=0))
    F = B @ Q[:m]
    # e^{2t M_aug} W_aug = e^{2t λ_1} Ys; M_aug has k zero eigenvalues, so λ_1 = lam[0] >= 0
    top = jnp.maximum(lam[0], 0.0)
    Ys = (U * jnp.exp(2 * t * (lam - top))) @ (U.T @ W_aug)
    return WidthFree(F, F @ F.T, Ys.T @ Ys, B @ Ys[:m]), 2 * t * top


def width_free_flow(K, S, F0, t, *, scaled: bool = False) -> WidthFree:
    """Constrained-flow representation from `(K, S, F0)` alone (Esser et al. 2023, reconstructed).

    For the random-feature model `F = phi W` with `WᵀW = I` trained by `dW/dt = 2(I − WWᵀ)MW`,
    `F(t) Fᵀ(t) = F_lin G^{−1} F_linᵀ` where `F_lin = e^{2tKS} F0` is the naive (NTK) trajectory:
    the trajectory depends on the width only through `K = phi phiᵀ` and `F0 = phi W0` [A: "exact,
    network-width-independent dynamics"]. Requires `W0ᵀW0 = I`; `F0ᵀK⁺F0 <= I` then holds (the
    part of W0 outside the feature span has Gram `I − F0ᵀK⁺F0`). Computed as an exact
    (m + k)-dimensional Oja flow (see `_width_free_parts`), so no quantity of size e^{4tλ} is
    inverted; kernel eigenvalues below 1e3·eps·max are treated as zero."""
    return _width_free(K, S, F0, t, scaled=scaled, warn=True)


def _width_free(K, S, F0, t, *, scaled, warn):
    K, S, F0 = _kernel_and_pairs(K, S, F0)
    t = _times("t", t, K.dtype)
    B, M_aug, W_aug = _width_free_parts(K, S, F0)
    if V.is_concrete(W_aug):
        excess = float(jnp.max(jnp.linalg.eigvalsh(W_aug[:K.shape[0]].T @ W_aug[:K.shape[0]])))
        if excess > 1 + 1e-6:
            raise ValueError(f"F0: expected F0 = phi W0 with W0ᵀW0 = I, i.e. F0ᵀK⁺F0 <= I, got "
                             f"largest eigenvalue {excess:.6g}")
    lam, U, T0, _ = _constrained_parts(M_aug, W_aug)
    if V.is_concrete(T0) and not bool(jnp.all(jnp.isfinite(T0))):
        raise ValueError("F0: the top-k eigenspace of the reduced operator is not reached from F0 "
                         "(U_kᵀW0 singular, e.g. F0 = 0 along a top-k direction); the constrained "
                         "flow has no well-defined limit frame here")
    wf, ls = _over_times(_width_free_core, t, B, M_aug, W_aug, lam, U, T0)
    if scaled:
        return wf
    G = _rescale(wf.G, 2 * ls[..., None, None])
    F_lin = _rescale(wf.F_lin, ls[..., None, None])
    if warn:
        _warn_overflow("width_free_flow", "G = W0ᵀe^{4tM}W0", G, t, 2 * ls,
                       "F and gram are unaffected; pass scaled=True for the normalised G and F_lin.")
        _warn_overflow("width_free_flow", "F_lin = e^{2tKS}F0", F_lin, t, ls,
                       "F and gram are unaffected; pass scaled=True for the normalised G and F_lin.")
    return WidthFree(wf.F, wf.gram, G, F_lin)


def width_free_limit(K, S, k: int) -> jax.Array:
    """`lim_{t→∞} F Fᵀ = K^{1/2} V_k V_kᵀ K^{1/2}` (m, m), V_k the top-k eigenvectors of
    `N = K^{1/2} S K^{1/2}` (Esser et al. 2023, reconstructed: the top-k eigenspace of M seen through the
    features — a PCA of a random-feature matrix, as Esser et al.'s follow-up work states). Valid when N's k-th
    eigenvalue is > 0 (else the top-k eigenspace of M may contain directions outside the feature span)."""
    K, S = _kernel_and_pairs(K, S)
    k = V.positive_int("k", k)
    if k > K.shape[0]:
        raise ValueError(f"k: expected 1 <= k <= m = {K.shape[0]}, got {k}")
    R, mu, Vn = _function_parts(K, S)
    if V.is_concrete(mu):
        _warn_limit(np.asarray(mu, dtype=np.float64), k, C._tol(K.dtype))
    B = R @ Vn[:, :k]
    return B @ B.T


def _warn_limit(mu, k, tol):
    """Outside jit: say when `width_free_limit` is not the limit (an exactly
    repeated eigenvalue across the k boundary made it an arbitrary eigh choice, silently)."""
    scale = max(float(np.max(np.abs(mu))), 1e-300)
    if mu[k - 1] <= tol * scale:
        warnings.warn(f"width_free_limit: the k-th eigenvalue of N = K^(1/2) S K^(1/2) is "
                      f"{mu[k - 1]:.3g} <= 0 (relative to {scale:.3g}): the top-{k} eigenspace of M "
                      f"may leave the feature span and the returned FFᵀ need not be the limit",
                      RuntimeWarning, stacklevel=3)
    elif k < mu.size and mu[k - 1] - mu[k] <= tol * scale:
        warnings.warn(f"width_free_limit: N's eigenvalues {k} and {k + 1} are equal to round-off "
                      f"({mu[k - 1]:.6g}, {mu[k]:.6g}): the limit depends on F0 (the flow keeps its "
                      f"initial angle inside that eigenspace) and the returned FFᵀ is one arbitrary "
                      f"choice; use width_free_flow at a large t", RuntimeWarning, stacklevel=3)


def constrained_tangent_kernel(K, S, F0, t) -> jax.Array:
    """Tangent kernel of the constrained flow, `K_t = phi (I − W_t W_tᵀ) phiᵀ = K − F(t)F(t)ᵀ`
    (Esser et al. 2023, reconstructed); changes by O(1) relative to K during training, independent of
    width."""
    K, S, F0 = _kernel_and_pairs(K, S, F0)
    return K - _width_free(K, S, F0, t, scaled=True, warn=False).gram


def escape_time_shift(lam1, width_ratio) -> jax.Array:
    """Predicted increase of the half-loss time when the width is multiplied by `width_ratio`:
    `ln(width_ratio)/(4 λ_1)` for the flow `dW/dt = 2(I − WWᵀ)MW` with Haar init and
    `||phi|| = O(1)` (a derivation of this module, not a claim of the paper).
    Use `2·escape_time_shift` for the unit-speed flow."""
    lam1 = C.positive("lam1", lam1)
    width_ratio = C.positive("width_ratio", width_ratio)
    return jnp.log(width_ratio) / (4 * lam1)


# The discrete algorithm (Riemannian GD with a retraction, Absil et al. 2008) lives in `_stiefel_gd`.
from sslntk.theory._stiefel_gd import RETRACTIONS, StiefelPath, stiefel_gd  # noqa: E402
