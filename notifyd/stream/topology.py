"""Create notifyd's source topics before workers subscribe.

A Faust worker subscribed to a topic that does not exist yet may consume nothing for
a long time, so topics are created up front with the admin client (idempotent).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from notifyd.config import CHANNELS, Settings


@dataclass(frozen=True)
class TopicNames:
    """Names of notifyd's topics under a prefix (``NOTIFYD_TOPIC_PREFIX``, default
    ``notifyd``), so several deployments (or test runs) can share one cluster."""

    prefix: str = "notifyd"

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def events_rekeyed(self) -> str:
        return f"{self.prefix}.events.rekeyed"

    @property
    def events_dlq(self) -> str:
        return f"{self.prefix}.events.dlq"

    @property
    def preferences(self) -> str:
        return f"{self.prefix}.preferences"

    @property
    def control(self) -> str:
        return f"{self.prefix}.control"

    @property
    def status(self) -> str:
        return f"{self.prefix}.status"

    @property
    def deliveries_dlq(self) -> str:
        return f"{self.prefix}.deliveries.dlq"

    def deliver(self, channel: str) -> str:
        return f"{self.prefix}.deliver.{channel}"

    @property
    def subscriptions(self) -> str:
        """Subscription commands (keyed by topic name, then by user: notifyd.stream.audience)."""
        return f"{self.prefix}.subscriptions"

    @property
    def fanout(self) -> str:
        """Fan-out progress of topic-addressed events (keyed by topic name)."""
        return f"{self.prefix}.fanout"

    @property
    def callbacks(self) -> str:
        """Delivery callbacks to producers (keyed by notification id: notifyd.callbacks)."""
        return f"{self.prefix}.callbacks"

    def source_topics(self) -> tuple[str, ...]:
        """Topics that must exist before a worker subscribes."""
        return (
            self.events,
            self.events_rekeyed,
            self.events_dlq,
            self.preferences,
            self.control,
            self.status,
            self.deliveries_dlq,
            *(self.deliver(ch) for ch in CHANNELS),
            self.subscriptions,
            self.fanout,
            self.callbacks,
        )

    @functools.cached_property
    def source_set(self) -> frozenset[str]:
        """:meth:`source_topics` as a set (asked per status record)."""
        return frozenset(self.source_topics())


#: Faust tables of notifyd (notifyd.stream.tables); their changelogs are created up front too.
TABLE_NAMES: tuple[str, ...] = (
    "preferences",
    "seen",
    "ledger",
    "scheduled",
    "throttle",
    "inbox",
    "status",
    "subscribers",
    "subscriptions",
    "cancels",
)


def changelog_topics(app_id: str) -> tuple[str, ...]:
    return tuple(f"{app_id}-{name}-changelog" for name in TABLE_NAMES)


async def ensure_topics(settings: Settings, names: tuple[str, ...] | None = None) -> list[str]:
    """Create missing topics with ``settings.topic_partitions``; returns those created.

    Changelog topics are created here as well (compacted): if a table's first write
    races Faust's own creation, Faust caches "0 partitions" for the changelog and
    refuses every later write to that table (PartitionsMismatch) until restart.
    """
    compacted: set[str] = set()
    if names is None:
        compacted = set(changelog_topics(settings.app_id))
        names = TopicNames(settings.topic_prefix).source_topics() + tuple(sorted(compacted))
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=30000
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            new = [
                NewTopic(
                    n,
                    settings.topic_partitions,
                    settings.topic_replication,
                    topic_configs={"cleanup.policy": "compact"} if n in compacted else {},
                )
                for n in missing
            ]
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new, timeout_ms=30000)
        return missing
    finally:
        await admin.close()
