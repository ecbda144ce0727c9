"""Unsubscribe links: signing and verifying tokens, the key, the links and the header,
the opt-out they apply (``add_opt_out``, and the ``opt_out`` op of the preferences agent)."""

from __future__ import annotations

import base64
import uuid
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError

from notifyd.config import Settings
from notifyd.domain.unsubscribe import (
    AUDIENCE,
    MAX_HEADER_LINE,
    PATH,
    Unsubscribe,
    UnsubscribeLinks,
    UnsubscribeSigner,
    configured_key,
    derive_key,
    links_for,
    mailto_address,
    resolve_key,
)
from notifyd.errors import BadRequest, Forbidden
from notifyd.model.records import InvalidPreferences, add_opt_out
from notifyd.stream.topics import partition_for
from notifyd.web.auth.store import SqliteStore, resolve_jwt_secret
from tests.support.app import app_agent
from tests.support.dead_letters import DeadLetters
from tests.support.waiting import until

KEY = b"k" * 32
signer = UnsubscribeSigner(KEY)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- tokens ------------------------------------------------------------------------------


def test_sign_and_verify_round_trip() -> None:
    token = signer.sign("u-1", "orders")
    assert signer.verify(token) == Unsubscribe("u-1", "orders", "email")
    # Deterministic: a re-sent message carries the same link.
    assert signer.sign("u-1", "orders") == token
    assert signer.sign("u-2", "orders") != token
    assert signer.sign("u-1", "marketing") != token


def test_user_ids_with_any_character_round_trip() -> None:
    for user in ("a:b", "ü-ñ 漢字", "x" * 200, "a/b?c=d&e#f"):
        assert signer.verify(signer.sign(user, "c.d:e-f_g")).user_id == user


def reason(token: str, s: UnsubscribeSigner = signer) -> tuple[int, str]:
    with pytest.raises((BadRequest, Forbidden)) as info:
        s.verify(token)
    return info.value.status, info.value.code


def test_another_users_id_under_the_same_signature_is_refused() -> None:
    """The replay the signature must stop: u-1's link edited to name u-2."""
    header, payload, sig = signer.sign("u-1", "orders").split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "u-2"
    forged = ".".join((header, b64(orjson.dumps(claims)), sig))
    assert reason(forged) == (403, "token_rejected")
    claims["sub"], claims["cat"] = "u-1", "security"  # or another category
    assert reason(".".join((header, b64(orjson.dumps(claims)), sig))) == (403, "token_rejected")


def test_flipped_signature_is_refused() -> None:
    token = signer.sign("u-1", "orders")
    head, _, sig = token.rpartition(".")
    flipped = sig[:5] + ("A" if sig[5] != "A" else "B") + sig[6:]
    assert reason(f"{head}.{flipped}") == (403, "token_rejected")
    assert reason(f"{head}.") == (403, "token_rejected")


def test_other_keys_and_other_tokens_are_refused() -> None:
    other = UnsubscribeSigner(b"o" * 32)
    assert reason(other.sign("u-1", "orders")) == (403, "token_rejected")
    # A JWT of the same key for another audience (e.g. an access token) is not a link.
    access = jwt.encode({"sub": "u-1", "aud": "notifyd-api", "cat": "x", "ch": "email"}, KEY)
    assert reason(access) == (403, "token_rejected")
    # Missing claims, wrong channel, unsigned ("alg": "none").
    assert reason(jwt.encode({"aud": AUDIENCE, "sub": "u-1"}, KEY)) == (403, "token_rejected")
    bad_channel = {"aud": AUDIENCE, "sub": "u", "cat": "c", "ch": "fax"}
    assert reason(jwt.encode(bad_channel, KEY)) == (403, "token_rejected")
    none_alg = jwt.encode({"aud": AUDIENCE, "sub": "u", "cat": "c", "ch": "email"}, None, "none")
    assert reason(none_alg) == (403, "token_rejected")
    assert reason("e30.e30.") == (403, "token_rejected")  # {} . {} . no signature


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 5000, "..."])
def test_what_is_not_a_token_is_a_400(token: str) -> None:
    assert reason(token) == (400, "invalid_token")


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        UnsubscribeSigner(b"short")
    with pytest.raises(ValidationError, match="32 bytes"):
        Settings(unsubscribe_secret="too-short")


# --- the key -------------------------------------------------------------------------------


def test_key_is_the_configured_secret_else_derived_from_the_jwt_secret() -> None:
    jwt_secret = "j" * 40
    derived = configured_key(Settings(jwt_secret=jwt_secret))
    assert derived == derive_key(jwt_secret) and len(derived) == 32
    assert derived != jwt_secret.encode()  # not the access-token key itself
    assert derive_key("x" * 40) != derived
    own = "u" * 32
    assert configured_key(Settings(jwt_secret=jwt_secret, unsubscribe_secret=own)) == own.encode()
    assert configured_key(Settings()) is None


async def test_key_from_the_jwt_secret_shared_through_the_store(tmp_path: Path) -> None:
    settings = Settings(credential_store_url=f"sqlite:///{tmp_path / 'creds.db'}")
    store = await SqliteStore.open(tmp_path / "creds.db", purge_interval_s=0)
    try:
        shared = await resolve_jwt_secret(settings, store)
        assert await resolve_key(settings, partial(resolve_jwt_secret, settings, store)) == (
            derive_key(shared)
        )
    finally:
        await store.close()
    # Without a store at hand (the SMTP provider): the app's reader opens the configured one.
    assert await resolve_key(settings) == derive_key(shared)


# --- links and the header -----------------------------------------------------------------


def test_links_for_a_user_and_category() -> None:
    settings = Settings(public_url="https://n.example.com/", smtp_from="Shop <shop@example.com>")
    links = links_for(settings, signer, "u-1", "orders")
    url = urlsplit(links.url)
    assert (url.scheme, url.netloc, url.path) == ("https", "n.example.com", PATH)
    [token] = parse_qs(url.query)["t"]
    assert signer.verify(token) == Unsubscribe("u-1", "orders")
    assert links.mailto is not None
    to, _, query = links.mailto.removeprefix("mailto:").partition("?")
    assert to == "shop@example.com"
    assert unquote(parse_qs(query)["subject"][0]) == f"unsubscribe {token}"
    assert " " not in links.mailto


def test_public_url_and_mailto_defaults() -> None:
    s = Settings(web_host="127.0.0.1", web_port=7000)
    assert s.resolved_public_url == "http://127.0.0.1:7000"
    s = Settings(web_canonical_url="http://w1:6066/")
    assert s.resolved_public_url == "http://w1:6066"
    assert mailto_address(Settings(smtp_from="notifyd@localhost")) == "notifyd@localhost"
    assert mailto_address(Settings(unsubscribe_mailto="leave@example.com")) == "leave@example.com"
    assert mailto_address(Settings(smtp_from="no address")) is None
    for bad in ("a b@example.com", "x@y>,<https://evil"):
        with pytest.raises(ValidationError):
            Settings(unsubscribe_mailto=bad)
    with pytest.raises(ValidationError):
        Settings(public_url="https://x.example\r\nBcc: a@b.c")


def test_header_is_one_uri_per_line_within_rfc_5322_limits() -> None:
    links = UnsubscribeLinks(url="https://h/u?t=x", mailto="mailto:a@b?subject=y")
    assert links.header_value() == "<https://h/u?t=x>,\n <mailto:a@b?subject=y>"
    assert UnsubscribeLinks(url="https://h/u", mailto=None).header_value() == "<https://h/u>"
    long = "x" * MAX_HEADER_LINE
    # A mailto too long for a line is left out; a web link too long means no header.
    assert UnsubscribeLinks(url="https://h/u", mailto=long).header_value() == "<https://h/u>"
    assert UnsubscribeLinks(url=long, mailto="mailto:a@b").header_value() is None


# --- the opt-out it applies ------------------------------------------------------------------


def test_add_opt_out_keeps_every_other_opt_out() -> None:
    current = {"opt_out": {"marketing": ["sms"], "news": ["*"]}, "email": "a@b.c"}
    assert add_opt_out(current, "marketing", "email") == {
        "marketing": ["sms", "email"],
        "news": ["*"],
    }
    assert current["opt_out"] == {"marketing": ["sms"], "news": ["*"]}  # not mutated
    assert add_opt_out(current, "orders", "email") == {
        "marketing": ["sms"],
        "news": ["*"],
        "orders": ["email"],
    }
    assert add_opt_out(None, "orders", "email") == {"orders": ["email"]}


def test_add_opt_out_already_covered_is_none() -> None:
    assert add_opt_out({"opt_out": {"orders": ["email"]}}, "orders", "email") is None
    assert add_opt_out({"opt_out": {"news": ["*"]}}, "news", "email") is None
    assert add_opt_out({"opt_out": {"*": ["email"]}}, "orders", "email") is None
    assert add_opt_out({"opt_out": {"*": ["sms"]}}, "orders", "email") == {
        "*": ["sms"],
        "orders": ["email"],
    }


@pytest.mark.parametrize(("category", "channel"), [("*", "email"), ("a b", "email"),
                                                   (None, "email"), ("x", "fax"), ("x", None)])
def test_add_opt_out_rejects_bad_input(category: Any, channel: Any) -> None:
    with pytest.raises(InvalidPreferences):
        add_opt_out(None, category, channel)


async def test_preferences_agent_applies_opt_out_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``opt_out`` op: added to what is there, idempotent, answered to the waiter;
    a bad one is a dead letter, not a crash."""
    preferences_agent = app_agent("preferences")
    from notifyd.stream.tables import preferences
    from notifyd.stream.waiters import waiters

    dlq = DeadLetters().install(monkeypatch)
    user = f"u-{uuid.uuid4().hex[:8]}"
    part = partition_for(user)

    async def put(msg: dict[str, Any]) -> Any:
        request_id, fut = waiters.create()
        await agent.put(
            orjson.dumps({**msg, "user_id": user, "request_id": request_id}),
            key=user.encode(),
            partition=part,
        )
        return await waiters.wait(request_id, fut, 5)

    async with preferences_agent.test_context() as agent:
        doc = await put({"op": "put", "fields": {"email": "a@b.example",
                                                 "opt_out": {"marketing": ["sms"]}}})
        assert doc["opt_out"] == {"marketing": ["sms"]}
        doc = await put({"op": "opt_out", "category": "orders", "channel": "email"})
        assert doc["opt_out"] == {"marketing": ["sms"], "orders": ["email"]}
        assert doc["email"] == "a@b.example"
        first_update = doc["updated_at"]
        again = await put({"op": "opt_out", "category": "orders", "channel": "email"})
        assert again == doc and again["updated_at"] == first_update  # nothing written
        assert preferences.get(user)["opt_out"] == {"marketing": ["sms"], "orders": ["email"]}
        await agent.put(
            orjson.dumps({"op": "opt_out", "user_id": user, "category": "*", "channel": "email"}),
            key=user.encode(),
            partition=part,
        )
        await until(lambda: bool(dlq.records))
    assert dlq.reasons() == ["invalid_preferences: opt_out: invalid category '*'"]


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.from_regex(r"[A-Za-z0-9_\-]{0,80}(\.[A-Za-z0-9_\-=]{0,80}){2}"))
def test_any_text_is_a_clear_refusal(token: str) -> None:
    """Whatever arrives as ``t`` is refused with a 400 or 403, never another exception."""
    with pytest.raises((BadRequest, Forbidden)):
        signer.verify(token)
