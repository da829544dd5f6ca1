"""Sweeps: many `(seed, α, loss constant, k)` runs on ONE kernel — `solve` over a batch.

    trajs = solve_many(K, loss, f0s, ts, solver="eigen", *, K_test_train=None, f0s_test=None,
                       **options)

* `f0s` a `(B, 2n, k)` array → one batched `Trajectory` (every field has a leading `B` axis).
* `f0s` a sequence of `(2n, k_i)` arrays (different `k` allowed) → a list of `B` unbatched
  `Trajectory`s in input order. Runs are GROUPED BY k (one batched solve per distinct `k`), never
  padded: zero-padding columns is exact only for Barlow Twins (λ = 1), not in general.
* `loss` one method shared by all runs, a sequence of `B` methods of one kind (the same pytree
  structure: for named losses one name and options; their constants are stacked), or one method
  whose constants already carry a leading `B` axis.
* solver "eigen" (default): the decomposition is computed once (for the largest `m` any group
  needs) and shared by every run — the kernel-sized work is done once — and the runs of a group
  are integrated as ONE stacked `(B, m, k)` ODE whose step controller holds every run to its own
  tolerance (`_eigen._core`), then lifted. Other solvers are vmapped.
The inputs are validated once (the same checks as `solve`: K square, symmetric and PSD, shapes,
dtypes, times) and the results get `solve`'s post-processing (STATIONARY per run, the one
warning). Same results as separate solves with the same decomposition (tests/test_eigen.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sslntk import _validate as V
from sslntk import linalg
from sslntk import methods as _methods
from sslntk.dynamics import _common as C
from sslntk.dynamics import _eigen
from sslntk.dynamics._trajectory import Trajectory


def _stack_methods(loss, B: int) -> tuple[object, bool]:
    """→ (method pytree, batched?)."""
    if isinstance(loss, (list, tuple)):
        ms = [_methods.as_method(x) for x in loss]
        if len(ms) != B:
            raise ValueError(f"loss: expected one loss or {B} losses (one per f0), got {len(ms)}")
        sig = {jax.tree_util.tree_structure(x) for x in ms}
        if len(sig) > 1:
            raise ValueError(f"loss: expected losses of one name and options to stack, got "
                             f"{sorted({_methods.method_label(x) for x in ms})}")
        stacked = jax.tree_util.tree_map(lambda *c: jnp.stack([jnp.asarray(v) for v in c]), *ms)
        return stacked, True
    method = _methods.as_method(loss)
    leaves = jax.tree_util.tree_leaves(method)
    batched = any(jnp.ndim(x) > 0 for x in leaves)
    if batched:
        bad = [jnp.shape(x) for x in leaves if jnp.ndim(x) != 1 or jnp.shape(x)[0] != B]
        if bad:
            raise ValueError(f"loss: constants must all be scalars (shared) or carry a leading "
                             f"batch axis of size B = {B}, got shapes {bad}")
    return method, batched


def _one(method, batched: bool, i: int):
    return jax.tree_util.tree_map(lambda c: c[i], method) if batched else method


def solve_many(K, loss, f0s, ts, solver="eigen", *, K_test_train=None, f0s_test=None,
               check_psd: bool = True, progress: bool = False, method=None, **options):
    """Solve many runs that share the kernel `K` (see the module docstring).

    Args:
      K: `(2n, 2n)` kernel. loss: see module docstring. ts: `(T,)` times shared by all runs.
      f0s: `(B, 2n, k)` array, or a sequence of `(2n, k_i)` arrays.
      solver: "eigen" (default), any `sslntk.dynamics.solve` solver name, or a `Solver` object;
        `method=` is its former name.
      K_test_train: `(p, 2n)` shared cross kernel; f0s_test: matching `(B, p, k)` / sequence of
        `(p, k_i)` initial test embeddings.
      check_psd: check that K is PSD (`sslntk._validate.psd_kernel`), as `solve` does.
      **options: solver options (eigen: `m`, `decomposition`, `kind`, `eig_method`, `key`; and
        `rtol`, `atol`, `max_steps`, `integrator`, `lr`, ...).

    Returns a batched `Trajectory` (array `f0s`) or a list of `Trajectory` (sequence `f0s`).
    """
    from sslntk import dynamics  # lazy: sslntk.dynamics imports this module

    spec, argname, options = dynamics._solver_spec(solver, method, options, default="eigen")
    if isinstance(spec, str) and spec not in dynamics.SOLVERS:
        V.choice(argname, spec, dynamics.available_solvers())     # fail before any K work
    K = C.square(K)
    N = K.shape[0]
    as_list = isinstance(f0s, (list, tuple))
    if as_list:
        if not f0s:
            raise ValueError("f0s: expected at least one initial embedding, got an empty sequence")
        f0_list = [V.stacked_views(f"f0s[{i}]", f, ndim=2) for i, f in enumerate(f0s)]
    else:
        arr = V.as_float_array("f0s", f0s, ndim=3)
        if arr.shape[0] < 1:
            raise ValueError("f0s: expected B >= 1 runs, got shape " + str(tuple(arr.shape)))
        f0_list = None
    B = len(f0_list) if as_list else arr.shape[0]
    for i, f in enumerate(f0_list if as_list else [arr[0]]):
        if f.shape[0] != N:
            raise ValueError(f"f0s[{i}]: expected shape (2n, k) = ({N}, k) to match K "
                             f"{tuple(K.shape)}, got {tuple(f.shape)}")
        if f.shape[1] < 1:
            raise ValueError(f"f0s[{i}]: expected k >= 1 embedding dimensions, got shape "
                             f"{tuple(f.shape)}")
    if (K_test_train is None) != (f0s_test is None):
        raise ValueError("K_test_train and f0s_test: expected both (test predictions) or neither")
    if K_test_train is not None:
        K_test_train = V.as_float_array("K_test_train", K_test_train, ndim=2)
        if K_test_train.shape[1] != N:
            raise ValueError(f"K_test_train: expected shape (m, 2n) = (m, {N}), got "
                             f"{tuple(K_test_train.shape)}")
    V.same_dtype(K=K, f0s=f0_list[0] if as_list else arr, K_test_train=K_test_train)
    meth, batched = _stack_methods(loss, B)
    ts = C.times(ts, K.dtype)
    if check_psd:
        C.check_psd(K)

    if as_list:
        ks = [f.shape[1] for f in f0_list]
        tests = list(f0s_test) if f0s_test is not None else [None] * B
        if len(tests) != B:
            raise ValueError(f"f0s_test: expected {B} test embeddings, got {len(tests)}")
    else:
        ks = [arr.shape[2]] * B
    method0 = _one(meth, batched, 0)
    f0_first = f0_list[0] if as_list else arr[0]
    probe = C.Inputs(K, method0, method0.init(f0_first), ts, None)
    solver_obj, reason = dynamics._resolve(probe, spec, argname, options)
    if isinstance(solver_obj, _eigen.Eigen) and solver_obj.decomposition is None:
        # one decomposition for every group (the largest m any group needs)
        kind = solver_obj.resolved_kind(method0)
        m_dec = _eigen.default_m(max(ks), N, kind) if solver_obj.m is None else solver_obj.m
        if m_dec > N:
            raise ValueError(f"m: expected m <= 2n = {N}, got m={m_dec}")
        # K was checked above (once): the trusted entry does not read it again for the check
        dec = linalg.trusted_eigen_decomposition(K, m_dec, kind, method=solver_obj.eig_method,
                                                 key=solver_obj.key)
        solver_obj = solver_obj.replace(decomposition=dec)
    if isinstance(solver_obj, _eigen.Eigen) and solver_obj.decomposition.kind == "contrastive" \
            and method0.moment_form is not None:
        _eigen._check_moment_loss(method0, f0_first)

    def group(F0, M, F0t) -> Trajectory:
        """One batched solve of runs with one k: `F0 (b, 2n, k)`, `F0t (b, p, k)` or None."""
        if F0t is not None:
            F0t = V.as_float_array("f0s_test", F0t, ndim=3)
            if F0t.shape[1:] != (K_test_train.shape[0], F0.shape[2]) or F0t.shape[0] != F0.shape[0]:
                raise ValueError(f"f0s_test: expected shape (B, p, k) = ({F0.shape[0]}, "
                                 f"{K_test_train.shape[0]}, {F0.shape[2]}), got "
                                 f"{tuple(F0t.shape)}")
        states = jax.vmap(lambda m, f, ft: m.init(f, f0_test=ft),
                          in_axes=(0 if batched else None, 0, None if F0t is None else 0))(
            M, F0, F0t)
        solver_obj.check(_one(M, batched, 0), jax.tree_util.tree_map(lambda x: x[0], states))
        if isinstance(solver_obj, _eigen.Eigen):   # one joint solve of all runs, not a vmap
            dec = _eigen._check_decomposition(solver_obj.decomposition, N, solver_obj.m,
                                              F0.shape[2], F0.dtype)
            lo = _one(M, batched, 0)
            path = "moment" if (dec.kind == "contrastive" and lo.moment_form is not None) \
                else "lift"
            traj = _eigen.solve_batch(K, M, F0, ts, dec, path=path, loss_batched=batched,
                                      K_test_train=K_test_train, F0_test=F0t, progress=progress,
                                      **solver_obj.diffrax_kwargs())
        else:
            run = lambda m, s: solver_obj.solve(K, m, s, ts, K_test_train=K_test_train)  # noqa
            traj = jax.vmap(run, in_axes=(0 if batched else None, 0))(M, states)
        traj = C.with_method(traj, solver_obj.name, reason)
        inp = C.Inputs(K, M, states, ts, K_test_train)
        return dynamics._post(traj, inp, record_terms=False, diagnostics=False,
                              collapse_threshold=None, where="sslntk.dynamics.solve_many",
                              batched=True, loss_batched=batched, stacklevel=5)

    if not as_list:
        return group(arr, meth, f0s_test)

    out: list[Trajectory | None] = [None] * B
    for k in sorted(set(ks)):
        idx = [i for i in range(B) if ks[i] == k]
        F0 = jnp.stack([f0_list[i] for i in idx])
        sel = np.asarray(idx)
        M = jax.tree_util.tree_map(lambda c, sel=sel: c[sel], meth) if batched else meth
        F0t = None if K_test_train is None else jnp.stack([jnp.asarray(tests[i]) for i in idx])
        tr = group(F0, M, F0t)
        for j, i in enumerate(idx):
            out[i] = jax.tree_util.tree_map(lambda x, j=j: x[j], tr)
    return out


def unstack(traj: Trajectory) -> list[Trajectory]:
    """Split a batched `Trajectory` (leading axis B) into B unbatched ones."""
    B = traj.ts.shape[0]
    return [jax.tree_util.tree_map(lambda x, i=i: x[i], traj) for i in range(B)]
