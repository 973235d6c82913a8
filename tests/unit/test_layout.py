"""The layout's rules, checked on the source itself (issue 10).

- No import cycle between the project's modules, counting imports inside functions (a lazy
  import that hides a cycle is still a cycle); only ``if TYPE_CHECKING:`` blocks are left out.
- No module reaches into another module's private names (``from x import _y`` or ``x._y``).
- No module is longer than about 600 lines.
- ``tests/unit`` mirrors the packages: each folder there names a package of the project.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ca", "fake_nsm", "emulator")
MAX_LINES = 620


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _sources()


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below ``node``, skipping the bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _walk(other)
            continue
        yield child
        yield from _walk(child)


def _resolve(dotted: str) -> str | None:
    """The deepest project module that ``dotted`` names (``a.b.c`` -> ``a.b`` if c is a name)."""
    parts = dotted.split(".")
    while parts:
        name = ".".join(parts)
        if name in MODULES:
            return name
        parts.pop()
    return None


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: list[Import] = []
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target is not None:
                    found.append(Import(module, target, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                target = full if full in MODULES else _resolve(base)
                if target is not None:
                    found.append(Import(module, target, node.lineno))
    return [imp for imp in found if imp.target != module]


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for edge in GRAPH[node]:
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return components


def test_the_checker_sees_lazy_imports_and_resolves_modules() -> None:
    """The graph must hold imports made inside functions, or the cycle check proves nothing."""
    targets = {edge.target for edge in GRAPH["emulator.cli.app"]}
    assert "emulator.errors" in targets
    assert any(edge.target.startswith("fake_nsm.") for edge in GRAPH["emulator.cli.app"])
    assert len(MODULES) > 60


def test_no_import_cycles() -> None:
    cycles = _cycles()
    details: list[str] = []
    for component in cycles:
        members = set(component)
        for module in component:
            details += sorted({
                f"  {module}:{edge.line} imports {edge.target}"
                for edge in GRAPH[module]
                if edge.target in members
            })
    assert not cycles, "import cycles between modules:\n" + "\n".join(details)


def _private_uses(module: str) -> Iterator[str]:
    tree = ast.parse(MODULES[module].read_text())
    aliases: dict[str, str] = {}
    for node in _walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in MODULES:
                    aliases[alias.asname or alias.name] = full
                elif alias.name.startswith("_") and not alias.name.startswith("__") and _resolve(base):
                    yield f"{module}:{node.lineno} imports {alias.name} from {base}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in _walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            yield f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}"


def test_no_module_reaches_into_another_modules_private_names() -> None:
    uses = [use for module in MODULES for use in _private_uses(module)]
    assert not uses, "private names used across modules (make them public where they live):\n" + "\n".join(uses)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_short(module: str) -> None:
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines: split it by responsibility"


def test_unit_tests_mirror_the_packages() -> None:
    """``tests/unit/<room>/`` sits beside the package it tests, named as it is named."""
    rooms = {path.name for path in (ROOT / "tests" / "unit").iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert rooms, "tests/unit has no folders"
    packages = {name.split(".")[-1] for name, path in MODULES.items() if path.name == "__init__.py"}
    assert rooms <= packages, f"tests/unit folders that name no package: {sorted(rooms - packages)}"
    emulator_rooms = {
        path.parent.name for path in (ROOT / "emulator").glob("*/__init__.py")
    }
    untested = {room for room in emulator_rooms - rooms if list((ROOT / "emulator" / room).glob("*.py"))}
    assert not untested - {"demo"}, f"emulator rooms with no tests/unit folder: {sorted(untested)}"
