"""Parametrisations of the finite networks: NTK, standard and μP (maximal update).

Every affine layer (Dense / Conv) has a role: "input" (the first layer, fan-in fixed by the data),
"hidden" (width → width, includes projector layers), "output" (the readout, width → k); norm
layers (scale, shift) have the role "norm". With `fan_in` the layer's fan-in (`C_in·fh·fw` for a
Conv) and `W_std`, `b_std` the architecture's constants, a layer computes
`z = m_W · (x @ W) + m_b · b` with stored parameters drawn as `W = s_W · N(0, 1)`, `b = s_b · N(0, 1)`:

| param | m_W | m_b | s_W | s_b |
| --- | --- | --- | --- | --- |
| "ntk" (neural-tangents' stax) | W_std/√fan_in | b_std | 1 | 1 |
| "standard" (PyTorch/Flax style, He init) | 1 | 1 | W_std/√fan_in | b_std |
| "mup" (Yang & Hu, Tensor Programs V Table 3) | 1 | 1 | W_std/√fan_in, output: W_std·√base/fan_in | b_std |

μP additionally scales each parameter group's learning rate relative to a base width `base_width`
(with `r = width / base_width`; at `width = base_width`, μP is the standard parametrisation):

| optimiser family | input W | hidden W | output W | width-sized biases & norm params | readout bias |
| --- | --- | --- | --- | --- | --- |
| SGD-like ("gd", "sgd", "momentum") | r | 1 | 1/r | r | 1 |
| Adam-like ("adam", "adamw") | 1 | 1/r | 1/r | 1 | 1 |

This is Tensor Programs V Table 3 ("input weights & all biases: SGD LR η·fan_out, Adam LR η;
output weights: init var 1/fan_in², LR η/fan_in; hidden weights: init var 1/fan_in, SGD LR η,
Adam LR η/fan_in") written relative to the base width (the "base shape" of the `mup` package), so
that the base model is unchanged and only width-sized dimensions are scaled. TP5 gives no LARS row:
μP with LARS raises. The learning-rate multipliers are applied as an `optax.multi_transform` over
parameter-group labels (see `param_groups`, `with_param_groups`).
"""

from __future__ import annotations

import math

import jax
import optax

PARAMS = ("ntk", "standard", "mup")
ROLES = ("input", "hidden", "output", "norm")
SGD_LIKE = ("gd", "sgd", "momentum")
ADAM_LIKE = ("adam", "adamw")

#: the labels of `param_groups`: `<role>.W`, `<role>.b` (e.g. "hidden.W", "output.b", "norm.W").
GROUPS = tuple(f"{r}.{p}" for r in ROLES for p in ("W", "b"))


def check_param(param) -> str:
    if not isinstance(param, str) or param not in PARAMS:
        raise ValueError(f"param: expected one of {list(PARAMS)}, got {param!r}")
    return param


def fan_in(kind: str, W_shape) -> int:
    """Fan-in of a Dense `(fan_in, out)` or Conv `(fh, fw, C_in, out)` kernel."""
    return int(math.prod(W_shape[:-1]))


def multipliers(param: str, fan: int, W_std: float, b_std: float) -> tuple[float, float]:
    """`(m_W, m_b)`: the forward multipliers of an affine layer (module table)."""
    if param == "ntk":
        return W_std / fan**0.5, b_std
    return 1.0, 1.0


def init_scales(param: str, role: str, fan: int, W_std: float, b_std: float,
                base_width: int | None) -> tuple[float, float]:
    """`(s_W, s_b)`: stored parameters are `s · N(0, 1)` draws (module table)."""
    if param == "ntk":
        return 1.0, 1.0
    s = W_std / fan**0.5
    if param == "mup" and role == "output":
        s = s * (base_width / fan) ** 0.5   # var W_std²·base/fan_in²: 1/fan_in² up to the base
    return s, b_std


def lr_multiplier(param: str, group: str, family: str, width: int, base_width: int | None) -> float:
    """The μP learning-rate factor of a parameter group (1 for "ntk"/"standard")."""
    if param != "mup":
        return 1.0
    r = width / base_width
    role, which = group.split(".")
    if family in SGD_LIKE:
        if which == "W" and role != "norm":
            return {"input": r, "hidden": 1.0, "output": 1.0 / r}[role]
        return 1.0 if role == "output" else r        # biases / norm params with a width axis
    if family in ADAM_LIKE:
        if which == "W" and role in ("hidden", "output"):
            return 1.0 / r
        return 1.0
    raise ValueError(f"optimizer: μP (param='mup') has learning-rate scalings for SGD-like "
                     f"{list(SGD_LIKE)} and Adam-like {list(ADAM_LIKE)} optimisers (Tensor "
                     f"Programs V Table 3); got {family!r}, for which TP5 gives none")


def param_groups(model, params):
    """The group label (`GROUPS`) of every leaf of `params = nnx.state(model, nnx.Param)` (same
    tree structure), read from the model's per-layer `roles`."""
    roles = model.roles

    def label(path, _):
        keys = [getattr(p, "key", getattr(p, "name", getattr(p, "idx", None))) for p in path]
        i = keys.index("layers")
        return f"{roles[int(keys[i + 1])]}.{keys[i + 2]}"

    return jax.tree_util.tree_map_with_path(label, params)


def with_param_groups(tx: optax.GradientTransformation, model, params, family: str):
    """`tx` followed by the μP per-group learning-rate factors (`optax.multi_transform` of
    `optax.scale` per group label). Returns `tx` unchanged for non-μP models."""
    param = getattr(model, "param", "ntk")
    if param != "mup":
        return tx
    factors = {g: lr_multiplier(param, g, family, model.width, model.base_width) for g in GROUPS}
    scale = optax.multi_transform({g: optax.scale(f) for g, f in factors.items()},
                                  param_groups(model, params))
    return optax.chain(tx, scale)


def gd_scales(model, params):
    """μP's per-group SGD learning-rate factors as a pytree like `params` (None otherwise): full-
    batch GD on a μP model runs the kernel `Θ = J S Jᵀ`, not `J Jᵀ` (Yang & Hu 2021, Tensor
    Programs IV, Table 3)."""
    if getattr(model, "param", "ntk") != "mup":
        return None
    groups = param_groups(model, params)
    return jax.tree.map(lambda g: lr_multiplier("mup", g, "gd", model.width, model.base_width),
                        groups)
