"""Closed forms and predictions of the theory papers sslntk reproduces.

- `staircase`: stepwise Barlow Twins (Simon et al. 2023, ICML, "On the stepwise nature of
  self-supervised learning"): step times, logistic eigenvalue curves, plateaus, kernel-PCA final
  embedding (`docs/theory/stepwise.md`). `sslntk.theory.stepwise(K, f0, k)` is the prediction (a
  plain function); its helpers (`step_time`, `effective_time`, `contrastive_modes`, ...) are
  re-exported here.
- `collapse`: naive-loss collapse and orthogonality-constrained (Grassmannian) flows (Esser et al.).
- `landscape`: collapse thresholds of one-/two-layer linear models, hysteresis, pair-distance losses,
  imbalance (Ziyin et al. 2023).
- `noncontrastive`: linear-network dynamics of BYOL / SimSiam / DirectPred (Tian et al. 2021):
  Lemma 1 ODEs, one-mode systems, fixed points p*±, collapse classification, DirectPred.
- `checks`: the symmetric / PSD / sign / Stiefel checks and `sym_sqrt` that `collapse`,
  `landscape` and `sslntk.phase` share (a public module: `sslntk.phase` is outside the package).

The submodules' public names are also re-exported here (`sslntk.theory.m2_thresholds`, ...).
"""

from sslntk.theory import collapse, landscape, noncontrastive, staircase

__all__ = ["staircase", "collapse", "landscape", "noncontrastive"]
for _m in (staircase, collapse, landscape, noncontrastive):
    for _name in _m.__all__:
        if _name in globals() and globals()[_name] is not getattr(_m, _name):
            raise ImportError(f"sslntk.theory: name clash on {_name!r} ({_m.__name__})")
        globals()[_name] = getattr(_m, _name)
        __all__.append(_name)
del _m, _name
