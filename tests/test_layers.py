"""The package's layers, as its docstrings state them: no cycles, no reaching into another layer.

Read from the source (``ast``), so imports under ``TYPE_CHECKING`` and inside functions
count as much as the ones at the top: a cycle that only the type checker sees is still
a cycle for a reader.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import trio_tlsecho

ROOT = Path(trio_tlsecho.__file__).parent
TOP = "trio_tlsecho"


def _module_name(path: Path) -> str:
    parts = [TOP, *path.relative_to(ROOT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}
PACKAGES = sorted(name for name, path in MODULES.items() if path.name == "__init__.py" and name != TOP)


def _imports(name: str) -> Iterator[tuple[str, list[str]]]:
    """``(module imported, [names taken from it])`` for every import of our own code in *name*."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names]
            if target.startswith(TOP):
                # "from . import x" may name a submodule rather than an attribute.
                submodules = [n for n in names if f"{target}.{n}" in MODULES]
                for sub in submodules:
                    yield f"{target}.{sub}", []
                yield target, [n for n in names if n not in submodules]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(TOP):
                    yield alias.name, []


def _package_of(module: str) -> str:
    """The first-level package a module belongs to (``trio_tlsecho`` for the top modules)."""
    parts = module.split(".")
    candidate = ".".join(parts[:2])
    return candidate if candidate in PACKAGES else TOP


def test_the_package_has_layers() -> None:
    # The layout is the architecture: if it flattens again, this says so.
    assert {p.rpartition(".")[2] for p in PACKAGES} >= {
        "_net",
        "_tls",
        "_engines",
        "_handlers",
        "_config",
        "_server",
        "_client",
        "_load",
        "_process",
        "_cli",
    }


def test_no_import_cycles() -> None:
    graph = {name: {target for target, _ in _imports(name) if target in MODULES} for name in MODULES}
    # A package's __init__ is what "from .._x import y" runs, so it is a node like any.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_other_packages_are_used_through_their_front_door(module: str) -> None:
    """From another package: only its ``__init__``, and only names without an underscore."""
    own = _package_of(module)
    for target, names in _imports(module):
        if module == TOP or target == TOP or _package_of(target) in (own, TOP):
            continue
        assert target in PACKAGES, f"{module} reaches into {target}: import from {_package_of(target)}"
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{module} imports private names {private} from {target}"


def _allowed(package: str) -> set[str] | None:
    """What a package's docstring says it may import, or ``None`` for "anything"."""
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text())) or ""
    match = re.search(r"May import:?(.*?)(?:\n\n|$)", doc, re.S)
    assert match, f"{package}'s docstring does not say what it may import"
    text = match.group(1)
    if "anything" in text:
        return None
    return {f"{TOP}.{name}" for name in re.findall(r"``(_\w+)``", text)}


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_its_docstring_allows(package: str) -> None:
    allowed = _allowed(package)
    if allowed is None:
        return
    for module in (m for m in MODULES if _package_of(m) == package):
        for target, _ in _imports(module):
            other = _package_of(target)
            if other == package:
                continue
            if other == TOP:  # a top-level module: _exceptions, _version
                other = ".".join(target.split(".")[:2])
            assert other in allowed, f"{module} imports {target}, which {package}'s docstring does not allow"


def test_the_cli_is_imported_only_by_main() -> None:
    users = [
        m
        for m in MODULES
        if _package_of(m) != f"{TOP}._cli" and any(_package_of(t) == f"{TOP}._cli" for t, _ in _imports(m))
    ]
    assert users == [f"{TOP}.__main__"]
