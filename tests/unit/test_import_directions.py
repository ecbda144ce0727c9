"""Import directions of the streaming core, kept by a test.

grimp reads every import, those inside functions included.  The edges checked here
were cycles or a core -> web dependency before the handlers were split out of
``notifyd.pipeline`` (issue #14): the scheduler imported the pipeline that imported
it, the in-app provider imported the web view's hub, and the provider registry
imported the pipeline that imports the providers.  Then the layers below the stream:
the pure parts of fallback, timing and callbacks went to ``notifyd.domain`` and
``notifyd.model``, the parts that dispatch beside the handlers.  No cycle at all and no
core -> web import: ``test_imports.py``.
"""

from __future__ import annotations

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
