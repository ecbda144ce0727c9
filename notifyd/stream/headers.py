"""Kafka record headers as aiokafka and Faust hand them over."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: One header: aiokafka gives ``(str, bytes)``; Faust may carry ``str`` values.
Header = tuple[str, bytes | bytearray | str]


def header_value(
    headers: Iterable[Header] | Mapping[str, bytes] | None, name: str
) -> str | None:
    """The value of the first header called ``name``, None if there is none.

    Faust may also hand a mapping.  Bytes are decoded as UTF-8, undecodable bytes
    replaced (U+FFFD); any other value is passed through ``str()``.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for key, value in pairs:
        if key == name:
            if isinstance(value, bytes | bytearray):
                return value.decode("utf-8", "replace")
            return str(value)
    return None
