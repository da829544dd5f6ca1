"""SSL methods as objects (the protocol every solver integrates).

A method owns its state pytree (`State`: the online function `f (2n, k)`, whatever else it evolves,
and their values at test points), its function-space vector field given a way to apply the kernel
(`vector_field(t, state, apply_K)`), a discrete step (`step(state, lr, apply_K)`), its loss and
named terms, and optional structure a fast solver can use (`potential`, `moment_form`,
`stepwise_form`). Every named loss of `sslntk.losses` is one (the gradient flow of its loss); a
plain callable `f -> scalar` becomes one with `as_method` (`GradientFlow`). Methods that are not
gradient flows (an EMA target, a predictor or a centre moving by its own rule, stop-gradient
between them; Jha et al. 2024) define `init_aux`, `force`, `aux_field` (and their test-point
counterparts) or a whole `vector_field`. See `docs/concepts.md`.

    >>> import jax.numpy as jnp
    >>> from sslntk import methods
    >>> m = methods.as_method(lambda f: jnp.sum(f**2))
    >>> s = m.init(jnp.ones((4, 2)))
    >>> d = m.vector_field(0.0, s, methods.KernelOp(jnp.eye(4)))
    >>> float(d.f[0, 0])
    -2.0
"""

from sslntk.methods._asym_losses import (  # the official losses of the asymmetric methods
    byol_loss,
    byol_momentum,
    cosine_schedule,
    dino_center,
    dino_loss,
    dino_teacher_temperature,
    simsiam_loss,
    sinkhorn,
    swap_views,
    swav_loss,
)
from sslntk.methods._base import (
    GradientFlow,
    KernelOp,
    Method,
    MomentForm,
    State,
    StepwiseForm,
    as_method,
    as_state,
    method_label,
    require,
)
from sslntk.methods._dino import DINO, dino_linear_operator
from sslntk.methods._ema import EMARate
from sslntk.methods._predictive import (
    BYOL,
    DirectPred,
    KernelPredictor,
    Predictive,
    SimSiam,
    rkhs_gram,
)
from sslntk.methods._swav import SwAV

__all__ = ["Method", "State", "KernelOp", "GradientFlow", "MomentForm", "StepwiseForm",
           "as_method", "as_state", "method_label", "require"]
__all__ += ["byol_loss", "byol_momentum", "cosine_schedule", "dino_center", "dino_loss",
            "dino_teacher_temperature", "simsiam_loss", "sinkhorn", "swap_views", "swav_loss",
            "EMARate", "Predictive", "BYOL", "SimSiam", "DirectPred", "KernelPredictor",
            "rkhs_gram", "DINO", "dino_linear_operator", "SwAV"]
