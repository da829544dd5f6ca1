"""Orthogonality-constrained (Stiefel / Grassmannian) kernel flow of Esser et al. (2024), §3.

State and constraint. Esser et al. constrain the trained layer, `WᵀW = I_k`, with `f(x) = Wᵀφ(x)`.
In the kernel (random-feature / RKHS) model with W in the span of the training features this is
RKHS orthonormality of the k output functions, which on the 2n training views reads

    fᵀ K⁻¹ f = I_k          (f: (2n, k); K positive definite)

The solver works in whitened coordinates `h = L⁻¹ f` (K = L Lᵀ, Cholesky; `Lᵀ` is a finite feature
map with the same training kernel), where the constraint is the Stiefel manifold `hᵀh = I_k`:

    dh/dt = −(G − h·sym(hᵀG)),    G = ∇_h L = Lᵀ ∇_f L(L h)         (embedded-metric Riemannian
                                                                       gradient flow on St(2n, k))
    equivalently df/dt = −K ∇_f L + f·sym(fᵀ ∇_f L)                 (tangent kernel K − f fᵀ for
                                                                       O(k)-invariant losses)

For losses with `L(fQ) = L(f)` for all `Q ∈ O(k)` (`kernel_pca`, `naive`, `barlow_twins` λ = 1,
`spectral`, `simclr`) `fᵀ∇L` is symmetric, the flow is the Grassmannian gradient flow and only
span(f) is meaningful; for other losses it is the Stiefel flow. With `kernel_pca`/`naive`
(`L = −tr C = −tr(hᵀ M_L h)`, `M_L = Lᵀ Z L/(2n)`) this is Oja's subspace flow
`dh/dt = 2(I − hhᵀ) M_L h` (Esser §3.2), whose stable fixed point is the top-k eigenspace, i.e.
span f → `K^{1/2}`·(top-k eigenvectors of `M = K^{1/2} Z K^{1/2}/(2n)`) = kernel PCA of the
contrastive kernel, with `tan θ_max(t) ≤ tan θ_max(0)·e^{−2(γ_k − γ_{k+1})t}` (Esser et al. 2024).

Start: `f0` is mapped onto the manifold by the RKHS QR retraction `h0 = qf(L⁻¹ f0)` (Q factor with
positive diag R); `Trajectory.f[0]` (at t = 0) is that point, not `f0` — only span(f0) is kept.

Integration: the adaptive explicit RK of `ode` (default Tsit5, same tolerances; `_common.integrate`)
with every step end point retracted back onto `hᵀh = I` by the Cholesky-QR retraction
`Y ↦ Y R⁻¹, YᵀY = RᵀR` (Esser §3.2's qf; projection methods keep the order of the wrapped RK
method, and one Cholesky-QR of a point O(tol) away from the manifold is orthonormal to O(eps)).
Saved points (dense interpolation between steps) are retracted again. `‖hᵀh − I‖ = ‖fᵀK⁻¹f − I‖`
stays at round-off (≈1e-15 in float64) at every saved time.

Test points: `f_test` follows the same parameter-space flow, `df_test/dt = −K_test_train ∇_f L +
f_test·sym(fᵀ∇_f L)` (Esser §4: tangent kernel `K_t = K − f fᵀ`), and every retraction `h ↦ h R⁻¹`
is applied to it too (`W ↦ W R⁻¹`). Integrated as part of the state, no K⁻¹. If
`f0_test = K_test_train K⁻¹ f0` (the RKHS extension of f0) then `f_test(t) = K_test_train K⁻¹ f(t)`.
"""

from __future__ import annotations

import dataclasses
import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from sslntk import _validate as V
from sslntk import methods as _methods
from sslntk.dynamics import _common as C
from sslntk.dynamics._solver import DiffraxOptions, Solver
from sslntk.dynamics._trajectory import Trajectory

__all__ = ["Constrained"]


def _qr_retract(Y, *others):
    """Cholesky-QR: `Q = Y R⁻¹` with `YᵀY = RᵀR` (R upper, positive diagonal); the same right
    factor `R⁻¹` is applied to every array in `others`."""
    Lg = jnp.linalg.cholesky(C.mm(Y.T, Y))                        # YᵀY = Lg Lgᵀ, R = Lgᵀ
    apply = lambda A: solve_triangular(Lg, A.T, lower=True).T      # A R⁻¹
    return (apply(Y),) + tuple(apply(A) for A in others)


def _retract2(Y, *others):
    """Two Cholesky-QR passes (CholQR2): orthonormal to round-off even for a badly conditioned Y."""
    out = _qr_retract(Y, *others)
    return _qr_retract(*out)


@functools.partial(jax.jit, static_argnames=("solver", "max_steps", "adjoint", "progress",
                                             "has_dt0"))
def _core(K, method, f0, ts, K_tx, f0_test, rtol, atol, dt0, pcoeff, icoeff, *, solver, max_steps,
          adjoint, progress, has_dt0):
    has_test = K_tx is not None
    Lk = jnp.linalg.cholesky(K)
    h0 = solve_triangular(Lk, f0, lower=True)
    if has_test:
        h0, ft0 = _retract2(h0, f0_test)
        y0 = (h0, ft0)
    else:
        (h0,) = _retract2(h0)
        y0 = h0

    def vf(t, y, args):
        Lk, K_tx, meth = args
        h, ft = y if has_test else (y, None)
        f = C.mm(Lk, h)
        g = jax.grad(meth.potential)(f)
        fg = C.mm(f.T, g)
        S = 0.5 * (fg + fg.T)
        dh = -C.mm(Lk.T, g) + C.mm(h, S)
        if not has_test:
            return dh
        return dh, -C.mm(K_tx, g) + C.mm(ft, S)

    def retract(y):
        return _qr_retract(*y) if has_test else _qr_retract(y)[0]

    out = C.integrate(vf, y0, ts, (Lk, K_tx, method), solver=solver, rtol=rtol, atol=atol,
                      dt0=dt0 if has_dt0 else None, max_steps=max_steps, pcoeff=pcoeff,
                      icoeff=icoeff, adjoint=adjoint, progress=progress, retract=retract)
    if has_test:
        hs, fts = out.ys
        hs, fts = jax.vmap(_qr_retract)(hs, fts)
    else:
        (hs,) = jax.vmap(_qr_retract)(out.ys)
        fts = None
    fs = jnp.einsum("ij,tjk->tik", Lk, hs, precision=C.HIGHEST)
    return C.finish("constrained", method, ts, _methods.State(f=fs, f_test=fts), out.status,
                    out.n_steps, reached=out.reached)


@dataclasses.dataclass(frozen=True)
class Constrained(DiffraxOptions, Solver):
    """RKHS-orthonormality-constrained (Grassmannian) gradient flow; see the module docstring.

    Any method with a `potential` (the gradient flow of a scalar function of f: Riemannian
    gradient by autodiff); needs a positive-definite K (Cholesky) and k ≤ 2n with f0 of full column
    rank. Options (`DiffraxOptions`) as for `Ode`; default `atol = rtol` (the state is O(1) on the
    manifold); `adjoint` None, `diffrax.ForwardMode()` or `diffrax.RecursiveCheckpointAdjoint()`
    (the loops that retract after every step).
    """

    name = "constrained"

    def __post_init__(self):
        super().__post_init__()
        if self.adjoint is not None and not isinstance(
                self.adjoint, (diffrax.ForwardMode, diffrax.RecursiveCheckpointAdjoint)):
            raise TypeError(f"adjoint: solver 'constrained' retracts after every step, which only "
                            f"diffrax.ForwardMode() and diffrax.RecursiveCheckpointAdjoint() "
                            f"support; got {type(self.adjoint).__name__}")

    def check(self, method, state0) -> None:
        _methods.require(method, "potential", "constrained")
        if state0.f.shape[1] > state0.f.shape[0]:
            raise ValueError(f"f0: solver 'constrained' needs k <= 2n (k orthonormal functions on "
                             f"2n views), got shape {tuple(state0.f.shape)}")

    def solve(self, K, method, state0, ts, *, K_test_train=None, progress=False) -> Trajectory:
        state0 = _methods.as_state(state0)
        self.check(method, state0)
        if V.is_concrete(K) and not _is_pd(np.asarray(K)):
            raise ValueError("K: solver 'constrained' needs a positive-definite kernel (the "
                             "constraint is fᵀK⁻¹f = I), but its Cholesky factorisation failed; "
                             "add a small ridge (K + εI)")
        traced, static = C.diffrax_settings(state0.f, atol_scale=1.0, progress=progress,
                                            arrays=(K, method, state0, ts, K_test_train),
                                            **self.diffrax_kwargs())
        return _core(K, method, state0.f, ts, K_test_train, state0.f_test, **traced, **static)


def _is_pd(K: np.ndarray) -> bool:
    """Host-side Cholesky test (numpy, so it also works on a concrete K captured inside a trace)."""
    try:
        return bool(np.all(np.isfinite(np.linalg.cholesky(K))))
    except np.linalg.LinAlgError:
        return False
