"""Cold partitions out of busy fetches.

aiokafka's fetcher puts every assigned partition in every fetch request and the broker
answers for each of them: on 2 cores about 7 µs of Python per partition per fetch,
building the request and decoding the response (``Fetcher._get_actions_per_node``,
``FetchRequest``/``FetchResponse``), with no fetch sessions (KIP-227) to send only
what changed.  While busy, notifyd fetches every few milliseconds (``FetchPacer``), and
a worker is assigned ~100 partitions, a third of them of topics that carry a few records
a minute (preferences, control, subscriptions, callbacks).

While the pacer says busy, the partitions of those cold topics go into one fetch every
``NOTIFYD_FETCH_COLD_INTERVAL_MS`` (50 ms; 0: off) instead of every fetch: up to that
much later for a preference write or an API command under load, against a third less
work per fetch.  While quiet, every fetch has them all (a long poll must wake for any
partition).  Changelog topics are never cold: table recovery reads them through these
fetches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiokafka.consumer.fetcher import Fetcher


class _Without:
    """An aiokafka ``Assignment`` seen through a subset of its partitions: what
    ``Fetcher._get_actions_per_node`` reads (``tps``, ``state_value``) and nothing else
    differs."""

    __slots__ = ("_assignment", "tps")

    def __init__(self, assignment: Any, tps: frozenset[Any]) -> None:
        self._assignment = assignment
        self.tps = tps

    def state_value(self, tp: Any) -> Any:
        return self._assignment.state_value(tp)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._assignment, name)


def set_cold(fetcher: Any, topics: frozenset[str] | None, interval_s: float = 0.05) -> None:
    """Leave ``topics`` out of all but one fetch per ``interval_s`` (None: none); read by
    the fetcher's thread when it builds its next request."""
    fetcher._notifyd_cold_interval_s = interval_s
    fetcher._notifyd_cold_topics = topics


_original: Callable[..., Any] = Fetcher._get_actions_per_node


def _get_actions_per_node_skipping_cold(self: Any, assignment: Any) -> Any:
    cold: frozenset[str] | None = getattr(self, "_notifyd_cold_topics", None)
    if cold:
        now = time.monotonic()
        if now - getattr(self, "_notifyd_cold_at", 0.0) < self._notifyd_cold_interval_s:
            cache = getattr(self, "_notifyd_hot", None)
            if cache is None or cache[0] is not assignment or cache[1] is not cold:
                hot = frozenset(tp for tp in assignment.tps if tp.topic not in cold)
                cache = (assignment, cold, hot)
                self._notifyd_hot = cache
            return _original(self, _Without(assignment, cache[2]))
        self._notifyd_cold_at = now
    return _original(self, assignment)


def install() -> None:
    """Patch aiokafka's fetcher (once per process; without ``set_cold`` it behaves as
    before)."""
    if Fetcher._get_actions_per_node is not _get_actions_per_node_skipping_cold:
        Fetcher._get_actions_per_node = _get_actions_per_node_skipping_cold  # type: ignore[method-assign]
