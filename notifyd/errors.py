"""Error hierarchy: one root, delivery errors that say whether to retry, web errors with codes."""

from __future__ import annotations

#: Longest exception message quoted in a dead letter's reason.
MAX_REASON_DETAIL = 300


def clip(text: str, limit: int = MAX_REASON_DETAIL) -> str:
    """``text`` on one line, cut to ``limit`` characters: reasons travel in Kafka headers
    and log lines, and an exception message may quote a whole rendered value."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"


def failure_detail(exc: BaseException) -> str:
    """``"<Type>: <message>"`` of an unexpected exception, for a dead letter's reason."""
    msg = clip(str(exc))
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


class NotifydError(Exception):
    """Root of every error notifyd raises on purpose."""


class InvalidEvent(NotifydError):
    """An inbound event that can never be processed; it goes to the dead-letter topic."""

    def __init__(self, reason: str, *, rule: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        #: The record matches its published schema and a rule the schema cannot state
        #: refuses it (a chain out of order, a date too far ahead): the API answers 422.
        self.rule = rule


class DeliveryError(NotifydError):
    """A provider could not deliver.

    ``retriable`` tells the channel agent whether another attempt may succeed
    (timeouts, 5xx, 429, connection refused); ``retry_after`` is the provider's
    own hint in seconds, if it gave one.
    """

    def __init__(self, reason: str, *, retriable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retriable = retriable
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason, retriable=False)


class RetriableDeliveryError(DeliveryError):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason, retriable=True, retry_after=retry_after)


class RateLimitedDeliveryError(RetriableDeliveryError):
    """The provider refused for its rate limit (HTTP 429).

    Retried like any retriable failure; in addition a channel whose deliveries all go to
    one provider pauses new calls for ``retry_after`` (:mod:`notifyd.providers.ratelimit`), since
    every other call would be refused too.
    """


class WebError(NotifydError):
    """An HTTP error answered as JSON ``{code, detail}``; ``code`` is stable for clients."""

    status: int = 400
    code: str = "bad_request"

    def __init__(
        self, detail: str, *, code: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class BadRequest(WebError):
    status, code = 400, "bad_request"


class Unauthorized(WebError):
    status, code = 401, "unauthorized"


class Forbidden(WebError):
    status, code = 403, "forbidden"


class NotFound(WebError):
    status, code = 404, "not_found"


class Conflict(WebError):
    status, code = 409, "conflict"


class PayloadTooLarge(WebError):
    status, code = 413, "payload_too_large"


class Unprocessable(WebError):
    """Well-formed and valid against the published schema, refused by a rule the schema
    cannot state (a number libphonenumber deems impossible, quiet hours that end when they
    start, a fallback chain out of order, a host the egress policy refuses)."""

    status, code = 422, "unprocessable"


class TooManyRequests(WebError):
    status, code = 429, "too_many_requests"


class ServiceUnavailable(WebError):
    status, code = 503, "service_unavailable"
