"""Sweeps: many `(seed, α, loss constant, k)` runs on ONE kernel with ONE decomposition.

    trajs = solve_many(K, loss, f0s, ts, method="eigen", *, m=None, decomposition=None,
                       K_test_train=None, f0s_test=None, **options)

* `f0s` a `(B, 2n, k)` array → one batched `Trajectory` (every field has a leading `B` axis).
* `f0s` a sequence of `(2n, k_i)` arrays (different `k` allowed) → a list of `B` unbatched
  `Trajectory`s in input order. Runs are GROUPED BY k (one vmapped solve per distinct `k`), never
  padded: zero-padding columns is exact only for Barlow Twins (λ = 1), not in general.
* `loss` one `Loss` shared by all runs, a sequence of `B` `Loss`es of one name and options
  (stacked), or one `Loss` whose constants already carry a leading `B` axis.
* method="eigen": the decomposition is computed once (for the largest `m` any group needs) and shared
  by every run — the kernel-sized work is done once — and the runs of a group are integrated as ONE
  stacked `(B, m, k)` ODE whose step controller holds every run to its own tolerance
  (`_eigen._core`), then lifted. Other methods (`sslntk.dynamics.solve`'s) are vmapped.
Same results as separate solves with the same decomposition (tests/test_eigen.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk import linalg
from sslntk import losses as _losses
from sslntk.dynamics import _common as C
from sslntk.dynamics import _eigen
from sslntk.dynamics._trajectory import Trajectory


def _stack_losses(loss, B: int) -> tuple[_losses.Loss, bool]:
    """→ (loss pytree, batched?)."""
    if isinstance(loss, (list, tuple)):
        ls = [_losses.as_loss(x) for x in loss]
        if len(ls) != B:
            raise ValueError(f"loss: expected one loss or {B} losses (one per f0), got {len(ls)}")
        sig = {(x.name, x.options) for x in ls}
        if len(sig) > 1:
            raise ValueError(f"loss: expected losses of one name and options to stack, got "
                             f"{sorted(s[0] for s in sig)}")
        stacked = jax.tree_util.tree_map(lambda *c: jnp.stack([jnp.asarray(v) for v in c]), *ls)
        return stacked, True
    loss = _losses.as_loss(loss)
    leaves = jax.tree_util.tree_leaves(loss)
    batched = any(jnp.ndim(x) > 0 for x in leaves)
    if batched:
        bad = [jnp.shape(x) for x in leaves if jnp.ndim(x) != 1 or jnp.shape(x)[0] != B]
        if bad:
            raise ValueError(f"loss: constants must all be scalars (shared) or carry a leading "
                             f"batch axis of size B = {B}, got shapes {bad}")
    return loss, batched


def _one_loss(loss, batched: bool, i: int):
    return jax.tree_util.tree_map(lambda c: c[i], loss) if batched else loss


def solve_many(K, loss, f0s, ts, method: str = "eigen", *, m: int | None = None,
               decomposition: linalg.EigenDecomposition | None = None, K_test_train=None,
               f0s_test=None, kind: str | None = None, eig_method: str = "auto", key=None,
               **options):
    """Solve many runs that share the kernel `K` (see the module docstring).

    Args:
      K: `(2n, 2n)` kernel. loss: see module docstring. ts: `(T,)` times shared by all runs.
      f0s: `(B, 2n, k)` array, or a sequence of `(2n, k_i)` arrays.
      method: "eigen" (default) or any `sslntk.dynamics.solve` method name.
      m, decomposition, kind, eig_method, key: eigen options (one decomposition for all runs).
      K_test_train: `(p, 2n)` shared cross kernel; f0s_test: matching `(B, p, k)` / sequence of
        `(p, k_i)` initial test embeddings.
      **options: passed to the solver (rtol, atol, max_steps, solver, ...).

    Returns a batched `Trajectory` (array `f0s`) or a list of `Trajectory` (sequence `f0s`).
    """
    from sslntk import dynamics  # lazy: sslntk.dynamics imports this module

    V.choice("method", method, list(dynamics.METHODS))
    K = V.square_kernel("K", K)
    N = K.shape[0]
    as_list = isinstance(f0s, (list, tuple))
    if as_list:
        if not f0s:
            raise ValueError("f0s: expected at least one initial embedding, got an empty sequence")
        f0_list = [V.stacked_views(f"f0s[{i}]", f, ndim=2) for i, f in enumerate(f0s)]
    else:
        arr = V.as_float_array("f0s", f0s, ndim=3)
        f0_list = None
        if arr.shape[0] < 1:
            raise ValueError("f0s: expected B >= 1 runs, got shape " + str(tuple(arr.shape)))
    B = len(f0_list) if as_list else arr.shape[0]
    for i, f in enumerate(f0_list if as_list else [arr[0]]):
        if f.shape[0] != N:
            raise ValueError(f"f0s[{i}]: expected shape (2n, k) = ({N}, k) to match K "
                             f"{tuple(K.shape)}, got {tuple(f.shape)}")
    if (K_test_train is None) != (f0s_test is None):
        raise ValueError("K_test_train and f0s_test: expected both (test predictions) or neither")
    loss, batched = _stack_losses(loss, B)
    ts = C._times(ts, K.dtype)

    if as_list:
        ks = [f.shape[1] for f in f0_list]
        tests = list(f0s_test) if f0s_test is not None else [None] * B
        if len(tests) != B:
            raise ValueError(f"f0s_test: expected {B} test embeddings, got {len(tests)}")
    else:
        ks = [arr.shape[2]] * B
    k_max = max(ks)
    if method == "eigen":
        if decomposition is None:
            if kind is None:
                kind = "contrastive" if _one_loss(loss, batched, 0).cross_moment_only else "kernel"
            m_dec = _eigen.default_m(k_max, N, kind) if m is None else m
            if m_dec > N:
                raise ValueError(f"m: expected m <= 2n = {N}, got m={m_dec}")
            decomposition = linalg.eigen_decomposition(K, m_dec, kind, method=eig_method, key=key)
        opts = dict(options, decomposition=decomposition, m=m)
        if _one_loss(loss, batched, 0).cross_moment_only and decomposition.kind == "contrastive":
            _eigen._check_moment_loss(_one_loss(loss, batched, 0),
                                      f0_list[0] if as_list else arr[0])
    else:
        opts = dict(options)

    def run(f0, lo, f0t):
        if method == "eigen":
            return _eigen.solve_eigen(K, lo, f0, ts, K_test_train=K_test_train, f0_test=f0t,
                                      validate=False, **opts)
        return dynamics.solve(K, lo, f0, ts, method, K_test_train=K_test_train, f0_test=f0t,
                              check_psd=False, **opts)

    def batched_run(F0, L, F0t):
        if method == "eigen":   # one joint solve of all runs (see _eigen._core), not a vmap
            dec = _eigen._check_decomposition(decomposition, N, m, F0.shape[2], F0.dtype)
            lo = _one_loss(L, batched, 0)
            path = "moment" if (dec.kind == "contrastive" and lo.cross_moment_only) else "lift"
            eig_opts = {k_: v for k_, v in options.items() if k_ != "validate"}
            return _eigen.solve_batch(K, L, F0, ts, dec, path=path, loss_batched=batched,
                                      K_test_train=K_test_train, F0_test=F0t, **eig_opts)
        in_axes = (0, 0 if batched else None, None if F0t is None else 0)
        return jax.vmap(run, in_axes=in_axes)(F0, L, F0t)

    if not as_list:
        F0t = None if f0s_test is None else V.as_float_array("f0s_test", f0s_test, ndim=3)
        return batched_run(arr, loss, F0t)

    out: list[Trajectory | None] = [None] * B
    for k in sorted(set(ks)):
        idx = [i for i in range(B) if ks[i] == k]
        F0 = jnp.stack([f0_list[i] for i in idx])
        sel = np.asarray(idx)
        L = jax.tree_util.tree_map(lambda c, sel=sel: c[sel], loss) if batched else loss
        F0t = None if K_test_train is None else jnp.stack([jnp.asarray(tests[i]) for i in idx])
        tr = batched_run(F0, L, F0t)
        for j, i in enumerate(idx):
            out[i] = jax.tree_util.tree_map(lambda x, j=j: x[j], tr)
    return out


def unstack(traj: Trajectory) -> list[Trajectory]:
    """Split a batched `Trajectory` (leading axis B) into B unbatched ones."""
    B = traj.ts.shape[0]
    return [jax.tree_util.tree_map(lambda x, i=i: x[i], traj) for i in range(B)]
