"""The outcome of a training run: the status code of each run from its recorded loss (success /
nonfinite / diverged, `failure_code`), and `finish`: the one warning on a result that did not
succeed and the opt-in post-hoc records (the loss's named terms, collapse diagnostics) on a
`TrainResult`. Used by the engine and by `finite.train` / `train_batched`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import losses as L
from sslntk._status import DIVERGE_FACTOR, DIVERGED, NONFINITE, SUCCESS


def failure_code(lv, l0) -> np.ndarray:
    """Status code per run from its loss `lv` and initial loss `l0`: NONFINITE, DIVERGED, SUCCESS."""
    big = np.abs(lv) > DIVERGE_FACTOR * np.maximum(1.0, np.abs(np.nan_to_num(l0)))
    return np.where(~np.isfinite(lv), NONFINITE, np.where(big, DIVERGED, SUCCESS)).astype(np.int32)


def finish(result, loss, *, record_terms, diagnostics, collapse_threshold, batched: bool,
           where: str):
    """Warn on a failed status; add terms / collapse diagnostics (post hoc, from `result.f`)."""
    import dataclasses

    from sslntk import diagnostics as diag

    if not result.ok:
        result.warn(where, stacklevel=4)
    upd = {}
    if record_terms:
        if not isinstance(loss, L.Loss):
            raise ValueError("record_terms: needs a sslntk.losses.Loss (or a loss name); a plain "
                             "callable loss or a StepRule has no named terms")
        fn = jax.vmap(jax.vmap(loss.terms)) if batched else jax.vmap(loss.terms)
        upd["terms"] = {k: np.asarray(v) for k, v in fn(result.f).items()}
    if diagnostics or collapse_threshold is not None:
        f = jnp.moveaxis(result.f, 0, 1) if batched else result.f     # time next to (2n, k)
        d = {k: np.asarray(v) for k, v in diag.collapse(f).items()}
        diag.check_collapse(d, threshold=collapse_threshold or diag.COLLAPSE_RANK,
                             k=int(result.f.shape[-1]), where=where,
                             mask=np.asarray(result.status) == SUCCESS)
        upd["diagnostics"] = {k: (v.T if batched else v) for k, v in d.items()}
    return dataclasses.replace(result, **upd) if upd else result


__all__ = ["failure_code", "finish"]
