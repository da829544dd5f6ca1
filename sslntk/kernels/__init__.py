"""Architectures and their infinite-width kernels over augmented views.

Conventions (`docs/concepts.md`):

* Kernels are `(n1, n2)` kernels of ONE output (neural-tangents `trace_axes=(-1,)`); the full kernel
  of a k-output network is `K ⊗ I_k`. NTK parametrisation throughout.
* Views are stacked `[a_1..a_n, b_1..b_n]`, `(2n, ...)`; the positive-pair matrix is
  `Z = [[0, I], [I, 0]]` (`pair_matrix`; applied without forming it by `sslntk.linalg.pair_flip`).
* float32 by default; every function keeps its input dtype (float64 needs `jax_enable_x64`).

One concept per private module (the public names are re-exported here):

* `_activation`: one object per nonlinearity (`Relu`, `Erf`, `Gelu`, `LeakyRelu`, `Abs`,
  `AbsRelu`; base `Activation`) holding its function, its dual kernel rule and its stax layer;
  `ACTIVATIONS` are the string shorthands (`as_activation`), as neural-tangents' `stax.Erf()`.
* `_arch`: `Arch`, `mlp`, `cnn` (the architecture spec shared with `sslntk.finite`; a CNN's
  `readout` is "gap" or "flatten", `READOUTS`),
  `activation_layer`, `stax_network` (its neural-tangents `(init_fn, apply_fn, kernel_fn)`).
* `_recursion`: the native NNGP/NTK dual-activation recursion for one block, each formula with its
  source, and why it replaces neural-tangents' `kernel_fn`.
* `_assembly`: `ntk`, `nngp`, `ntk_and_nngp`, `averaged_kernel`: blocked construction, memory
  bounded by `BLOCK_MEMORY_BUDGET` (`auto_block_size`), differentiable under jit/grad.
* `_contrastive`: `pair_matrix`, `contrastive_kernel`, `contrastive_spectrum` (the contrastive
  eigenproblem of Simon et al. 2023, a view of `sslntk.linalg.contrastive_eigenpairs`),
  `kernel_spectrum` (the symmetric-PSD check).
* `_initial`: `initial_function`, the draw `f₀ ~ N(0, α² K_nngp ⊗ I_k)` of the initial function.
* `_reference`: `reference_empirical_ntk`, `reference_gradient_descent` and the `method="nt"`
  block: the neural-tangents peer that tests and benchmarks compare against.
* `_sharded`: row-sharded construction over a 1-D device mesh (`ntk(..., mesh=)`),
  the sharded `contrastive_kernel`, and `memory_plan` (per-device bytes from the compiled program).
* `_nt_compat`: the shim that makes neural-tangents 0.6.5 import on current JAX, the ONLY module of
  sslntk that imports `neural_tangents` (`_arch`'s stax triple and `_reference` call its `load()`;
  `import sslntk` never does).
"""

from sslntk.kernels._activation import (
    ACTIVATIONS,
    Abs,
    AbsRelu,
    Activation,
    Erf,
    Gelu,
    LeakyRelu,
    Relu,
    as_activation,
)
from sslntk.kernels._arch import (
    KINDS,
    PADDINGS,
    READOUTS,
    Arch,
    activation_layer,
    cnn,
    mlp,
    stax_network,
)
from sslntk.kernels._assembly import (  # noqa: F401  (GETS, BLOCK_MEMORY_BUDGET, auto_block_size)
    BACKENDS,
    BLOCK_MEMORY_BUDGET,
    GETS,
    METHODS,
    auto_block_size,
    averaged_kernel,
    nngp,
    ntk,
    ntk_and_nngp,
)
from sslntk.kernels._contrastive import (
    ContrastiveSpectrum,
    KernelSpectrum,
    contrastive_kernel,
    contrastive_spectrum,
    kernel_spectrum,
    pair_matrix,
)
from sslntk.kernels._initial import initial_function
from sslntk.kernels._reference import reference_empirical_ntk, reference_gradient_descent
from sslntk.kernels._sharded import memory_plan

__all__ = [
    "ACTIVATIONS", "Activation", "Relu", "Erf", "Gelu", "LeakyRelu", "Abs", "AbsRelu",
    "as_activation", "KINDS", "PADDINGS", "READOUTS", "METHODS", "BACKENDS", "Arch", "mlp", "cnn",
    "activation_layer",
    "stax_network", "ntk", "nngp", "ntk_and_nngp", "averaged_kernel", "pair_matrix",
    "contrastive_kernel", "KernelSpectrum", "kernel_spectrum", "ContrastiveSpectrum",
    "contrastive_spectrum", "initial_function", "reference_empirical_ntk",
    "reference_gradient_descent", "memory_plan",
]
