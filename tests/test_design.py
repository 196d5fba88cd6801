"""The design bar the package holds (SPEC §2): no import cycles between its modules, no
module over 350 lines, and layers that depend one way only: edge -> hub -> core <- backends,
with the server integrations beside the edge."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fastapi_pubsub_cluster"
NAME = PACKAGE.name
MAX_LINES = 350


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported_by(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The package's modules that ``name`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            yield from submodules
            if len(submodules) < len(node.names) and base in known:
                yield base


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(imported_by(name, path, known)) - {name} for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        found.append(sorted(group))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_back() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_350_lines(name: str) -> None:
    lines = len(modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines"


def test_the_core_imports_no_backend_edge_or_server() -> None:
    outward = (f"{NAME}.backends", f"{NAME}.edge", f"{NAME}.servers", f"{NAME}.hub")
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith(f"{NAME}.core"):
            assert not [t for t in targets if t.startswith(outward)], name


def _imports_from(prefix: str, outward: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for name, targets in import_graph().items():
        if name == prefix or name.startswith(f"{prefix}."):
            wrong = sorted(t for t in targets if t.startswith(outward))
            if wrong:
                found[name] = wrong
    return found


def test_the_core_imports_no_hub() -> None:
    assert _imports_from(f"{NAME}.core", (f"{NAME}.hub",)) == {}


def test_the_hub_imports_no_edge_or_server() -> None:
    assert _imports_from(f"{NAME}.hub", (f"{NAME}.edge", f"{NAME}.servers")) == {}


def test_the_backends_import_no_hub_edge_or_server() -> None:
    outward = (f"{NAME}.hub", f"{NAME}.edge", f"{NAME}.servers")
    assert _imports_from(f"{NAME}.backends", outward) == {}


def test_the_servers_import_no_hub_or_edge() -> None:
    assert _imports_from(f"{NAME}.servers", (f"{NAME}.hub", f"{NAME}.edge")) == {}


def test_the_edge_reaches_the_core_only_through_the_hub() -> None:
    for path in (PACKAGE / "edge").rglob("*.py"):
        assert ".fanout" not in path.read_text(encoding="utf-8"), path.name


def test_only_the_client_connection_changes_a_connections_state() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path != PACKAGE / "core" / "client.py":
            assert "state = ConnectionState." not in path.read_text(encoding="utf-8"), path.name


def test_the_package_exports_what_applications_import_and_every_name_resolves() -> None:
    import fastapi_pubsub_cluster

    assert len(fastapi_pubsub_cluster.__all__) <= 30
    for name in fastapi_pubsub_cluster.__all__:
        assert getattr(fastapi_pubsub_cluster, name) is not None


def test_the_backend_contracts_are_exported_together_or_not_at_all() -> None:
    import fastapi_pubsub_cluster

    contracts = {"Backend", "Transport", "PresenceStore", "HistoryStore"}
    assert contracts & set(fastapi_pubsub_cluster.__all__) in (set(), contracts)
