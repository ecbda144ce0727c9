"""Import directions of the streaming core, kept by a test.

grimp reads every import, those inside functions included.  The edges checked here
were cycles or a core -> web dependency before the handlers were split out of
``notifyd.pipeline`` (issue #14): the scheduler imported the pipeline that imported
it, the in-app provider imported the web view's hub, and the provider registry
imported the pipeline that imports the providers.  Then (issue #14) no import cycle at
all: the pure parts of fallback, timing and callbacks went to ``notifyd.domain`` and
``notifyd.model``, the parts that dispatch beside the handlers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import grimp
import pytest


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("notifyd", cache_dir=None)


def imports(graph: grimp.ImportGraph, importers: tuple[str, ...],
            imported: tuple[str, ...]) -> set[tuple[str, str]]:
    """(importer, imported) pairs, directly, between modules under those prefixes."""
    return {
        (m, i)
        for m in graph.modules
        if m.startswith(importers)
        for i in graph.find_modules_directly_imported_by(m)
        if i.startswith(imported)
    }


def test_the_streaming_core_imports_nothing_of_the_web_view(graph: grimp.ImportGraph) -> None:
    assert imports(graph, ("notifyd.stream",), ("notifyd.web",)) == set()


def test_the_scheduler_imports_no_handler(graph: grimp.ImportGraph) -> None:
    """The handlers import the scheduler (to push rows); it is given what it calls."""
    assert imports(graph, ("notifyd.stream.scheduler",), ("notifyd.stream.handlers",)) == set()


def test_providers_import_nothing_of_the_streaming_core(graph: grimp.ImportGraph) -> None:
    assert imports(graph, ("notifyd.providers",), ("notifyd.stream",)) == set()


def test_nothing_outside_the_web_view_cli_and_tools_imports_the_web_view(
    graph: grimp.ImportGraph,
) -> None:
    """The web view sits on the core; the core (streaming, domain, model, providers,
    metrics) never reaches up into it, not even inside a function.  Only the composition
    root (``notifyd.service.create_app``) mounts it on the core."""
    above = ("notifyd.web", "notifyd.cli", "notifyd.tools", "notifyd.service")
    assert {
        (m, i)
        for m in graph.modules
        if not m.startswith(above)
        for i in graph.find_modules_directly_imported_by(m)
        if i.startswith("notifyd.web")
    } == set()


def test_the_model_imports_only_the_config_and_the_errors(graph: grimp.ImportGraph) -> None:
    """Records are the bottom layer: every other layer reads them."""
    assert {i for _, i in imports(graph, ("notifyd.model",), ("notifyd",))
            if not i.startswith("notifyd.model")} <= {"notifyd.config", "notifyd.errors"}


def test_the_domain_imports_nothing_of_the_stream_providers_or_web(
    graph: grimp.ImportGraph,
) -> None:
    """Decisions are pure: the stream and the providers call them, never the reverse."""
    assert imports(graph, ("notifyd.domain",),
                   ("notifyd.stream", "notifyd.providers", "notifyd.web")) == set()


def strongly_connected(edges: Mapping[str, Iterable[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components (iterative), those that are cycles: more
    than one module, or one importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(edges.get(succ, ())))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component: set[str] = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in edges.get(node, ()):
                        cycles.append(component)
    return cycles


def test_strongly_connected_finds_cycles_and_only_cycles() -> None:
    edges = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": ["e"], "e": ["d"], "f": ["f"],
             "g": ["a"]}
    assert sorted(map(sorted, strongly_connected(edges))) == [
        ["a", "b", "c"], ["d", "e"], ["f"]
    ]


def test_there_is_no_import_cycle(graph: grimp.ImportGraph) -> None:
    """No module reaches itself through imports (those inside functions included)."""
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    cycles = [sorted(c) for c in strongly_connected(edges)]
    assert cycles == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)
