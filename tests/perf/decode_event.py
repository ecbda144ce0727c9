"""Decode + validate one typical notifyd event: msgspec vs pydantic v2 (and notifyd's own).

    PYTHONPATH=. python -m tests.perf.decode_event [--n 200000]

Each contender turns the same raw Kafka value (bytes) into a validated object with the
same constraints (ids 1..200 characters, category pattern, channel and priority enums,
title/body lengths; unknown fields kept):

- ``msgspec``: ``msgspec.json.decode(raw, type=EventRecord)`` (the model notifyd uses);
- ``msgspec+extras``: ``orjson.loads`` then ``msgspec.convert`` (keeps unknown fields);
- ``pydantic``: ``model_validate_json`` on an equivalent ``BaseModel`` (extra="allow");
- ``notifyd``: ``notifyd.model.event.parse_event`` (the hot path: model + the checks a
  type cannot express + the :class:`Event`).

Prints CPU microseconds per event (process time: robust on a shared machine), best of
``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import timeit
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
import orjson
from pydantic import BaseModel, ConfigDict, Field

from notifyd.model.event import EventRecord, parse_event
from notifyd.model.limits import (
    MAX_BODY_LEN,
    MAX_CATEGORY_LEN,
    MAX_ID_LEN,
    MAX_TEMPLATE_LEN,
    MAX_TITLE_LEN,
)

#: A typical event: what the bench's load generator and the README examples send.
SAMPLE: bytes = orjson.dumps(
    {
        "event_id": "order-42-shipped",
        "user_id": "user-1234",
        "category": "orders.shipping",
        "title": "Your order has shipped",
        "body": "Order 42 is on its way and arrives on Thursday.",
        "data": {"order_id": 42, "carrier": "DHL", "eta": "2026-12-03"},
        "channels": ["email", "push", "inapp"],
        "priority": "normal",
        "created_at": "2026-12-01T02:00:00+00:00",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }
)

_Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN, pattern=r"\S")]


class PydanticEvent(BaseModel):
    """The same constraints as :class:`EventRecord`, in pydantic v2."""

    model_config = ConfigDict(extra="allow", strict=True)

    schema_version: Annotated[int, Field(ge=1, le=2)] = 1
    event_id: _Id
    user_id: _Id
    category: Annotated[
        str, Field(max_length=MAX_CATEGORY_LEN, pattern=r"^[A-Za-z0-9_.:\-]*$")
    ] | None = None
    title: Annotated[str, Field(max_length=MAX_TITLE_LEN)] | None = None
    body: Annotated[str, Field(max_length=MAX_BODY_LEN)] | None = None
    template: Annotated[str, Field(max_length=MAX_TEMPLATE_LEN)] | None = None
    data: dict[str, Any] | None = None
    channels: Annotated[
        list[Literal["email", "sms", "push", "webhook", "inapp"]], Field(min_length=1)
    ] | None = None
    priority: Literal["low", "normal", "high", "critical"] | None = None
    created_at: str | None = None
    send_at: str | None = None
    delay_s: Annotated[float, Field(ge=0)] | None = None


def contenders() -> dict[str, Callable[[bytes], Any]]:
    decoder = msgspec.json.Decoder(EventRecord)
    return {
        "msgspec": decoder.decode,
        "msgspec+extras": lambda raw: msgspec.convert(orjson.loads(raw), EventRecord),
        "pydantic": PydanticEvent.model_validate_json,
        "notifyd": parse_event,
    }


def measure(n: int, repeat: int) -> dict[str, float]:
    """Microseconds per event of each contender (best of ``repeat`` runs of ``n``)."""
    out: dict[str, float] = {}
    for name, fn in contenders().items():
        best = min(timeit.repeat(lambda fn=fn: fn(SAMPLE), number=n, repeat=repeat,
                                 timer=time.process_time))
        out[name] = best / n * 1e6
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="events per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best counts")
    args = parser.parse_args(argv)
    print(f"python {platform.python_version()}, msgspec {msgspec.__version__}, "
          f"{os.cpu_count()} cores; {len(SAMPLE)}-byte event, best of {args.repeat} x {args.n}")
    for name, us in measure(args.n, args.repeat).items():
        print(f"  {name:15s} {us:6.2f} µs/event")


if __name__ == "__main__":
    main()
