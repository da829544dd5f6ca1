"""The step-size check of full-batch GD against the gradient flow: `flow_rate` (ρ, the fastest
rate of the linearised function-space GD map at init) and the warning when `lr·ρ` is too large."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk.finite._inputs import check_loss, stacked_inputs
from sslntk.finite._param import gd_scales
from sslntk.finite._state import offsets, split_trainable, trainable_output

#: `train` warns when lr·ρ exceeds this (ρ: see `flow_rate`). For Barlow Twins the relative error
#: of GD's step times against the gradient flow is ≈ 2·lr·γ₁ = lr·ρ/2 (ρ = 4γ₁ at f ≈ 0; derived
#: from the logistic steps `c_j(t)` at rate 8γ_j of Simon et al. 2023 and checked against GD at two
#: learning rates), so 0.05 keeps it below ≈ 2.5 %.
MAX_LR_RATE = 0.05


def flow_rate(model, views, loss, *, iters: int = 30, key=None) -> float:
    """ρ: spectral radius of the linearised function-space GD map at init, `Θ·∇²_f L(f₀)`.

    `Θ = J Jᵀ` is the model's full tangent kernel on the stacked `views` `(2n, *in_shape)` (all
    outputs; `K ⊗ I_k` at infinite width, Jacot et al. 2018; `J S Jᵀ` for a μP model, S its
    per-group GD learning-rate factors) and `∇²_f L(f₀)` the loss Hessian at the initial
    embeddings `f₀ (2n, k)`. A GD step `f ← f − lr·Θ∇L(f)` follows the gradient flow only while
    `lr·ρ ≪ 1` (and is unstable past `lr·ρ = 2`). For Barlow Twins near `f = 0`,
    `∇²L = −(4/2n)·Z ⊗ I`, so `ρ = 4γ₁` with γ₁ the top eigenvalue of `M = K^{1/2} Z K^{1/2}/2n`
    (Simon et al. 2023, the eigenvalues that set the step times); the learned modes' own rate
    reaches `8γ_j` as `C → I`. Estimated by power iteration on `A²` (`A = Θ·∇²L`, similar to a
    symmetric matrix, so its eigenvalues are real and `A²` has a unique dominant modulus) using
    one VJP, one JVP and one Hessian-vector product per application.

    Example::

        rho = finite.flow_rate(model, views, "barlow_twins")
        lr = 0.05 / rho          # lr·ρ = MAX_LR_RATE
    """
    x = stacked_inputs(views, model)
    loss = check_loss(loss, x, model)
    iters = V.positive_int("iters", iters)
    if key is not None:
        V.check_key("key", key)
    graphdef, params, rest = split_trainable(model)
    return float(flow_rate_of(graphdef, params, rest, x, loss, iters,
                              jax.random.key(0) if key is None else key,
                              gd_scales(model, params)))


def flow_rate_of(graphdef, params, rest, x, loss, iters, key, scales=None):
    """`flow_rate` on a split model (jitted; traceable under `vmap` over seeds)."""
    off = offsets(graphdef, params, rest, x)
    fwd = lambda p: trainable_output(graphdef, p, rest, x)  # noqa: E731
    f0 = fwd(params) - off

    def A(v):
        hv = jax.jvp(jax.grad(loss), (f0,), (v,))[1]
        _, vjp = jax.vjp(fwd, params)
        (ct,) = vjp(hv)
        if scales is not None:
            ct = jax.tree.map(lambda a, s: a * s, ct, scales)
        return jax.jvp(fwd, (params,), (ct,))[1]

    def body(_, c):
        v, _ = c
        w = A(A(v))
        nw = jnp.linalg.norm(w)
        return w / jnp.where(nw > 0, nw, 1), nw

    v = jax.random.normal(key, f0.shape, f0.dtype)
    v, nw = jax.lax.fori_loop(0, iters, body, (v / jnp.linalg.norm(v), jnp.zeros((), f0.dtype)))
    return jnp.sqrt(nw)


flow_rate_of = jax.jit(flow_rate_of, static_argnums=(0, 5))


def warn_rate(lr, rho, where=""):
    """RuntimeWarning with the numbers when `lr·ρ > MAX_LR_RATE` (any seed)."""
    rate = lr * rho
    if np.any(rate > MAX_LR_RATE):
        rmax = float(np.max(rate))
        warnings.warn(
            f"{where}lr·ρ = {rmax:.3g} > {MAX_LR_RATE} (lr = {lr:g}, ρ = {float(np.max(rho)):.4g}, "
            f"the fastest rate of the linearised flow Θ·∇²L at init): full-batch GD is too coarse "
            f"for a gradient-flow comparison (expected relative step-time error ≈ lr·ρ/2 = "
            f"{rmax / 2:.2%}); lower lr below {MAX_LR_RATE / float(np.max(rho)):.3g}",
            RuntimeWarning, stacklevel=3)


__all__ = ["MAX_LR_RATE", "flow_rate", "flow_rate_of", "warn_rate"]
