"""neural-tangents 0.6.5 on current JAX: the one contained compatibility shim.

neural-tangents is archived; 0.6.5 (Dec 2023) is its final release and fails to import from JAX 0.6
on. sslntk keeps it as the independent reference (its `stax` kernel_fn, `predict.gradient_descent`
and `empirical_ntk_fn` implementations 1 and 2), so this module makes exactly that much of it load,
and nothing else:

* It only ADDS names that a current JAX lacks; it never replaces anything JAX has, so code outside
  neural-tangents sees the same JAX (tested: `tests/test_nt_compat.py`).
* Every shimmed name is listed in `SHIMS` with the one-line reason; `shims_applied()` says which
  ones this JAX needed.
* The code paths that need more of JAX's internals (empirical-NTK implementation 3, "structured
  derivatives", which walks jaxprs through `jax.core.lattice_join`/`DShapedArray` that no longer
  exist, and implementation 0, which dispatches to it) stay broken and are rejected by sslntk's
  wrappers with a clear error (`kernels.reference_empirical_ntk`).

This is the ONLY module of sslntk that imports `neural_tangents`; `sslntk.kernels`
(the stax triple in `_arch`, the reference wrappers and `method="nt"` in `_reference`) reaches it
through `load()`. `import sslntk` never calls
`load()`: sslntk runs with neural-tangents absent.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
import warnings

INSTALL_HINT = ("pip install --no-deps neural-tangents==0.6.5 frozendict  (--no-deps: its declared "
                "tensorflow/tf2jax dependencies are only for neural_tangents.experimental, which "
                "sslntk never uses)")


def _safe_map(f, *args):
    """`jax.util.safe_map`: `map` that insists on equal lengths (jax.util was removed in JAX 0.8)."""
    args = list(map(list, args))
    n = len(args[0])
    for a in args[1:]:
        if len(a) != n:
            raise ValueError(f"length mismatch: {list(map(len, args))}")
    return list(map(f, *args))


def _safe_zip(*args):
    """`jax.util.safe_zip`: `zip` that insists on equal lengths."""
    args = list(map(list, args))
    n = len(args[0])
    for a in args[1:]:
        if len(a) != n:
            raise ValueError(f"length mismatch: {list(map(len, args))}")
    return list(zip(*args, strict=False))


# name -> one-line reason. "jax.core.X" names are copied from jax.extend.core; modules are stand-ins.
SHIMS: dict[str, str] = {
    "neural_tangents.experimental": "nt's package __init__ imports it; it is the TF→JAX converter "
                                    "(tensorflow, tf2jax), never used by sslntk: an empty module "
                                    "keeps tensorflow out of the process",
    "jax.core.Jaxpr": "moved to jax.extend.core (JAX 0.6); nt imports it at module level for "
                      "implementation 3 only",
    "jax.core.JaxprEqn": "moved to jax.extend.core (JAX 0.6); implementation-3 import only",
    "jax.core.Literal": "moved to jax.extend.core (JAX 0.6); implementation-3 import only",
    "jax.core.Var": "moved to jax.extend.core (JAX 0.6); implementation-3 import only",
    "jax.core.Primitive": "moved to jax.extend.core (JAX 0.6); implementation-3 import only",
    "jax.interpreters.ad.zeros_like_p": "removed from JAX; nt only uses it as a key of its "
                                        "implementation-3 rule tables: a placeholder primitive "
                                        "that is never bound",
    "jax.util": "removed from JAX's public API (0.8); nt imports safe_map/safe_zip from it at "
                "module level (implementation 3): pure-Python equivalents",
}

_applied: list[str] = []


def _apply_shims() -> None:
    sys.modules.setdefault("neural_tangents.experimental",
                           types.ModuleType("neural_tangents.experimental"))
    _applied.append("neural_tangents.experimental")
    import jax.core
    import jax.extend.core
    for name in ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive"):
        if not hasattr(jax.core, name):
            setattr(jax.core, name, getattr(jax.extend.core, name))
            _applied.append(f"jax.core.{name}")
    import jax.interpreters.ad
    if not hasattr(jax.interpreters.ad, "zeros_like_p"):
        jax.interpreters.ad.zeros_like_p = jax.extend.core.Primitive("nt_compat_zeros_like")
        _applied.append("jax.interpreters.ad.zeros_like_p")
    if importlib.util.find_spec("jax.util") is None and "jax.util" not in sys.modules:
        util = types.ModuleType("jax.util", "sslntk.kernels._nt_compat stand-in for the removed jax.util")
        util.safe_map, util.safe_zip = _safe_map, _safe_zip
        sys.modules["jax.util"] = util
        _applied.append("jax.util")


def available() -> bool:
    """Whether neural-tangents is installed (it is never imported by this check)."""
    return importlib.util.find_spec("neural_tangents") is not None


@functools.cache
def load():
    """The `neural_tangents` module, importable on this JAX (shims applied first, once).

    Raises ImportError with the install command when neural-tangents is not installed.
    """
    if not available():
        raise ImportError("neural-tangents is not installed; it is only needed for the reference "
                          "(backend='neural_tangents' / method='nt', reference_* functions): "
                          + INSTALL_HINT)
    _apply_shims()
    with warnings.catch_warnings():   # nt touches deprecated jax.core names at import
        warnings.simplefilter("ignore", DeprecationWarning)
        import neural_tangents
        import neural_tangents.predict  # noqa: F401
        import neural_tangents.stax  # noqa: F401
    return neural_tangents


def shims_applied() -> tuple[str, ...]:
    """The names in `SHIMS` that this process's JAX needed (empty before `load()`)."""
    return tuple(_applied)
