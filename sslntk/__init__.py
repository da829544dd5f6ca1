"""sslntk: simulate how self-supervised learning trains wide neural networks, in JAX.

Modules (data flows one way, `docs/concepts.md`): data → kernels → losses → dynamics / theory → metrics;
finite (networks) beside them; experiments / cli / plots on top. The most used names are
re-exported here and imported on first use (so `import sslntk` stays fast):

    import sslntk as sk
    ds = sk.load("digits", n=128)
    views = sk.make_views(ds.x, sk.data.gaussian_noise(0.3), key)
    K = sk.ntk(sk.mlp(depth=2), views.stacked)
    traj = sk.solve(K, sk.losses.get("barlow_twins"), f0, ts)
"""

import importlib

from sslntk import _cache

__version__ = "0.1.0"

_cache.enable()     # JAX's persistent compilation cache for sslntk's programs (see sslntk._cache)

_SUBMODULES = ("data", "kernels", "losses", "dynamics", "theory", "metrics", "finite", "phase",
               "linalg", "experiments", "config", "plots", "cli", "diagnostics", "explain",
               "methods", "probes", "downstream", "lowrank")

# name -> module that defines it
_EXPORTS = {
    "data": ("load", "datasets", "make_views", "Views", "Dataset"),
    "kernels": ("Arch", "mlp", "cnn", "ntk", "nngp", "ntk_and_nngp", "pair_matrix",
                "contrastive_spectrum", "contrastive_kernel", "kernel_spectrum", "averaged_kernel"),
    "losses": ("Loss",),
    "dynamics": ("solve", "solve_many", "Trajectory"),
    "finite": ("network", "train", "empirical_ntk", "linearize", "width_sweep"),
    "phase": ("phase_diagram",),
    "diagnostics": ("CollapseWarning",),
    "_status": ("SUCCESS", "NONFINITE", "DIVERGED", "STATIONARY", "STATUS_NAMES"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = list(_SUBMODULES) + list(_WHERE)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"sslntk.{name}")
    if name in _WHERE:
        return getattr(importlib.import_module(f"sslntk.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'sslntk' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
