"""The public unsubscribe endpoint in process: the confirmation page, and every refusal
that happens before anything is produced (the opt-out itself: tests/integration)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from notifyd.domain.unsubscribe import PATH, UnsubscribeSigner, resolve_key
from notifyd.stream.app import app, settings
from notifyd.web import unsubscribe
from notifyd.web.api import v1 as api
from notifyd.web.auth.store import SqliteStore, resolve_jwt_secret
from notifyd.web.auth.users import error_middleware as errors_mw
from tests.support.web_client import Client, api_client


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(tmp_path / "creds.db", purge_interval_s=0)
    yield s
    await s.close()


@pytest.fixture
async def signer(store: SqliteStore) -> UnsubscribeSigner:
    """The key the web view resolves: configured, or from the JWT secret in the store."""
    return UnsubscribeSigner(await resolve_key(settings, partial(resolve_jwt_secret, settings, store)))


@pytest.fixture
async def client(store: SqliteStore) -> AsyncIterator[Client]:
    async with api_client(store, client_max_size=4096, install=unsubscribe.install) as tc:
        yield tc


async def error(resp: Any) -> tuple[int, str]:
    body = orjson.loads(await resp.read())
    assert set(body) == {"code", "detail"}, body
    return int(resp.status), str(body["code"])


async def test_get_shows_a_confirmation_page(client: Client, signer: UnsubscribeSigner) -> None:
    token = signer.sign("u-1", "orders")
    resp = await client.get(PATH, params={"t": token})
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    assert f'<form method="post" action="{PATH}?t={token}">' in page
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page
    assert "<strong>orders</strong>" in page
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]


async def test_bad_tokens(client: Client, signer: UnsubscribeSigner) -> None:
    forged = UnsubscribeSigner(b"f" * 32).sign("u-1", "orders")
    for method in ("GET", "POST"):
        assert await error(await client.request(method, PATH, params={"t": forged})) == (
            403, "token_rejected")
        assert await error(await client.request(method, PATH, params={"t": "x.y"})) == (
            400, "invalid_token")
        assert await error(await client.request(method, PATH)) == (400, "missing_parameter")


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (b"List-Unsubscribe=Unsubscribe-Everything", "application/x-www-form-urlencoded",
         "invalid_value"),
        (b"\xff\xfe=1", "application/x-www-form-urlencoded", "invalid_form"),
        (b"a=1&&&=", "application/x-www-form-urlencoded", "invalid_form"),
        (b"garbage", "multipart/form-data; boundary=zzz", "invalid_form"),
        (b"--b\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nNo\r\n--b--\r\n",
         "multipart/form-data; boundary=b", "invalid_value"),
        (b'{"List-Unsubscribe": "One-Click"}', "application/json", "invalid_body"),
    ],
)
async def test_post_refuses_other_bodies(
    client: Client, signer: UnsubscribeSigner, body: bytes, content_type: str, code: str
) -> None:
    resp = await client.post(PATH, params={"t": signer.sign("u-1", "orders")}, data=body,
                             headers={"Content-Type": content_type})
    assert await error(resp) == (400, code)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"List-Unsubscribe=One-Click", "application/x-www-form-urlencoded"),
        (b"List-Unsubscribe=One-Click\r\n", "application/x-www-form-urlencoded"),
        (b"", "application/x-www-form-urlencoded"),
        (b"", ""),
        (b"List-Unsubscribe=One-Click", "application/octet-stream"),
        (b"--b\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click"
         b"\r\n--b--\r\n", "multipart/form-data; boundary=b"),
    ],
)
async def test_post_accepts_rfc_8058_bodies(
    client: Client, signer: UnsubscribeSigner, body: bytes, content_type: str
) -> None:
    """Accepted bodies get past every check to the routing step, which has no partition
    assignment here (no broker): 503 ``not_ready``, never a 400."""
    headers = {"Content-Type": content_type} if content_type else {}
    resp = await client.post(PATH, params={"t": signer.sign("u-1", "orders")}, data=body,
                             headers=headers)
    assert await error(resp) == (503, "not_ready")


async def test_without_install_it_is_a_503(store: SqliteStore) -> None:
    webapp = web.Application()
    webapp.middlewares.append(errors_mw)
    webapp.add_routes(api.make_api_routes(app))
    async with TestClient(TestServer(webapp)) as tc:
        resp = await tc.get(PATH, params={"t": "x"})
        assert await error(resp) == (503, "not_ready")
