"""Status updates the pipeline publishes, kept in a list instead of produced to Kafka."""

from __future__ import annotations

from typing import Any

import pytest

from notifyd.stream.handlers import status as statuses

Published = list[tuple[str, list[dict[str, Any]]]]


def capture_statuses(monkeypatch: pytest.MonkeyPatch) -> Published:
    """Replace ``status.publish_status`` (notifyd.stream.handlers): each call's (notification id, updates) is
    appended to the list returned (content and any other argument are dropped)."""
    out: Published = []

    async def record(nid: str, updates: list[dict[str, Any]], *args: Any, **kw: Any) -> None:
        out.append((nid, updates))

    monkeypatch.setattr(statuses, "publish_status", record)
    return out
