"""The limits and formats of notifyd's records, stated once.

The models (``notifyd.model.*``) put them into their field types, so decoding, the
OpenAPI document and the error texts all read the same numbers.
"""

from __future__ import annotations

import re

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
#: ``HH:MM`` (24 h).
HHMM_PATTERN = r"^([01][0-9]|2[0-3]):([0-5][0-9])$"
#: A digest window: a period (``30m``, ``1h``, ``2d``) or a daily time (``daily@09:00``).
DIGEST_WINDOW_PATTERN = r"^(?:(\d{1,4})([mhd])|daily@([01]\d|2[0-3]):([0-5]\d))$"
#: BCP 47 language tag, pragmatically.
LOCALE_PATTERN = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$"

# \A..\Z and [0-9], not ^..$ and \d: "$" also matches before a trailing newline and
# "\d" matches any Unicode digit (U+FF11, fullwidth one), both of which providers refuse.
E164_RE = re.compile(r"\A\+[1-9][0-9]{6,14}\Z")
# Pragmatic address check (RFC 5322 is broader than any real mailbox provider accepts).
EMAIL_RE = re.compile(r"\A[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+\Z")
HHMM_RE = re.compile(r"\A([01][0-9]|2[0-3]):([0-5][0-9])\Z")
CATEGORY_RE = re.compile(r"\A[A-Za-z0-9_.:\-]+\Z")
DIGEST_WINDOW_RE = re.compile(DIGEST_WINDOW_PATTERN)
LOCALE_RE = re.compile(LOCALE_PATTERN)
#: E.164 phone number (JSON Schema dialect; the code checks :data:`E164_RE`).
E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"
#: An e-mail address as notifyd accepts it (JSON Schema dialect; code: :data:`EMAIL_RE`).
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
