"""The limits and formats of notifyd's records, stated once.

The models (``notifyd.model.*``) put them into their field types, so decoding, the
OpenAPI document and the error texts all read the same numbers.
"""

from __future__ import annotations

import re
from typing import Any

from notifyd.model.contact import HHMM_PATTERN as _HHMM

#: Version of every record notifyd writes (the ``schema_version`` field).  Records
#: written before the field existed have none and read as version 1.
SCHEMA_VERSION = 2

PRIORITIES: tuple[str, ...] = ("low", "normal", "high", "critical")

MAX_ID_LEN = 200
MAX_CATEGORY_LEN = 100
MAX_TEMPLATE_LEN = 100
MAX_TITLE_LEN = 1_000
MAX_BODY_LEN = 20_000
MAX_DATA_BYTES = 64 * 1024
MAX_URL_LEN = 2_000
#: Longest free-text preference (e-mail address, phone, URL, locale).
MAX_PREFERENCE_STR = 2_000
#: Push tokens and Apprise URLs per user.
MAX_TOKENS = 20
MAX_DIGEST_PREFERENCES = 50
MAX_DIGEST_WINDOW_S = 7 * 86400

#: Category names: letters, digits and ``_ . : -``.
CATEGORY_PATTERN = r"^[A-Za-z0-9_.:\-]+$"
#: Topic names (audiences): a category name of at most 100 characters.
TOPIC_PATTERN = r"^[A-Za-z0-9_.:\-]{1,100}$"
#: A string that is not only white space (ids: ``"  "`` is as empty as ``""``).
NOT_BLANK_PATTERN = r"\S"
#: ``HH:MM`` (24 h), anchored for the document (the code asks ``model.contact.is_hhmm``).
HHMM_PATTERN = f"^{_HHMM}$"
#: A digest window: a period (``30m``, ``1h``, ``2d``) or a daily time (``daily@09:00``).
DIGEST_WINDOW_PATTERN = rf"^(?:(\d{{1,4}})([mhd])|daily@{_HHMM})$"
#: BCP 47 language tag, pragmatically.
LOCALE_PATTERN = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$"

CATEGORY_RE = re.compile(r"\A[A-Za-z0-9_.:\-]+\Z")
DIGEST_WINDOW_RE = re.compile(DIGEST_WINDOW_PATTERN)
LOCALE_RE = re.compile(LOCALE_PATTERN)
#: The shape of an E.164 number, for the document; the code asks libphonenumber
#: (``model.contact.is_e164``), which also knows the numbering plans.
E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
#: The shape of an e-mail address, for the document; the code asks email-validator
#: (``model.contact.is_email``).
EMAIL_PATTERN = r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$"
#: Local usernames (``POST /api/v1/users``).
USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,64}$"
MIN_PASSWORD, MAX_PASSWORD = 8, 1_024
MAX_EMAIL_LEN = 254
#: Opaque refresh tokens.
MAX_REFRESH_TOKEN_LEN = 256
#: Notification ids one re-drive request may name.
MAX_REDRIVE_IDS = 1_000
#: Latest step of a fallback chain, after acceptance.
MAX_FALLBACK_AFTER_S = 30 * 24 * 3600


def shaped(pattern: str, value: object) -> bool:
    """Whether ``value`` matches a schema ``pattern`` of the form ``^...$`` as a JSON Schema
    validator reads it (ASCII classes, ``$`` at the very end): the published shape, which
    the libraries behind a field (libphonenumber, email-validator) may still refuse."""
    return isinstance(value, str) and re.fullmatch(pattern[1:-1], value, re.ASCII) is not None


def integral_version(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with an integral float ``schema_version`` (``1.0``) as the integer JSON
    Schema takes it for; any other value is left for the model to judge."""
    v = obj.get("schema_version")
    if isinstance(v, float) and v.is_integer():
        obj["schema_version"] = int(v)
    return obj
