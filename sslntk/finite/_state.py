"""The pure view of a finite network that the trainers, the kernels and the step-size check share.

A Flax NNX model is split once into `(graphdef, params, rest)`: its trainable `nnx.Param` state and
everything else (the frozen init θ₀ of the small-init construction, BatchNorm statistics). The
network's output is `f(x) = g_θ(x) − offset(x)` with the θ-dependent part `trainable_output` and the
constant part `offset(x) = (1 − α)·g_θ₀(x)` (zero for α = 1 and for models without one): the
small-init construction, `f₀ = α·g_θ₀` (see `docs/how-to/finite-vs-kernel.md`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def split_trainable(model):
    """`(graphdef, params, rest)`: the trainable `nnx.Param` state and everything else."""
    return nnx.split(model, nnx.Param, ...)


def trainable_output(graphdef, params, rest, x):
    """The θ-dependent part of f on `x (N, *in_shape)`, `(N, k)`: `model.trainable(x)` when the
    model has one, else `model(x)`."""
    m = nnx.merge(graphdef, params, rest)
    return m.trainable(x) if hasattr(m, "trainable") else m(x)


def offsets(graphdef, params, rest, x):
    """The constant part `(1 − α)·g_θ₀(x)` `(N, k)` of a small-init model (zeros without one)."""
    m = nnx.merge(graphdef, params, rest)
    if hasattr(m, "offset"):
        return m.offset(x)
    return jnp.zeros((x.shape[0], jax.eval_shape(m, x).shape[-1]), x.dtype)


def embeddings(graphdef, params, rest, x):
    """`f(x) = trainable_output − offsets`, `(N, k)`."""
    return trainable_output(graphdef, params, rest, x) - offsets(graphdef, params, rest, x)


__all__ = ["split_trainable", "trainable_output", "offsets", "embeddings"]
