"""The decode micro-benchmark (``python -m tests.perf.decode_event``) stays runnable, and
its contenders decode the same typical event to the same fields."""

from __future__ import annotations

import msgspec
import orjson
import pydantic
import pytest

from notifyd.errors import InvalidEvent
from notifyd.model.event import EventRecord
from tests.perf import decode_event


def test_contenders_agree_on_the_sample() -> None:
    expected = orjson.loads(decode_event.SAMPLE)
    fns = decode_event.contenders()
    record = fns["msgspec"](decode_event.SAMPLE)
    assert isinstance(record, EventRecord)
    known = {k: v for k, v in expected.items() if k in EventRecord.__struct_fields__}
    assert msgspec.to_builtins(record) == known
    assert msgspec.to_builtins(fns["msgspec+extras"](decode_event.SAMPLE)) == known
    assert fns["pydantic"](decode_event.SAMPLE).model_dump(exclude_none=True) == {
        "schema_version": 1, **expected
    }
    event = fns["notifyd"](decode_event.SAMPLE)
    assert event.extra == {"trace_id": expected["trace_id"]}


@pytest.mark.parametrize("bad", [{"event_id": ""}, {"channels": ["fax"]}, {"priority": "x"},
                                 {"title": "x" * 1001}])
def test_contenders_refuse_the_same_bad_event(bad: dict[str, object]) -> None:
    raw = orjson.dumps({**orjson.loads(decode_event.SAMPLE), **bad})
    for fn in decode_event.contenders().values():
        with pytest.raises((msgspec.ValidationError, pydantic.ValidationError, InvalidEvent)):
            fn(raw)


def test_measure_runs(capsys: pytest.CaptureFixture[str]) -> None:
    decode_event.main(["--n", "10", "--repeat", "1"])
    out = capsys.readouterr().out
    assert all(f"{name} " in out for name in decode_event.contenders())
