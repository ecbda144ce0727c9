"""Phase ``quix`` of ``notifyd bench``: a naive Quix Streams peer of notifyd's two HTTP
channels, as a user would write it in an afternoon.

Run as its own process by the bench::

    python -m notifyd.tools.bench.quixpeer --bootstrap 127.0.0.1:9092 --topic T \\
        --group G --sink http://127.0.0.1:PORT --users 1000

A ``quixstreams.Application`` (its own consumer group, ``auto_offset_reset="earliest"``,
defaults otherwise: at-least-once, commit every 5 s) consumes the bench's JSON events;
``sdf.update`` looks the user up in an in-memory dict of preferences (what notifyd's
memory store holds after the preload) and makes, one after the other, the two
requests notifyd makes per event with one ``requests.Session``: the signed webhook
and the push API call, the bodies of :mod:`notifyd.tools.bench.bodies`.  A failed
request raises (the app stops; the bench reports what arrived).  No dedupe, rules,
status or retries: the peer does less per event than notifyd, not more.

quixstreams and requests are imported here only (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from notifyd.tools.bench.bodies import (
    PUSH_PATH,
    bench_prefs,
    idempotency_key,
    push_body,
    webhook_body,
)


def make_deliver(
    session: Any, prefs: dict[str, dict[str, Any]], push_url: str, secret: bytes
) -> Callable[[dict[str, Any]], None]:
    """The ``sdf.update`` callback: an event's webhook and push POSTs, one after the other
    (``session``: a ``requests.Session``)."""

    def deliver(event: dict[str, Any]) -> None:
        user = prefs.get(event.get("user_id", ""))
        if user is None:
            return
        channels = event.get("channels") or ("webhook", "push")
        if "webhook" in channels and user.get("webhook_url"):
            body = json.dumps(webhook_body(event)).encode()
            ts = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "Idempotency-Key": idempotency_key(event, "webhook"),
                "X-Notifyd-Timestamp": ts,
            }
            if secret:
                mac = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256)
                headers["X-Notifyd-Signature"] = "sha256=" + mac.hexdigest()
            session.post(user["webhook_url"], data=body, headers=headers).raise_for_status()
        if "push" in channels and user.get("push_tokens"):
            session.post(
                push_url,
                json=push_body(event, user["push_tokens"]),
                headers={"Idempotency-Key": idempotency_key(event, "push")},
            ).raise_for_status()

    return deliver


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--sink", required=True, help="the bench's sink, http://host:port")
    ap.add_argument("--users", type=int, required=True)
    ap.add_argument("--webhook-secret", default="")
    ap.add_argument("--state-dir", default=None)
    args = ap.parse_args(argv)

    import requests
    from quixstreams import Application

    prefs = {f"u{i}": bench_prefs(f"u{i}", args.sink) for i in range(args.users)}
    deliver = make_deliver(
        requests.Session(), prefs, args.sink + PUSH_PATH, args.webhook_secret.encode()
    )
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
    )
    topic = app.topic(args.topic, value_deserializer="json")
    sdf = app.dataframe(topic)
    sdf.update(deliver)
    app.run()  # until SIGTERM / SIGINT


if __name__ == "__main__":  # pragma: no cover
    main()
