"""mkdocs hooks (mkdocs.yml `hooks:`): the API pages' member lists and the benchmarks page.

* API pages (`docs/api/*.md`): a bare `::: sslntk.X` line gets the explicit member list of the
  module's public API, computed with the rule of `tests/test_api.py` (`__all__`, or else the public
  names defined in sslntk), so every re-exported name (defined in a private submodule) is rendered
  with its signature and docstring, and a renamed or new name appears without editing the page.
  Submodules listed in `sslntk.__all__` are left to their own pages.
* `docs/benchmarks.md`: the line `<!-- benchmarks -->` becomes the tables of the latest
  `benchmarks/results/*.json` (`benchmark_tables`), or a sentence saying there are none yet.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
_DIRECTIVE = re.compile(r"^::: (sslntk(?:\.[A-Za-z_][\w.]*)?)[ \t]*$", re.M)


def public_names(modname: str) -> list[str]:
    """The public names of an sslntk module, as `tests/test_api.py` pins them, less submodules."""
    mod = importlib.import_module(modname)
    if hasattr(mod, "__all__"):
        names = sorted(mod.__all__)
    else:
        names = sorted(n for n in dir(mod) if not n.startswith("_")
                       and not inspect.ismodule(getattr(mod, n))
                       and str(getattr(getattr(mod, n), "__module__", "sslntk")).startswith("sslntk"))
    return [n for n in names if not _plain_module(getattr(mod, n, None))]


def _plain_module(obj) -> bool:
    """A submodule that is not callable (it has its own page or belongs to its package's page);
    a callable module (`sslntk.theory.stepwise`) is documented by the function it calls."""
    return inspect.ismodule(obj) and not callable(obj)


def home(modname: str, name: str) -> str:
    """The dotted path where `modname.name` is defined, for the documentation generator: a function
    or class by its `__module__` / `__qualname__`; any other object by the module among `modname`
    and its submodules whose source assigns the name; else `modname.name` itself."""
    mod = importlib.import_module(modname)
    obj = getattr(mod, name)
    if inspect.ismodule(obj) and callable(obj) and callable(getattr(obj, name, None)):
        obj = getattr(obj, name)                      # the function a callable module calls
    m, q = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if (callable(obj) and isinstance(m, str) and m.startswith("sslntk") and isinstance(q, str)
            and "<" not in q and not inspect.ismodule(obj)):
        return f"{m}.{q}"
    assign = re.compile(rf"^{re.escape(name)}\s*(?::[^=\n]*)?=", re.M)
    subs = sorted(k for k, v in sys.modules.items() if v is not None and k.startswith(modname + "."))
    for cand in [modname, *subs]:
        f = getattr(sys.modules[cand], "__file__", None)
        if f and f.endswith(".py") and assign.search(Path(f).read_text()):
            return f"{cand}.{name}"
    return f"{modname}.{name}"


def _page_modules() -> list[str]:
    """The modules that have their own API page (`docs/api/*.md`), sslntk itself excluded."""
    mods = []
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        mods += [m for m in _DIRECTIVE.findall(page.read_text()) if m != "sslntk"]
    return mods


def documented_elsewhere(name: str) -> str | None:
    """For a name of `sslntk.__all__`: the package API page that documents the same object."""
    target = home("sslntk", name)
    for mod in _page_modules():
        if name in public_names(mod) and home(mod, name) == target:
            return mod
    return None


def _expand(match: re.Match) -> str:
    modname = match.group(1)
    out = [f"::: {modname}\n    options:\n      members: false\n      show_root_heading: false\n"]
    if modname == "sslntk":
        rows, rest = [], []
        for n in public_names(modname):
            where = documented_elsewhere(n)
            if where is None:
                rest.append(n)
            else:
                rows.append(f"| `sslntk.{n}` | [`{where}.{n}`][{home(modname, n)}] |")
        out += ["## Re-exported names", "",
                "Each is the same object as the package name it links to, documented there.", "",
                "| name | documented as |", "| --- | --- |", *rows, ""]
        if rest:
            out += ["## Defined at the top level", ""]
        out += [f"::: {home(modname, n)}\n" for n in rest]
        return "\n".join(out)
    out += [f"::: {home(modname, n)}\n" for n in public_names(modname)]
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri.startswith("api/"):
        return _DIRECTIVE.sub(_expand, markdown)
    if page.file.src_uri == "benchmarks.md":
        return markdown.replace("<!-- benchmarks -->", benchmark_tables(RESULTS))
    return markdown


# ---------------------------------------------------------------------------------------------------
# benchmarks page
# ---------------------------------------------------------------------------------------------------

_STAMP = re.compile(r"[-_.]?\d{4}-?\d{2}-?\d{2}(?:[T_-]?\d{2}:?\d{2}(?::?\d{2})?)?Z?$")


def latest_results(folder: Path) -> dict[str, Path]:
    """The newest JSON per benchmark in `folder`: files `NAME[-YYYY-MM-DD[THHMMSS]].json` grouped
    by NAME, the greatest stamp (ISO dates sort as text) kept. `{}` when the folder is absent."""
    if not folder.is_dir():
        return {}
    groups: dict[str, list[Path]] = {}
    for p in sorted(folder.glob("*.json")):
        groups.setdefault(_STAMP.sub("", p.stem) or p.stem, []).append(p)
    return {name: max(ps, key=lambda p: p.stem) for name, ps in sorted(groups.items())}


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and len(v) <= 8 and all(not isinstance(x, (dict, list)) for x in v):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, (dict, list, tuple)):
        return f"({type(v).__name__}, {len(v)} entries)"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _table(rows: list[dict]) -> str:
    rows = [_flatten(r) for r in rows]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _render(name: str, path: Path) -> str:
    out = [f"## {name}", "", f"From `benchmarks/results/{path.name}`.", ""]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return "\n".join(out + [f"This file could not be read as JSON: {e}.", ""])
    if isinstance(data, list):
        data = {"results": data}
    if not isinstance(data, dict):
        return "\n".join(out + [f"Value: `{_fmt(data)}`", ""])
    scalars = {k: v for k, v in _flatten({k: v for k, v in data.items()
                                          if not isinstance(v, list)}).items()}
    if scalars:
        out += ["| key | value |", "| --- | --- |"]
        out += [f"| {k} | {_fmt(v)} |" for k, v in scalars.items()]
        out.append("")
    for k, v in data.items():
        if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            out += [f"**{k}**", "", _table(v), ""]
        elif isinstance(v, list):
            out += [f"**{k}**: {_fmt(v)}", ""]
    return "\n".join(out)


def benchmark_tables(folder: Path) -> str:
    """Markdown for the benchmarks page from the latest JSON per benchmark in `folder`."""
    latest = latest_results(folder)
    if not latest:
        return ("No benchmark results are stored in this checkout yet (the folder "
                "`benchmarks/results/` is absent or holds no `*.json`). Run `make bench` on the "
                "machine you want numbers for and rebuild the site with `make docs`.\n")
    return "\n".join(_render(name, p) for name, p in latest.items())
