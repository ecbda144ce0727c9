"""Request bodies of the HTTP API that are not records on a topic (accounts, tokens,
inbox flags, re-drives).  The registry (``notifyd.web.openapi``) converts a body
through its model before the handler runs and generates the document's schemas from
these classes; the records the API also takes (``NotificationCreate``,
``PreferencesInput``) live with their record."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from notifyd.model.limits import (
    E164_PATTERN,
    MAX_EMAIL_LEN,
    MAX_ID_LEN,
    MAX_PASSWORD,
    MAX_REDRIVE_IDS,
    MAX_REFRESH_TOKEN_LEN,
    MIN_PASSWORD,
    USERNAME_PATTERN,
)


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Sign up a local user (``POST /api/v1/users``)."""

    username: Annotated[str, Meta(min_length=3, max_length=64, pattern=USERNAME_PATTERN)]
    password: Annotated[str, Meta(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)]
    email: Annotated[str, Meta(max_length=MAX_EMAIL_LEN, extra_json_schema={"format": "email"})]
    # The E.164 check answers 400 invalid_phone in the handler: documented, not converted.
    phone: Annotated[
        str,
        Meta(extra_json_schema={"pattern": E164_PATTERN, "examples": ["+14155550123"]},
             description="E.164"),
    ] | None = None


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Password login; also accepted form-encoded (OAuth2 password grant)."""

    username: Annotated[str, Meta(max_length=256)]
    password: Annotated[str, Meta(max_length=MAX_PASSWORD)]
    grant_type: Literal["password"] | UnsetType = UNSET
    scope: Annotated[str, Meta(max_length=1024)] | UnsetType = UNSET
    client_id: Annotated[str, Meta(max_length=256)] | UnsetType = UNSET
    client_secret: Annotated[str, Meta(max_length=1024)] | UnsetType = UNSET


class RefreshRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Trade a refresh token (single use) for new tokens."""

    refresh_token: Annotated[str, Meta(min_length=1, max_length=MAX_REFRESH_TOKEN_LEN)]


class LogoutRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Log out; the body is optional."""

    refresh_token: Annotated[
        str, Meta(max_length=MAX_REFRESH_TOKEN_LEN, description="also revoke this refresh token")
    ] | UnsetType = UNSET


class InboxItemUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Mark an in-app item read or archived (at least one of the two)."""

    json_schema_extra: ClassVar[dict[str, object]] = {"minProperties": 1}

    read: bool | UnsetType = UNSET
    archived: bool | UnsetType = UNSET

    def __post_init__(self) -> None:
        if self.read is UNSET and self.archived is UNSET:
            raise ValueError("needs at least 1 field(s)")


class RedriveRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Re-drive dead letters of a topic (some notifications, or all)."""

    topic: Literal["events", "deliveries"]
    notification_ids: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)]],
        Meta(max_length=MAX_REDRIVE_IDS,
             description="re-drive only the dead letters of these notifications"),
    ] | UnsetType = UNSET
    all: Annotated[bool, Meta(description="re-drive every dead letter")] | UnsetType = UNSET
