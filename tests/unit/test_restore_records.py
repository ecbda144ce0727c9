"""notifyd.stream.restore.apply_records: raw changelog record sets into a write batch
(record sets built with aiokafka's own batch builder; no broker)."""

from __future__ import annotations

import pytest
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from notifyd.stream.restore import apply_records


class FakeBatch:
    """Records what a rocksdict WriteBatch is asked to do."""

    def __init__(self) -> None:
        self.ops: list[tuple[str, bytes, bytes | None]] = []

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append(("put", key, value))

    def delete(self, key: bytes) -> None:
        self.ops.append(("delete", key, None))


def _batch(records: list[tuple[int, bytes, bytes | None]]) -> bytes:
    b = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=0, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20,
    )
    for offset, key, value in records:
        b.append(offset, timestamp=None, key=key, value=value, headers=[])
    return bytes(b.build())


def test_puts_values_deletes_tombstones_and_moves_past_the_last_batch() -> None:
    data = _batch([(0, b"a", b"1"), (1, b"b", None)]) + _batch([(2, b"c", b"3")])
    wb = FakeBatch()
    assert apply_records(MemoryRecords(data), 0, wb) == (3, 3)
    assert wb.ops == [("put", b"a", b"1"), ("delete", b"b", None), ("put", b"c", b"3")]


def test_a_fetch_that_starts_inside_a_batch_skips_what_was_applied() -> None:
    data = _batch([(0, b"a", b"1"), (1, b"b", b"2"), (2, b"c", b"3")])
    wb = FakeBatch()
    assert apply_records(MemoryRecords(data), 2, wb) == (3, 1)
    assert wb.ops == [("put", b"c", b"3")]


def test_compacted_offsets_and_an_empty_fetch() -> None:
    # offset 3 compacted away: the position still moves past the batch's last offset
    data = _batch([(0, b"a", b"1"), (1, b"b", b"2"), (3, b"d", b"4")])
    assert apply_records(MemoryRecords(data), 0, FakeBatch()) == (4, 3)
    assert apply_records(MemoryRecords(b""), 7, FakeBatch()) == (7, 0)


def test_a_truncated_last_batch_is_left_for_the_next_fetch() -> None:
    whole = _batch([(0, b"a", b"1")])
    cut = _batch([(1, b"b", b"2")])[:-5]
    wb = FakeBatch()
    assert apply_records(MemoryRecords(whole + cut), 0, wb) == (1, 1)


def test_a_corrupt_batch_is_refused() -> None:
    data = bytearray(_batch([(0, b"a", b"1")]))
    data[-1] ^= 0xFF  # the value's last byte: the CRC no longer matches
    with pytest.raises(CorruptRecordException):
        apply_records(MemoryRecords(bytes(data)), 0, FakeBatch())
