"""Sandbox delivery providers: an SMS/push/webhook HTTP API (the SMTP sink is in ``smtp``).

It plays the remote side of every channel for tests, benchmarks and demos, and
behaves like a careful real provider: it validates the channel rules, honours
``Idempotency-Key`` (a replay gets the original answer with HTTP 200 and is not
delivered again), and can inject faults (503 + ``Retry-After``, latency, and
"lost acks": delivered but answered 503, the case idempotency exists for; 429 +
``Retry-After`` on demand, and requests in flight per kind, through ``/v1/_load``).

It keeps a ledger of unique deliveries per kind and counts every raw request, so
tests can assert "exactly once" (one delivery) despite "at least once" (several
receipts).  With ``ledger_path`` every request is also appended as a JSON line,
flushed at once, so a crash test can read it after killing processes.

Run standalone::

    python -m notifyd.tools.sandbox --port 8025 --smtp-port 2525 --fail-rate 0.1 --latency-ms 50
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from aiohttp import web

from notifyd.domain.channel_rules import segment_fits, sms_segments
from notifyd.model.contact import InvalidContact, e164
from notifyd.providers.webhook import verify

log = logging.getLogger("notifyd.tools.sandbox")

KINDS: tuple[str, ...] = ("sms", "push", "webhook")


# ---------------------------------------------------------------------------------------
# HTTP provider API
# ---------------------------------------------------------------------------------------


class Reject(Exception):
    """A request the sandbox refuses: answered as ``{code, detail}`` with ``status``."""

    def __init__(
        self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


@dataclass
class Ledger:
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    receipts: int = 0


class SandboxState:
    """Mutable state of one sandbox app: fault settings, ledgers, idempotency replies."""

    def __init__(
        self,
        *,
        fail_rate: float = 0.0,
        latency_ms: float = 0,
        jitter_ms: float = 0,
        lost_ack_rate: float = 0.0,
        seed: int | None = None,
        webhook_secret: bytes | None = None,
        api_token: str | None = None,
        ledger_path: Path | None = None,
    ) -> None:
        self.fail_rate = fail_rate
        self.latency_ms = latency_ms
        self.jitter_ms = jitter_ms
        self.lost_ack_rate = lost_ack_rate
        self.rng = random.Random(seed)
        self.webhook_secret = webhook_secret
        self.api_token = api_token
        self.ledger_path = ledger_path
        self.ledgers: dict[str, Ledger] = {k: Ledger() for k in KINDS}
        #: (kind, idempotency key) -> body of the original successful answer.
        self.replies: dict[tuple[str, str], dict[str, Any]] = {}
        self._seq = 0
        self._file: IO[bytes] | None = None
        self.load = Load()

    def config(self) -> dict[str, Any]:
        return {
            "fail_rate": self.fail_rate,
            "latency_ms": self.latency_ms,
            "jitter_ms": self.jitter_ms,
            "lost_ack_rate": self.lost_ack_rate,
        }

    def configure(self, changes: Mapping[str, Any]) -> None:
        """Apply a ``/v1/_control`` document; raises Reject on a bad value."""
        unknown = set(changes) - set(self.config())
        if unknown:
            raise Reject(422, "unknown_field", f"unknown field(s): {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise Reject(422, "wrong_type", f"{name} must be a number")
            if name.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise Reject(422, "out_of_range", f"{name} must be between 0 and 1")
            if name.endswith("_ms") and value < 0:
                raise Reject(422, "out_of_range", f"{name} must not be negative")
        for name, value in changes.items():
            setattr(self, name, value)

    def reset(self) -> None:
        self.ledgers = {k: Ledger() for k in KINDS}
        self.replies.clear()
        self.load = Load()

    def next_id(self, kind: str) -> str:
        self._seq += 1
        return f"{kind}_{self._seq:06d}_{self.rng.getrandbits(32):08x}"

    async def delay(self) -> None:
        total = self.latency_ms + (self.rng.uniform(0, self.jitter_ms) if self.jitter_ms else 0)
        if total > 0:
            await asyncio.sleep(total / 1000)

    # The raw receipt log: opened once, one flushed line per request.
    def open_log(self) -> None:
        if self.ledger_path is not None and self._file is None:
            self.ledger_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.ledger_path.open("ab", buffering=0)

    def close_log(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()

    def log_receipt(self, entry: dict[str, Any]) -> None:
        if self._file is not None:
            # Unbuffered single write: a killed process leaves whole lines behind.
            self._file.write(orjson.dumps(entry) + b"\n")


class Load:
    """Requests in flight per kind (and the most seen at once), and injected 429s.

    ``rate_limit(kind, count, retry_after)`` makes the next ``count`` requests of
    ``kind`` answer 429 with that ``Retry-After`` (seconds or an HTTP-date); each such
    answer is kept in ``rate_limited`` with the time it was given.
    """

    def __init__(self) -> None:
        self.inflight: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.max_inflight: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.pending_429: dict[str, tuple[int, str]] = {}
        self.rate_limited: list[dict[str, Any]] = []

    def enter(self, kind: str) -> None:
        self.inflight[kind] += 1
        self.max_inflight[kind] = max(self.max_inflight[kind], self.inflight[kind])

    def leave(self, kind: str) -> None:
        self.inflight[kind] -= 1

    def rate_limit(self, kind: str, count: int, retry_after: str) -> None:
        if kind not in KINDS:
            raise Reject(422, "unknown_kind", f"kind must be one of {KINDS}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise Reject(422, "wrong_type", "count must be a non-negative integer")
        self.pending_429[kind] = (count, retry_after)

    def check_rate_limit(self, kind: str, received_at: float) -> None:
        """Raise the injected 429 if one is pending for ``kind``."""
        count, retry_after = self.pending_429.get(kind, (0, ""))
        if count <= 0:
            return
        self.pending_429[kind] = (count - 1, retry_after)
        self.rate_limited.append(
            {"kind": kind, "received_at": received_at, "answered_at": time.time(),
             "retry_after": retry_after}
        )
        raise Reject(429, "rate_limited", "injected rate limit", {"Retry-After": retry_after})

    def snapshot(self) -> dict[str, Any]:
        return {
            "inflight": dict(self.inflight),
            "max_inflight": dict(self.max_inflight),
            "rate_limited": list(self.rate_limited),
        }


STATE = web.AppKey("sandbox_state", SandboxState)


def _json(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def _parse_object(raw: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Reject(400, "invalid_json", f"body is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Reject(400, "invalid_json", "body must be a JSON object")
    return obj


def _check_bearer(request: web.Request, token: str | None) -> None:
    if not token:
        return
    got = request.headers.get("Authorization", "")
    if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
        raise Reject(401, "unauthorized", "missing or wrong bearer token")


def _check_to(to: object) -> None:
    """Refuse ``to`` unless it is a possible number in E.164 wire form.

    The same libphonenumber check as notifyd's own (:mod:`notifyd.model.contact`): a
    real provider refuses what it refuses, so the sandbox does too, on its own side of
    the wire, and still catches a send whose number notifyd failed to check.
    """
    try:
        e164(to)
    except InvalidContact as exc:
        raise Reject(422, "invalid_to", f"to {exc}") from None


def _validate_sms(obj: dict[str, Any]) -> dict[str, Any]:
    _check_to(obj.get("to"))
    body = obj.get("body")
    if not isinstance(body, str) or not body:
        raise Reject(422, "missing_body", "body must be a non-empty string")
    segments = obj.get("segments")
    if segments is None:
        segments = sms_segments(body)
    if not isinstance(segments, list) or not all(isinstance(s, str) and s for s in segments):
        raise Reject(422, "invalid_segments", "segments must be a list of non-empty strings")
    for i, seg in enumerate(segments):
        if not segment_fits(seg):
            raise Reject(
                422, "segment_too_long", f"segment {i} exceeds 160 GSM-7 septets / 70 UCS-2"
            )
    if "".join(segments) != body:
        raise Reject(422, "segments_mismatch", "segments do not join up to body")
    return {"segments": len(segments)}


def _validate_push(obj: dict[str, Any]) -> dict[str, Any]:
    tokens = obj.get("tokens")
    if not isinstance(tokens, list) or not tokens:
        raise Reject(422, "missing_tokens", "tokens must be a non-empty list")
    if not all(isinstance(t, str) and t for t in tokens):
        raise Reject(422, "invalid_tokens", "every token must be a non-empty string")
    if not (obj.get("title") or obj.get("body")):
        raise Reject(422, "missing_content", "give a title or a body")
    return {}


async def _accept(
    request: web.Request,
    kind: str,
    authenticate: Callable[[bytes], None],
    validate: Callable[[dict[str, Any]], dict[str, Any]],
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    """The life of one provider request: count, delay, auth, fault, replay, validate, record."""
    state = request.app[STATE]
    raw = await request.read()
    received_at = time.time()
    ledger = state.ledgers[kind]
    ledger.receipts += 1
    key = request.headers.get("Idempotency-Key") or None
    entry: dict[str, Any] = {
        "kind": kind,
        "received_at": received_at,
        "idempotency_key": key,
        "duplicate": False,
        **(extra or {}),
    }
    load = state.load
    load.enter(kind)
    try:
        await state.delay()
        authenticate(raw)
        load.check_rate_limit(kind, received_at)
        if state.fail_rate and state.rng.random() < state.fail_rate:
            raise Reject(503, "unavailable", "injected fault", {"Retry-After": "1"})
        # From here to the end there is no await: lookup and record are atomic.
        if key is not None and (kind, key) in state.replies:
            entry.update(duplicate=True, status=200, id=state.replies[(kind, key)].get("id"))
            return _json(200, state.replies[(kind, key)])
        payload = _parse_object(raw)
        answer_extra = validate(payload)
        delivery_id = state.next_id(kind)
        answer = {"id": delivery_id, "status": "sent", **answer_extra}
        ledger.deliveries.append(
            {
                "id": delivery_id,
                "kind": kind,
                "idempotency_key": key,
                "received_at": received_at,
                "payload": payload,
                **(extra or {}),
            }
        )
        if key is not None:
            state.replies[(kind, key)] = answer
        entry.update(id=delivery_id, payload=payload)
        if state.lost_ack_rate and state.rng.random() < state.lost_ack_rate:
            # Delivered, but the client never learns it: only idempotency saves a duplicate.
            raise Reject(503, "lost_ack", "injected lost acknowledgement", {"Retry-After": "1"})
        entry["status"] = 201
        return _json(201, answer)
    except Reject as rej:
        entry.update(status=rej.status, error=rej.code)
        return _json(rej.status, {"code": rej.code, "detail": rej.detail}, rej.headers)
    finally:
        load.leave(kind)
        state.log_receipt(entry)


async def _sms(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return await _accept(
        request, "sms", lambda _raw: _check_bearer(request, state.api_token), _validate_sms
    )


async def _push(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return await _accept(
        request, "push", lambda _raw: _check_bearer(request, state.api_token), _validate_push
    )


async def _webhook(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = request.match_info["name"]

    def authenticate(raw: bytes) -> None:
        if state.webhook_secret is None:
            return
        ok = verify(
            state.webhook_secret,
            request.headers.get("X-Notifyd-Timestamp"),
            raw,
            request.headers.get("X-Notifyd-Signature"),
        )
        if not ok:
            raise Reject(401, "bad_signature", "signature missing, wrong or expired")

    return await _accept(request, "webhook", authenticate, lambda _obj: {}, {"name": name})


async def _ledger(request: web.Request) -> web.Response:
    state = request.app[STATE]
    kind = request.query.get("kind")
    if kind is None:
        deliveries = sorted(
            (d for ledger in state.ledgers.values() for d in ledger.deliveries),
            key=lambda d: d["received_at"],
        )
        receipts = sum(ledger.receipts for ledger in state.ledgers.values())
    elif kind in state.ledgers:
        deliveries = state.ledgers[kind].deliveries
        receipts = state.ledgers[kind].receipts
    else:
        return _json(400, {"code": "unknown_kind", "detail": f"kind must be one of {KINDS}"})
    return _json(200, {"deliveries": deliveries, "receipts": receipts})


async def _control(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.method == "POST":
        try:
            state.configure(_parse_object(await request.read()))
        except Reject as rej:
            return _json(rej.status, {"code": rej.code, "detail": rej.detail})
    return _json(200, state.config())


async def _load(request: web.Request) -> web.Response:
    """``GET``: requests in flight and injected 429s; ``POST {"kind", "count",
    "retry_after"}``: answer the next ``count`` requests of ``kind`` with 429."""
    state = request.app[STATE]
    if request.method == "POST":
        try:
            obj = _parse_object(await request.read())
            state.load.rate_limit(
                str(obj.get("kind")), obj.get("count", 1), str(obj.get("retry_after", "1"))
            )
        except Reject as rej:
            return _json(rej.status, {"code": rej.code, "detail": rej.detail})
    return _json(200, state.load.snapshot())


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return _json(200, {"status": "reset"})


async def _status(request: web.Request) -> web.Response:
    """Answer any status asked for: ``/v1/_status/429?retry_after=7`` (mapping tests)."""
    try:
        code = int(request.match_info["code"])
    except ValueError:
        code = 0
    if not 200 <= code <= 599:
        return _json(400, {"code": "bad_status", "detail": "status must be 200..599"})
    await request.read()
    headers = {}
    if "retry_after" in request.query:
        headers["Retry-After"] = request.query["retry_after"]
    return _json(code, {"code": f"status_{code}", "detail": "as requested"}, headers)


async def _healthz(request: web.Request) -> web.Response:
    return _json(200, {"status": "ok"})


def make_sandbox_app(
    fail_rate: float = 0.0,
    latency_ms: float = 0,
    seed: int | None = None,
    webhook_secret: bytes | None = None,
    *,
    jitter_ms: float = 0,
    lost_ack_rate: float = 0.0,
    api_token: str | None = None,
    ledger_path: Path | None = None,
) -> web.Application:
    """The sandbox provider API as an aiohttp application (state in ``app[STATE]``)."""
    state = SandboxState(
        fail_rate=fail_rate,
        latency_ms=latency_ms,
        jitter_ms=jitter_ms,
        lost_ack_rate=lost_ack_rate,
        seed=seed,
        webhook_secret=webhook_secret,
        api_token=api_token,
        ledger_path=ledger_path,
    )
    state.configure(state.config())  # validate the constructor arguments
    app = web.Application()
    app[STATE] = state

    async def receipt_log(app: web.Application) -> AsyncIterator[None]:
        app[STATE].open_log()
        yield
        app[STATE].close_log()

    app.cleanup_ctx.append(receipt_log)
    app.router.add_post("/v1/sms", _sms)
    app.router.add_post("/v1/push", _push)
    app.router.add_post("/v1/webhook/{name}", _webhook)
    app.router.add_get("/v1/ledger", _ledger)
    app.router.add_get("/v1/_control", _control)
    app.router.add_post("/v1/_control", _control)
    app.router.add_post("/v1/_reset", _reset)
    app.router.add_get("/v1/_load", _load)
    app.router.add_post("/v1/_load", _load)
    app.router.add_route("*", "/v1/_status/{code}", _status)
    app.router.add_get("/healthz", _healthz)
    return app


class SandboxServer:
    """Runs :func:`make_sandbox_app` on a TCP port in the current event loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        fail_rate: float = 0.0,
        latency_ms: float = 0,
        seed: int | None = None,
        webhook_secret: bytes | None = None,
        jitter_ms: float = 0,
        lost_ack_rate: float = 0.0,
        api_token: str | None = None,
        ledger_path: Path | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.app = make_sandbox_app(
            fail_rate,
            latency_ms,
            seed,
            webhook_secret,
            jitter_ms=jitter_ms,
            lost_ack_rate=lost_ack_rate,
            api_token=api_token,
            ledger_path=ledger_path,
        )
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def state(self) -> SandboxState:
        return self.app[STATE]

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("SandboxServer is not started")
        return f"http://{self.host}:{self.port}"

    def deliveries(self, kind: str) -> list[dict[str, Any]]:
        return list(self.state.ledgers[kind].deliveries)

    def receipts(self, kind: str) -> int:
        return self.state.ledgers[kind].receipts

    async def start(self) -> None:
        # A short shutdown timeout: a test stopping the server mid-latency should not hang.
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        # Port 0 binds a free port; read the real one back.
        for addr in runner.addresses:
            if isinstance(addr, tuple):
                self.port = int(addr[1])
                break

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> SandboxServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
