"""The import graph of notifyd: no cycles, and the core never imports the web view.

Read from the source with grimp (every import, also those inside functions; imports
under ``if TYPE_CHECKING`` are left out: they never run).  A cycle that is still
known is listed below by one of its edges; the list only shrinks: an edge that is gone
must leave the list, and a new cycle fails.
"""

from __future__ import annotations

import grimp
import pytest

#: The streaming core, the records, the decisions and the providers: none may reach
#: notifyd.web, directly or through other modules (the web view is mounted by the
#: factory in notifyd.service; the core publishes through hooks).
CORE = ("notifyd.stream", "notifyd.model", "notifyd.domain", "notifyd.providers")
WEB = "notifyd.web"

#: Known cycles, each broken here at one edge (importer, imported): why it is still there.
KNOWN_CYCLE_EDGES: dict[tuple[str, str], str] = {
    # records validates preference chains with fallback, which reads records.
    ("notifyd.model.records", "notifyd.stream.fallback"): "records <-> fallback",
    # timing, fallback, callbacks and audience call handlers that call them back.
    ("notifyd.stream.callbacks", "notifyd.stream.handlers.deliver"): "callbacks <-> handlers",
    ("notifyd.stream.callbacks", "notifyd.stream.handlers.status"): "callbacks <-> status",
    ("notifyd.stream.fallback", "notifyd.stream.handlers.dispatch"): "fallback <-> dispatch",
    ("notifyd.stream.fallback", "notifyd.stream.handlers.status"): "fallback <-> handlers",
    ("notifyd.stream.timing", "notifyd.stream.handlers.deadletter"): "timing <-> handlers",
    ("notifyd.stream.timing", "notifyd.stream.handlers.dispatch"): "timing <-> dispatch",
    ("notifyd.stream.timing", "notifyd.stream.handlers.status"): "timing <-> handlers",
    ("notifyd.stream.audience", "notifyd.stream.handlers.ingest"): "audience <-> ingest",
}


@pytest.fixture
def graph() -> grimp.ImportGraph:
    """A fresh graph per test (tests edit theirs)."""
    return grimp.build_graph("notifyd", exclude_type_checking_imports=True, cache_dir=None)


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


def test_known_cycle_edges_still_exist(graph: grimp.ImportGraph) -> None:
    gone = [
        f"{a} -> {b}" for a, b in KNOWN_CYCLE_EDGES
        if not graph.direct_import_exists(importer=a, imported=b)
    ]
    assert not gone, f"these imports are gone: remove them from KNOWN_CYCLE_EDGES: {gone}"


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    pruned = graph
    for a, b in KNOWN_CYCLE_EDGES:
        if pruned.direct_import_exists(importer=a, imported=b):
            pruned.remove_import(importer=a, imported=b)
    found = cycles(pruned)
    assert not found, "import cycles:\n" + "\n".join(describe(pruned, c) for c in found)


def test_the_cycle_finder_finds_a_cycle(graph: grimp.ImportGraph) -> None:
    looped = graph
    looped.add_import(importer="notifyd.config", imported="notifyd.web.view")
    assert any({"notifyd.config", "notifyd.web.view"} <= set(c) for c in cycles(looped))


def test_the_core_never_imports_the_web_view(graph: grimp.ImportGraph) -> None:
    pruned = graph
    for a, b in KNOWN_CYCLE_EDGES:
        if b.startswith(WEB + ".") and pruned.direct_import_exists(importer=a, imported=b):
            pruned.remove_import(importer=a, imported=b)
    chains = []
    for core in CORE:
        if core in pruned.modules:
            for chain in pruned.find_shortest_chains(importer=core, imported=WEB,
                                                     as_packages=True):
                chains.append(" -> ".join(chain))
    assert not chains, "the core imports notifyd.web:\n" + "\n".join(chains)
