"""Every notebook executes top to bottom at small sizes (SSLNTK_NOTEBOOK_SMALL=1), so none can rot.
The notebooks assert their own headline numbers (step times vs theory, gradients vs finite
differences, deviation shrinking with width, collapse to rank one)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_all_three_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["01_stepwise_barlow_twins", "02_finite_vs_ntk", "03_collapse",
                     "04_asymmetric_stability"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SSLNTK_NOTEBOOK_SMALL", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={
        "metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
