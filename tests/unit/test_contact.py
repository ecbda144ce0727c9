"""One definition of phone numbers, e-mail addresses and HH:MM, and every user of it agrees."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from notifyd.domain.channel_rules import check_e164, check_email
from notifyd.errors import PermanentDeliveryError, WebError
from notifyd.model import limits
from notifyd.model.contact import InvalidContact, e164, email_address, is_e164, is_email, is_hhmm
from notifyd.model.limits import E164_PATTERN
from notifyd.model.records import InvalidPreferences, validate_preferences
from notifyd.tools.sandbox.provider import Reject, _check_to
from notifyd.web.auth.users import validate_email, validate_phone

PHONES_OK = ["+15551234567", "+14155550123", "+442071838750", "+33612345678", "+4915112345678",
             "+61412345678", "+818012345678"]
PHONES_BAD: list[Any] = [
    None, 5, "", "+", "15551234567", "+0123456789", "+1 555 123 4567", "+1-555-123-4567",
    "+1555", "+1234567", "+15550001", "+123456789012345", "+33123456", "+99912345678",
    "+15551234567\n", "+1555123456\uff17", " +15551234567", "+1" + "2" * 15, "+" + "1" * 300,
    "+" + "1" * 400,  # past the memoised length
]
EMAILS_OK = ["a@b.co", "first.last+tag@sub.example.co.uk", "x_y@a-b.io", "a@b.example",
             "A@Example.COM",
             # private mail domains of self-hosted setups (special-use names, accepted)
             "someone@corp.local", "ops@ci.test", "me@host.localhost"]
EMAILS_BAD: list[Any] = [
    None, 5, "", "plain", "a@b", "@example.com", "a b@example.com", "a@exa mple.com",
    "a@@b.com", "a@example.com\n", " a@example.com", "a..b@example.com", ".a@example.com",
    "x@" + "a" * 250 + ".com", "\u00fc@example.com", "a@b\u00fccher.de", '"q"@example.com',
    "a@[127.0.0.1]", "a@1.2.3.4", "a@localhost", "a@x.invalid", "a@1.in-addr.arpa",
    "a" * 400 + "@example.com",  # past the memoised length
]


@pytest.mark.parametrize("phone", PHONES_OK)
def test_phone_accepted_everywhere(phone: str) -> None:
    assert e164(phone) == phone and is_e164(phone)
    assert check_e164(phone) == phone
    assert validate_preferences("u1", {"phone": phone}, partial=True)["phone"] == phone
    validate_phone(phone)
    _check_to(phone)


@pytest.mark.parametrize("addr", EMAILS_OK)
def test_email_accepted_everywhere(addr: str) -> None:
    assert email_address(addr) == addr and is_email(addr)  # kept as given, not normalised
    assert check_email(addr) == addr
    assert validate_preferences("u1", {"email": addr}, partial=True)["email"] == addr
    validate_email(addr)


@dataclass(frozen=True)
class Checks:
    """One kind of contact as every user of the definition checks it."""

    field: str  # the preferences field
    definition: Callable[[object], str]
    predicate: Callable[[object], bool]
    before_send: Callable[[str | None], str]
    account: Callable[[str], None]
    http_code: str


PHONE = Checks("phone", e164, is_e164, check_e164, validate_phone, "invalid_phone")
EMAIL = Checks("email", email_address, is_email, check_email, validate_email, "invalid_email")


@pytest.mark.parametrize(
    ("checks", "value"),
    [(PHONE, p) for p in PHONES_BAD] + [(EMAIL, a) for a in EMAILS_BAD],
)
def test_refused_everywhere(checks: Checks, value: Any) -> None:
    assert not checks.predicate(value)
    with pytest.raises(InvalidContact):
        checks.definition(value)
    if not isinstance(value, int):  # delivery addresses are str | None
        with pytest.raises(PermanentDeliveryError, match=r"^invalid_address:"):
            checks.before_send(value)
    # 400 for a value the published schema refuses; 422 for one of the published shape
    # that libphonenumber / email-validator refuse (a rule the schema cannot state).
    shaped = limits.shaped(E164_PATTERN if checks is PHONE else limits.EMAIL_PATTERN, value)
    with pytest.raises(WebError) as exc_info:
        checks.account(value)
    assert exc_info.value.code == checks.http_code
    assert exc_info.value.status == (422 if shaped else 400)
    if value:  # a falsy value clears the preference
        with pytest.raises(InvalidPreferences) as prefs_info:
            validate_preferences("u1", {checks.field: value}, partial=True)
        assert prefs_info.value.rule == bool(shaped)
    if checks is PHONE:
        with pytest.raises(Reject):
            _check_to(value)


@pytest.mark.parametrize("t", ["00:00", "09:30", "23:59", "12:00"])
def test_hhmm_ok(t: str) -> None:
    assert is_hhmm(t)


@pytest.mark.parametrize("t", [None, 930, "", "9:30", "24:00", "12:60", "12:00\n",
                               "\uff11\uff12:00", "12:00:00", " 12:00"])
def test_hhmm_bad(t: Any) -> None:
    assert not is_hhmm(t)
