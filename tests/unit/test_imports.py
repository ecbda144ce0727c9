"""The import graph of notifyd: no cycles, and the core never imports the web view.

Read from the source with grimp: every import, also those inside functions and those
under ``if TYPE_CHECKING`` (they never run, but two modules that name each other's
types still cannot be read or changed apart).  No cycle is known any more (issue #14):
any cycle fails, naming its modules and the lines of its imports.
"""

from __future__ import annotations

import grimp
import pytest

#: What may import the web view: itself, the CLI (and ``python -m notifyd``), the tools
#: and the composition root (notifyd.service mounts it on the core).  Everything else is the core (streaming,
#: records, decisions, providers, metrics, config): none of it may reach notifyd.web,
#: directly or through other modules (the core publishes through hooks).
ABOVE_THE_CORE = (
    "notifyd.web", "notifyd.cli", "notifyd.__main__", "notifyd.tools", "notifyd.service"
)
WEB = "notifyd.web"

@pytest.fixture
def graph() -> grimp.ImportGraph:
    """A fresh graph per test (tests edit theirs)."""
    return grimp.build_graph("notifyd", cache_dir=None)


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                nxt = edges[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def describe(graph: grimp.ImportGraph, component: list[str]) -> str:
    members = set(component)
    lines = []
    for importer in component:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            where = graph.get_import_details(importer=importer, imported=imported)
            at = ", ".join(str(d["line_number"]) for d in where)
            lines.append(f"  {importer} -> {imported} (line {at})")
    return "\n".join(lines)


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(graph, c) for c in found)


def test_the_cycle_finder_finds_a_cycle(graph: grimp.ImportGraph) -> None:
    looped = graph
    looped.add_import(importer="notifyd.config", imported="notifyd.web.view")
    assert any({"notifyd.config", "notifyd.web.view"} <= set(c) for c in cycles(looped))


def test_the_core_never_imports_the_web_view(graph: grimp.ImportGraph) -> None:
    core = sorted(
        m for m in graph.modules
        if m != "notifyd" and not m.startswith(ABOVE_THE_CORE) and m.count(".") == 1
    )
    chains = [
        " -> ".join(chain)
        for top in core
        for chain in graph.find_shortest_chains(importer=top, imported=WEB, as_packages=True)
    ]
    assert not chains, "the core imports notifyd.web:\n" + "\n".join(chains)
