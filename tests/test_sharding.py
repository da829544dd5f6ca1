"""Sharded kernels, decompositions and solves (issue [H]), float64.

The Makefile runs the suite with ONE forced host device, so the 4-device checks run in ONE
subprocess (`tests/_sharded_worker.py checks`, XLA_FLAGS=--xla_force_host_platform_device_count=4:
all checks share its compilations) and report their measured errors as JSON; the 2-process
`jax.distributed` test starts two CPU processes on 127.0.0.1 (a free port, 1 device each, JAX's
gloo CPU collectives) and compares with the same problem solved here in one process.

Tolerances: sharded and unsharded runs execute the same algorithm (same keys, same tiles of the
recursion) and differ only by the summation order of the row-block products, i.e. round-off
(measured ~1e-15): K to 1e-12, decompositions and trajectories to 1e-8 (the acceptance bounds).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).parent.parent
WORKER = Path(__file__).parent / "_sharded_worker.py"
TIMEOUT = 900   # seconds, per subprocess (a loaded shared 2-core machine; ~1 min unloaded)


def _env(devices: int) -> dict:
    env = dict(os.environ)
    # the suite's other XLA flags (tests/conftest.py) stay: the workers' numbers are compared with
    # this process's to 1e-8
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("JAX_PLATFORMS", None)
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "checks.json"
    proc = subprocess.run([sys.executable, str(WORKER), "checks", str(out)], env=_env(4),
                          cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_sharded_kernel_equals_unsharded_and_lives_on_4_devices(checks):
    assert checks["devices"] == 4
    assert checks["kernel_err"] < 1e-12
    assert checks["kernel_spec"] == "P('rows', None)"
    # (device id, first row, end row, local rows): 4 row blocks of 16 on 4 distinct devices
    assert checks["kernel_shards"] == [[d, 16 * d, 16 * (d + 1), 16] for d in range(4)]
    for k in ("kernel_tiles_err", "kernel_named_err", "cross_err", "contrastive_err"):
        assert checks[k] < 1e-12, k
    assert checks["contrastive_spec"] == "P('rows', None)"


def test_sharded_decompositions_equal_single_device(checks):
    for k in ("dec_krylov_err", "dec_subspace_err", "dec_kernel_err"):
        assert checks[k] < 1e-8, k
    assert checks["dec_kernel_method"] == "krylov"      # "auto" on a sharded K


def test_sharded_solves_equal_single_device(checks):
    assert checks["eigen_loss_drop"] > 0.5              # the staircase actually moves
    assert checks["eigen_status"] == 0 and checks["ode_status"] == 0
    assert checks["eigen_f_spec"] == "P(None, None, None)"   # replicated reduced/lifted state
    for k in ("eigen_err", "many_err", "many_list_err", "ode_err"):
        assert checks[k] < 1e-8, k
    assert checks["auto_method"] == "eigen"


@pytest.mark.parametrize("case, expected", [
    ("indivisible", "ValueError: mesh: mesh axis 'rows' of 4 device(s) does not divide 2n = 62"),
    ("f0_mesh", "ValueError: f0: expected an unsharded array or one on K's mesh"),
    ("oom_kernel", "MemoryError: mlp kernel (64 × 64"),
    ("oom_dec", "MemoryError: eigen_decomposition (krylov, N = 64"),
    ("eigh", "ValueError: method: 'eigh'"),
    ("spectrum", "ValueError: K: kernel_spectrum is a dense"),
    ("gd", "ValueError: solver: 'gd' does not support a row-sharded K"),
    ("mesh_2d", "ValueError: mesh: expected a 1-D mesh"),
    ("both", "ValueError: mesh, sharding: expected at most one"),
    ("col_spec", "ValueError: sharding: expected a NamedSharding(mesh, P(axis, None))"),
    ("not_mesh", "TypeError: mesh: expected a jax.sharding.Mesh"),
    ("mem_limit", "ValueError: memory_limit: expected an integer >= 1"),
])
def test_sharded_errors(checks, case, expected):
    assert checks["errors"][case].startswith(expected), checks["errors"][case]


def test_memory_plan_from_compiled_program(checks):
    assert checks["plan_outputs"] == 4096 * 4096 * 4 // 4     # float32 row block per device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_distributed_equals_one_process(tmp_path):
    out = tmp_path / "dist.npz"
    port = _free_port()
    procs = []
    try:
        for pid in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, str(WORKER), "dist", str(out), str(pid), "2", str(port)],
                env=_env(1), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True))
        logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), "\n".join(x[-3000:] for x in logs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    res = np.load(out)
    assert int(res["processes"]) == 2 and int(res["devices"]) == 2
    assert int(res["status"]) == 0
    # process 0 holds rows 0..32 of the 64 on its one device
    assert res["shards"].tolist() == [[0, 0, 0, 32]]

    sys.path.insert(0, str(WORKER.parent))
    import _sharded_worker as W

    from sslntk import kernels

    arch, x, f0, _, ts = W.problem()
    ref = W.staircase(kernels.ntk(arch, jax.numpy.asarray(x)), f0, ts)
    assert np.max(np.abs(res["f"] - np.asarray(ref.f))) < 1e-8
    assert np.max(np.abs(res["loss"] - np.asarray(ref.loss))) < 1e-8
