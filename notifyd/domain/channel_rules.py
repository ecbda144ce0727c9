"""Pure channel rules: SMS encoding and segmentation, address checks.

No I/O here, so the providers, the sandbox and the tests share one definition of
what a valid SMS segment or address is.

SMS sizes follow GSM 03.38 / 3GPP TS 23.040: a single message holds 160 GSM-7
septets or 70 UCS-2 code units; a concatenated message loses 6 octets per part to
the user data header, leaving 153 septets or 67 code units.  Characters of the
GSM-7 extension table are sent as ESC + char and so cost two septets; characters
outside the Basic Multilingual Plane are a UTF-16 surrogate pair and cost two
UCS-2 units.  A Python ``str`` character is never split, so neither pair can be.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from notifyd.errors import PermanentDeliveryError
from notifyd.model.contact import is_e164, is_email

# GSM 03.38 default alphabet (0x1B, the escape to the extension table, left out).
GSM7_BASIC: frozenset[str] = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension table: each of these is sent as ESC + char, i.e. two septets.
GSM7_EXTENSION: frozenset[str] = frozenset("\f^{}\\[~]|€")

SINGLE_GSM7 = 160
SINGLE_UCS2 = 70
PART_GSM7 = 153
PART_UCS2 = 67

Encoding = Literal["gsm7", "ucs2"]


def is_gsm7(text: str) -> bool:
    """True if every character is in the GSM-7 basic or extension table."""
    return all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text)


def sms_encoding(text: str) -> Encoding:
    return "gsm7" if is_gsm7(text) else "ucs2"


def _gsm7_cost(c: str) -> int:
    return 2 if c in GSM7_EXTENSION else 1


def _ucs2_cost(c: str) -> int:
    return 2 if ord(c) > 0xFFFF else 1


def sms_units(text: str, encoding: Encoding | None = None) -> int:
    """Size of ``text`` in septets (GSM-7) or UTF-16 code units (UCS-2)."""
    enc = encoding or sms_encoding(text)
    cost = _gsm7_cost if enc == "gsm7" else _ucs2_cost
    return sum(cost(c) for c in text)


def segment_fits(segment: str) -> bool:
    """Does one segment fit a single SMS (160 GSM-7 septets or 70 UCS-2 units)?"""
    if is_gsm7(segment):
        return sms_units(segment, "gsm7") <= SINGLE_GSM7
    return sms_units(segment, "ucs2") <= SINGLE_UCS2


def sms_segments(text: str) -> list[str]:
    """Split ``text`` into the parts of a (concatenated) SMS.

    ``"".join(parts) == text`` always holds: a split prefers to fall just after the
    last whitespace that fits, so words stay whole, and otherwise cuts hard at the
    part size.
    """
    enc = sms_encoding(text)
    if enc == "gsm7":
        cost, single, part = _gsm7_cost, SINGLE_GSM7, PART_GSM7
    else:
        cost, single, part = _ucs2_cost, SINGLE_UCS2, PART_UCS2
    if sum(cost(c) for c in text) <= single:
        return [text]
    parts: list[str] = []
    start, n = 0, len(text)
    while start < n:
        used, i, last_ws = 0, start, -1
        while i < n:
            c = cost(text[i])
            if used + c > part:
                break
            used += c
            if text[i].isspace():
                last_ws = i
            i += 1
        if i >= n:
            parts.append(text[start:])
            break
        end = last_ws + 1 if last_ws >= start else i
        parts.append(text[start:end])
        start = end
    return parts


def check_e164(phone: str | None) -> str:
    """Return ``phone`` if it is an E.164 number, else raise PermanentDeliveryError."""
    if not phone:
        raise PermanentDeliveryError("invalid_address: no phone number")
    if not is_e164(phone):
        raise PermanentDeliveryError(
            f"invalid_address: {phone[:40]!r} is not an E.164 number like +15551234567"
        )
    return phone


def check_email(addr: str | None) -> str:
    """Return ``addr`` if it is a plausible mailbox address, else raise."""
    if not addr:
        raise PermanentDeliveryError("invalid_address: no email address")
    if not is_email(addr):
        raise PermanentDeliveryError(f"invalid_address: {addr[:80]!r} is not an email address")
    return addr


def check_http_url(url: str | None) -> str:
    """Return ``url`` if it is an absolute http(s) URL with a host, else raise."""
    if not url:
        raise PermanentDeliveryError("invalid_address: no URL")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise PermanentDeliveryError(f"invalid_address: {url[:80]!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PermanentDeliveryError(f"invalid_address: {url[:80]!r} is not an http(s) URL")
    if any(c.isspace() for c in url):
        raise PermanentDeliveryError(f"invalid_address: {url[:80]!r} contains whitespace")
    return url
