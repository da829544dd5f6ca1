"""sslntk.kernels._nt_compat: neural-tangents 0.6.5 loads on current JAX through a small, listed shim
that only adds names, and sslntk itself never needs it (issue [G], route a). The numbers nt gives through the
shim are checked where they are used: kernels vs `kernel_fn` (test_kernels), the ODE vs
`predict.gradient_descent` (test_dynamics), empirical NTKs implementations 1 and 2 (test_finite)."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslntk.kernels import _nt_compat


def _run(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_import_sslntk_never_imports_neural_tangents_or_tensorflow():
    out = _run("""
        import sys, sslntk
        from sslntk import kernels, dynamics, finite, theory, metrics, phase, experiments
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('neural_tangents', 'tensorflow')))
    """)
    assert out.strip() == "[]"


def test_sslntk_runs_with_neural_tangents_absent():
    """The native kernels, solvers and finite networks work when nt cannot be imported at all; the
    reference entry points then raise an ImportError that says how to install it."""
    out = _run("""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] == 'neural_tangents':
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        import importlib.util
        importlib.util.find_spec = (lambda f: (lambda name, *a: None if name.startswith(
            'neural_tangents') else f(name, *a)))(importlib.util.find_spec)
        import jax, jax.numpy as jnp, sslntk as sk
        from sslntk import kernels, losses, dynamics
        from sslntk.kernels import _nt_compat
        x = jax.random.normal(jax.random.PRNGKey(0), (12, 5))
        K = kernels.ntk(sk.mlp(depth=2), x)
        f0 = 1e-2 * jax.random.normal(jax.random.PRNGKey(1), (12, 2))
        tr = dynamics.solve(K, losses.get("barlow_twins"), f0, jnp.linspace(0, 1, 5), method="ode")
        assert tr.status_name == "success", tr.status_name
        assert not _nt_compat.available()
        try:
            kernels.ntk(sk.mlp(depth=2), x, method="nt")
        except ImportError as e:
            assert "neural-tangents" in str(e) and "--no-deps" in str(e), e
            print("ok")
    """)
    assert out.strip().endswith("ok")


def test_shims_only_add_names_and_each_has_a_reason():
    """Run in a fresh process: record jax.core / jax.interpreters.ad before loading nt; afterwards
    every pre-existing attribute is the same object, and every added one is listed in SHIMS."""
    out = _run("""
        import json, sys, jax, jax.core, jax.interpreters.ad as ad
        before = {m.__name__: dict(vars(m)) for m in (jax.core, ad)}
        had_util = 'jax.util' in sys.modules
        from sslntk.kernels import _nt_compat
        nt = _nt_compat.load()
        changed, added = [], []
        for m in (jax.core, ad):
            old = before[m.__name__]
            for k, v in vars(m).items():
                if k in old and old[k] is not v:
                    changed.append(f"{m.__name__}.{k}")
                elif k not in old:
                    added.append(f"{m.__name__}.{k}")
        print(json.dumps({"changed": changed, "added": added,
                          "applied": list(_nt_compat.shims_applied()),
                          "util_added": not had_util and 'jax.util' in sys.modules}))
    """)
    import json
    res = json.loads(out.strip().splitlines()[-1])
    assert res["changed"] == []
    for name in res["added"]:
        assert name in _nt_compat.SHIMS, name
        assert name in res["applied"]
    assert set(res["applied"]) <= set(_nt_compat.SHIMS)
    for reason in _nt_compat.SHIMS.values():
        assert len(reason) > 20
    if res["util_added"]:
        assert "jax.util" in res["applied"]


def test_safe_map_and_zip_match_their_jax_contract():
    assert _nt_compat._safe_map(lambda a, b: a + b, [1, 2], (3, 4)) == [4, 6]
    assert _nt_compat._safe_zip([1, 2], "ab") == [(1, "a"), (2, "b")]
    with pytest.raises(ValueError, match="length mismatch"):
        _nt_compat._safe_zip([1, 2], [1])
    with pytest.raises(ValueError, match="length mismatch"):
        _nt_compat._safe_map(lambda a, b: a, [1], [1, 2])


def test_shimmed_nt_gives_correct_numbers_against_closed_forms():
    """Independent of sslntk's own kernels: the arc-cosine closed form (Cho & Saul 2009) of a
    one-hidden-layer ReLU NTK, and the exact linear flow `f(t) = e^{-2tK} f0` of L = Σ f² against
    nt's predict.gradient_descent. float64 tolerances: nt's arc-cosine angle of identical inputs
    comes out O(sqrt(eps)) instead of 0 (a ~2e-9 relative error on the diagonal, see
    sslntk.kernels), so 1e-8; the flow: nt's odeint holds its LOCAL error to 1.4e-8, and the
    global error it accumulates over t = 1 is ~3e-7 (measured), so 2e-6."""
    nt = _nt_compat.load()
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 4), dtype=jnp.float64)
    _, _, kfn = nt.stax.serial(nt.stax.Dense(1), nt.stax.Relu(), nt.stax.Dense(1))
    K = np.asarray(kfn(x, x, "ntk"))
    X = np.asarray(x)
    S = X @ X.T / X.shape[1]
    nrm = np.sqrt(np.diag(S))
    cos = np.clip(S / np.outer(nrm, nrm), -1, 1)
    th = np.arccos(cos)
    nngp1 = np.outer(nrm, nrm) / (2 * np.pi) * (np.sin(th) + (np.pi - th) * cos)
    dot1 = (np.pi - th) / (2 * np.pi)
    np.testing.assert_allclose(K, nngp1 + S * dot1, rtol=1e-8, atol=1e-12)

    f0 = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (6, 2), dtype=jnp.float64))
    pf = nt.predict.gradient_descent(lambda fx, y: jnp.sum(fx ** 2), jnp.asarray(K),
                                     jnp.zeros((6, 2)), learning_rate=1.0, trace_axes=(-1,))
    ts = np.array([0.0, 0.3, 1.0])
    got = np.asarray(pf(jnp.asarray(ts), jnp.asarray(f0)))
    w, U = np.linalg.eigh(K)
    ref = np.stack([(U * np.exp(-2 * t * w)) @ U.T @ f0 for t in ts])
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-8)
