"""Commands on ``notifyd.control`` (keyed by the user, or sent to a partition) and on
``notifyd.preferences``: a tagged union on ``op``, one model per command.  The API's
commands carry ``schema_version``; the scheduler's short-lived ones (unschedule, expire,
fallback_step) do not, and read as version 1."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from notifyd.model.event import Version


class _Command(msgspec.Struct, tag_field="op"):
    """Fields a reader does not know are ignored, as before the models."""

    schema_version: Version | UnsetType = UNSET


class Unschedule(_Command, tag="unschedule", kw_only=True):
    """Drop the ``scheduled`` row ``id`` if it is still the one due at ``due``."""

    id: str
    due: float


class Expire(_Command, tag="expire", kw_only=True):
    """Delete expired rows of a table (the scheduler's sweep, per partition)."""

    table: Literal["seen", "ledger", "status", "cancels"]
    keys: list[str]


class FallbackStepDue(_Command, tag="fallback_step", kw_only=True):
    """A fallback step is due: check its condition on the user's partition."""

    id: str
    due: float


class InboxOp(_Command, tag="inbox", kw_only=True):
    """Mark in-app items read/unread, archived/unarchived, or delete them."""

    user_id: str
    action: Literal["read", "unread", "archive", "unarchive", "delete"]
    ids: list[str] | UnsetType = UNSET
    all: bool | UnsetType = UNSET
    request_id: str | UnsetType = UNSET


ControlCommand = Unschedule | Expire | FallbackStepDue | InboxOp


class PreferencesWrite(_Command, tag="put", kw_only=True):
    """Replace the preferences (``fields``: validated by the API)."""

    user_id: str
    fields: dict[str, Any]
    request_id: str | UnsetType = UNSET


class PreferencesPatch(PreferencesWrite, tag="patch", kw_only=True):
    """Merge ``fields`` into the preferences."""


class PreferencesDelete(_Command, tag="delete", kw_only=True):
    user_id: str
    request_id: str | UnsetType = UNSET


class OptOut(_Command, tag="opt_out", kw_only=True):
    """One opt-out added on the owner (an unsubscribe link)."""

    user_id: str
    category: str
    channel: str
    request_id: str | UnsetType = UNSET


PreferencesCommand = PreferencesWrite | PreferencesPatch | PreferencesDelete | OptOut


def check_control(msg: dict[str, Any]) -> ControlCommand:
    """``msg`` through its model; raises ``msgspec.ValidationError``."""
    return msgspec.convert(msg, ControlCommand)  # type: ignore[arg-type]


def check_preferences_command(msg: dict[str, Any]) -> PreferencesCommand:
    return msgspec.convert(msg, PreferencesCommand)  # type: ignore[arg-type]
