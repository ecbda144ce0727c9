"""Status updates the pipeline publishes, kept in a list instead of produced to Kafka."""

from __future__ import annotations

from typing import Any

import pytest

from notifyd.stream import pipeline

Published = list[tuple[str, list[dict[str, Any]]]]


def capture_statuses(monkeypatch: pytest.MonkeyPatch) -> Published:
    """Replace ``pipeline.publish_status``: each call's (notification id, updates) is
    appended to the list returned (content and any other argument are dropped)."""
    out: Published = []

    async def record(nid: str, updates: list[dict[str, Any]], *args: Any, **kw: Any) -> None:
        out.append((nid, updates))

    monkeypatch.setattr(pipeline, "publish_status", record)
    return out
