"""The OpenAPI document: valid 3.1 (and 3.0 for Swagger UI 4), identical to the routes
the web view registers, and the request checks declared with it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from openapi_spec_validator.validation.validators import OpenAPIV30SpecValidator

from notifyd.errors import BadRequest
from notifyd.stream.app import app
from notifyd.web.api import v1 as api
from notifyd.web.auth.setup import AUTH, is_public
from notifyd.web.auth.store import SqliteStore
from notifyd.web.openapi import Param, parse_query
from notifyd.web.openapi import validate as check
from tests.support.web_client import api_client

METHODS = {"GET", "PUT", "POST", "PATCH", "DELETE"}


def router_routes() -> set[tuple[str, str]]:
    webapp: web.Application = app.web.web_app  # type: ignore[attr-defined]
    out = set()
    for r in webapp.router.routes():
        if isinstance(r.resource, web.StaticResource) or r.method not in METHODS:
            continue  # static assets; HEAD is implied by GET
        assert r.resource is not None
        out.add((r.method, r.resource.canonical))
    return out


def doc_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item}


def test_document_is_valid_openapi_31() -> None:
    doc = api.openapi_document()
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # detects 3.1 from the document


def test_document_and_router_are_the_same_routes() -> None:
    assert doc_routes(api.openapi_document()) == router_routes()


def test_no_static_routes() -> None:
    """Swagger UI assets go through a registry handler (JSON 404s), not a static route."""
    webapp: web.Application = app.web.web_app  # type: ignore[attr-defined]
    assert not [r for r in webapp.router.routes() if isinstance(r.resource, web.StaticResource)]
    assert ("GET", "/docs/static/{asset}") in router_routes()


def test_compat_30_rendering_is_valid_openapi_30() -> None:
    doc30 = api.to_openapi_30(api.openapi_document())
    assert doc30["openapi"] == "3.0.3"
    OpenAPIV30SpecValidator(doc30).validate()
    # Nullable fields survive the conversion.
    email = doc30["components"]["schemas"]["User"]["properties"]["email"]
    assert email == {"type": "string", "nullable": True}
    assert doc_routes(doc30) == doc_routes(api.openapi_document())


def test_a_broken_document_is_caught() -> None:
    doc = api.openapi_document()
    broken = {**doc, "paths": {"/x": {"get": {"responses": {"200": {}}}}}}
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def test_document_details() -> None:
    doc = api.openapi_document()
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    error = doc["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "detail"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["summary"] and op["operationId"], (method, path)
            auth = op["x-notifyd-auth"]
            assert (op["security"] == []) == (auth == "public"), (method, path)
            if auth != "public":
                assert "401" in op["responses"], (method, path)
            if auth == "operator":
                assert "403" in op["responses"], (method, path)
            if "requestBody" in op:
                assert {"400", "413"} <= set(op["responses"]), (method, path)
    ops = {op["operationId"] for item in doc["paths"].values() for op in item.values()}
    assert len(ops) == sum(len(item) for item in doc["paths"].values())  # unique


def test_public_endpoints_match_the_auth_middleware() -> None:
    """What the document calls public is what the middleware lets through anonymously."""
    for ep in api.registry.endpoints:
        path = ep.path.replace("{", "").replace("}", "")
        request = make_mocked_request(ep.method, path)
        assert is_public(request) == (ep.auth == "public"), (ep.method, ep.path)


# --- request checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        ({"password": "x" * 10, "email": "a@b.example"}, "missing_field", "'username'"),
        ({"username": 5, "password": "x" * 10, "email": "a@b.example"}, "wrong_type",
         "'username' must be string, not integer"),
        ({"username": "abc", "password": "short", "email": "a@b.example"}, "invalid_value",
         "'password'"),
        ({"username": "abc", "password": "x" * 10, "email": "a@b.example", "admin": True},
         "unknown_field", "'admin'"),
        ({"username": "abc", "password": "x" * 10, "email": "a@b.example", "phone": 1},
         "wrong_type", "'phone'"),
    ],
)
def test_body_validation_names_the_field(body: dict[str, Any], code: str, needle: str) -> None:
    with pytest.raises(BadRequest) as info:
        check(api.ref("UserCreate"), body)
    assert info.value.code == code
    assert needle in info.value.detail


def test_nested_paths_in_errors() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "array",
                                                     "items": {"type": "boolean"}}}}
    with pytest.raises(BadRequest) as info:
        check(schema, {"a": [True, "no"]})
    assert "field 'a[1]' must be boolean" in info.value.detail


def test_query_parsing() -> None:
    params = (
        Param("unread", {"type": "boolean"}),
        Param("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}),
        Param("topic", {"type": "string", "enum": ["events", "deliveries"]}),
    )
    assert parse_query({}, params) == {"limit": 50}
    assert parse_query({"unread": "TRUE", "limit": "7"}, params) == {"unread": True, "limit": 7}
    for bad in ({"unread": "maybe"}, {"limit": "x"}, {"limit": "0"}, {"limit": "201"},
                {"topic": "other"}):
        with pytest.raises(BadRequest) as info:
            parse_query(bad, params)
        assert info.value.code == "invalid_parameter"
        assert next(iter(bad)) in info.value.detail


# --- the handlers in process (no Kafka: only paths that produce nothing) ---------------


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    store = await SqliteStore.open(tmp_path / "creds.db", purge_interval_s=0)
    try:
        async with api_client(store, client_max_size=2048) as tc:
            yield tc
    finally:
        await store.close()


async def _error(resp: Any, status: int, code: str) -> str:
    assert resp.status == status, await resp.text()
    body = orjson.loads(await resp.read())
    assert set(body) == {"code", "detail"}
    assert body["code"] == code, body
    return str(body["detail"])


async def test_bad_bodies_are_json_400s(client: TestClient[web.Request, web.Application]) -> None:
    url = "/api/v1/users"
    await _error(await client.post(url, data=b"{not json"), 400, "invalid_json")
    await _error(await client.post(url, data=b"\xff\xfe"), 400, "invalid_json")
    await _error(await client.post(url, data=b""), 400, "invalid_json")
    detail = await _error(await client.post(url, data=b"[1, 2]"), 400, "invalid_body")
    assert "array" in detail
    await _error(await client.post(url, json="text"), 400, "invalid_body")
    detail = await _error(
        await client.post(url, json={"username": "abc", "password": 3, "email": "a@b.example"}),
        400, "wrong_type",
    )
    assert "'password'" in detail
    detail = await _error(
        await client.post(url, json={"username": "abc", "password": "x" * 10,
                                     "email": "a@b.example", "phone": "+1"}),
        400, "invalid_phone",
    )
    big = orjson.dumps({"username": "abc", "password": "x" * 4000, "email": "a@b.example"})
    await _error(await client.post(url, data=big), 413, "payload_too_large")


async def test_token_form_and_json(client: TestClient[web.Request, web.Application]) -> None:
    svc = client.app[AUTH]
    await svc.users.create("carol", "correct horse battery", "carol@example.com")
    resp = await client.post("/api/v1/auth/token",
                             data={"username": "carol", "password": "correct horse battery",
                                   "grant_type": "password"})
    assert resp.status == 200
    body = await resp.json()
    assert body["token_type"] == "bearer" and body["refresh_token"]
    assert resp.headers["Cache-Control"] == "no-store"
    resp = await client.post("/api/v1/auth/token",
                             json={"username": "carol", "password": "wrong password"})
    await _error(resp, 401, "invalid_credentials")
    resp = await client.post("/api/v1/auth/token", data="username=a&username=b&password=c",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    await _error(resp, 400, "invalid_value")
    me = await client.get("/api/v1/users/me",
                          headers={"Authorization": f"Bearer {body['access_token']}"})
    assert (await me.json())["username"] == "carol"


async def test_oidc_not_configured(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.get("/api/v1/auth/login", allow_redirects=False)
    await _error(resp, 404, "oidc_not_configured")
    resp = await client.get("/api/v1/auth/callback?state=a&code=b")
    await _error(resp, 404, "oidc_not_configured")


async def test_auth_and_parameters_checked_before_handlers(
    client: TestClient[web.Request, web.Application],
) -> None:
    await _error(await client.get("/api/v1/notifications"), 401, "not_authenticated")
    await _error(await client.get("/api/v1/admin/dlq"), 401, "not_authenticated")
    svc = client.app[AUTH]
    user = await svc.users.create("dave", "correct horse battery", "dave@example.com")
    token = (await svc.tokens.issue(user))["access_token"]
    h = {"Authorization": f"Bearer {token}"}
    await _error(await client.get("/api/v1/admin/dlq", headers=h), 403, "operator_required")
    await _error(await client.get("/api/v1/users/x/preferences", headers=h), 403,
                 "operator_required")
    detail = await _error(await client.get("/api/v1/notifications?limit=0", headers=h), 400,
                          "invalid_parameter")
    assert "limit" in detail
    long_id = "x" * 201
    await _error(await client.get(f"/api/v1/notifications/{long_id}", headers=h), 400,
                 "invalid_parameter")
    await _error(await client.patch("/api/v1/notifications/n1", json={}, headers=h), 400,
                 "missing_field")
    await _error(await client.patch("/api/v1/notifications/n1", json={"read": "yes"},
                                    headers=h), 400, "wrong_type")
    await _error(await client.put("/api/v1/preferences", json={"channels": {"fax": True}},
                                  headers=h), 400, "invalid_preferences")
    await _error(await client.post("/api/v1/notifications", json={"title": "t",
                                                                  "channels": ["fax"]},
                                   headers=h), 400, "unknown_channel")
    await _error(await client.post("/api/v1/notifications", json={"title": 5}, headers=h),
                 400, "wrong_type")
    await _error(await client.delete("/api/v1/users/me", headers=h), 405, "method_not_allowed")


async def test_docs_and_document_served(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/docs")
    assert resp.status == 200 and resp.content_type == "text/html"
    html = await resp.text()
    assert "/api/v1/openapi.json" in html and "/docs/static/swagger-ui-bundle.js" in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js",
                  "index.css", "favicon-32x32.png"):
        r = await client.get(f"/docs/static/{asset}")
        assert r.status == 200, asset
    await _error(await client.get("/docs/static/nope.js"), 404, "not_found")
    await _error(await client.get("/docs/static/..%2Fapi.py"), 404, "not_found")
    doc = await (await client.get("/api/v1/openapi.json")).json()
    assert doc == orjson.loads(orjson.dumps(api.openapi_document()))
    doc30 = await (await client.get("/api/v1/openapi.json?compat=3.0")).json()
    assert doc30["openapi"] == "3.0.3"


def test_faust_builtin_table_views_are_off() -> None:
    # Mounted by Faust when the server starts (after setup), outside the registry.
    enabled = {bp for _, bp in app.web.blueprints._enabled}  # type: ignore[attr-defined]
    assert enabled <= {"faust.web.apps.production_index:blueprint"}
