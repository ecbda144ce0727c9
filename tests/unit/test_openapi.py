"""The OpenAPI document: valid 3.1, identical to the routes the web view registers,
and the request checks declared with it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from jsonschema import Draft202012Validator
from msgspec import Meta
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from notifyd.domain.fallback import check_extras
from notifyd.errors import BadRequest, InvalidEvent
from notifyd.model import limits
from notifyd.model.api import UserCreate
from notifyd.model.records import parse_event
from notifyd.stream.app import app
from notifyd.web import openapi
from notifyd.web.api import v1 as api
from notifyd.web.auth.setup import AUTH, is_public
from notifyd.web.auth.store import SqliteStore
from notifyd.web.openapi import Param, parse_query
from notifyd.web.openapi import check_body as check
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


def test_path_parameters_are_documented_as_checked() -> None:
    """The schema a path parameter is checked against is the documented one (an id:
    1 to 200 characters unless declared), and its 400 is documented."""
    doc = api.openapi_document()
    op = doc["paths"]["/api/v1/notifications/{notification_id}"]["get"]
    [param] = [p for p in op["parameters"] if p["in"] == "path"]
    assert param["schema"] == {"type": "string", "minLength": 1, "maxLength": 200}
    assert "400" in op["responses"]


def test_links_name_real_operations_and_their_parameters() -> None:
    doc = api.openapi_document()
    ops = {op["operationId"]: op for item in doc["paths"].values() for op in item.values()}
    links = [link for item in doc["paths"].values() for op in item.values()
             for resp in op["responses"].values() for link in resp.get("links", {}).values()]
    assert {link["operationId"] for link in links} >= {
        "get_notification", "update_notification", "delete_notification"}
    for link in links:
        op = ops[link["operationId"]]
        assert set(link["parameters"]) == {p["name"] for p in op.get("parameters", ())
                                           if p["in"] == "path"}, link


def test_a_literal_segment_is_not_a_parameter_value() -> None:
    """OpenAPI: /notifications/stream is that path, never /notifications/{id} with id
    "stream"; the router is told so."""
    reg = api.registry
    assert reg.router_path("/api/v1/notifications/{notification_id}") == (
        "/api/v1/notifications/{notification_id:(?!(?:stream)(?:/|$))[^{}/]+}")
    assert reg.router_path("/api/v1/users/{user_id}/preferences") == (
        "/api/v1/users/{user_id}/preferences")


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
        check(UserCreate, body)
    assert info.value.code == code
    assert needle in info.value.detail


class _Flags(msgspec.Struct):
    a: list[bool] | None = None


def test_nested_paths_in_errors() -> None:
    with pytest.raises(BadRequest) as info:
        check(_Flags, {"a": [True, "no"]})
    assert "field 'a[1]' must be boolean" in info.value.detail


def test_query_parsing() -> None:
    params = (
        Param("unread", bool),
        Param("limit", Annotated[int, Meta(ge=1, le=200)], default=50),
        Param("topic", Literal["events", "deliveries"]),
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


async def test_405_allows_what_the_document_lists(
    client: TestClient[web.Request, web.Application],
) -> None:
    svc = client.app[AUTH]
    user = await svc.users.create("erin", "correct horse battery", "erin@example.com")
    h = {"Authorization": f"Bearer {(await svc.tokens.issue(user))['access_token']}"}
    doc = api.openapi_document()
    for method in ("DELETE", "PATCH", "OPTIONS"):
        resp = await client.request(method, "/api/v1/notifications/stream", headers=h)
        await _error(resp, 405, "method_not_allowed")
        allowed = set(resp.headers["Allow"].split(",")) - {"HEAD"}  # HEAD: implied by GET
        assert allowed == {m.upper() for m in doc["paths"]["/api/v1/notifications/stream"]}
    # The template still serves every other id.
    await _error(await client.delete("/api/v1/notifications/streams", headers=h), 503,
                 "not_ready")


async def test_oidc_callback_parameters_are_rfc_6749_ascii(
    client: TestClient[web.Request, web.Application],
) -> None:
    for query in ("state=a&code=%C3%A4", "error=%22quoted%22", "error_description=%5C"):
        detail = await _error(await client.get(f"/api/v1/auth/callback?{query}"), 400,
                              "invalid_parameter")
        assert "invalid format" in detail
    await _error(await client.get("/api/v1/auth/callback?error=x&error_description=a%20b"),
                 404, "oidc_not_configured")


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
    # Swagger UI 5 reads the 3.1 document itself: no 3.0 rendering is served any more.
    assert '"/api/v1/openapi.json"' in html and "compat" not in html


def test_faust_builtin_table_views_are_off() -> None:
    # Mounted by Faust when the server starts (after setup), outside the registry.
    enabled = {bp for _, bp in app.web.blueprints._enabled}  # type: ignore[attr-defined]
    assert enabled <= {"faust.web.apps.production_index:blueprint"}


# --- the schemas are the models' ----------------------------------------------------


def test_component_schemas_are_generated_from_the_models() -> None:
    doc = api.openapi_document()
    schemas = doc["components"]["schemas"]
    _, generated = msgspec.json.schema_components(
        openapi.MODELS, ref_template="#/components/schemas/{name}"
    )
    for name, schema in generated.items():
        assert schemas[name]["properties"] == schema["properties"], name
    bodies = {
        op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        for item in doc["paths"].values() for op in item.values() if "requestBody" in op
    }
    assert bodies <= {m.__name__ for m in openapi.MODELS}
    assert {"NotificationCreate", "PreferencesInput", "UserCreate"} <= bodies


def test_schemas_state_the_handlers_constraints() -> None:
    schemas = api.openapi_document()["components"]["schemas"]

    def prop(model: str, name: str) -> dict[str, Any]:
        schema = schemas[model]["properties"][name]
        return next(s for s in schema.get("anyOf", [schema]) if s != {"type": "null"})

    # schemathesis found these accepted by the schema and refused by the handler
    for name in ("event_id", "user_id"):
        assert prop("NotificationCreate", name)["minLength"] == 1
        assert prop("NotificationCreate", name)["pattern"] == r"\S"
    assert prop("UserCreate", "phone")["pattern"] == limits.E164_PATTERN
    assert prop("PreferencesInput", "user_id")["readOnly"] is True
    # limits come from one place
    assert prop("NotificationCreate", "title")["maxLength"] == limits.MAX_TITLE_LEN
    assert prop("NotificationCreate", "body")["maxLength"] == limits.MAX_BODY_LEN
    assert prop("PreferencesInput", "push_tokens")["maxItems"] == limits.MAX_TOKENS
    assert prop("PreferencesInput", "digests")["maxItems"] == limits.MAX_DIGEST_PREFERENCES


async def test_preferences_body_is_enforced(
    client: TestClient[web.Request, web.Application],
) -> None:
    svc = client.app[AUTH]
    user = await svc.users.create("erin", "correct horse battery", "erin@example.com")
    h = {"Authorization": f"Bearer {(await svc.tokens.issue(user))['access_token']}"}
    for body in ({"updated_at": "yesterday"}, {"push_tokens": ["t"] * 21},
                 {"quiet_hours": {"start": "22:00"}}, {"favourite_colour": "blue"},
                 {"schema_version": 99}):
        resp = await client.patch("/api/v1/preferences", json=body, headers=h)
        await _error(resp, 400, "invalid_preferences")


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"title": "t"}, True),
        ({"template": "welcome"}, True),
        ({"body": "b", "send_at": None, "delay_s": 5}, True),
        ({}, False),
        ({"title": ""}, False),
        ({"title": "t", "event_id": ""}, False),
        ({"title": "t", "event_id": "   "}, False),
        ({"title": "t", "send_at": "2030-01-01T00:00:00Z", "delay_s": 5}, False),
        ({"title": "t", "callback_url": "ftp://x.example"}, False),
    ],
)
def test_notification_schema_agrees_with_the_handler(body: dict[str, Any], valid: bool) -> None:
    """The document refuses what the handler refuses (schemathesis' positive/negative
    checks), and the handler's parser agrees on these."""
    schemas = api.openapi_document()["components"]["schemas"]
    root = {"$ref": "#/components/schemas/NotificationCreate", "components": {"schemas": schemas}}
    assert Draft202012Validator(root).is_valid(body) is valid
    event = {"event_id": "e", "user_id": "u", **body}
    try:
        check_extras(parse_event(orjson.dumps(event)))
        accepted = True
    except InvalidEvent:
        accepted = False
    assert accepted is valid
