"""The public unsubscribe endpoint behind every e-mail's ``List-Unsubscribe`` link.

``POST /api/v1/unsubscribe?t=<token>`` is RFC 8058's one-click unsubscribe: a mailbox
provider (or the button of the confirmation page) posts ``List-Unsubscribe=One-Click``
(form-encoded or multipart; an empty body is accepted too), with no cookie and no login.
The signed token (:mod:`notifyd.domain.unsubscribe`) names the user and the category; the
request is routed to the owner of the user's partition, which produces an ``opt_out``
command to ``notifyd.preferences`` and answers once its preferences agent applied it
(read-your-writes, as ``PATCH /api/v1/preferences``).  The agent adds the opt-out to the
current document there, so nothing else the user set is lost; unsubscribing twice
changes nothing the second time.

``GET`` only shows a confirmation page whose button POSTs: link scanners and
prefetchers follow GET links, and must not unsubscribe anyone.

The answer never shows the user's preferences (addresses): only what was opted out.
The inbound side of the ``mailto:`` alternative (reading that mailbox) is not part of
notifyd.
"""

from __future__ import annotations

import asyncio
import email.policy
from email.parser import BytesParser
from functools import partial
from html import escape
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from notifyd.domain.unsubscribe import (
    MAX_TOKEN_CHARS,
    ONE_CLICK,
    PATH,
    UnsubscribeSigner,
    resolve_key,
)
from notifyd.errors import BadRequest, ServiceUnavailable
from notifyd.stream.app import settings
from notifyd.stream.topics import preferences_topic
from notifyd.web.auth.setup import AUTH
from notifyd.web.auth.store import resolve_jwt_secret
from notifyd.web.http import command, json_response
from notifyd.web.openapi import Call, Param, Resp
from notifyd.web.registry import registry
from notifyd.web.routing import route


class _Keys:
    """The link key of this web app, resolved on first use (it may come from the
    credential store, which the auth services open when the server starts)."""

    def __init__(self) -> None:
        self.signer: UnsubscribeSigner | None = None
        self.lock = asyncio.Lock()


KEYS: web.AppKey[_Keys] = web.AppKey("notifyd_unsubscribe_keys", _Keys)

_TOKEN = Param(
    "t",
    {"type": "string", "minLength": 1, "maxLength": MAX_TOKEN_CHARS},
    "the signed token of the e-mail's List-Unsubscribe link",
    required=True,
)
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
#: The pages carry the token in their URL: never cached, never sent on as a Referer,
#: no script, forms only back to this origin.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}
_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["unsubscribed", "category", "channel"],
    "properties": {
        "unsubscribed": {"type": "boolean", "const": True},
        "category": {"type": "string"},
        "channel": {"type": "string", "enum": ["email"]},
    },
}


def install(webapp: web.Application) -> None:
    """Give the web app its (lazily resolved) link key; called before it starts."""
    webapp[KEYS] = _Keys()


async def _signer(request: web.Request) -> UnsubscribeSigner:
    keys = request.app.get(KEYS)
    if keys is None:
        raise ServiceUnavailable("unsubscribe links are not set up here", code="not_ready")
    if keys.signer is None:
        async with keys.lock:
            if keys.signer is None:
                auth = request.app.get(AUTH)
                read = None if auth is None else partial(resolve_jwt_secret, settings, auth.store)
                keys.signer = UnsubscribeSigner(await resolve_key(settings, read))
    return keys.signer


def _page(title: str, text: str, form_action: str | None = None) -> str:
    button = (
        ""
        if form_action is None
        else f'<form method="post" action="{escape(form_action)}">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>body{{font-family:system-ui,sans-serif;"
        "max-width:32rem;margin:3rem auto;padding:0 1rem;line-height:1.5}"
        "button{font-size:1rem;padding:.5rem 1.25rem;cursor:pointer}</style></head>"
        f"<body><h1>{escape(title)}</h1><p>{text}</p>{button}</body></html>"
    )


def _html(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/html", headers=_PAGE_HEADERS)


@registry.route(
    "GET", PATH, summary="Unsubscribe confirmation page", auth="public",
    tags=("preferences",), query=(_TOKEN,), errors=(403, 503),
    description="The page an e-mail's unsubscribe link opens: it names the category and "
    "offers a button that POSTs the same URL. It changes nothing (link scanners "
    "prefetch GET links). A token that is not one is 400 `invalid_token`, a forged or "
    "altered one 403 `token_rejected`.",
    responses={200: Resp("HTML page with the confirmation button", {"type": "string"},
                         content_type="text/html")},
)
async def unsubscribe_page(call: Call) -> web.StreamResponse:
    token = call.query["t"]
    target = (await _signer(call.request)).verify(token)
    action = f"{PATH}?{urlencode({'t': token})}"
    return _html(
        _page(
            "Unsubscribe",
            f"Stop e-mails about <strong>{escape(target.category)}</strong>? Other "
            "categories and other channels stay as they are.",
            form_action=action,
        )
    )


def _form_fields(content_type: str, raw: bytes) -> dict[str, str]:
    """The fields of a form body (urlencoded or multipart), from bytes already read: the
    same bytes are then proxied intact to the partition owner if need be."""
    try:
        if content_type.split(";", 1)[0].strip().lower() == "multipart/form-data":
            head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
            msg = BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
            if not msg.is_multipart() or msg.defects:
                raise ValueError("not a multipart body")
            fields: dict[str, str] = {}
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True)
                if isinstance(name, str) and isinstance(payload, bytes):
                    fields[name] = payload.decode("utf-8").strip()
            return fields
        text = raw.decode("utf-8").strip()
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True)
        return {k: v.strip() for k, v in pairs}
    except (ValueError, UnicodeDecodeError, LookupError):
        raise BadRequest("request body is not valid form data", code="invalid_form") from None


async def _check_body(request: web.Request) -> None:
    """RFC 8058's body is ``List-Unsubscribe=One-Click`` (form-encoded or multipart);
    an empty body is accepted too.  Anything else is a 400."""
    raw = await request.read()  # kept by aiohttp: route() proxies the same bytes
    if not raw.strip():
        return
    if request.content_type in _FORM_TYPES:
        value = _form_fields(request.headers.get("Content-Type", ""), raw).get(
            "List-Unsubscribe"
        )
        if value is not None and value != "One-Click":
            raise BadRequest(
                f"expected {ONE_CLICK}, got List-Unsubscribe={value[:40]}", code="invalid_value"
            )
        return
    if raw.strip() != ONE_CLICK.encode():
        raise BadRequest(
            f"the body must be empty or {ONE_CLICK} (form-encoded)", code="invalid_body"
        )


@registry.route(
    "POST", PATH, summary="Unsubscribe (one-click, RFC 8058)", auth="public",
    tags=("preferences",), query=(_TOKEN,), routed=True, errors=(400, 403, 413),
    description="One-click unsubscribe from the e-mail's `List-Unsubscribe` link: the body "
    f"is `{ONE_CLICK}` (`application/x-www-form-urlencoded` or `multipart/form-data`) or "
    "empty. Opts the token's user out of the token's category on e-mail through the "
    "preferences topic and answers once applied (the next event already sees it); other "
    "opt-outs are kept, a second call changes nothing. No login. A browser (Accept: "
    "text/html) gets a confirmation page instead of JSON.",
    responses={200: Resp("Opted out (already applied)", _RESULT_SCHEMA)},
)
async def unsubscribe(call: Call) -> web.StreamResponse:
    request = call.request
    # Token and body checked here first: whichever worker gets a bad request refuses it.
    target = (await _signer(request)).verify(call.query["t"])
    await _check_body(request)
    routed = await route(request, "preferences", target.user_id)
    if routed is not None:
        return routed
    await command(
        preferences_topic,
        target.user_id,
        {
            "op": "opt_out",
            "user_id": target.user_id,
            "category": target.category,
            "channel": target.channel,
        },
        "unsubscribe",
    )
    if "text/html" in request.headers.get("Accept", ""):
        return _html(
            _page(
                "Unsubscribed",
                f"You will no longer get e-mails about <strong>{escape(target.category)}"
                "</strong>. You can change this in your notification preferences.",
            )
        )
    return json_response(
        {"unsubscribed": True, "category": target.category, "channel": target.channel}
    )
