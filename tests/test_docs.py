"""The documentation site (`docs/`, `mkdocs.yml`): every ```python block on its pages runs as
written (each in a fresh namespace, as tests/test_readme.py does for the README), every internal
link and anchor resolves, docstrings point only to pages that exist, `mkdocs build --strict` passes,
and every public name pinned by tests/test_api.py is rendered on an API page.

The build here skips executing the notebooks (SSLNTK_DOCS_EXECUTE=false): tests/test_notebooks.py
already executes them, and executing them twice would cost ~2 minutes. `make docs` executes them;
the slow test at the bottom checks that their pages then show their figures."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md"))
BLOCKS = [(p, i, b) for p in PAGES
          for i, b in enumerate(re.findall(r"```python\n(.*?)```", p.read_text(), flags=re.S))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


HOOKS = _load("sslntk_docs_hooks", DOCS / "_hooks.py")


def _rel(p: Path) -> str:
    return p.relative_to(DOCS).as_posix()


def _slug(heading: str) -> str:
    """Python-Markdown's `toc` slugify (the default of mkdocs): drop markup, keep ASCII only (NFKD),
    drop punctuation, lower-case, spaces to hyphens. An explicit `{ #id }` (attr_list) wins."""
    explicit = re.search(r"\{\s*#([\w-]+)\s*\}\s*$", heading)
    if explicit:
        return explicit.group(1)
    text = re.sub(r"`|\*\*|\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+?)\s*$", text, flags=re.M)}


def test_pages_have_code_blocks():
    assert {_rel(p) for p, _, _ in BLOCKS} >= {"index.md", "concepts.md"}
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("page,i,code", BLOCKS, ids=[f"{_rel(p)}:{i}" for p, i, _ in BLOCKS])
def test_page_code_block_runs(page, i, code):
    exec(compile(code, f"{_rel(page)} block {i}", "exec"), {"__name__": f"docs_{i}"})


def test_internal_links_resolve():
    """Every relative link of every page points to a file of docs/ (or, for a notebook, to one
    mounted from notebooks/), and every #anchor to a heading of the target page."""
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for m in LINK.finditer(text):
            target = m.group(1) or m.group(2)
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if path.startswith("notebooks/") or "/notebooks/" in path:
                dest = ROOT / "notebooks" / Path(path).name
            if not dest.is_file():
                broken.append(f"{_rel(page)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{_rel(page)}: {target} (no heading with that anchor)")
    assert not broken, broken


def test_link_checker_catches_a_broken_link(tmp_path, monkeypatch):
    (tmp_path / "a.md").write_text("# A\n\n## Part one\n\n[ok](b.md#the-end) [bad](c.md) "
                                   "[bad anchor](b.md#nowhere)\n")
    (tmp_path / "b.md").write_text("# B\n\n## The end\n")
    monkeypatch.setattr(sys.modules[__name__], "DOCS", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PAGES", sorted(tmp_path.glob("*.md")))
    with pytest.raises(AssertionError, match=r"c\.md \(no such file\).*nowhere"):
        test_internal_links_resolve()


def test_docstrings_point_to_pages_that_exist():
    """`docs/<page>.md` references in the package's docstrings and comments name real pages."""
    missing = []
    for py in sorted((ROOT / "sslntk").rglob("*.py")):
        for ref in re.findall(r"docs/([\w./-]+?\.md)", py.read_text()):
            if not (DOCS / ref).is_file():
                missing.append(f"{py.relative_to(ROOT)}: docs/{ref}")
    assert not missing, missing


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert [_rel(p) for p in PAGES if _rel(p) not in nav] == []


def test_benchmarks_page_without_results(tmp_path):
    text = HOOKS.benchmark_tables(tmp_path / "absent")
    assert "No benchmark results" in text and "|" not in text


def test_benchmarks_page_takes_the_latest_result(tmp_path):
    old = {"device": "cpu", "rows": [{"n": 2048, "seconds": 9.0}]}
    new = {"device": "gpu", "jax": {"version": "0.12"},
           "rows": [{"n": 2048, "seconds": 1.25}, {"n": 4096, "seconds": 4.5, "peak_gib": 2.0}]}
    (tmp_path / "bench_scale-2026-01-02.json").write_text(json.dumps(old))
    (tmp_path / "bench_scale-2026-03-04T101500.json").write_text(json.dumps(new))
    (tmp_path / "bench_kernels.json").write_text(json.dumps([{"arch": "mlp", "ratio": 0.5}]))
    latest = HOOKS.latest_results(tmp_path)
    assert sorted(latest) == ["bench_kernels", "bench_scale"]
    assert latest["bench_scale"].name == "bench_scale-2026-03-04T101500.json"
    text = HOOKS.benchmark_tables(tmp_path)
    assert "| device | gpu |" in text and "| jax.version | 0.12 |" in text and "cpu" not in text
    assert "| n | seconds | peak_gib |" in text and "| 4096 | 4.5 | 2 |" in text
    assert "| mlp | 0.5 |" in text


def _api_names() -> dict[str, list[str]]:
    api = _load("sslntk_test_api", ROOT / "tests" / "test_api.py")
    return {mod: sorted(set(api.API[mod]) | set(api.ADDED.get(mod, []))) for mod in api.API}


def _build(out: Path, execute: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, SSLNTK_DOCS_EXECUTE="true" if execute else "false",
               SSLNTK_NOTEBOOK_SMALL="1", NO_MKDOCS_2_WARNING="1")
    exe = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    return subprocess.run([exe, "build", "--strict", "--site-dir", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    r = _build(out, execute=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return out


def test_strict_build_has_every_page(site):
    for page in PAGES:
        if page.name == "index.md":
            html = site / page.parent.relative_to(DOCS) / "index.html"
        else:
            html = site / page.parent.relative_to(DOCS) / page.stem / "index.html"
        assert html.is_file(), html
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert (site / "notebooks" / nb.stem / "index.html").is_file(), nb.name


def test_api_pages_render_every_public_name(site):
    """Each name of tests/test_api.py is rendered on its module's page with its signature and
    docstring (the heading of its defining object); the top-level names link to that rendering."""
    missing = []
    for mod, names in _api_names().items():
        page = site / "api" / mod / "index.html"
        html = page.read_text()
        for name in names:
            modname = "sslntk" if mod == "sslntk" else f"sslntk.{mod}"
            obj = getattr(importlib.import_module(modname), name)
            if inspect.ismodule(obj) and not callable(obj):
                continue                                    # a subpackage: its own page
            target = HOOKS.home(modname, name)
            if mod == "sslntk" and HOOKS.documented_elsewhere(name):
                ok = f"sslntk.{name}</code>" in html and f"#{target}" in html
            else:
                ok = f'id="{target}"' in html
            if not ok:
                missing.append(f"{mod}.{name} ({target})")
    assert not missing, missing


def test_a_function_page_shows_signature_and_docstring(site):
    html = (site / "api" / "dynamics" / "index.html").read_text()
    i = html.index('id="sslntk.dynamics.solve"')
    chunk = html[i:i + 20000]
    assert "doc-signature" in chunk and "method" in chunk and "Trajectory" in chunk


@pytest.mark.slow
def test_make_docs_build_executes_notebooks_with_figures(tmp_path):
    r = _build(tmp_path / "site", execute=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        plotting = sum("plt." in "".join(c["source"]) for c in cells if c["cell_type"] == "code")
        html = (tmp_path / "site" / "notebooks" / nb.stem / "index.html").read_text()
        shown = html.count('class="jp-RenderedImage')
        assert plotting >= 1 and shown >= plotting, f"{nb.name}: {shown} figures, {plotting} plot cells"


def test_importing_the_library_keeps_the_matplotlib_backend():
    """A notebook's inline backend survives `import sslntk.experiments` (which imports
    `sslntk.plots`), so the figures of every later cell still show on the notebook pages."""
    code = ("import matplotlib; matplotlib.use('svg'); import sslntk.experiments, sslntk.plots; "
            "print(matplotlib.get_backend())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "svg"
