"""Flax NNX networks built from a `sslntk.kernels.Arch` spec, identical to neural-tangents' stax nets.

Parametrisation (NTK, exactly `stax.Dense` / `stax.Conv` with `parameterization="ntk"`):

- Dense: `W ~ N(0, 1)` of shape `(fan_in, out)`, `b ~ N(0, 1)` of shape `(1, out)`;
  `z = (W_std / sqrt(fan_in)) · (x @ W) + b_std · b`.
- Conv (NHWC input, HWIO kernel `(fh, fw, C_in, out)`, stride 1, padding SAME / VALID / CIRCULAR):
  `fan_in = C_in · fh · fw`; `z = (W_std / sqrt(fan_in)) · conv(x, W) + b_std · b`, `b: (1, 1, 1, out)`.
- MLP = Flatten, `depth` × (Dense(width) → act), Dense(out_dim).
  CNN = `depth` × (Conv(width) → act), then `arch.readout`: global average pool ("gap") or Flatten
  ("flatten", NHWC row-major as `stax.Flatten`; the Dense then has fan-in `H'·W'·width`), Dense(out_dim).

The parameters are stored exactly in neural-tangents' layout (one `(W, b)` pair per affine layer), and
`network(..., key=key)` draws them with the same random stream as the matching
`kernels.stax_network(arch, width, out_dim)[0](key, (-1, *in_shape))` (stax's `serial` splits the key
once per layer, parameter-free layers included; each affine layer splits its key into W and b), so
`to_nt_params(network(..., key=k)) == init_fn(k, ...)[1]` bit for bit when the dtypes agree.

Small initialisation (`docs/how-to/finite-vs-kernel.md`): the trained function is
`f_θ(x) = g_θ(x) − (1 − α)·g_θ₀(x)` with a frozen copy θ₀ of the initial parameters (stored as `Frozen`
variables, never differentiated). At init `f = α·g_θ₀`; the tangent kernel `∂f/∂θ = ∂g/∂θ` does not depend on
α.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sslntk import _validate as V
from sslntk import kernels
from sslntk.finite import _param, _resnet

# Activations exactly as neural-tangents' stax defines them (elementwise.py): ABRelu(a, b) is
# `a·min(x, 0) + b·max(x, 0)`; Relu = ABRelu(0, 1), LeakyRelu(s) = ABRelu(s, 1), Abs = ABRelu(-1, 1);
# `abs_relu` is ABRelu(-leaky_slope, 1) (kernels.activation_layer); Erf() = 1·erf(1·x) + 0;
# Gelu() is the EXACT gelu (approximate=False).


def _abrelu(a: float, b: float):
    return lambda x: a * jnp.minimum(x, 0) + b * jnp.maximum(x, 0)


def activation_fn(arch: kernels.Arch):
    """The elementwise function of `arch.activation`, matching `kernels.activation_layer(arch)`."""
    a = arch.activation
    if a == "relu":
        return _abrelu(0.0, 1.0)
    if a == "leaky_relu":
        return _abrelu(arch.leaky_slope, 1.0)
    if a == "abs":
        return _abrelu(-1.0, 1.0)
    if a == "abs_relu":
        return _abrelu(-arch.leaky_slope, 1.0)
    if a == "erf":
        return lambda x: 1.0 * jax.scipy.special.erf(1.0 * x) + 0.0
    if a == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    raise ValueError(f"activation: sslntk.finite has no network for {a!r}; known: "
                     f"{list(SUPPORTED_ACTIVATIONS)}")


SUPPORTED_ACTIVATIONS = ("relu", "leaky_relu", "abs", "abs_relu", "erf", "gelu")


class Frozen(nnx.Variable):
    """θ₀: the frozen copy of the initial parameters (not an `nnx.Param`, so never trained)."""


class Affine(nnx.Module):
    """One Dense or Conv layer's parameters in neural-tangents' layout: `W`, `b` (trained, `Param`)
    and `W0`, `b0` (the init, `Frozen`)."""

    def __init__(self, W, b, W0, b0):
        self.W, self.b = nnx.Param(W), nnx.Param(b)
        self.W0, self.b0 = Frozen(W0), Frozen(b0)


def _layer_plan(arch: kernels.Arch, width: int, out_dim: int, in_shape: tuple[int, ...],
                projector: int = 0):
    """The stax layer sequence as `(kind, W_shape, b_shape)` per layer (`kind` None for
    parameter-free layers: Flatten, activations, pooling), in `stax.serial` order; `projector`
    hidden Dense(width) → act layers before the readout (no stax counterpart)."""
    plan = []
    if arch.kind == "mlp":
        plan.append((None, None, None))                                   # Flatten
        fan = int(np.prod(in_shape))
        for _ in range(arch.depth):
            plan += [("dense", (fan, width), (1, width)), (None, None, None)]
            fan = width
    else:
        c = in_shape[-1]
        for _ in range(arch.depth):
            plan += [("conv", (*arch.filter_shape, c, width), (1, 1, 1, width)), (None, None, None)]
            c = width
        plan.append((None, None, None))                                   # GlobalAvgPool / Flatten
        fan = width
        if arch.readout == "flatten":                  # Dense on all output pixels × channels
            h, w = in_shape[0], in_shape[1]
            if arch.padding == "VALID":
                h, w = h - arch.depth * (arch.filter_shape[0] - 1), w - arch.depth * (
                    arch.filter_shape[1] - 1)
            fan = h * w * width
    for _ in range(projector):
        plan += [("dense", (fan, width), (1, width)), (None, None, None)]
        fan = width
    plan.append(("dense", (fan, out_dim), (1, out_dim)))
    return plan


def _plan(arch, width: int, out_dim: int, in_shape, projector: int = 0):
    """`(kind, W_shape, b_shape, role)` per layer (parameter-free ones with kind/role None); roles
    as in `_param`: the first affine layer "input", the readout "output", others "hidden"."""
    if isinstance(arch, _resnet.ResNet):
        return _resnet.plan(arch, width, out_dim, in_shape, projector)
    plan = _layer_plan(arch, width, out_dim, in_shape, projector)
    n_aff = sum(k is not None for k, _, _ in plan)
    out, i = [], 0
    for kind, ws, bs in plan:
        role = None
        if kind is not None:
            role = "input" if i == 0 else "output" if i == n_aff - 1 else "hidden"
            i += 1
        out.append((kind, ws, bs, role))
    return out


def _conv(arch: kernels.Arch, x, W):
    dn = ("NHWC", "HWIO", "NHWC")
    pad = arch.padding
    if pad == "CIRCULAR":  # stax: wrap-pad as SAME would, then a VALID convolution
        pads = jax.lax.padtype_to_pads(x.shape[1:3], arch.filter_shape, (1, 1), "SAME")
        x = jnp.pad(x, [(0, 0), *pads, (0, 0)], mode="wrap")
        pad = "VALID"
    return jax.lax.conv_general_dilated(x, W, (1, 1), pad, dimension_numbers=dn)


def forward(arch, theta: Sequence[tuple], x: jax.Array, *, param: str = "ntk",
            projector: int = 0, taps: list | None = None) -> jax.Array:
    """`g_θ(x)`: the stax network's `apply_fn` with `theta` = the list of `(W, b)` pairs of the affine
    layers (in order), on a batch `x: (N, *in_shape)` → `(N, out_dim)`. Pure; jit/vmap/grad-able.
    `param`: the parametrisation's forward multipliers (`_param`); `projector`: the number of
    projector layers in `theta` (before the readout). `arch` may be a `_resnet.ResNet`.
    `taps`: a list that receives every hidden layer's output (after its activation; for a ResNet
    after each residual block and projector layer), e.g. for μP coordinate checks."""
    act = activation_fn(arch)
    if isinstance(arch, _resnet.ResNet):
        return _resnet.forward(arch, theta, x, param=param, act=act, projector=projector,
                               taps=taps)
    ntk = param == "ntk"
    h = x.reshape(x.shape[0], -1) if arch.kind == "mlp" else x
    for i, (W, b) in enumerate(theta):
        last = i == len(theta) - 1
        if arch.kind == "cnn" and i < arch.depth:
            fan_in = h.shape[-1] * int(np.prod(arch.filter_shape))
            z = _conv(arch, h, W)
            h = (arch.W_std / fan_in**0.5) * z + arch.b_std * b if ntk else z + b
        else:
            if arch.kind == "cnn" and i == arch.depth:
                h = (jnp.mean(h, axis=(1, 2)) if arch.readout == "gap"     # GlobalAvgPool
                     else h.reshape(h.shape[0], -1))                        # Flatten (NHWC order)
            h = (arch.W_std / h.shape[-1] ** 0.5) * (h @ W) + arch.b_std * b if ntk else h @ W + b
        if not last:
            h = act(h)
            if taps is not None:
                taps.append(h)
    return h


class Network(nnx.Module):
    """A kernel-regime network `f_θ = g_θ − (1 − α)·g_θ₀` (build it with `network(...)`).

    Attributes: `arch`, `width`, `out_dim`, `in_shape` (per-example input shape), `alpha`,
    `param` ("ntk" / "standard" / "mup"), `base_width` (μP), `projector` (projector layers),
    `layers` (one `Affine` per Dense/Conv/norm layer), `roles` (their `_param` roles). Methods:
      `g(x)` = g_θ(x); `g0(x)` = g_θ₀(x); `trainable(x)` = the θ-dependent part (here g_θ);
      `offset(x)` = the constant part subtracted from it ((1 − α)·g_θ₀); `__call__(x)` = f_θ(x).
    Inputs are batches `(N, *in_shape)`; outputs `(N, out_dim)`.
    """

    def __init__(self, arch: kernels.Arch, width: int, out_dim: int,
                 in_shape: tuple[int, ...] | None, theta: Sequence[tuple], theta0: Sequence[tuple],
                 alpha: float = 1.0, pending: tuple | None = None, param: str = "ntk",
                 base_width: int | None = None, projector: int = 0):
        self.arch, self.width, self.out_dim = arch, int(width), int(out_dim)
        self.param, self.projector = param, int(projector)
        self.base_width = None if base_width is None else int(base_width)
        self.in_shape = None if in_shape is None else tuple(int(s) for s in in_shape)
        self.alpha = float(alpha)
        self.layers = nnx.List([Affine(W, b, W0, b0)
                               for (W, b), (W0, b0) in zip(theta, theta0, strict=True)])
        # (key impl, key data, dtype or None) until the input shape is known (`build`); plain
        # Python values so that the graphdef stays hashable for jit.
        self._pending = pending

    @property
    def built(self) -> bool:
        """False until the parameters exist (a network made without `in_shape` is built by its
        first eager call, by `train`/`empirical_ntk`, or explicitly by `build`)."""
        return self.in_shape is not None

    def build(self, in_shape, dtype=None) -> Network:
        """Draw the parameters for per-example inputs of shape `in_shape` (no-op when built with the
        same shape; a different shape raises). The draw is the one `network(..., in_shape=...)`
        makes from the same key, so building late or early gives identical parameters. `dtype`
        (float32/float64) applies when `network` was given none. Returns the model."""
        if self.built:
            shp = _check_in_shape(self.arch, in_shape)
            if shp != self.in_shape:
                raise ValueError(f"in_shape: this network was built for inputs {self.in_shape}, "
                                 f"got {shp}")
            return self
        impl, data, dt = self._pending
        key = jax.random.wrap_key_data(jnp.asarray(np.asarray(data[1], np.uint32).reshape(data[0])),
                                       impl=impl)
        shp = _check_in_shape(self.arch, in_shape)
        if dt is None:
            dt = jnp.float32 if dtype is None else dtype
        dt = V.float_dtype(dt)
        theta = _draw(self.arch, self.width, self.out_dim, shp, key, dt, self.param,
                      self.base_width, self.projector)
        self.layers = nnx.List([Affine(W, b, W, b) for W, b in theta])
        self.in_shape, self._pending = shp, None
        return self

    def _require_built(self, what: str):
        if not self.built:
            raise ValueError(f"model: {what} needs the parameters, which are drawn once the input "
                             f"shape is known: call model.build(in_shape) or model(x) first, or "
                             f"pass in_shape to sslntk.finite.network")

    @property
    def roles(self) -> list[str]:
        """The `_param` role of each entry of `layers`: "input" / "hidden" / "output" / "norm"."""
        self._require_built("roles")
        return [r for k, _, _, r in _plan(self.arch, self.width, self.out_dim, self.in_shape,
                                          self.projector) if k is not None]

    @property
    def couples_batch(self) -> bool:
        """True when one example's output depends on the rest of its batch (BatchNorm)."""
        return bool(getattr(self.arch, "couples_batch", False))

    def _fwd(self, theta, x, taps=None):
        return forward(self.arch, theta, x, param=self.param, projector=self.projector, taps=taps)

    def hidden(self, x) -> list:
        """The hidden layers' outputs of `g_θ` on `x` (after each activation; ResNet: after each
        residual block and projector layer), a list of `(N, ...)` arrays."""
        self._check_input(x)
        taps: list = []
        self._fwd(self.theta, x, taps)
        return taps

    @property
    def theta(self) -> list[tuple]:
        self._require_built("theta")
        return [(layer.W.get_value(), layer.b.get_value()) for layer in self.layers]

    @property
    def theta0(self) -> list[tuple]:
        self._require_built("theta0")
        return [(layer.W0.get_value(), layer.b0.get_value()) for layer in self.layers]

    @property
    def dtype(self):
        if not self.built:
            dt = self._pending[2]
            return None if dt is None else jnp.dtype(dt)
        return self.layers[0].W.get_value().dtype

    def _check_input(self, x):
        ensure_built(self, x)
        if not hasattr(x, "shape") or tuple(x.shape[1:]) != self.in_shape:
            self._require_built("a forward pass")
            got = tuple(getattr(x, "shape", ()))
            hint = (" (a CNN needs NHWC images, not flat vectors)"
                    if self.arch.kind == "cnn" and len(got) == 2 else "")
            raise ValueError(f"x: expected a batch of shape (N, {', '.join(map(str, self.in_shape))})"
                             f" for this {self.arch.kind} network, got {got}{hint}")

    def g(self, x):
        self._check_input(x)
        return self._fwd(self.theta, x)

    def g0(self, x):
        self._check_input(x)
        return self._fwd(self.theta0, x)

    def trainable(self, x):
        return self.g(x)

    def offset(self, x):
        if self.alpha == 1.0:
            return jnp.zeros((x.shape[0], self.out_dim), self.dtype)
        return (1.0 - self.alpha) * self.g0(x)

    def __call__(self, x):
        return self.trainable(x) - self.offset(x)


class Linearized(Network):
    """First-order Taylor expansion in θ of a `Network` around its init θ₀:
    `g_lin(x) = g_θ₀(x) + J_g(θ₀)(x)·(θ − θ₀)` and `f = g_lin − (1 − α)·g_θ₀`, so at θ = θ₀ it equals
    the network (`α·g_θ₀`) and its tangent kernel is the network's at init, constant in θ.
    Build it with `linearize(model)`; train it with `train` like any network."""

    def g(self, x):
        self._check_input(x)
        delta = jax.tree.map(lambda a, b: a - b, self.theta, self.theta0)
        g0, dg = jax.jvp(lambda th: self._fwd(th, x), (self.theta0,), (delta,))
        return g0 + dg


def ensure_built(model, x) -> None:
    """Draw the parameters of a network made without `in_shape` from the batch `x`'s per-example
    shape and dtype (the one trigger of the lazy draw: forward pass, `train`, `empirical_ntk`).
    No-op for built networks, other modules and non-batch `x`; a traced `x` raises, since
    parameters drawn inside a jax transformation would leak tracers into the module."""
    if getattr(model, "built", True) is not False or len(getattr(x, "shape", ())) < 2:
        return
    if isinstance(x, jax.core.Tracer):
        raise ValueError("model: this network has no parameters yet (made without in_shape) and "
                         "cannot draw them inside a jax transformation: call model.build(in_shape) "
                         "or model(x) once outside it")
    model.build(tuple(x.shape[1:]), x.dtype)


def _check_key(key):
    if not (isinstance(key, jax.Array) and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                                            or (key.dtype == jnp.uint32 and key.shape == (2,)))):
        raise TypeError(f"key: expected a jax.random key (jax.random.key(seed)), got {key!r}")
    return key


def _check_in_shape(arch: kernels.Arch, in_shape) -> tuple[int, ...]:
    try:
        shp = tuple(int(s) for s in in_shape)
    except TypeError as e:
        raise TypeError(f"in_shape: expected the per-example input shape as a tuple of ints, got "
                        f"{in_shape!r}") from e
    if not shp or any(s < 1 for s in shp):
        raise ValueError(f"in_shape: expected a non-empty tuple of positive ints, got {in_shape!r}")
    if arch.kind in ("cnn", "resnet"):
        if len(shp) != 3:
            raise ValueError(f"in_shape: a {arch.kind} needs NHWC images, i.e. in_shape = "
                             f"(H, W, C), got {shp} (flat inputs need kernels.mlp)")
        if arch.kind == "cnn" and arch.padding == "VALID" and (
                shp[0] - arch.depth * (arch.filter_shape[0] - 1) < 1
                or shp[1] - arch.depth * (arch.filter_shape[1] - 1) < 1):
            raise ValueError(f"in_shape: {shp[:2]} images are too small for {arch.depth} VALID "
                             f"convolutions with filter {arch.filter_shape}")
    return shp


def _check_alpha(alpha) -> float:
    V.positive_float("alpha", alpha, allow_zero=True)
    return float(alpha)


def network(arch, width: int, out_dim: int, *, key, alpha: float = 1.0,
            in_shape=None, dtype=None, param: str = "ntk", base_width: int | None = None,
            projector: int = 0) -> Network:
    """The Flax NNX network of `arch` at hidden width `width` with `out_dim` outputs.

    Args:
      arch: a `sslntk.kernels.Arch` (`kernels.mlp(...)` / `kernels.cnn(...)`), the SAME spec the
        kernels use. width: hidden width (channels for a CNN), >= 1. out_dim: embedding dim k >= 1.
      key: a `jax.random` key; parameters are drawn as `stax_network(arch, width, out_dim)`'s
        `init_fn(key, (-1, *in_shape))` draws them (same key → same parameters as neural-tangents,
        drawn in JAX's default float dtype and then cast to `dtype`).
      alpha: small-init scale α >= 0: `f_θ = g_θ − (1 − α)·g_θ₀`, so `f = α·g_θ₀` at init.
      in_shape: per-example input shape, e.g. `(64,)` or `(8, 8, 1)` (NHWC). Optional: without it
        the parameters are drawn when the shape is first seen (the first eager `model(x)`,
        `train`, `empirical_ntk`, or `model.build(in_shape)`) — the same draw either way.
      dtype: float32 or float64; default float32, or (built later) the dtype of the first input.
      param: the parametrisation, "ntk" (default, stax-exact), "standard" or "mup" (see
        `sslntk.finite._param` for the per-layer init, multipliers and μP learning-rate factors,
        which `train` applies through `optax.multi_transform`). `arch` may also be a
        `finite.resnet(...)` spec (pre-activation ResNet, finite width only).
      base_width: μP base width (the width at which μP equals the standard parametrisation);
        default 64; only for param="mup".
      projector: number of projector layers (Dense(width) → [norm] → act) between the encoder and
        the readout, as BT/VICReg/SimCLR use (0: none; then "ntk" draws match stax bit for bit).
    """
    if not isinstance(arch, (kernels.Arch, _resnet.ResNet)):
        raise TypeError(f"arch: expected a sslntk.kernels.Arch (kernels.mlp/cnn) or a "
                        f"sslntk.finite.resnet(...) spec, got {type(arch).__name__}")
    param = _param.check_param(param)
    if param == "mup":
        base_width = 64 if base_width is None else V.positive_int("base_width", base_width)
    elif base_width is not None:
        raise ValueError(f"base_width: only param='mup' has a base width, got base_width="
                         f"{base_width!r} with param={param!r}")
    projector = V.positive_int("projector", projector, minimum=0)
    V.positive_int("width", width)
    V.positive_int("out_dim", out_dim)
    _check_key(key)
    alpha = _check_alpha(alpha)
    if dtype is not None:
        dtype = V.float_dtype(dtype)
    if arch.activation not in SUPPORTED_ACTIVATIONS:
        activation_fn(arch)  # raises naming the activation
    if in_shape is None:
        if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(key)          # a raw uint32 PRNGKey is threefry data
        data = np.asarray(jax.random.key_data(key))
        pending = (str(jax.random.key_impl(key)), (data.shape, tuple(int(v) for v in data.ravel())),
                   None if dtype is None else dtype.name)
        return Network(arch, width, out_dim, None, [], [], alpha, pending=pending, param=param,
                       base_width=base_width, projector=projector)
    shp = _check_in_shape(arch, in_shape)
    theta = _draw(arch, int(width), int(out_dim), shp, key,
                  jnp.dtype(jnp.float32) if dtype is None else dtype, param, base_width, projector)
    return Network(arch, width, out_dim, shp, theta, theta, alpha, param=param,
                   base_width=base_width, projector=projector)


def _draw(arch, width, out_dim, shp, key, dtype, param="ntk", base_width=None,
          projector=0) -> list[tuple]:
    """The `(W, b)` pairs exactly as stax's `init_fn(key, (-1, *shp))` draws them (`serial` splits
    the key once per layer, parameter-free layers included), cast to `dtype`; for "standard"/"mup"
    the same normal draws times the `_param.init_scales`; norm layers start at scale 1, shift 0."""
    default = jnp.zeros(()).dtype  # what stax's random.normal draws (float64 under x64)
    theta, rng = [], key
    for kind, wshape, bshape, role in _plan(arch, width, out_dim, shp, projector):
        rng, layer_rng = jax.random.split(rng)
        if kind is None:
            continue
        if kind == "norm":
            theta.append((jnp.ones(wshape, dtype), jnp.zeros(bshape, dtype)))
            continue
        k1, k2 = jax.random.split(layer_rng)
        W = jax.random.normal(k1, wshape, default)
        b = jax.random.normal(k2, bshape, default)
        if param != "ntk":
            sw, sb = _param.init_scales(param, role, _param.fan_in(kind, wshape), arch.W_std,
                                        arch.b_std, base_width)
            W, b = sw * W, sb * b
        theta.append((W.astype(dtype), b.astype(dtype)))
    return theta


def linearize(model: Network) -> Linearized:
    """The first-order Taylor expansion in θ of `model` around its init θ₀ (see `Linearized`).
    Its trainable parameters start at the model's current θ; `model` is not modified."""
    if not isinstance(model, Network):
        raise TypeError(f"model: expected a sslntk.finite Network, got {type(model).__name__}")
    if not model.built:  # unbuilt: the same lazy draw, linearised once built
        return Linearized(model.arch, model.width, model.out_dim, None, [], [], model.alpha,
                          pending=model._pending, **_extra(model))
    return Linearized(model.arch, model.width, model.out_dim, model.in_shape, model.theta,
                      model.theta0, model.alpha, **_extra(model))


def _extra(model: Network) -> dict:
    return dict(param=model.param, base_width=model.base_width, projector=model.projector)


def _nt_layout(model: Network) -> list:
    model._require_built("the neural-tangents parameter layout")
    if not isinstance(model.arch, kernels.Arch) or model.param != "ntk" or model.projector:
        raise ValueError(f"model: only NTK-parametrised MLP/CNN networks without a projector have a "
                         f"neural-tangents counterpart; got {model.arch.kind} with param="
                         f"{model.param!r}, projector={model.projector}")
    return _layer_plan(model.arch, model.width, model.out_dim, model.in_shape)


def to_nt_params(model: Network, *, init: bool = False) -> list:
    """The parameters (θ, or θ₀ with `init=True`) as neural-tangents' `init_fn` params pytree for
    `kernels.stax_network(model.arch, model.width, model.out_dim)`: a list with `(W, b)` per
    Dense/Conv layer and `()` per parameter-free layer."""
    if not isinstance(model, Network):
        raise TypeError(f"model: expected a sslntk.finite Network, got {type(model).__name__}")
    it = iter(model.theta0 if init else model.theta)
    return [() if kind is None else tuple(next(it)) for kind, _, _ in _nt_layout(model)]


def from_nt_params(model: Network, params, *, init: bool = True) -> Network:
    """Load neural-tangents `init_fn` params into `model` in place (θ; and θ₀ too when `init=True`,
    so that the loaded point is the network's initialisation). Shapes are checked; values are cast
    to the model's dtype. Returns `model`."""
    if not isinstance(model, Network):
        raise TypeError(f"model: expected a sslntk.finite Network, got {type(model).__name__}")
    plan = _nt_layout(model)
    if not isinstance(params, (list, tuple)) or len(params) != len(plan):
        got = len(params) if hasattr(params, "__len__") else "?"
        raise ValueError(f"params: expected the neural-tangents params list of {len(plan)} layers "
                         f"for this {model.arch.kind} (width {model.width}), got "
                         f"{type(params).__name__} of length {got}")
    layers = iter(model.layers)
    for i, ((kind, wshape, bshape), p) in enumerate(zip(plan, params, strict=True)):
        if kind is None:
            continue
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise ValueError(f"params[{i}]: expected a (W, b) pair, got {type(p).__name__}")
        W, b = (jnp.asarray(a) for a in p)
        if W.shape != wshape or b.shape != bshape:
            raise ValueError(f"params[{i}]: expected W {wshape} and b {bshape}, got W "
                             f"{W.shape} and b {b.shape}")
        layer = next(layers)
        layer.W.set_value(W.astype(model.dtype))
        layer.b.set_value(b.astype(model.dtype))
        if init:
            layer.W0.set_value(W.astype(model.dtype))
            layer.b0.set_value(b.astype(model.dtype))
    return model


def n_params(model: Network) -> int:
    """Number of trainable scalars."""
    model._require_built("n_params")
    return int(sum(math.prod(a.shape) for pair in model.theta for a in pair))
