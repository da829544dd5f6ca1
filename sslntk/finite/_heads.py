"""Heads on top of a finite network's embeddings for the asymmetric methods: BYOL/SimSiam's MLP
predictor and DINO's projection head. A head is a small frozen spec (`MLPPredictor`,
`DINOHead`) with `init(key, in_dim, dtype) -> params` (a dict pytree) and a pure
`apply(params, f) -> out`; the head's parameters are trained beside the network by the rules of
`finite._head_rules` (`finite.train_method(..., head=...)`).

- `MLPPredictor(hidden, param)`: `Linear(k → hidden) → ReLU → Linear(hidden → k)`, the BYOL /
  SimSiam predictor (deepmind-research byol/utils/networks.py `MLP`: Linear → BatchNorm → ReLU →
  Linear(bias=False); facebookresearch/simsiam simsiam/builder.py: `Linear(dim, pred_dim, bias=False) →
  BatchNorm1d → ReLU → Linear(pred_dim, dim)`) WITHOUT the BatchNorm: BatchNorm couples the
  samples of a batch, so a network with it has no per-example tangent kernel and no kernel-regime
  counterpart; the rest of sslntk is BatchNorm-free for the same reason (docs/theory/asymmetric.md).
- `DINOHead(hidden, bottleneck, n_prototypes, ...)`: facebookresearch/dino vision_transformer.py
  `DINOHead` (nlayers = 3, use_bn = False defaults): `Linear → GELU → (Linear → GELU)×(nlayers−2)
  → Linear(→ bottleneck)`, `x/max(‖x‖, 1e-12)`, then the weight-normalised last layer
  `x Wᵀ`, `W = g·v/‖v‖` row-wise (`nn.utils.weight_norm`, dim 0), `g = 1` frozen when
  `norm_last_layer` (so the logits lie in [−1, 1]).

Parametrisations (`param`), per Linear layer with fan-in `d`:

| param | forward | init of stored W | bias |
| --- | --- | --- | --- |
| "ntk" | `x W·(w_std/√d) + b` | `N(0, 1)` | 0 |
| "standard" | `x W + b` | `N(0, w_std²/d)` (DINOHead: DINO's trunc_normal(std = `init_std`)) | 0 |

`w_std` is √2 before a ReLU (He) and 1 otherwise; biases start at 0 as in DINO's `_init_weights`
(PyTorch's default uniform bias init is not reproduced for the predictor). DINO's last-layer
direction `v` is drawn as PyTorch's default `nn.Linear` init `U(−1/√d, 1/√d)` (the weight norm
makes its scale irrelevant to the forward pass); with "ntk" it is `N(0, 1)`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from sslntk import _validate as V

HEAD_PARAMS = ("ntk", "standard")


def _linear(param, W, b, x, w_std):
    if param == "ntk":
        return (w_std / math.sqrt(W.shape[0])) * (x @ W) + b
    return x @ W + b


def _draw(param, key, shape, w_std, dtype):
    z = jax.random.normal(key, shape, dtype)
    return z if param == "ntk" else z * (w_std / math.sqrt(shape[0]))


class Head:
    """Base of the heads: `init(key, in_dim, dtype) -> params`, `apply(params, f) -> out`,
    `out_dim(in_dim)`."""

    def init(self, key, in_dim: int, dtype=jnp.float32) -> dict:
        raise NotImplementedError

    def apply(self, params: dict, f: jax.Array) -> jax.Array:
        raise NotImplementedError

    def out_dim(self, in_dim: int) -> int:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class MLPPredictor(Head):
    """BYOL / SimSiam's two-layer predictor without BatchNorm (module docstring):
    `q(f) = ReLU(f W1ᵀ + b1) W2ᵀ + b2`, `(N, k) → (N, k)`, trained at `alpha_p × lr` (the
    method's predictor learning-rate ratio) by the same optax optimiser as the network.

    Args:
      hidden: hidden width (official: 4096 BYOL, 512 SimSiam).
      param: "ntk" or "standard" (module table).
      bias: whether the two layers have biases (`b1`, `b2` in the parameters): a bool for
        both, or a pair. Official: BYOL `(True, False)` (deepmind-research byol/utils/
        networks.py `MLP`), SimSiam `(False, True)`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> h = MLPPredictor(hidden=16)
      >>> p = h.init(jax.random.key(0), 3)
      >>> h.apply(p, jnp.ones((4, 3))).shape
      (4, 3)
    """

    hidden: int = 64
    param: str = "ntk"
    bias: bool | tuple = True

    def __post_init__(self):
        V.positive_int("hidden", self.hidden)
        V.choice("param", self.param, HEAD_PARAMS)
        b = (self.bias, self.bias) if isinstance(self.bias, bool) else self.bias
        if not (isinstance(b, tuple) and len(b) == 2 and all(isinstance(v, bool) for v in b)):
            raise TypeError(f"bias: expected a bool or a pair of bools, got {self.bias!r}")
        object.__setattr__(self, "bias", b)

    def out_dim(self, in_dim: int) -> int:
        return in_dim

    def init(self, key, in_dim: int, dtype=jnp.float32) -> dict:
        k1, k2 = jax.random.split(key)
        h = self.hidden
        params = {"W1": _draw(self.param, k1, (in_dim, h), math.sqrt(2.0), dtype),
                  "W2": _draw(self.param, k2, (h, in_dim), 1.0, dtype)}
        if self.bias[0]:
            params["b1"] = jnp.zeros((h,), dtype)
        if self.bias[1]:
            params["b2"] = jnp.zeros((in_dim,), dtype)
        return params

    def apply(self, params: dict, f: jax.Array) -> jax.Array:
        b1 = params["b1"] if self.bias[0] else 0.0
        b2 = params["b2"] if self.bias[1] else 0.0
        h = jax.nn.relu(_linear(self.param, params["W1"], b1, f, math.sqrt(2.0)))
        return _linear(self.param, params["W2"], b2, h, 1.0)


@dataclasses.dataclass(frozen=True)
class DINOHead(Head):
    """DINO's projection head (facebookresearch/dino vision_transformer.py `DINOHead`):
    `nlayers` Linear layers with GELU (exact erf form, PyTorch's `nn.GELU()`) between them, to
    `bottleneck`; L2 normalisation `x/max(‖x‖, 1e-12)`; weight-normalised last layer to
    `n_prototypes` logits without bias, `W = g·v/‖v‖` per output row, `g = 1` frozen when
    `norm_last_layer` (trainable, starting at 1, otherwise). `(N, k) → (N, n_prototypes)`.

    Args:
      hidden: MLP hidden width (official 2048). bottleneck: official 256. n_prototypes: the
        number of logits K (official 65536). nlayers: MLP layers (official 3; 1 is a single
        Linear to the bottleneck). norm_last_layer: official True.
      param: "ntk" or "standard" (module table); init_std: the "standard" weights' std
        (DINO's `trunc_normal_(std=.02)`, truncated at ±2 absolute as timm's).
      freeze_last_layer: the last layer is not updated for `t < freeze_last_layer` (units of
        lr × steps; main_dino.py `--freeze_last_layer`, one epoch by default there; 0: never
        frozen). A training option of the head, applied by `finite.DINOHeadRule`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> h = DINOHead(hidden=16, bottleneck=8, n_prototypes=32)
      >>> p = h.init(jax.random.key(0), 3)
      >>> out = h.apply(p, jnp.ones((4, 3)))
      >>> out.shape, bool(jnp.all(jnp.abs(out) <= 1 + 1e-6))
      ((4, 32), True)
    """

    hidden: int = 64
    bottleneck: int = 16
    n_prototypes: int = 32
    nlayers: int = 3
    norm_last_layer: bool = True
    param: str = "standard"
    init_std: float = 0.02
    freeze_last_layer: float = 0.0

    def __post_init__(self):
        for nm in ("hidden", "bottleneck", "n_prototypes", "nlayers"):
            V.positive_int(nm, getattr(self, nm))
        V.choice("param", self.param, HEAD_PARAMS)
        V.positive_float("init_std", self.init_std)
        V.positive_float("freeze_last_layer", self.freeze_last_layer, allow_zero=True)
        if not isinstance(self.norm_last_layer, bool):
            raise TypeError(f"norm_last_layer: expected a bool, got {self.norm_last_layer!r}")

    def out_dim(self, in_dim: int) -> int:
        return self.n_prototypes

    def _dims(self, in_dim):
        if self.nlayers == 1:
            return [(in_dim, self.bottleneck)]
        return ([(in_dim, self.hidden)] + [(self.hidden, self.hidden)] * (self.nlayers - 2)
                + [(self.hidden, self.bottleneck)])

    def init(self, key, in_dim: int, dtype=jnp.float32) -> dict:
        dims = self._dims(in_dim)
        keys = jax.random.split(key, len(dims) + 1)
        params = {}
        for i, ((a, b), k) in enumerate(zip(dims, keys[:-1], strict=True)):
            if self.param == "ntk":
                W = jax.random.normal(k, (a, b), dtype)
            else:   # timm trunc_normal_(std, a=-2, b=2): bounds are absolute
                lim = 2.0 / self.init_std
                W = self.init_std * jax.random.truncated_normal(k, -lim, lim, (a, b), dtype)
            params[f"W{i}"] = W
            params[f"b{i}"] = jnp.zeros((b,), dtype)
        d = self.bottleneck
        if self.param == "ntk":
            v = jax.random.normal(keys[-1], (self.n_prototypes, d), dtype)
        else:      # nn.Linear default (kaiming_uniform, a=√5): U(−1/√d, 1/√d)
            v = jax.random.uniform(keys[-1], (self.n_prototypes, d), dtype, -1.0, 1.0) / math.sqrt(d)
        params["v"] = v
        if not self.norm_last_layer:
            params["g"] = jnp.ones((self.n_prototypes,), dtype)
        return params

    def apply(self, params: dict, f: jax.Array) -> jax.Array:
        n = len(self._dims(f.shape[-1]))
        x = f
        for i in range(n):
            x = _linear(self.param, params[f"W{i}"], params[f"b{i}"], x, 1.0)
            if i < n - 1:
                x = jax.nn.gelu(x, approximate=False)
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        v = params["v"]
        g = params["g"] if "g" in params else 1.0
        W = v / jnp.linalg.norm(v, axis=-1, keepdims=True)   # weight_norm over dim 0 (rows)
        return (x @ W.T) * g


__all__ = ["Head", "MLPPredictor", "DINOHead", "HEAD_PARAMS"]
