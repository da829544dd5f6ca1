"""Eigen-reduced kernel flow (`Eigen`): integrate an `(m, k)` state instead of `(2n, k)`.

Derivation (float-exact statements; `N = 2n`, `Z = [[0, I],[I, 0]]`, `C = fᵀ Z f / N`).

**The reduced flow is the exact flow of a rank-m kernel.** Take any `(N, m)` pair `(A, E)` with
`E = K A` and `Aᵀ K A = I` (``sslntk.linalg.EigenDecomposition``) and set `K_m = E Eᵀ`; since
`K^{1/2} A` has orthonormal columns, `K − K_m = K^{1/2}(I − K^{1/2}AAᵀK^{1/2})K^{1/2} ⪰ 0`. The
kernel flow `df/dt = −K_m ∇_f L(f)` from `f₀` stays on the affine space `f = r₀ + E w` with
`w = Aᵀ f` (`Aᵀ E = I`) and `r₀ = f₀ − E w₀`, `w₀ = Aᵀ f₀`, and the coordinates obey

    dw/dt = −Eᵀ ∇_f L(r₀ + E w)                                   (general loss, "lift" path)

an `(m, k)` ODE. Training and test points are lifted back exactly:
`f(t) = f₀ + E (w(t) − w₀)`, `f_test(t) = f_test,0 + K_test,train A (w(t) − w₀)` (since the test
flow is `df_test/dt = −K_xX A Eᵀ ∇L`). The method replaces `K` by `K_m`: the dropped part
`K − K_m` is what `Trajectory.bound` accounts for.

**Which eigenpairs.** For a loss that depends on `f` only through `C` (`loss.cross_moment_only`,
e.g. Barlow Twins), write `G = ∂L/∂C` (k×k, symmetric). Then `∇_f L = (2/N) Z f G` and, with
`f = r₀ + E w`,

    C = wᵀ S w + wᵀ X + Xᵀ w + C_r,   S = EᵀZE/N,  X = EᵀZr₀/N,  C_r = r₀ᵀZr₀/N
    dw/dt = −Eᵀ∇L = −2 (S w + X) G                                  ("moment" path, O(m²k))

— no `N`-sized work at all per step. With `A` the top-m generalised eigenvectors of
`(Z K/N) a = γ a`, `aᵀKa = 1` (``kind="contrastive"``; `b = K^{1/2} a` are the eigenvectors of
`M = K^{1/2} Z K^{1/2}/N`, Simon et al. 2023 §6) one has `S = Γ = diag(γ)`, `X = 0`, i.e.
`dw/dt = −2 Γ w G`: the modes decouple exactly as in Simon et al. §3, every eigenspace of `M` is invariant
(with `f = K^{1/2}u`, `du/dt = −2 M u G`), and dropping the modes `j > m` is exact for the part of
`f₀` in the kept span. The formulas above use the computed `S, X` (not their ideal values), so the
reduced flow is the exact `K_m` flow even for inexact (Krylov, float32) eigenvectors.
For any other loss the top-m eigenpairs of `K` itself are used (``kind="kernel"``:
`A = U Λ^{-1/2}`, `E = U Λ^{1/2}`, `K_m` = the best rank-m approximation of `K`).

**Bound (`Trajectory.bound`, `(T,)`, an estimate of ‖f_true(t) − f_eigen(t)‖_F).**
Let `ΔK = K − K_m ⪰ 0`, `κ = ‖ΔK‖₂` (``decomposition.tail_norm``). The reduced solution `g(t)`
satisfies the true flow up to the defect `δ(t) = ΔK ∇L(g(t))`.

* moment path (contrastive kind): `ΔK A = 0` and, for exact eigenvectors, `ΔK Z E = 0`, so
  `δ(t) = D₀ G(t)` with the constant `D₀ = (2/N) ΔK Z r₀ = (K Z r₀ − E EᵀZr₀)/n` (one product with
  `K` per solve) — the discarded modes' own push, and the error `e` of the discarded part obeys
  `e' = −D₀ G − (2/N) ΔK Z e G` (exactly, given `G`). Gronwall gives the recorded
        b' = ‖D₀ G‖_F + (2κ/N)‖G‖₂ · b,      b(0) = 0,
  a RIGOROUS bound on the discarded modes' error when the retained trajectory (`G(t)`) is exact and
  the eigenvectors are exact; it NEGLECTS the back-reaction of that error on the retained modes
  through `C` (second order: `‖δC‖ ≤ (2‖f‖₂ b + b²)/N`). For Barlow Twins from small `α` both
  `D₀` and `b` are `O(α)`.
* lift path (kernel kind, any loss): `ΔK A = 0`, so `‖δ‖_F ≤ κ ‖∇L − A Eᵀ∇L‖_F` (the part of the
  gradient outside the kept span) and the recorded `b(t) = ∫₀ᵗ κ ‖∇L − A Eᵀ∇L‖_F ds` is the
  integrated defect: a rigorous bound when the true flow is non-expansive (`‖e‖' ≤ ‖δ‖`, e.g. near
  a stable minimum of a convex-in-f loss), and a first-order (Gronwall factor 1) ESTIMATE otherwise.

Integration: ``_common.integrate`` (adaptive explicit RK, default Tsit5, NaN guard;
`RecursiveCheckpointAdjoint` when the inputs are traced, so `jax.grad` works, else the lighter
`ForwardMode`: ``_common.default_adjoint``) on the `(m, k)` state plus the bound scalar. The
reduced system has the same fastest rate as the full one (the top eigenpair is kept) and is not
stiffer; its cost per step is `O(m²k)` (moment) or `O(N m k)` (lift) instead of `O(N² k)`.
Measured speed-ups against neural-tangents' `predict.gradient_descent` are in
`benchmarks/bench_dynamics.py`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _sharding, linalg
from sslntk import _validate as V
from sslntk import methods as _methods
from sslntk.dynamics import _common as C
from sslntk.dynamics._solver import DEFAULT_MAX_STEPS, DiffraxOptions, Solver
from sslntk.dynamics._trajectory import NONFINITE, SUCCESS, Trajectory
from sslntk.linalg import EigenDecomposition, pair_flip
from sslntk.losses import cross_correlation

__all__ = ["Eigen", "default_m", "solve_eigen", "solve_batch", "PATHS"]

PATHS = ("moment", "lift")


def default_m(k: int, N: int, kind: str) -> int:
    """Default number of retained eigenpairs: `max(4k, 32)` (contrastive) or `max(4k, 64)` (kernel),
    at most `N`. For BT at α = 1e-3 the dropped modes `j > m` perturb the loss by about
    `α^{2(1 − γ_m/γ_k)}`; measured errors for these defaults are in ``tests/test_eigen.py`` and the
    benchmark (pass a larger `m` for tighter agreement)."""
    base = 32 if kind == "contrastive" else 64
    return int(min(N, max(4 * k, base)))


def moment_loss(method, Cm: jax.Array) -> jax.Array:
    """`ℓ(C)` for a method that depends on f only through `C = fᵀZf/N`: its `moment_form` when it
    has one, else its `potential` evaluated through the small surrogate embedding
    `f̃ = [[I_k; 0], [p·C; 0]]` (`2p × k`, `p = max(k, 2)`), whose cross-moment is exactly `C`
    (for symmetric `C`)."""
    form = getattr(method, "moment_form", None)
    if form is not None:
        return form(Cm)
    loss = method.potential
    k = Cm.shape[0]
    p = max(k, 2)
    # eye/pad rather than `.at[].set` (a scatter, which vmap makes a batched scatter)
    top = jnp.eye(p, k, dtype=Cm.dtype)
    bot = jnp.pad(p * Cm, ((0, p - k), (0, 0)))
    return loss(jnp.concatenate([top, bot], axis=0))


def _check_moment_loss(method, f0) -> None:
    """On concrete inputs, confirm that a method with a ``moment_form`` really is a function of `C`
    alone (a wrong structure would make the moment path silently wrong): `loss(f)` against
    `ℓ(C(f))` at `f₀` and at a random probe of the same scale, in one compiled program."""
    if not (V.is_concrete(f0)
            and all(V.is_concrete(c) for c in jax.tree_util.tree_leaves(method))):
        return
    losses, moments = jax.device_get(_moment_gap(method, f0))   # (2,) each: loss(f), ℓ(C(f))
    tol = 1e3 * float(jnp.finfo(f0.dtype).eps)
    for a, b in zip(map(float, losses), map(float, moments), strict=True):
        if not abs(a - b) <= tol * max(1.0, abs(a)):
            raise ValueError(f"method: {_methods.method_label(method)} has a moment_form "
                             f"(cross_moment_only) but is not a function of C = fᵀZf/2n alone "
                             f"(loss(f) = {a:.6g}, ℓ(C(f)) = {b:.6g}); use decomposition kind "
                             f"'kernel'")


@jax.jit
def _moment_gap(method, f0):
    """`(loss(f), ℓ(C(f)))` for `f = f₀` and a random probe `f₀ + std(f₀)·ξ` scaled to RMS ≤ 1,
    each `(2,)` (one program instead of ~30 eager ones: a fresh process loads each separately)."""
    probe = f0 + jnp.std(f0) * jax.random.normal(jax.random.PRNGKey(1), f0.shape, f0.dtype)
    probe = probe / jnp.maximum(1.0, jnp.sqrt(jnp.mean(probe**2)))

    def pair(f):
        return method.potential(f), moment_loss(method, cross_correlation(f))

    (a0, b0), (a1, b1) = pair(f0), pair(probe)
    return jnp.stack([a0, a1]), jnp.stack([b0, b1])


@functools.partial(jax.jit, static_argnames=("path", "solver", "max_steps", "adjoint", "progress",
                                             "has_dt0", "loss_batched", "layout", "single"))
def _core(K, loss, F0, ts, K_tx, F0t, dec, rtol, atol, dt0, pcoeff, icoeff, *, path, solver,
          max_steps, adjoint, progress, has_dt0, loss_batched, layout=None, single=False):
    """B runs on one decomposition: `F0 (B, 2n, k)`, `F0t (B, p, k)` or None; `atol` a scalar
    shared by the runs or None for `atol_b = rtol·RMS(w₀_b)` per run; the loss constants carry a
    leading B axis when `loss_batched`. Returns a batched `Trajectory`. `single`: one run given
    without the B axis (`F0 (2n, k)`, `F0t (p, k)`), returned without it (added and dropped inside
    the program: a fresh process would otherwise load a small program per array).

    ONE diffrax solve of the stacked `(B, m, k)` state (`solve_eigen` is the case B = 1): one
    loop of large array operations rather than a `jax.vmap` of adaptive loops (a batched
    while-loop that selects over every run's state at every step). Each run is integrated in its
    own units, `u = w / s_b` with `s_b = atol_b / rtol`, and the step controller takes the WORST of
    the runs' own RMS error norms, so every run is held to the accuracy it would get alone; the
    steps are shared, so one stiff run slows its whole group. On CPU this costs what the vmap does
    (32 runs at 2n = 2048: 3.2 s vs 3.1 s). A run whose right-hand side turns non-finite is
    frozen and flagged alone (status NONFINITE). A row-sharded K (`layout`) enters
    only through the one product `K Z R₀` of all runs at once (sharded, replicated result); the
    `(B, m, k)` state and everything else is replicated.
    """
    if single:
        F0 = F0[None]
        F0t = None if F0t is None else F0t[None]
    B, N, k = F0.shape
    dtype = F0.dtype
    A, E = dec.vectors, dec.lift
    kappa = dec.tail_norm
    moment = path == "moment"
    if moment:
        # S stays dense: rotating to its eigenbasis (S·w in O(mk)) was measured 20 % faster on a
        # 32-run sweep, but a float32 eigh gives the small rates absolute errors ~eps·γ₁, which
        # shift the late steps (2n = 8192: loss error 2.4e-4 against 1.1e-5 dense).
        ZE = pair_flip(E)
        S = E.T @ ZE / N
        S = 0.5 * (S + S.T)

    def prep(f0, KZr0):
        w0 = A.T @ f0                                 # (m, k)
        r0 = f0 - E @ w0                              # frozen remainder (Aᵀ r₀ = 0)
        if not moment:
            return w0, r0, ()
        X = ZE.T @ r0 / N
        Cr = r0.T @ pair_flip(r0) / N
        D0 = (KZr0 - E @ (ZE.T @ r0)) * (2.0 / N)
        return w0, r0, (X, 0.5 * (Cr + Cr.T), D0.T @ D0)  # H = D₀ᵀD₀: ‖D₀ G‖² = tr(G H G)

    if moment:   # K Z r₀ for all runs in ONE product K @ (N, B·k) (sharded when K is)
        R0_ = F0 - jnp.einsum("im,bmk->bik", E, jnp.einsum("im,bik->bmk", A, F0))
        ZR = jnp.moveaxis(jax.vmap(pair_flip)(R0_), 0, 1).reshape(N, B * k)
        KZR = jnp.moveaxis(_sharding.row_matmul(K, ZR, layout).reshape(N, B, k), 1, 0)
    else:
        KZR = jnp.zeros((B, 1, 1), dtype)
    W0, R0, AUX = _over_runs(prep, B)(F0, KZR)
    rate = 2.0 * kappa / N
    la = 0 if loss_batched else None
    # (B,) the runs' units s_b = atol_b / rtol
    sc = _over_runs(C.atol_scale, B)(W0) if atol is None else jnp.full((B,), atol / rtol, dtype)
    sc = jax.lax.stop_gradient(sc).astype(dtype)
    sc3 = sc[:, None, None]
    consts = (sc, S if moment else None, AUX, R0, loss, A, E, kappa, rate)

    def vf(t, y, args):
        return _field(y[0], y[1], *consts, moment=moment, la=la)

    y0 = (W0 / sc3, jnp.zeros((B,), dtype), jnp.zeros((B,), dtype))
    out = C.integrate(vf, y0, ts, None, solver=solver, rtol=rtol, atol=rtol,
                      dt0=dt0 if has_dt0 else None, max_steps=max_steps, pcoeff=pcoeff,
                      icoeff=icoeff, adjoint=adjoint, progress=progress, norm=_worst_run_norm)
    Us, cs, flags = out.ys                            # (T, B, m, k), (T, B), (T, B)
    blown = flags > 0                                 # a run frozen after a non-finite value
    Ws = jnp.moveaxis(jnp.where(blown[..., None, None], jnp.nan, Us * sc3[None]), 1, 0)
    dWs = Ws - W0[:, None]                            # (B, T, m, k)
    fs = F0[:, None] + jnp.einsum("im,btmk->btik", E, dWs)
    f_test = None
    if K_tx is not None:
        f_test = F0t[:, None] + jnp.einsum("im,btmk->btik", K_tx @ A, dWs)
    status = jnp.where((out.status == SUCCESS) & jnp.any(blown, axis=0), NONFINITE, out.status)

    def finish(f_b, ft_b, w_b, bound_b, st_b, aux_b, lo):
        # moment path: the loss from the reduced C (exactly C of the lifted f, without the
        # 2n-term float32 sums that alone put ~2e-4 of round-off on BT's loss near its plateaus)
        L = jax.vmap(lambda w: moment_loss(lo, _cross_moment(S, w, aux_b)[1]))(w_b) if moment \
            else None
        return C.finish("eigen", lo, ts, _methods.State(f=f_b, f_test=ft_b), st_b, out.n_steps,
                        reached=out.reached, bound=bound_b, L=L)

    out = _over_runs(finish, B, (0, None if f_test is None else 0, 0, 0, 0, 0, la))(
        fs, f_test, Ws, jnp.moveaxis(cs, 1, 0) * sc[:, None], status, AUX, loss)
    return jax.tree_util.tree_map(lambda x: x[0], out) if single else out


def _over_runs(f, B: int, in_axes=0):
    """`jax.vmap(f, in_axes)` over the B runs, or for B = 1 `f` on the one run with the axis added
    back to its outputs (the same program without batching rules: less to trace and lower)."""
    if B != 1:
        return jax.vmap(f, in_axes=in_axes)

    def one(*args):
        axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
        args = [a if ax is None else jax.tree_util.tree_map(lambda x: x[0], a)
                for a, ax in zip(args, axes, strict=True)]
        return jax.tree_util.tree_map(lambda x: x[None], f(*args))

    return one


def _cross_moment(S, w, aux):
    """`(S w + X, C)` of one run: `w (m, k)`, `aux = (X, C_r, H)`; `C = wᵀSw + wᵀX + Xᵀw + C_r`
    (the moment path's cross-moment, see the module docstring), symmetrised."""
    X, Cr, _ = aux
    Sw = S @ w
    Cm = w.T @ (Sw + 2.0 * X)                     # sym(wᵀ(Sw + 2X)) = wᵀSw + wᵀX + Xᵀw
    return Sw + X, 0.5 * (Cm + Cm.T) + Cr


@functools.partial(jax.jit, static_argnames=("moment", "la"))
def _field(U, c, sc, S, AUX, R0, loss, A, E, kappa, rate, *, moment, la):
    """The reduced flow of `_core`'s B runs in their own units: `U (B, m, k)`, `c (B,)` (bound)
    → `(dU, dc, flag)`; a run whose derivative is non-finite gets zeros and `flag = 1`. Jitted so
    that the integrator's two traces of it (first stage, loop body) share one."""
    sc3 = sc[:, None, None]
    gradC = jax.grad(moment_loss, argnums=1)
    gradL = jax.grad(lambda lo, f: lo.potential(f), argnums=1)

    def rhs(w, b, aux, r0, lo):                       # one run, in its own units
        if moment:
            SwX, Cm = _cross_moment(S, w, aux)
            G = gradC(lo, Cm)
            G = 0.5 * (G + G.T)
            defect = jnp.sqrt(jnp.maximum(jnp.sum(G * (aux[2] @ G)), 0.0))
            return -2.0 * SwX @ G, defect + rate * _spectral_norm_bound(G) * b
        g = gradL(lo, r0 + E @ w)
        Etg = E.T @ g
        return -Etg, kappa * jnp.sqrt(jnp.sum((g - A @ Etg) ** 2))

    dW, db = _over_runs(rhs, U.shape[0], (0, 0, 0, 0, la))(U * sc3, c * sc, AUX, R0, loss)
    dU, dc = dW / sc3, db / sc
    ok = jnp.all(jnp.isfinite(dU), axis=(1, 2)) & jnp.isfinite(dc)
    return (jnp.where(ok[:, None, None], dU, 0.0), jnp.where(ok, dc, 0.0),
            jnp.where(ok, 0.0, 1.0).astype(U.dtype))


def _worst_run_norm(tree) -> jax.Array:
    """Step-control norm of `_core`'s state `((U (B, m, k), c (B,), flags (B,)), g)`: the largest
    of the runs' own RMS norms (so each run meets the tolerance it would meet alone)."""
    (U, c, flag), g = tree
    per = jnp.sqrt((jnp.sum(U**2, axis=(1, 2)) + c**2 + flag**2) / (U.shape[1] * U.shape[2] + 2))
    return jnp.maximum(jnp.max(per), jnp.abs(g))


def _spectral_norm_bound(G: jax.Array) -> jax.Array:
    """Smooth upper bound on ‖G‖₂ for symmetric G: ‖G‖_F · tr(H¹⁶)^{1/16}, H = G/‖G‖_F
    (≤ k^{1/16}·‖G‖₂; differentiable, unlike the largest |eigenvalue| at degeneracies). G lives in
    output space, in no particular basis, so cheaper norms (‖G‖_∞, ‖G‖_F) are up to √k looser,
    and that factor sits in the exponent of the Gronwall bound (measured: bound(T) 140 vs 1.1)."""
    fro = jnp.sqrt(jnp.sum(G**2))
    H = G / jnp.where(fro > 0, fro, 1.0)
    for _ in range(4):
        H = H @ H
    return fro * jnp.maximum(jnp.trace(H), 0.0) ** (1.0 / 16)


def _check_decomposition(dec, N: int, m: int | None, k: int, dtype) -> EigenDecomposition:
    if not isinstance(dec, EigenDecomposition):
        raise TypeError(f"decomposition: expected a sslntk.linalg.EigenDecomposition (from "
                        f"linalg.eigen_decomposition), got {type(dec).__name__}")
    if dec.vectors.shape[0] != N:
        raise ValueError(f"decomposition: expected one computed for a kernel of size N = {N}, got "
                         f"one of size {dec.vectors.shape[0]}")
    if dec.vectors.dtype != dtype:
        raise TypeError(f"decomposition: expected dtype {dtype} (the kernel's), got "
                        f"{dec.vectors.dtype}")
    if m is not None:
        if m > dec.m:
            raise ValueError(f"m: expected m <= {dec.m} (the eigenpairs in `decomposition`), got "
                             f"m={m}")
        if m < dec.m:
            dec = EigenDecomposition(values=dec.values[:m], vectors=dec.vectors[:, :m],
                                     lift=dec.lift[:, :m], trace=dec.trace,
                                     tail_norm=_truncated_tail(dec, m), residual=dec.residual[:m],
                                     kind=dec.kind, method=dec.method)
    if dec.m < k:
        raise ValueError(f"m: expected m >= k = {k} (the reduced flow changes f only inside an "
                         f"m-dimensional span, so it can learn at most m directions), got m={dec.m}")
    return dec


def _truncated_tail(dec: EigenDecomposition, m: int) -> jax.Array:
    """‖K − E_m E_mᵀ‖₂ ≤ ‖K − E Eᵀ‖₂ + ‖E_{m:}‖₂² (triangle inequality; both terms PSD)."""
    rest = dec.lift[:, m:]
    return dec.tail_norm + jnp.linalg.norm(rest, ord=2) ** 2


@dataclasses.dataclass(frozen=True, eq=False)
class Eigen(DiffraxOptions, Solver):
    """Eigen-reduced kernel flow (see the module docstring for the derivation and the bound).

    Any method with a `potential` (a gradient flow of a function of f); with a `moment_form` as
    well (a loss of C alone) the contrastive decomposition and the O(m²k) moment path are used.

    Options:
      m: retained eigenpairs (``k <= m <= 2n``); default ``default_m(k, 2n, kind)``, or all of
        ``decomposition``'s when one is given.
      decomposition: a precomputed ``linalg.EigenDecomposition`` of THIS ``K`` (computed once with
        ``linalg.eigen_decomposition(K, m, kind)`` and reused by every solve on the kernel);
        ``None`` computes one in `solve`.
      kind: ``"contrastive"`` (eigenpairs of ``M``; needs a ``moment_form``) or ``"kernel"``;
        default: contrastive for methods with a moment form, else kernel. Ignored when a
        decomposition is given (its kind is used).
      eig_method, key: passed to ``linalg.eigen_decomposition`` when it is computed here.
      integrator, rtol, atol, dt0, max_steps, pcoeff, icoeff, adjoint: `DiffraxOptions`
        (defaults rtol 1e-8 float64 / 1e-5 float32, ``atol = rtol·RMS(w₀)`` on the reduced state
        ``w₀ = Aᵀ f₀``).

    `solve` returns a ``Trajectory`` with ``method="eigen"`` and ``bound (T,)`` (module docstring:
    rigorous for the discarded modes given the retained ones on the moment path; an
    integrated-defect estimate on the lift path).
    """

    m: int | None = None
    decomposition: EigenDecomposition | None = None
    kind: str | None = None
    eig_method: str = "auto"
    key: object = None
    name = "eigen"
    sharded = True

    def __post_init__(self):
        super().__post_init__()
        if self.m is not None:
            V.positive_int("m", self.m)
        if self.kind is not None:
            V.choice("kind", self.kind, linalg.KINDS)
        if self.decomposition is not None and not isinstance(self.decomposition,
                                                             EigenDecomposition):
            raise TypeError(f"decomposition: expected a sslntk.linalg.EigenDecomposition (from "
                            f"linalg.eigen_decomposition), got {type(self.decomposition).__name__}")

    def resolved_kind(self, method) -> str:
        if self.decomposition is not None:
            return self.decomposition.kind
        has_moment = method.moment_form is not None
        kind = self.kind or ("contrastive" if has_moment else "kernel")
        if kind == "contrastive" and not has_moment:
            raise ValueError(f"kind: 'contrastive' needs a method that depends on f only through "
                             f"C = fᵀZf/2n (cross_moment_only: a moment_form); "
                             f"{_methods.method_label(method)} has none, use 'kernel'")
        return kind

    def check(self, method, state0) -> None:
        _methods.require(method, "potential", "eigen",
                         "the eigen reduction integrates a gradient flow; use the 'ode' solver")
        N, k = state0.f.shape
        if self.m is not None:
            if self.m > N:
                raise ValueError(f"m: expected m <= 2n = {N} (the number of training views), got "
                                 f"m={self.m}")
            if self.m < k:
                raise ValueError(f"m: expected m >= k = {k} (the reduced flow changes f only "
                                 f"inside an m-dimensional span, so it can learn at most m "
                                 f"directions), got m={self.m}")
        self.resolved_kind(method)

    def decompose(self, K, method, k: int) -> EigenDecomposition:
        """The decomposition this solver uses for `K` (the given one, checked, or a new one).
        `K` is trusted (solvers are called behind `dynamics.solve`, which checked it once), so it
        is not checked again here (`linalg.trusted_eigen_decomposition`)."""
        N = K.shape[0]
        dec = self.decomposition
        if dec is None:
            kind = self.resolved_kind(method)
            dec = linalg.trusted_eigen_decomposition(
                K, default_m(k, N, kind) if self.m is None else self.m, kind,
                method=self.eig_method, key=self.key)
        return dec

    def solve(self, K, method, state0, ts, *, K_test_train=None, progress=False,
              _checked: bool = False) -> Trajectory:
        state0 = _methods.as_state(state0)
        if not _checked:
            self.check(method, state0)
        f0 = state0.f
        N, k = f0.shape
        path = "moment" if (self.resolved_kind(method) == "contrastive"
                            and method.moment_form is not None) else "lift"
        if path == "moment":   # before the decomposition: it waits for its own small program only
            _check_moment_loss(method, f0)
        # dispatched, not waited for: `solve_batch` traces the flow while the decomposition runs
        dec = _check_decomposition(self.decompose(K, method, k), N, self.m, k, f0.dtype)
        f0_test = state0.f_test
        return solve_batch(K, method, f0, ts, dec, path=path, loss_batched=False,
                           K_test_train=K_test_train, F0_test=f0_test, progress=progress,
                           single=True, **self.diffrax_kwargs())


def solve_eigen(K, loss, f0, ts, *, K_test_train=None, f0_test=None, progress=False,
                validate: bool = True, **options) -> Trajectory:
    """Run `Eigen(**options)` (`solver=` is accepted for `integrator=`), validating the inputs
    first unless `validate=False` (the caller already did: then `loss` is a method and the arrays
    are checked)."""
    if "solver" in options:
        options["integrator"] = options.pop("solver")
    if validate:
        inp = C.validate_inputs(K, loss, f0, ts, K_test_train, f0_test, check_psd_=False)
        K, method, state0, ts, K_test_train = inp
    else:
        method = _methods.as_method(loss)
        state0 = method.init(f0, f0_test=f0_test)
    return Eigen.from_options(**options).solve(K, method, state0, ts, K_test_train=K_test_train,
                                               progress=progress)


def solve_batch(K, method, F0, ts, dec, *, path, loss_batched, K_test_train=None, F0_test=None,
                progress=False, solver="tsit5", rtol=None, atol=None, dt0=None,
                max_steps=DEFAULT_MAX_STEPS, pcoeff=0.0, icoeff=1.0, adjoint=None,
                single=False) -> Trajectory:
    """B validated runs `F0 (B, 2n, k)` on one checked decomposition → a batched `Trajectory`
    (one joint solve, see `_core`); default `atol_b = rtol·RMS(Aᵀ f0_b)` per run. `single`: one
    run `F0 (2n, k)` (`F0_test (p, k)`) → an unbatched `Trajectory`."""
    rtol = C.default_rtol(F0.dtype) if rtol is None else rtol
    if adjoint is None:
        adjoint = C.default_adjoint((K, method, F0, ts, dec, K_test_train, F0_test, rtol, atol))
    # host scalars (numpy) for the options: converted on the way in, not by a program each
    as_t = lambda x: x.astype(F0.dtype) if isinstance(x, jax.Array) else np.asarray(x, F0.dtype)
    layout = _sharding.layout_of(K)
    if layout is not None:
        _check_dec_mesh(dec, layout)
        F0, F0_test, K_test_train, ts = (_sharding.place(x, layout)
                                         for x in (F0, F0_test, K_test_train, ts))
        dec = jax.tree_util.tree_map(lambda x: _sharding.place(x, layout), dec)
    return _core(K, method, F0, ts, K_test_train, F0_test, dec, as_t(rtol),
                 None if atol is None else as_t(atol),
                 as_t(0.0 if dt0 is None else dt0), as_t(pcoeff), as_t(icoeff), path=path,
                 solver=solver, max_steps=max_steps, adjoint=adjoint, progress=bool(progress),
                 has_dt0=dt0 is not None, loss_batched=loss_batched, layout=layout, single=single)


def _check_dec_mesh(dec: EigenDecomposition, layout) -> None:
    """A decomposition used with a row-sharded K must live on K's mesh (or on one device)."""
    s = getattr(dec.vectors, "sharding", None)
    if s is None or isinstance(dec.vectors, jax.core.Tracer):
        return
    on_mesh = getattr(s, "mesh", None) == layout.mesh
    if not on_mesh and not (len(s.device_set) == 1 and dec.vectors.is_fully_addressable):
        raise ValueError(f"decomposition: expected one computed on K's mesh ({layout.describe()}), "
                         f"got arrays with sharding {s}; compute it with "
                         f"linalg.eigen_decomposition(K, m, kind) on this K")
