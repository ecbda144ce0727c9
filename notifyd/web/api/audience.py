"""Subscriptions API: users subscribe themselves to topics, operators manage subscribers.

Writes are commands on ``notifyd.subscriptions`` (:mod:`notifyd.stream.audience`): routed to
the owner of the *user's* partition, produced keyed by the topic (the topic's buckets
are updated), forwarded keyed by the user (the user's list is updated, here), and
answered once both are applied.  The operator's listing of a topic's subscribers is
answered by the owner of the topic's partition, a page at a time.
"""

from __future__ import annotations

from typing import Annotated, Any, cast

import msgspec
from aiohttp import web
from msgspec import Meta

from notifyd.errors import BadRequest
from notifyd.model.responses import (
    SubscribedTopic,
    Subscriber,
    SubscriberPage,
    Subscription,
    SubscriptionList,
)
from notifyd.stream import audience
from notifyd.stream.tables import subscriptions
from notifyd.stream.topics import subscriptions_topic
from notifyd.web.http import caller, command, json_response
from notifyd.web.openapi import Call, Param, Resp, ref
from notifyd.web.registry import registry
from notifyd.web.routing import route

_TOPIC_PARAM = Annotated[
    str,
    Meta(min_length=1, max_length=100, pattern=audience.TOPIC_NAME_PATTERN,
         description="topic name: letters, digits and _ . : -"),
]


async def _change(op: str, topic: str, user_id: str) -> dict[str, Any]:
    msg = audience.command(op, topic, [user_id])
    mine: dict[str, Any] = await command(subscriptions_topic, topic, msg, "subscription change")
    return mine


def _listing(user_id: str, mine: dict[str, Any] | None) -> dict[str, Any]:
    items = [SubscribedTopic(topic=t, subscribed_at=since)
             for t, since in sorted((mine or {}).items())]
    out: dict[str, Any] = msgspec.to_builtins(SubscriptionList(user_id=user_id, topics=items))
    return out


async def _subscribe(call: Call, topic: str, user_id: str) -> web.StreamResponse:
    routed = await route(call.request, "subscriptions", user_id)
    if routed is not None:
        return routed
    mine = await _change("subscribe", topic, user_id)
    # ``mine`` is the user's list with the subscribe applied: the topic is in it.
    return json_response(msgspec.to_builtins(
        Subscription(topic=topic, user_id=user_id, subscribed_at=mine[topic])
    ))


async def _unsubscribe(call: Call, topic: str, user_id: str) -> web.StreamResponse:
    routed = await route(call.request, "subscriptions", user_id)
    if routed is not None:
        return routed
    await _change("unsubscribe", topic, user_id)
    return web.Response(status=204)


_TOPIC_PATH = {"topic": _TOPIC_PARAM}
_WRITE_DOC = (
    "Applied on the topic's and the user's partition before the answer (read your "
    "writes); idempotent."
)


@registry.route(
    "GET", "/api/v1/subscriptions", summary="My topic subscriptions", auth="user",
    tags=("subscriptions",), routed=True,
    responses={200: Resp("The topics I subscribed to", ref("SubscriptionList"))},
)
async def list_my_subscriptions(call: Call) -> web.StreamResponse:
    me = caller(call)
    routed = await route(call.request, "subscriptions", me.user_id)
    if routed is not None:
        return routed
    return json_response(_listing(me.user_id, subscriptions.get(me.user_id)))


@registry.route(
    "PUT", "/api/v1/subscriptions/{topic}", summary="Subscribe me to a topic", auth="user",
    tags=("subscriptions",), routed=True, path_params=_TOPIC_PATH, description=_WRITE_DOC,
    responses={200: Resp("Subscribed", ref("Subscription"))},
)
async def subscribe_me(call: Call) -> web.StreamResponse:
    return await _subscribe(call, call.path["topic"], caller(call).user_id)


@registry.route(
    "DELETE", "/api/v1/subscriptions/{topic}", summary="Unsubscribe me from a topic",
    auth="user", tags=("subscriptions",), routed=True, path_params=_TOPIC_PATH,
    description=_WRITE_DOC, responses={204: Resp("Not subscribed (any more)")},
)
async def unsubscribe_me(call: Call) -> web.StreamResponse:
    return await _unsubscribe(call, call.path["topic"], caller(call).user_id)


@registry.route(
    "GET", "/api/v1/topics/{topic}/subscribers", summary="A topic's subscribers",
    auth="operator", tags=("subscriptions", "admin"), routed=True, path_params=_TOPIC_PATH,
    query=(
        Param("limit", Annotated[int, Meta(ge=1, le=audience.MAX_PAGE)], default=100),
        Param("cursor", Annotated[str, Meta(max_length=300, pattern=audience.CURSOR_PATTERN)],
              "next_cursor of the previous page; the first page without it",
              code="invalid_cursor"),
    ),
    description="Answered by the owner of the topic's partition; `next_cursor` is null "
    "on the last page. `total` counts every subscriber.",
    responses={200: Resp("One page of subscribers", ref("SubscriberPage"))},
)
async def list_topic_subscribers(call: Call) -> web.StreamResponse:
    topic = call.path["topic"]
    routed = await route(call.request, "subscribers", topic)
    if routed is not None:
        return routed
    try:
        items, nxt = audience.page(topic, call.query.get("cursor"), call.query["limit"])
    except audience.InvalidSubscription as exc:
        raise BadRequest(str(exc), code="invalid_cursor") from None
    page = SubscriberPage(
        topic=topic,
        # audience.page writes each subscriber in the shape of Subscriber.
        items=cast(list[Subscriber], items),
        next_cursor=nxt,
        total=audience.subscriber_count(topic),
        limit=call.query["limit"],
    )
    return json_response(msgspec.to_builtins(page))


@registry.route(
    "PUT", "/api/v1/topics/{topic}/subscribers/{user_id}", summary="Subscribe a user",
    auth="operator", tags=("subscriptions", "admin"), routed=True, path_params=_TOPIC_PATH,
    description=_WRITE_DOC, responses={200: Resp("Subscribed", ref("Subscription"))},
)
async def subscribe_user(call: Call) -> web.StreamResponse:
    return await _subscribe(call, call.path["topic"], call.path["user_id"])


@registry.route(
    "DELETE", "/api/v1/topics/{topic}/subscribers/{user_id}", summary="Unsubscribe a user",
    auth="operator", tags=("subscriptions", "admin"), routed=True, path_params=_TOPIC_PATH,
    description=_WRITE_DOC, responses={204: Resp("Not subscribed (any more)")},
)
async def unsubscribe_user(call: Call) -> web.StreamResponse:
    return await _unsubscribe(call, call.path["topic"], call.path["user_id"])
