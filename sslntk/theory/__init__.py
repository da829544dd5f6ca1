"""Closed forms and predictions, each documented with its digest section and provenance tag.

- `stepwise`: stepwise Barlow Twins (Simon et al. 2023): step times, logistic eigenvalue curves,
  plateaus, kernel-PCA final embedding. `sslntk.theory.stepwise(K, f0, k)` is the prediction
  (the module is callable), `sslntk.theory.stepwise.step_time` etc. its helpers.
- `collapse`: naive-loss collapse and orthogonality-constrained (Grassmannian) flows (Esser et al.).
- `landscape`: collapse thresholds of one-/two-layer linear models, hysteresis, pair-distance losses,
  imbalance (Ziyin et al. 2023).
- `noncontrastive`: linear-network dynamics of BYOL / SimSiam / DirectPred (Tian et al. 2021):
  Lemma 1 ODEs, one-mode systems, fixed points p*±, collapse classification, DirectPred.
- `_checks` (private): the symmetric / PSD / sign / Stiefel checks and `sym_sqrt` that `collapse`,
  `landscape` and `sslntk.phase` share.

The submodules' public names are also re-exported here (`sslntk.theory.m2_thresholds`, ...).
"""

import types

from sslntk.theory import collapse, landscape, noncontrastive, stepwise


class _CallableModule(types.ModuleType):
    """`sslntk.theory.stepwise` is the module and, when called, its function `stepwise.stepwise`
    (the issue names both `sslntk.theory.stepwise(K, f0, k)` and the module's helpers)."""

    def __call__(self, *args, **kwargs):
        return self.stepwise(*args, **kwargs)


stepwise.__class__ = _CallableModule

__all__ = ["stepwise", "collapse", "landscape", "noncontrastive"]
for _m in (stepwise, collapse, landscape, noncontrastive):
    for _name in _m.__all__:
        if _name == "stepwise":
            continue
        if _name in globals() and globals()[_name] is not getattr(_m, _name):
            raise ImportError(f"sslntk.theory: name clash on {_name!r} ({_m.__name__})")
        globals()[_name] = getattr(_m, _name)
        __all__.append(_name)
del _m, _name
