"""Rules of the code's shape, checked on the source (docs/architecture.md):

- no module imports another module's underscore name, or reads one through a module alias
  (``ckpt._x``): what one module offers another is public and documented;
- no import cycles between zoo's modules (function-level imports count too);
- one function per name for the central verbs (there is one ``resolve``);
- the version is written once (pyproject.toml and zoo.__version__ agree).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules(root: Path = ROOT) -> Dict[str, Tuple[Path, ast.Module]]:
    """zoo's modules by dotted name (plugins/ and converters/ install as zoo.plugins, zoo.converters)."""
    found = {}
    for base in ("zoo", "plugins", "converters"):
        for path in sorted((root / base).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            parts = parts if base == "zoo" else ["zoo", *parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = (path, ast.parse(path.read_text(encoding="utf-8")))
    return found


def _target(name: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def survey(mods, root: Path = ROOT) -> Tuple[Dict[str, Set[str]], List[str]]:
    """(import graph between zoo's modules, every private reach across modules)."""
    edges: Dict[str, Set[str]] = {m: set() for m in mods}
    reaches: List[str] = []
    for name, (path, tree) in mods.items():
        aliases = {}  # local name -> zoo module it names
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _target(name, path, node)
                if not target.startswith("zoo"):
                    continue
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    if full in mods:
                        edges[name].add(full)
                        aliases[alias.asname or alias.name] = full
                    elif target in mods:
                        edges[name].add(target)
                        if _private(alias.name) and target != name:
                            reaches.append(f"{path.relative_to(root)}:{node.lineno}: {alias.name} from {target}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in mods:
                        edges[name].add(alias.name)
                        aliases[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and aliases.get(node.value.id, name) != name and _private(node.attr)):
                reaches.append(f"{path.relative_to(root)}:{node.lineno}: {node.value.id}.{node.attr}")
    return edges, reaches


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The import cycles (strongly connected groups of more than one module, or a self-import)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in edges[v]:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


MODULES = modules()


def test_no_module_reaches_into_anothers_private_names():
    assert survey(MODULES)[1] == []


def test_no_import_cycles():
    assert cycles(survey(MODULES)[0]) == []


def test_one_function_per_central_name():
    defined: Dict[str, List[str]] = {}
    for name, (_path, tree) in MODULES.items():
        if name == "zoo":
            continue  # the package's own API: lazy faces of zoo.loading.load and friends
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and not _private(node.name):
                defined.setdefault(node.name, []).append(name)
    for verb in ("resolve", "load", "convert", "publish", "fetch"):
        assert len(defined.get(verb, [])) <= 1, (verb, defined[verb])


def test_version_is_written_once():
    import zoo

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == zoo.__version__


@pytest.mark.parametrize("source, expected", [
    ("from .b import _hidden\n", ["reach"]),
    ("from . import b\nx = b._hidden\n", ["reach"]),
    ("from .b import visible\n", []),
    ("from .b import __version__\n", []),
])
def test_the_checks_catch_what_they_look_for(tmp_path, source, expected):
    """The checks themselves can fail: a private reach and a cycle planted in a tiny tree."""
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "__init__.py").write_text("")
    (tmp_path / "zoo" / "a.py").write_text(source)
    (tmp_path / "zoo" / "b.py").write_text("from . import a\n_hidden = visible = 1\n")
    edges, reaches = survey(modules(tmp_path), tmp_path)
    assert bool(reaches) == bool(expected), reaches
    assert cycles(edges) == [["zoo.a", "zoo.b"]]


def _builtin_translating_converters():
    from zoo.registry import get_catalog

    return [c for c in get_catalog().converters.values()
            if type(c).__module__ == "zoo.types" and str(c.reference or c.infer_config or "").startswith("zoo.converters.")]


@pytest.mark.parametrize("conv", _builtin_translating_converters(), ids=lambda c: c.name)
def test_architecture_files_speak_their_own_names(conv):
    """Each built-in converter translates its format's config (``to_architecture`` and back),
    and the architecture's file names none of that format's fields but those its own config
    shares: the source format's knowledge lives in the converter, one file."""
    import dataclasses
    import importlib
    import re

    assert conv.to_architecture and conv.from_architecture, f"{conv.name}: no config translation"
    module = importlib.import_module(f"zoo.plugins.{conv.architecture}")
    own = {f.name for obj in vars(module).values()
           if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__
           for f in dataclasses.fields(obj)}
    foreign = (set(conv.config_fields) | set(conv.tiny_config)) - own
    text = Path(module.__file__).read_text(encoding="utf-8")
    found = sorted(f for f in foreign if re.search(rf"\b{re.escape(f)}\b", text))
    assert not found, f"plugins/{conv.architecture}.py names {conv.name}'s config fields {found}: translate them in the converter"
    assert "from_hf" not in text
