"""Fast restore of RocksDB tables from their changelogs, before Faust starts.

Faust recovers a table by passing every changelog record through its stream machinery:
about 110 µs of CPU per record on two cores, so a fresh worker needed ~2 minutes for
1,000,000 users' preferences (docs/bench).  Here a plain aiokafka consumer reads each
changelog partition from the local copy's offset to the end and writes the records
in RocksDB write batches, in the files and format Faust itself uses
(``<tabledir>/<table>-<partition>.db``, raw key and value bytes, the last applied
offset under Faust's offset key, written in the same batch as the data).  Faust then
starts, finds its local offsets at the end and reads only what was written since.

Every partition is restored, not only the ones this worker will be assigned (it does
not know them yet): a worker keeps a local copy of each table, and a partition moved
to it later needs only its tail.  Anything this step does not finish (a timeout, an
error) is left to Faust's own recovery, which continues from the offset stored here.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from notifyd.config import Settings
from notifyd.stream.kafka_read import fetch_to_end
from notifyd.stream.topology import TABLE_NAMES

log = structlog.stdlib.get_logger("notifyd.stream.restore")

#: Faust's key for the last applied changelog offset in each partition's RocksDB.
OFFSET_KEY = b"__faust\0offset__"


@dataclass
class RestoreReport:
    records: int = 0
    partitions: int = 0
    seconds: float = 0.0
    complete: bool = True
    per_table: dict[str, int] = field(default_factory=dict)


def enabled(settings: Settings) -> bool:
    return settings.fast_restore and settings.table_store.startswith("rocksdb")


def db_path(tabledir: Path, table: str, partition: int) -> Path:
    return tabledir / f"{table}-{partition}.db"


#: Memtable size while restoring.  Faust's 64 MB (up to 3 per database) in each of the
#: partitions written at once made most of the worker's peak RSS (2 M users: peak
#: 711 MB with 64 MB, 420 MB with 16 MB, and 3.8 s -> 3.2 s: smaller flushes overlap).
RESTORE_WRITE_BUFFER = 16 << 20


def _open(path: Path) -> Any:
    # Faust's own options (raw mode, table format), so Faust opens the same database
    # afterwards unchanged; only the memtable size, a setting of this open, differs.
    from faust.stores.rocksdb import RocksDBOptions

    return RocksDBOptions(use_rocksdict=True, write_buffer_size=RESTORE_WRITE_BUFFER).open(path)


def local_offset(db: Any) -> int | None:
    raw = db.get(OFFSET_KEY)
    return int(raw) if raw is not None else None


def apply_records(records: Any, position: int, wb: Any) -> tuple[int, int]:
    """Put (or, for a tombstone, delete) into ``wb`` every data record of ``records``
    (aiokafka ``MemoryRecords``) at or after ``position``; returns the next position
    and the records applied.

    The next position is the last batch's ``next_offset``, past control batches and
    offsets compaction removed, as aiokafka's own fetcher moves on.  Per record, only
    what the store needs is touched (the hot loop of a restore of millions).
    """
    from aiokafka.errors import CorruptRecordException

    put, delete = wb.put, wb.delete
    n = 0
    while records.has_next():
        batch = records.next_batch()
        if not batch.validate_crc():
            raise CorruptRecordException("invalid CRC in a changelog record batch")
        if batch.is_control_batch:
            position = max(position, batch.next_offset)
            continue
        # A fetch that began inside this batch: skip what was applied already (the
        # common case, a whole batch, pays no per-record offset check).
        recs = batch if batch.base_offset >= position else (
            r for r in batch if r.offset >= position
        )
        for rec in recs:
            value = rec.value
            if value is None:
                delete(rec.key)
            else:
                put(rec.key, value)
            n += 1
        position = max(position, batch.next_offset)
    return position, n


async def restore_tables(
    settings: Settings, tabledir: Path, timeout_s: float = 600.0
) -> RestoreReport:
    """Bring every table partition's RocksDB up to its changelog end offset."""
    import rocksdict

    started = time.monotonic()
    report = RestoreReport()
    topics = {f"{settings.app_id}-{name}-changelog": name for name in TABLE_NAMES}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    dbs: dict[TopicPartition, Any] = {}
    # Millions of short-lived record objects: the cyclic GC's passes over them were a
    # fifth of the restore's CPU (py-spy, docs/bench); nothing here makes cycles.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        tps = [
            TopicPartition(t, p) for t in topics for p in range(settings.topic_partitions)
        ]
        end = await consumer.end_offsets(tps)
        begin = await consumer.beginning_offsets(tps)
        await consumer.stop()
        starts: dict[TopicPartition, int] = {}
        # Blocking file work is fine here: this runs before the worker's loop has any
        # other task (RocksDB writes below block too, by design).
        tabledir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
        for tp in tps:
            if end[tp] <= begin[tp]:
                continue  # empty (or fully deleted) partition: nothing to restore
            db = _open(db_path(tabledir, topics[tp.topic], tp.partition))
            done = local_offset(db)
            start = max(begin[tp], done + 1 if done is not None else 0)
            if start >= end[tp]:
                db.close()
                continue
            dbs[tp] = db
            starts[tp] = start
        report.partitions = len(starts)
        # No write-ahead log: its checksum and write() were a sixth of the restore's CPU.
        # A crash loses only unflushed memtables, whole batches with their offsets, so
        # what survives is still consistent; close() flushes the rest.
        unlogged = rocksdict.WriteOptions()
        # A property at run time; rocksdict's stub calls it a method.
        unlogged.disable_wal = True  # type: ignore[method-assign,assignment]

        def handle(tp: TopicPartition, records: Any, position: int) -> int:
            wb = rocksdict.WriteBatch(raw_mode=True)
            nxt, n = apply_records(records, position, wb)
            if nxt > position:
                # The offset goes in the same batch: data and offset never disagree.
                wb.put(OFFSET_KEY, str(nxt - 1).encode())
                dbs[tp].write(wb, unlogged)
                report.records += n
                name = topics[tp.topic]
                report.per_table[name] = report.per_table.get(name, 0) + n
            return nxt

        reached = await fetch_to_end(
            settings.bootstrap_servers, starts, end, handle,
            timeout_s - (time.monotonic() - started),
        )
        report.complete = all(reached[tp] >= end[tp] for tp in starts)
    finally:
        if gc_was_enabled:
            gc.enable()
        for db in dbs.values():
            db.close()
        await consumer.stop()
        report.seconds = round(time.monotonic() - started, 3)
    log.info(
        "restore.done",
        records=report.records,
        partitions=report.partitions,
        seconds=report.seconds,
        complete=report.complete,
        per_table=report.per_table,
    )
    return report
