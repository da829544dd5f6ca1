"""Subprocess side of tests/test_sharding.py (issue [H]); not collected by pytest (leading `_`).

    python tests/_sharded_worker.py checks OUT.json
        (XLA_FLAGS=--xla_force_host_platform_device_count=4) every sharded-vs-unsharded check in
        ONE process (compilation shared), float64; writes the measured errors and error messages.
    python tests/_sharded_worker.py dist OUT.npz PROCESS_ID NUM_PROCESSES PORT
        one process of a `jax.distributed` CPU run on 127.0.0.1 (1 device each): one sharded K
        across all processes, the BT staircase by the eigen method; process 0 writes the result.

The problem (`problem()`) is shared with the parent test, which solves it in one process.
"""

from __future__ import annotations

import json
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

N_SRC = 32       # 2n = 64 views
K_OUT = 4
M = 16


def views():
    from sslntk import data

    ds = data.digits()
    v = data.make_views(ds.x[:N_SRC], data.gaussian_noise(0.5), jax.random.PRNGKey(1))
    return np.asarray(v.stacked, np.float64)


def problem():
    """(arch, x (2n, d), f0 (2n, k), f0s (3, 2n, k), ts (T,)) as numpy, float64."""
    from sslntk import kernels

    x = views()
    N = x.shape[0]
    f0 = 1e-3 * np.asarray(jax.random.normal(jax.random.PRNGKey(0), (N, K_OUT), jnp.float64))
    f0s = 1e-3 * np.asarray(jax.random.normal(jax.random.PRNGKey(3), (3, N, K_OUT), jnp.float64))
    ts = np.linspace(0.0, 40.0, 12)
    return kernels.mlp(depth=2), x, f0, f0s, ts


def staircase(K, f0, ts, **kw):
    from sslntk import dynamics, losses

    return dynamics.solve(K, losses.get("barlow_twins"), f0, ts, "eigen", m=M,
                          eig_method="krylov", **kw)


def _err(a, b) -> float:
    from sslntk._sharding import to_host

    return float(np.max(np.abs(to_host(a) - to_host(b))))


def _message(fn) -> str:
    try:
        fn()
    except (ValueError, TypeError, MemoryError) as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


def checks(out_path: str) -> None:
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from sslntk import dynamics, kernels, linalg, losses

    arch, x, f0, f0s, ts = problem()
    loss = losses.get("barlow_twins")
    mesh = jax.make_mesh((4,), ("rows",))
    r: dict = {"devices": jax.device_count()}
    K0, N0 = kernels.ntk_and_nngp(arch, jnp.asarray(x))
    K1, N1 = kernels.ntk_and_nngp(arch, x, mesh=mesh)
    r["kernel_err"] = max(_err(K0, K1), _err(N0, N1))
    r["kernel_spec"] = str(K1.sharding.spec)
    r["kernel_shards"] = sorted((s.device.id, s.index[0].start, s.index[0].stop, s.data.shape[0])
                                for s in K1.addressable_shards)
    r["kernel_tiles_err"] = _err(K0, kernels.ntk(arch, x, mesh=mesh, block_size=8))
    r["kernel_named_err"] = _err(K0, kernels.ntk(arch, x, sharding=NamedSharding(mesh,
                                                                                  P("rows", None))))
    r["cross_err"] = _err(kernels.ntk(arch, x, x[:20]), kernels.ntk(arch, x, x[:20], mesh=mesh))
    r["contrastive_err"] = _err(kernels.contrastive_kernel(K0), kernels.contrastive_kernel(K1))
    r["contrastive_spec"] = str(kernels.contrastive_kernel(K1).sharding.spec)

    for meth in ("krylov", "subspace"):
        d0 = linalg.eigen_decomposition(K0, M, "contrastive", method=meth)
        d1 = linalg.eigen_decomposition(K1, M, "contrastive", method=meth)
        # eigenvectors up to sign / rotation in (near-)degenerate spaces: compare K_m = E Eᵀ
        km0, km1 = (np.asarray(d.lift) @ np.asarray(d.lift).T for d in (d0, d1))
        r[f"dec_{meth}_err"] = max(_err(d0.values, d1.values), float(np.max(np.abs(km0 - km1))),
                                   abs(float(d0.trace) - float(d1.trace)),
                                   abs(float(d0.tail_norm) - float(d1.tail_norm)))
    dk0 = linalg.eigen_decomposition(K0, M, "kernel", method="krylov")
    dk1 = linalg.eigen_decomposition(K1, M, "kernel")
    r["dec_kernel_err"] = _err(dk0.values, dk1.values)
    r["dec_kernel_method"] = dk1.method

    t0, t1 = staircase(K0, f0, ts), staircase(K1, f0, ts)
    r["eigen_err"] = max(_err(t0.f, t1.f), _err(t0.loss, t1.loss))
    r["eigen_status"] = int(t1.status)
    r["eigen_f_spec"] = str(t1.f.sharding.spec)
    r["eigen_loss_drop"] = float(t0.loss[0] - t0.loss[-1])
    s0 = dynamics.solve_many(K0, loss, f0s, ts, m=M, eig_method="krylov")
    s1 = dynamics.solve_many(K1, loss, f0s, ts, m=M)
    r["many_err"] = max(_err(s0.f, s1.f), _err(s0.loss, s1.loss))
    l0 = dynamics.solve_many(K0, loss, list(f0s[:2]), ts, m=M, eig_method="krylov")
    l1 = dynamics.solve_many(K1, loss, list(f0s[:2]), ts, m=M)
    r["many_list_err"] = max(_err(a.f, b.f) for a, b in zip(l0, l1, strict=True))
    o0 = dynamics.solve(K0, loss, f0, ts[:6], "ode")
    o1 = dynamics.solve(K1, loss, f0, ts[:6], "ode")
    r["ode_err"] = max(_err(o0.f, o1.f), _err(o0.loss, o1.loss))
    r["ode_status"] = int(o1.status)
    r["auto_method"] = dynamics.solve(K1, loss, f0, ts).method

    other = jax.make_mesh((2,), ("rows",), devices=jax.devices()[2:])
    errs = {
        "indivisible": lambda: kernels.ntk(arch, x[:66 - 4], mesh=mesh),
        "f0_mesh": lambda: dynamics.solve(
            K1, loss, jax.device_put(f0, NamedSharding(other, P())), ts, "eigen", m=M),
        "oom_kernel": lambda: kernels.ntk(arch, x, mesh=mesh, memory_limit=1024),
        "oom_dec": lambda: linalg.eigen_decomposition(K1, M, memory_limit=1024),
        "eigh": lambda: linalg.eigen_decomposition(K1, M, method="eigh"),
        "spectrum": lambda: kernels.kernel_spectrum(K1),
        "gd": lambda: dynamics.solve(K1, loss, f0, ts, "gd"),
        "mesh_2d": lambda: kernels.ntk(arch, x, mesh=jax.make_mesh((2, 2), ("a", "b"))),
        "both": lambda: kernels.ntk(arch, x, mesh=mesh, sharding=NamedSharding(mesh, P("rows"))),
        "col_spec": lambda: kernels.ntk(arch, x, sharding=NamedSharding(mesh, P(None, "rows"))),
        "not_mesh": lambda: kernels.ntk(arch, x, mesh="rows"),
        "mem_limit": lambda: kernels.ntk(arch, x, mesh=mesh, memory_limit=-1),
    }
    r["errors"] = {k: _message(fn) for k, fn in errs.items()}
    plan = kernels.memory_plan(arch, (4096, 64), mesh=mesh)
    r["plan_outputs"] = plan["outputs"]
    with open(out_path, "w") as fh:
        json.dump(r, fh, indent=1)


def dist(out_path: str, pid: int, nproc: int, port: int) -> None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                               process_id=pid, initialization_timeout=60)
    from sslntk import kernels
    from sslntk._sharding import to_host

    arch, x, f0, f0s, ts = problem()
    mesh = jax.make_mesh((jax.device_count(),), ("rows",))
    K = kernels.ntk(arch, x, mesh=mesh)
    shards = [(s.device.id, s.device.process_index, s.index[0].start, s.index[0].stop)
              for s in K.addressable_shards]
    tr = staircase(K, f0, ts)
    if pid == 0:
        np.savez(out_path, f=to_host(tr.f), loss=to_host(tr.loss), status=to_host(tr.status),
                 devices=jax.device_count(), processes=jax.process_count(),
                 shards=np.asarray(shards))
    jax.distributed.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "checks":
        checks(sys.argv[2])
    else:
        dist(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
