"""Riemannian gradient descent on the Stiefel manifold (the discrete algorithm of the constrained
flow of Esser et al. 2023, docs/theory/collapse.md): `W ← retract(W + 2η (I − WWᵀ) M W)` with a QR, polar or
RK4 retraction, the finite-step counterpart of `collapse.constrained_flow`. Re-exported by
`sslntk.theory.collapse` (same names as before the split)."""

from __future__ import annotations

import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk.theory import checks as C

__all__ = ["RETRACTIONS", "StiefelPath", "stiefel_gd"]

RETRACTIONS = ("qr", "polar", "rk4")


class StiefelPath(NamedTuple):
    """Saved iterates of `stiefel_gd`. ts: `(S+1,)` gradient times η·s; W: `(S+1, p, k)`;
    loss: `(S+1,)` `−Tr(WᵀMW)`; feasibility: `(S+1,)` `||WᵀW − I||_F`."""

    ts: jax.Array
    W: jax.Array
    loss: jax.Array
    feasibility: jax.Array


def _retract_qr(Y):
    Q, R = jnp.linalg.qr(Y)
    s = jnp.sign(jnp.diagonal(R))
    return Q * jnp.where(s == 0, 1.0, s)


def _retract_polar(Y):
    lam, U = jnp.linalg.eigh(Y.T @ Y)
    return Y @ ((U / jnp.sqrt(lam)) @ U.T)


def _field(M, W):
    MW = M @ W
    return 2 * (MW - W @ (W.T @ MW))


@partial(jax.jit, static_argnames=("steps", "n_saves", "method"))
def _stiefel_core(M, W0, eta, *, steps, n_saves, method):
    if method == "rk4":
        def step(W):
            k1 = _field(M, W)
            k2 = _field(M, W + eta / 2 * k1)
            k3 = _field(M, W + eta / 2 * k2)
            k4 = _field(M, W + eta * k3)
            return _retract_polar(W + eta / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
    else:
        retract = _retract_qr if method == "qr" else _retract_polar

        def step(W):
            return retract(W + eta * _field(M, W))

    every = steps // n_saves

    def chunk(W, _):
        W = jax.lax.fori_loop(0, every, lambda i, w: step(w), W)
        return W, W

    _, Ws = jax.lax.scan(chunk, W0, None, length=n_saves)
    Ws = jnp.concatenate([W0[None], Ws])
    k = W0.shape[1]
    loss = -jnp.einsum("spk,pq,sqk->s", Ws, M, Ws)
    gram = jnp.einsum("spk,spl->skl", Ws, Ws) - jnp.eye(k, dtype=W0.dtype)
    feas = jnp.sqrt(jnp.sum(gram**2, axis=(1, 2)))
    ts = eta * every * jnp.arange(n_saves + 1, dtype=W0.dtype)
    return StiefelPath(ts, Ws, loss, feas)


def stiefel_gd(M, W0, eta, steps: int, *, method: str = "qr", n_saves: int | None = None
               ) -> StiefelPath:
    """Riemannian GD on the Stiefel manifold for `L = −Tr(WᵀMW)` (Esser et al. 2023, reconstructed):

    - `"qr"`: `W ← qf(W + 2η(I − WWᵀ)MW)` (thin QR, diag(R) > 0);
    - `"polar"`: same step, polar retraction `Y(YᵀY)^{−1/2}`;
    - `"rk4"`: one classical RK4 step of the flow `dW/dt = 2(I − WWᵀ)MW`, then a polar
      re-orthonormalisation (removes the O(η⁵) drift; never integrate without it).

    Time is `t = η·s`. `n_saves` (default `steps`) iterates are returned, evenly spaced; `steps`
    must be a multiple of it. This is the parameter-space model (p-dimensional W), used as
    the reference for the closed forms; the kernel-regime solver is `sslntk.dynamics`.
    Non-finite iterates (e.g. `"rk4"` with η·||M|| >~ 5: measured NaN at η = 10, ||M|| = 1) warn
    (RuntimeWarning, outside jit) with the first saved time at which they appear."""
    M = C.symmetric("M", M)
    W0 = C.orthonormal_columns("W0", W0)
    if W0.shape[0] != M.shape[0]:
        raise ValueError(f"W0: expected shape ({M.shape[0]}, k), got {tuple(W0.shape)}")
    V.same_dtype(M=M, W0=W0)
    eta = C.positive("eta", eta)
    steps = V.positive_int("steps", steps)
    n_saves = steps if n_saves is None else V.positive_int("n_saves", n_saves)
    if steps % n_saves:
        raise ValueError(f"n_saves: expected a divisor of steps = {steps}, got {n_saves}")
    V.choice("method", method, RETRACTIONS)
    path = _stiefel_core(M, W0, eta.astype(M.dtype), steps=steps, n_saves=n_saves, method=method)
    if V.is_concrete(path.W) and not bool(jnp.all(jnp.isfinite(path.loss))):
        bad = np.flatnonzero(~np.isfinite(np.asarray(path.loss)))
        warnings.warn(f"stiefel_gd: the iterates are not finite from t = η·s = "
                      f"{float(path.ts[bad[0]]):.6g} on (method={method!r}, η = {float(eta):.3g}, "
                      f"η·||M||_2 = {float(eta) * float(jnp.max(jnp.abs(jnp.linalg.eigvalsh(M)))):.3g}"
                      f"): the step is too large for this retraction; reduce η or use 'qr'",
                      RuntimeWarning, stacklevel=2)
    return path
