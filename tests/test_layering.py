"""The folders draw the call path: dependencies point down and nothing imports in a circle.

Read from the source (every import, including ones inside functions), so a cycle cannot hide behind a local import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "agent"
# Lower layers: I/O with the outside world, formats and storage. They serve calls; they never reach up into them.
LOWER = ("protocol", "audio", "records", "storage", "observability", "carrier")
UPPER = ("calls", "web")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of `agent` this file imports, resolved to the module (not the package) wherever one is named."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "agent")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "agent":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycle_from(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path of module names, or None (iterative DFS with colours)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            nxt = todo.pop()
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph.get(nxt, ()))))
    return None


def test_no_import_cycles() -> None:
    # Package __init__ files that only re-export would turn every sibling import into a false cycle; they are
    # checked as modules of their own like everything else.
    cycle = _cycle_from(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_do_not_import_calls_or_web(layer: str) -> None:
    bad = [
        f"{name} imports {dep}"
        for name, deps in _graph().items()
        if name.split(".")[1:2] == [layer]
        for dep in deps
        if dep.split(".")[1:2] and dep.split(".")[1] in UPPER
    ]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_cycle_and_a_local_import(tmp_path: Path) -> None:
    """The checks above would pass vacuously if the graph missed imports; prove it catches both kinds."""
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from agent.calls import call\n")
    modules = {"agent.calls.call": a, "agent.calls": a}
    assert _imports(a, modules) == {"agent.calls.call"}
    assert _cycle_from({"x": {"y"}, "y": {"z"}, "z": {"x"}}) == ["x", "y", "z", "x"]
    assert _cycle_from({"x": {"y"}, "y": set()}) is None
