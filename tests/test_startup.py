"""Cold start: what `import sslntk` and the built-in data pull in, and JAX's persistent
compilation cache that sslntk turns on (each check in a fresh interpreter)."""

import json
import os
import subprocess
import sys

import pytest

from sslntk import _cache


def _fresh(code: str, env: dict | None = None) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line, returned parsed."""
    full = dict(os.environ, **(env or {}))
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "JAX_COMPILATION_CACHE_MAX_SIZE"):
        if env is None or name not in env:
            full.pop(name, None)
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


HEAVY = ("matplotlib", "sklearn", "sslntk.experiments", "sslntk.plots", "neural_tangents", "jax")


def test_import_sslntk_pulls_in_nothing_heavy():
    mods = _fresh("import sys, json, sslntk; print(json.dumps(sorted(sys.modules)))")
    assert [m for m in HEAVY if m in mods] == []


def test_builtin_digits_without_scikit_learn_or_the_app_layer():
    code = ("import sys, json, sslntk as sk; ds = sk.load('digits', n=20);"
            "print(json.dumps({'mods': sorted(sys.modules), 'shape': list(ds.x.shape)}))")
    out = _fresh(code)
    assert out["shape"] == [20, 8, 8, 1]
    assert [m for m in HEAVY if m in out["mods"] and m != "jax"] == []


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SSLNTK_CACHE_DIR", str(tmp_path / "c"))
    assert _cache.cache_dir() == tmp_path / "c"
    for off in ("off", "0", "False", " none "):
        monkeypatch.setenv("SSLNTK_CACHE_DIR", off)
        assert _cache.cache_dir() is None
    monkeypatch.delenv("SSLNTK_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert _cache.cache_dir() == tmp_path / "x" / "sslntk" / "jax"


_SOLVE = """
import json, jax, jax.numpy as jnp
from jax import monitoring
hits = []
monitoring.register_event_listener(
    lambda e, **kw: hits.append(e) if e == '/jax/compilation_cache/cache_hits' else None)
import sslntk as sk
x = jax.random.normal(jax.random.PRNGKey(0), (16, 5))
K = sk.ntk(sk.mlp(1, activation='erf'), x)
f0 = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (16, 2))
tr = sk.solve(K, sk.losses.get('barlow_twins'), f0, jnp.linspace(0.0, 1.0, 3), 'ode')
print(json.dumps({'dir': jax.config.jax_compilation_cache_dir, 'hits': len(hits),
                  'loss': float(tr.loss[-1])}))
"""


def test_second_process_loads_compiled_programs_from_the_cache(tmp_path):
    env = {"SSLNTK_CACHE_DIR": str(tmp_path / "cache")}
    first = _fresh(_SOLVE, env)
    assert first["dir"] == str(tmp_path / "cache")
    stored = list((tmp_path / "cache").glob("*-cache"))     # one file per compiled program
    assert len(stored) >= 3                         # kernel, solve and friends were written
    second = _fresh(_SOLVE, env)
    # the first process may already hit an entry it wrote itself (one program compiled twice);
    # the second loads every program the first compiled
    assert second["hits"] >= first["hits"] + 3 and second["hits"] >= len(stored) // 2
    assert second["loss"] == first["loss"]          # the same programs give the same numbers


@pytest.mark.parametrize("env", [{"SSLNTK_CACHE_DIR": "off"}, "user"])
def test_cache_off_or_users_own_setting_is_respected(tmp_path, env):
    if env == "user":
        env = {"SSLNTK_CACHE_DIR": str(tmp_path / "ours"),
               "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "theirs")}
    out = _fresh(_SOLVE, env)
    assert out["dir"] == env.get("JAX_COMPILATION_CACHE_DIR")       # None when off
    assert not (tmp_path / "ours").exists()


def test_prune_deletes_the_oldest_entries_down_to_the_cap(tmp_path):
    """`prune` keeps the newest entries within `max_bytes` and removes each entry's atime file
    with it; sslntk does not set JAX's own size cap (it rescans the folder on every write)."""
    for i in range(6):                                  # entry i written at time 1000 + i
        p = tmp_path / f"jit_f{i}-{i:064x}-cache"
        p.write_bytes(b"x" * 100)
        (tmp_path / f"jit_f{i}-{i:064x}-atime").write_bytes(b"t")
        os.utime(p, (1000 + i, 1000 + i))
    assert _cache.prune(tmp_path, max_bytes=350) == 3
    left = sorted(p.name[:6] for p in tmp_path.glob("*-cache"))
    assert left == ["jit_f3", "jit_f4", "jit_f5"]
    assert len(list(tmp_path.glob("*-atime"))) == 3
    assert _cache.prune(tmp_path, max_bytes=350) == 0
    out = _fresh("import json, sslntk, jax; print(json.dumps("
                 "{'cap': jax.config.jax_compilation_cache_max_size}))",
                 {"SSLNTK_CACHE_DIR": str(tmp_path / "c")})
    assert out["cap"] == -1                             # JAX's default: no cap, no rescans
    assert (tmp_path / "c" / ".sslntk-pruned").exists()     # the daily prune ran (and is stamped)
