"""``notifyd.stream.headers.header_value``: one header out of a record's headers."""

from __future__ import annotations

from notifyd.stream.headers import header_value


def test_header_value_decodes_bytes() -> None:
    headers = [("notifyd-reason", b"missing_field: user_id"), ("other", b"x")]
    assert header_value(headers, "notifyd-reason") == "missing_field: user_id"
    assert header_value(headers, "other") == "x"


def test_header_value_first_match_wins() -> None:
    assert header_value([("a", b"1"), ("a", b"2")], "a") == "1"


def test_header_value_absent_or_no_headers() -> None:
    assert header_value([("a", b"1")], "b") is None
    assert header_value([], "a") is None
    assert header_value(None, "a") is None
    assert header_value((), "a") is None


def test_header_value_bytearray_str_and_empty() -> None:
    assert header_value([("a", bytearray(b"caf\xc3\xa9"))], "a") == "café"
    assert header_value([("a", "already text")], "a") == "already text"
    assert header_value([("a", b"")], "a") == ""


def test_header_value_replaces_invalid_utf8() -> None:
    assert header_value([("a", b"ok\xff")], "a") == "ok\ufffd"


def test_header_value_name_is_case_sensitive() -> None:
    assert header_value([("Notifyd-Reason", b"x")], "notifyd-reason") is None


def test_mapping_headers() -> None:
    assert header_value({"a": b"1", "b": b"2"}, "b") == "2"
    assert header_value({"a": b"1"}, "b") is None
