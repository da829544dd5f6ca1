"""The outcome of a training run: its status per run (success / nonfinite / diverged, from the
loss), the exact failing step (found by replaying the chunk before a failing save point one step
at a time), the warning, and the opt-in post-hoc records (the loss's named terms, collapse
diagnostics) on a `TrainResult`. Used by `finite.train` and `finite.train_batched`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import losses as L
from sslntk._status import DIVERGE_FACTOR, DIVERGED, NONFINITE, SUCCESS
from sslntk._status import warn_status as _warn_status


def _failure(lv, l0) -> np.ndarray:
    """Status code per run from its loss `lv` and initial loss `l0`: NONFINITE, DIVERGED, SUCCESS."""
    big = np.abs(lv) > DIVERGE_FACTOR * np.maximum(1.0, np.abs(np.nan_to_num(l0)))
    return np.where(~np.isfinite(lv), NONFINITE, np.where(big, DIVERGED, SUCCESS)).astype(np.int32)


#: at most this many steps are replayed one by one to find the exact failing step
_REPLAY_MAX = 20000


def _first_failure(engine, prev, rest, keys, x, off, n_adv, bad, l0) -> np.ndarray:
    """Replay the chunk before a failing save point one step at a time (runs flagged `bad`) and
    return the first step whose loss fails (`_failure`), −1 where not found / not replayed."""
    params, opt_state, s0 = prev
    first = np.full(np.shape(bad), -1, dtype=np.int64)
    if n_adv <= 0 or n_adv > _REPLAY_MAX:
        return first
    for j in range(n_adv):
        params, opt_state = engine.advance(params, opt_state, rest, keys, x, off, s0 + j, 1)
        _, lv, _ = engine.record(params, rest, x, off, None, None)
        hit = bad & (first < 0) & (_failure(np.asarray(lv), l0) != SUCCESS)
        first = np.where(hit, s0 + j + 1, first)
        if np.all(first[bad] >= 0):
            break
    return first


def _finish(result, loss, *, record_terms, diagnostics, collapse_threshold,
            batched: bool, where: str):
    """Warn on a failed status; add terms / collapse diagnostics (post hoc, from `result.f`)."""
    import dataclasses

    from sslntk import diagnostics as _diag

    if not result.ok:
        _warn_status(where, result.status, detail=f"failed_step="
                     f"{np.asarray(result.failed_step).tolist()}", stacklevel=4)
    upd = {}
    if record_terms:
        if not isinstance(loss, L.Loss):
            raise ValueError("record_terms: needs a sslntk.losses.Loss (or a loss name); a plain "
                             "callable loss has no named terms")
        fn = jax.vmap(jax.vmap(loss.terms)) if batched else jax.vmap(loss.terms)
        upd["terms"] = {k: np.asarray(v) for k, v in fn(result.f).items()}
    if diagnostics or collapse_threshold is not None:
        f = jnp.moveaxis(result.f, 0, 1) if batched else result.f     # time next to (2n, k)
        d = {k: np.asarray(v) for k, v in _diag.collapse(f).items()}
        _diag.check_collapse(d, threshold=collapse_threshold or _diag.COLLAPSE_RANK,
                             k=int(result.f.shape[-1]), where=where,
                             mask=np.asarray(result.status) == SUCCESS)
        upd["diagnostics"] = {k: (v.T if batched else v) for k, v in d.items()}
    return dataclasses.replace(result, **upd) if upd else result
