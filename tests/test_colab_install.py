"""The notebooks' install cell as a Colab user meets it (issue [G]): a running Python 3.12 kernel with
a current JAX (and Colab's usual scientific stack) already installed, no sslntk. The cell must
install sslntk into it without touching the installed jax/jaxlib, and the notebook must then run.

The environment is a fresh venv made by uv (packages from uv's cache, or PyPI where CI has none
cached); the cell itself runs pip, as on Colab, with `SSLNTK_REPO` pointing at this checkout.
"""

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
NOTEBOOK = ROOT / "notebooks" / "01_stepwise_barlow_twins.ipynb"
# What Colab has preinstalled that sslntk needs (versions as resolved for this checkout's lock).
PREINSTALLED = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "scikit-learn", "matplotlib",
                "ipykernel", "nbclient", "nbformat")


def _uv():
    uv = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(uv).exists():
        pytest.fail("uv not found (the Makefile installs it; run the tests through `make test`)")
    return uv


def _locked_versions(names):
    """`name -> version` from uv.lock for Python 3.12 (the fork with python_full_version >= 3.12)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    out = {}
    for p in lock["package"]:
        if p["name"] in names:
            marker = p.get("resolution-markers", [""])
            if not marker or any("< '3.12'" not in m for m in marker):
                out[p["name"]] = p["version"]
    return out


def _python312():
    r = subprocess.run([str(ROOT / "tools" / "find_python"), "3.12"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"no Python 3.12 on this machine (Colab's version): {r.stderr.strip()}")
    return r.stdout.strip()


def test_install_cell_keeps_preinstalled_jax_and_notebook_runs(tmp_path):
    uv = _uv()
    venv = tmp_path / "colab"
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH")}
    subprocess.run([uv, "venv", "--quiet", "--seed", "--python", _python312(), str(venv)],
                   check=True, env=env)
    py = str(venv / "bin" / "python")
    versions = _locked_versions(PREINSTALLED)
    assert {"jax", "jaxlib"} <= versions.keys() and versions["jax"].startswith("0.12")
    subprocess.run([uv, "pip", "install", "--quiet", "--python", py,
                    *(f"{n}=={v}" for n, v in versions.items())], check=True, env=env)

    def jax_versions():
        code = ("import importlib.metadata as m, json; "
                "print(json.dumps({p: m.version(p) for p in ('jax', 'jaxlib')}))")
        return json.loads(subprocess.run([py, "-c", code], check=True, capture_output=True,
                                         text=True, env=env).stdout)

    before = jax_versions()
    nb = json.loads(NOTEBOOK.read_text())
    cell = "".join(nb["cells"][1]["source"])
    assert "SSLNTK_REPO" in cell and "\"pip\", \"install\"" in cell
    # A kernel of that environment (its own kernelspec: a user-level "python3" spec elsewhere on the
    # machine must not be picked), then the whole notebook in it: the first cell installs sslntk
    # into the running kernel with pip, as on Colab, and the rest imports and runs it.
    subprocess.run([py, "-m", "ipykernel", "install", "--sys-prefix", "--name", "sslntk-colab"],
                   check=True, capture_output=True, env=env)
    runner = (
        "import nbformat, sys; from nbclient import NotebookClient\n"
        "nb = nbformat.read(sys.argv[1], as_version=4)\n"
        "NotebookClient(nb, timeout=900, kernel_name='sslntk-colab',\n"
        "               resources={'metadata': {'path': sys.argv[2]}}).execute()\n"
        "err = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])\n"
        "       if o.get('output_type') == 'error']\n"
        "assert not err, err\n")
    r = subprocess.run([py, "-c", runner, str(NOTEBOOK), str(tmp_path)], capture_output=True,
                       text=True, cwd=tmp_path,
                       env={**env, "SSLNTK_NOTEBOOK_SMALL": "1", "SSLNTK_REPO": str(ROOT)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert jax_versions() == before, (before, jax_versions())
    # sslntk was installed by the cell, and imports without neural-tangents (a test-only reference).
    chk = subprocess.run([py, "-c", "import sslntk, importlib.util as u, sys; "
                          "assert u.find_spec('neural_tangents') is None; "
                          "assert 'neural_tangents' not in sys.modules; print(sslntk.__file__)"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert chk.returncode == 0, chk.stderr[-3000:]
    assert str(venv) in chk.stdout
