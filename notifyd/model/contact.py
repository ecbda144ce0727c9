"""The one definition of a phone number, an e-mail address and a quiet-hours time.

Preferences, user accounts, the channel checks before a send, the CLI and the sandbox all
ask here, so they cannot disagree about what notifyd stores or sends to.

* Phone numbers: E.164 wire form (``+`` and digits, as libphonenumber formats them) that
  libphonenumber (``phonenumbers``) deems *possible* for its country: a known calling
  code and a length that fits the numbering plan.  "Possible", not "valid": fictional
  numbers (+1 555 ...) have the right shape and are what tests and demos use, while
  numbers no provider would accept (+1 with 7 digits, +999 ...) are refused up front.
* E-mail addresses: syntax checked by ``email-validator`` (no DNS, no deliverability
  probe), ASCII only (our SMTP path does not speak SMTPUTF8).  The address is kept as
  given, not normalised, so stored values do not change under the caller.  Private
  mail domains self-hosters run (``corp.local``, ``*.test``, ``*.localhost``) are
  accepted, as they were before: email-validator refuses these special-use names by
  default; the never-deliverable ones (``.invalid``, ``.arpa``) stay refused.
* ``HH:MM``: a 24 h wall-clock time, as quiet hours and ``daily@HH:MM`` digests use it.
"""

from __future__ import annotations

import functools
import re
from typing import cast

import email_validator
import phonenumbers
from email_validator import EmailNotValidError, validate_email

#: Special-use names that stay refused (see the module docstring); the library reads this
#: list at each call and documents changing it as the way to allow the others.
email_validator.SPECIAL_USE_DOMAIN_NAMES = ["arpa", "invalid", "onion"]

#: ``HH:MM`` (24 h) without anchors, for composing into other patterns and JSON Schema.
HHMM_PATTERN = r"([01][0-9]|2[0-3]):([0-5][0-9])"
_HHMM_RE = re.compile(HHMM_PATTERN)
#: The library checks cost ~30-50 us; addresses repeat (every send to a user checks the
#: same one), so verdicts on strings of plausible length are memoised (pure functions,
#: bounded cache: at most _CACHE_SIZE keys of at most _CACHED_LEN characters).
_CACHE_SIZE = 8192
_CACHED_LEN = 320


class InvalidContact(ValueError):
    """A phone number or e-mail address notifyd will not store or send to (the why)."""


def _reason_names() -> dict[int, str]:
    return {v: k.lower() for k, v in vars(phonenumbers.ValidationResult).items() if k.isupper()}


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _e164_problem(value: str) -> str | None:
    shown = value[:40]
    if not value.startswith("+"):
        return f"{shown!r} is not an E.164 number (+ and digits)"
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        return f"{shown!r} is not a phone number: {exc}"
    # Round-tripping rejects spaces, dashes, non-ASCII digits and trailing newlines.
    if phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) != value:
        return f"{shown!r} is not in E.164 form (+ and digits)"
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        return f"{shown!r} is not a possible number: {_reason_names().get(reason, reason)}"
    return None


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _email_problem(value: str) -> str | None:
    shown = value[:80]
    if not value.isascii():
        return f"{shown!r} is not an ASCII e-mail address"
    try:
        validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        return f"{shown!r} is not an e-mail address: {exc}"
    return None


def _problem(
    check: functools._lru_cache_wrapper[str | None], value: object, what: str
) -> str | None:
    """Why ``value`` is not ``what`` (None: it is), memoised for plausible lengths."""
    if not isinstance(value, str) or not value:
        return f"{str(value)[:40]!r} is not {what}"
    return (check if len(value) <= _CACHED_LEN else check.__wrapped__)(value)


def _accepted(value: object, problem: str | None) -> str:
    if problem is not None:
        raise InvalidContact(problem)
    return cast("str", value)  # _problem found none, so it is a str


def e164(value: object) -> str:
    """``value`` if it is a possible phone number in E.164 form, else InvalidContact."""
    return _accepted(value, _problem(_e164_problem, value, "an E.164 number"))


def is_e164(value: object) -> bool:
    """Whether :func:`e164` accepts ``value``."""
    return _problem(_e164_problem, value, "an E.164 number") is None


def email_address(value: object) -> str:
    """``value`` if it is a syntactically valid ASCII mailbox address, else InvalidContact."""
    return _accepted(value, _problem(_email_problem, value, "an e-mail address"))


def is_email(value: object) -> bool:
    """Whether :func:`email_address` accepts ``value``."""
    return _problem(_email_problem, value, "an e-mail address") is None


def is_hhmm(value: object) -> bool:
    """Whether ``value`` is a 24 h ``HH:MM`` time (ASCII digits, no trailing newline)."""
    return isinstance(value, str) and _HHMM_RE.fullmatch(value) is not None


__all__ = [
    "HHMM_PATTERN",
    "InvalidContact",
    "e164",
    "email_address",
    "is_e164",
    "is_email",
    "is_hhmm",
]
