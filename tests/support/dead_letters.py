"""Dead letters produced by agents under Faust's ``test_context()``, kept in memory.

There is no broker in a unit test: what the agents produce to the two dead-letter
topics is recorded here instead (the integration tests read the real topics).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from notifyd.stream.headers import header_value
from notifyd.stream.topics import deliveries_dlq_topic, events_dlq_topic


class DeadLetters:
    """What the agents produced to the two dead-letter topics, in order."""

    def __init__(self) -> None:
        #: (topic, key, value, headers)
        self.records: list[tuple[str, bytes | None, bytes, dict[str, str]]] = []
        #: produce attempts that raise before one succeeds (a broker outage).
        self.failures = 0

    def sender(self, topic: str) -> Callable[..., Any]:
        async def send(*, key: bytes | None, value: bytes, headers: Any) -> asyncio.Future[Any]:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("broker unreachable")
            self.records.append(
                (topic, key, value, {n: header_value(headers, n) or "" for n, _ in headers})
            )
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            fut.set_result(None)  # the broker's acknowledgement
            return fut

        return send

    def reasons(self, topic: str | None = None) -> list[str]:
        return [h["notifyd-reason"] for t, _, _, h in self.records if topic in (None, t)]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> DeadLetters:
        for t in (events_dlq_topic, deliveries_dlq_topic):
            monkeypatch.setattr(t, "send", self.sender(t.get_topic_name()))
        return self
