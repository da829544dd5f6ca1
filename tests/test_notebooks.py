"""Every notebook executes top to bottom at small sizes (SSLNTK_NOTEBOOK_SMALL=1), so none can rot.
The notebooks assert their own headline numbers (step times vs theory, gradients vs finite
differences, deviation shrinking with width, collapse to rank one), and every cell that draws
shows its figure (an `image/png` output): importing sslntk must not switch matplotlib's backend
away from the notebook's inline one. Nothing reaches stderr: no warning at the small sizes either."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

# plotting cells per notebook (each must show its figure)
FIGURE_CELLS = {"01_stepwise_barlow_twins": 2, "02_finite_vs_ntk": 2, "03_collapse": 2,
                "04_asymmetric_stability": 2}
NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_all_four_notebooks_exist():
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
    # warnings (e.g. GD's lr·ρ step-size check, CollapseWarning) reach a notebook as stderr text
    stderr = [o["text"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "stream" and o.get("name") == "stderr"]
    assert not stderr, stderr
    drawing = [(i, c) for i, c in enumerate(nb.cells)
               if c.cell_type == "code" and _DRAWS.search(c.source)]
    assert len(drawing) == FIGURE_CELLS[path.stem], [i for i, _ in drawing]
    for i, c in drawing:
        images = [o for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
        assert images, f"cell {i} draws but shows no figure:\n{c.source}"


# a cell draws when it calls a pyplot / Axes drawing function and shows it
_DRAWS = re.compile(r"\b(plt|ax(\[\d\])?)\.(plot|semilogy|loglog|imshow|show)\(")
