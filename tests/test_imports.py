"""Import hygiene of `sslntk/`, checked on the source (AST), not by importing it:

* no module imports another module's underscore name (`from sslntk.x import _name` where `_name`
  is not a module) — a private name stays in the module that defines it;
* no module imports another package's private submodule (`sslntk.pkg._mod` from outside
  `sslntk.pkg`, by `import` or `from ... import`); a package's own private submodules are fine
  inside it, and the bottom plumbing modules `PLUMBING` may be imported anywhere;
* no module reaches an underscore name through another package's module it imported
  (`import sslntk.x as m; m._name`).
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "sslntk"
PLUMBING = {"sslntk._validate", "sslntk._status", "sslntk._sharding", "sslntk._progress",
            "sslntk._io"}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _package_of(path: pathlib.Path) -> str:
    """The package a file belongs to (its own name for an `__init__.py`)."""
    mod = _module_name(path)
    return mod if path.name == "__init__.py" else mod.rpartition(".")[0]


def _is_module(dotted: str) -> bool:
    rel = pathlib.Path(*dotted.split("."))
    return (ROOT / rel.with_suffix(".py")).exists() or (ROOT / rel / "__init__.py").exists()


def _private_part(dotted: str) -> str | None:
    """The package that owns the first private component of `dotted` (None if public)."""
    parts = dotted.split(".")
    for i, p in enumerate(parts):
        if p.startswith("_") and not p.startswith("__"):
            return ".".join(parts[:i])
    return None


def _violations(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    me, my_pkg = _module_name(path), _package_of(path)
    out = []

    def inside(owner: str) -> bool:
        return my_pkg == owner or my_pkg.startswith(owner + ".")

    def check_module(dotted: str, line: int) -> None:
        owner = _private_part(dotted)
        if owner is None or not dotted.startswith("sslntk") or dotted in PLUMBING:
            return
        priv = ".".join(dotted.split(".")[: len(owner.split(".")) + 1])
        if priv in PLUMBING or inside(owner):
            return
        out.append(f"{path.relative_to(ROOT)}:{line}: imports the private module {dotted} of "
                   f"package {owner}")

    aliases: dict[str, str] = {}          # local name -> sslntk module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                check_module(a.name, node.lineno)
                if a.name.startswith("sslntk"):
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else "sslntk"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = my_pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            if not src.startswith("sslntk"):
                continue
            check_module(src, node.lineno)
            for a in node.names:
                full = f"{src}.{a.name}"
                if _is_module(full):
                    check_module(full, node.lineno)
                    aliases[a.asname or a.name] = full
                elif a.name.startswith("_") and not a.name.startswith("__") and src != me:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports the private "
                               f"name {a.name} from {src}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            target = aliases[node.value.id]
            full = f"{target}.{node.attr}"
            if _is_module(full):
                check_module(full, node.lineno)
            elif target != me and not inside(target if _is_pkg(target) else
                                             target.rpartition(".")[0]):
                out.append(f"{path.relative_to(ROOT)}:{node.lineno}: uses the private name "
                           f"{node.attr} of {target}")
    return out


def _is_pkg(dotted: str) -> bool:
    return (ROOT / pathlib.Path(*dotted.split(".")) / "__init__.py").exists()


FILES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_no_private_imports_across_modules(path):
    bad = _violations(path)
    assert not bad, "\n".join(bad)


def test_the_checker_catches_what_it_should(tmp_path, monkeypatch):
    """The rules on a synthetic tree (so the test above cannot pass by checking nothing)."""
    root = tmp_path
    (root / "sslntk" / "a").mkdir(parents=True)
    (root / "sslntk" / "b").mkdir()
    for f in ("sslntk/__init__.py", "sslntk/a/__init__.py", "sslntk/b/__init__.py",
              "sslntk/a/_impl.py", "sslntk/_validate.py", "sslntk/b/pub.py"):
        (root / f).write_text("")
    src = root / "sslntk" / "b" / "user.py"
    src.write_text("from sslntk.a._impl import thing\n"       # private module of another package
                   "from sslntk.b.pub import _hidden\n"       # private name of another module
                   "from sslntk import _validate as V\n"      # plumbing: fine
                   "from sslntk.b import pub\n"
                   "import sslntk.a as a\n"
                   "x = a._secret\n")                         # private attribute of another pkg
    ok = root / "sslntk" / "a" / "ok.py"
    ok.write_text("from sslntk.a import _impl\nfrom . import _impl as i2\ny = _impl.z\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", root)
    bad = _violations(src)
    assert len(bad) == 3, bad
    assert any("private module sslntk.a._impl" in b for b in bad)
    assert any("private name _hidden" in b for b in bad)
    assert any("private name _secret" in b for b in bad)
    assert _violations(ok) == []
