"""Finite-width networks on the same architectures, losses and time axis as the kernel regime.

- `network(arch, width, out_dim, *, key, in_shape, alpha=1.0, dtype=float32)`: Flax NNX network
  from a `sslntk.kernels.Arch` (NTK parametrisation, drawn exactly as neural-tangents' stax) with
  the small-init construction `f = g_θ − (1 − α)·g_θ₀`; `to_nt_params` / `from_nt_params`.
- `train(model, views, loss, *, lr, steps, ...)`: optax GD / SGD / Adam, t = lr·steps, checkpoints;
  `train_batched` (several seeds in one compiled call), `train_augmented` (fresh views each step).
  `loss` may be a `StepRule`: a per-step update with its own state (e.g. an EMA target network).
- `empirical_ntk(model, x1, x2=None)`: blocked Jacobian-contraction NTK (one-output convention);
  `linearize(model)`: the first-order Taylor expansion in θ around init.
- `width_sweep(arch, views, loss, widths, seeds, ...)`: finite nets vs the kernel trajectory from
  the same f₀, deviation over time, kernel drift, spectra, step times, fitted width exponent.
- `network(..., param="ntk" | "standard" | "mup", base_width=64, projector=0)`: parametrisations
  (`_param`: per-layer init, multipliers, μP learning-rate groups); `resnet(...)`: a small
  pre-activation ResNet spec with optional BatchNorm / LayerNorm (finite width only);
  `coord_check(...)`: the μP coordinate check; `make_optimizer(...)`: SGD/momentum/Adam/AdamW/LARS
  with weight decay and warm-up + cosine schedules (`train(..., optimizer_options=...)`).

Modules (one concept each): `_network` (the NNX network, its parameters and `linearize`), `_state`
(the split `(graphdef, params, rest)` view of a model and its small-init offsets), `_inputs` (the
argument checks of the public entries), `_engine` (the one training engine: view sources, step
rules, save points, checkpoints, failure replay), `_outcome` (status codes from the loss, the
post-hoc records), `_train` (`train`, `train_batched`), `_augtrain` (training on fresh views each
step), `_rate` (the GD step-size check), `_ntk` (the empirical NTK), `_sweep` (width sweeps and the
width exponent fit), `_param` (parametrisations), `_resnet` (the ResNet spec and module), `_optim`
(optimisers and schedules), `_coord` (μP coordinate check), `_asymmetric` (BYOL / SimSiam /
DirectPred / DINO / SwAV: `train_method`, `train_method_augmented`, `method_prediction`), `_heads`
(`MLPPredictor`, `DINOHead`), `_head_rules` (their step rules), `_kernel_prediction` (any model's
empirical-NTK prediction, kernel drift), `_augmented_prediction` (the kernel-side counterpart of
`train_augmented`: pooled draws, the augmentation-averaged kernel), `_loop` (device `fori_loop` or
host-stepped training loops).

References: Jacot et al. 2018 (the NTK), Lee et al. 2019 (wide networks evolve as their
linearisation), Yang & Hu 2021 (Tensor Programs IV/V: μP), Simon et al. 2023 (stepwise SSL);
`docs/how-to/finite-vs-kernel.md`, `docs/concepts.md`.
"""

from sslntk.finite._asymmetric import (  # noqa: F401
    MethodRule,
    OutputSpaceKernelOp,
    method_prediction,
    train_method,
    train_method_augmented,
)
from sslntk.finite._augmented_prediction import (  # noqa: F401
    AugmentedPrediction,
    augmented_kernel_prediction,
    pooled_views,
)
from sslntk.finite._augtrain import AugmentedResult, train_augmented  # noqa: F401
from sslntk.finite._coord import CoordCheck, coord_check  # noqa: F401
from sslntk.finite._engine import GradientStep, StepRule  # noqa: F401
from sslntk.finite._head_rules import DINOHeadRule, PredictorHeadRule  # noqa: F401
from sslntk.finite._heads import DINOHead, MLPPredictor  # noqa: F401
from sslntk.finite._kernel_prediction import (  # noqa: F401
    KernelMotion,
    KernelPrediction,
    kernel_alignment,
    kernel_drift,
    kernel_prediction,
    output_space_ntk,
)
from sslntk.finite._loop import LOOPS  # noqa: F401
from sslntk.finite._network import (  # noqa: F401
    SUPPORTED_ACTIVATIONS,
    Frozen,
    Linearized,
    Network,
    activation_fn,
    forward,
    from_nt_params,
    linearize,
    n_params,
    network,
    to_nt_params,
)
from sslntk.finite._ntk import empirical_ntk  # noqa: F401
from sslntk.finite._optim import SCHEDULES, learning_rate, make_optimizer  # noqa: F401
from sslntk.finite._param import PARAMS  # noqa: F401
from sslntk.finite._resnet import NORMS, ResNet, resnet  # noqa: F401
from sslntk.finite._sweep import (  # noqa: F401
    ExponentFit,
    WidthSweep,
    fit_exponent,
    relative_deviation,
    width_sweep,
)
from sslntk.finite._train import (  # noqa: F401
    MAX_LR_RATE,
    OPTIMIZERS,
    TrainResult,
    flow_rate,
    save_steps,
    stack_models,
    train,
    train_batched,
    unstack_model,
)
