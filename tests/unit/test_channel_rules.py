"""Channel rules: GSM-7 detection, SMS segmentation, address checks."""

from __future__ import annotations

import pytest

from notifyd.domain.channel_rules import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    check_e164,
    check_email,
    check_http_url,
    is_gsm7,
    segment_fits,
    sms_encoding,
    sms_segments,
    sms_units,
)
from notifyd.errors import PermanentDeliveryError


def test_gsm7_tables() -> None:
    # 128 code points minus ESC; extension chars are not also basic.
    assert len(GSM7_BASIC) == 127
    assert len(GSM7_EXTENSION) == 10
    assert not GSM7_BASIC & GSM7_EXTENSION


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Hello, world!",
        "Ünìcode? Yes: ÄÖÑÜäöñüà§¿¡",
        "price: 5€ [ok] {x} ~^|\\",
        "line\nbreak\r",
    ],
)
def test_is_gsm7_true(text: str) -> None:
    assert is_gsm7(text)
    assert sms_encoding(text) == "gsm7"


@pytest.mark.parametrize(
    "text", ["Привет", "你好", "emoji 🎉", "tab\there", "ç lowercase", "`", "naïve"]
)
def test_is_gsm7_false(text: str) -> None:
    assert not is_gsm7(text)
    assert sms_encoding(text) == "ucs2"


def test_units_count_extension_and_astral_as_two() -> None:
    assert sms_units("abc") == 3
    assert sms_units("a€{") == 5
    assert sms_units("ж🎉") == 3  # astral char is a surrogate pair in UCS-2


def test_single_message_limits() -> None:
    assert sms_segments("a" * 160) == ["a" * 160]
    assert sms_segments("€" * 80) == ["€" * 80]  # 160 septets exactly
    assert sms_segments("ж" * 70) == ["ж" * 70]
    assert sms_segments("") == [""]
    assert len(sms_segments("a" * 161)) == 2
    assert len(sms_segments("€" * 80 + "a")) == 2
    assert len(sms_segments("ж" * 71)) == 2


def test_gsm7_hard_split_at_153() -> None:
    parts = sms_segments("a" * 400)
    assert [len(p) for p in parts] == [153, 153, 94]
    assert "".join(parts) == "a" * 400


def test_split_prefers_whitespace() -> None:
    words = " ".join(["word"] * 60)  # 299 chars
    parts = sms_segments(words)
    assert "".join(parts) == words
    for p in parts[:-1]:
        assert p.endswith(" ")  # never cuts a word
        assert sms_units(p) <= 153
    assert all(not p.startswith(" ") for p in parts)


def test_extension_pair_never_split() -> None:
    # 152 plain septets, then '€' (2 septets) would straddle the 153 boundary.
    text = "a" * 152 + "€" + "b" * 20
    parts = sms_segments(text)
    assert parts[0] == "a" * 152
    assert parts[1].startswith("€")
    assert "".join(parts) == text
    assert all(sms_units(p, "gsm7") <= 153 for p in parts)


def test_ucs2_split_at_67_and_surrogates_kept() -> None:
    text = "ж" * 200
    parts = sms_segments(text)
    assert [len(p) for p in parts] == [67, 67, 66]
    emoji = "ж" * 66 + "🎉" + "ж" * 10  # the emoji would straddle unit 67
    parts = sms_segments(emoji)
    assert parts[0] == "ж" * 66
    assert parts[1].startswith("🎉")
    assert "".join(parts) == emoji
    assert all(sms_units(p, "ucs2") <= 67 for p in parts)


def test_one_non_gsm_char_switches_whole_message_to_ucs2() -> None:
    text = "a" * 100 + "ж"
    assert len(sms_segments(text)) == 2  # 101 > 70 UCS-2 units


def test_every_split_segment_fits() -> None:
    for text in ["x" * 1000, "€" * 333, "ж 🎉 " * 100, "word " * 300]:
        parts = sms_segments(text)
        assert "".join(parts) == text
        assert all(segment_fits(p) for p in parts)


def test_segment_fits() -> None:
    assert segment_fits("a" * 160)
    assert not segment_fits("a" * 161)
    assert segment_fits("ж" * 70)
    assert not segment_fits("ж" * 71)


@pytest.mark.parametrize("phone", ["+15551234567", "+442071838750", "+4915112345678"])
def test_e164_valid(phone: str) -> None:
    assert check_e164(phone) == phone


@pytest.mark.parametrize(
    "phone", [None, "", "15551234567", "+0123456789", "+1 555 123 4567", "+1555", "+1" + "2" * 15]
)
def test_e164_invalid(phone: str | None) -> None:
    with pytest.raises(PermanentDeliveryError) as exc_info:
        check_e164(phone)
    assert exc_info.value.reason.startswith("invalid_address:")
    assert not exc_info.value.retriable


@pytest.mark.parametrize("addr", ["a@example.com", "first.last+tag@sub.example.co.uk"])
def test_email_valid(addr: str) -> None:
    assert check_email(addr) == addr


@pytest.mark.parametrize(
    "addr",
    [None, "", "plain", "a@b", "a b@example.com", "a@exa mple.com", "x@" + "a" * 250 + ".com"],
)
def test_email_invalid(addr: str | None) -> None:
    with pytest.raises(PermanentDeliveryError, match=r"^invalid_address:"):
        check_email(addr)


def test_http_url() -> None:
    assert check_http_url("https://hooks.example.com/x?y=1") == "https://hooks.example.com/x?y=1"
    for bad in [None, "", "ftp://x.com/", "http://", "hooks.example.com", "http://a:99999/"]:
        with pytest.raises(PermanentDeliveryError, match=r"^invalid_address:"):
            check_http_url(bad)
