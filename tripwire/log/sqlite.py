"""The embedded event log: one SQLite database in WAL mode under the data dir.

Durability contract: ``append`` resolves only after the transaction holding its
records has committed with ``synchronous=FULL``, so an acknowledged record
survives a kill -9 of the process (and a power cut). Appends are *group
committed*: one writer thread drains every append queued while the previous
transaction was being written and commits them together, so many concurrent
requests share one fsync.

Records are stored Kafka-style as *record batches*: one row per (transaction,
partition) holding the records every append of that group commit made to the
partition, in queue order (split at about 1 MB), keyed by
``(topic, partition, last_offset)``. Offsets stay per record (a batch of ``n``
records ending at ``last_offset`` holds ``last_offset - n + 1 .. last_offset``);
a read from any offset finds the batch holding it with the primary key
(``last_offset >= ?``) and drops the records before it. The blob is
``n`` pairs of little-endian int32 (key length, -1 for no key; value length)
followed by each record's key and value bytes (see :func:`encode_batch`).
A few rows per commit instead of one per event (or per request) is what makes
intake cheap. Appends are framed on the event loop (:func:`encode_parts`); the
writer only joins the frames.

Offsets are assigned inside the write transaction from the table itself, so
several processes may append to the same file (SQLite serialises writers). The
usual commit (appends only) is a single autocommit INSERT that works its
offsets out in SQL: one statement step, so the writer thread retakes the GIL
once per commit.
The partition count is fixed when the file is created and stored in it.
Read the log through :class:`SqliteLog` (``read``/``read_sync``), not its tables.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import (
    Consumer,
    Entry,
    EventLog,
    GroupTaken,
    LogClosed,
    LogUnavailable,
    RebalanceListener,
    Record,
    TopicPartition,
)
from .partition import partition_for

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS record_batches (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, last_offset INTEGER NOT NULL,
    count INTEGER NOT NULL, ts INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (topic, partition, last_offset)
);  -- a rowid table: batches are KBs, too big for WITHOUT ROWID to pay off
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Cross-process appends are not signalled; consumers re-check this often.
_POLL_FALLBACK_S = 0.05
_STOP = object()


# Record batches are tens of KB: big pages keep them off long overflow-page chains (about a
# third less CPU per appended record than 4 KB pages). Takes effect when the file is created.
_PAGE_SIZE = 65536
# In pages: checkpoint the WAL into the database every ~16 MB written.
_WAL_AUTOCHECKPOINT = 256


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT}")
    return conn


class _Txn:
    """State shared by the ops of one group-committed transaction.

    Next offsets are read from the table once per partition per transaction (the
    write lock is held, so they cannot move under us) and all appended rows go to
    one multi-row INSERT: the per-append cost stays flat as the group grows.
    """

    __slots__ = ("conn", "next_offsets", "rows")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.next_offsets: dict[tuple[str, int], int] = {}
        self.rows: list[tuple[Any, ...]] = []


# One partition's share of an append, framed in two parts (see encode_batch):
# (partition, record count, the int32 length pairs, the key and value bytes).
_Part = tuple[int, int, bytes, bytes]


class _Op:
    """One queued write: an append's framed ``parts`` for ``topic``, or ``apply`` run inside the transaction."""

    __slots__ = ("apply", "future", "records", "topic", "parts")

    def __init__(
        self,
        apply: Callable[[_Txn], None] | None,
        future: asyncio.Future[None],
        records: int,
        topic: str = "",
        parts: list[_Part] | None = None,
    ):
        self.apply = apply
        self.future = future
        self.records = records
        self.topic = topic
        self.parts = parts


_PAIR = struct.Struct("<2i")


def encode_parts(items: Sequence[Entry]) -> tuple[bytes, bytes]:
    """:func:`encode_batch` in its two parts: the length pairs, then the bytes.

    The parts of consecutive framings concatenate into one valid blob
    (``b"".join(heads) + b"".join(datas)``), which is how the writer merges the
    appends of one transaction into one record batch per partition.
    """
    if len(items) == 1:
        key, value = items[0]
        if key is None:
            return _PAIR.pack(-1, len(value)), value
        return _PAIR.pack(len(key), len(value)), key + value
    lengths: list[int] = []
    parts: list[bytes] = []
    for key, value in items:
        if key is None:
            lengths += (-1, len(value))
        else:
            lengths += (len(key), len(value))
            parts.append(key)
        parts.append(value)
    return struct.pack(f"<{len(lengths)}i", *lengths), b"".join(parts)


def encode_batch(items: Sequence[Entry]) -> bytes:
    """Frame records as one blob: (key length | -1, value length) int32 pairs, then the bytes."""
    head, data = encode_parts(items)
    return head + data


def decode_batch(data: bytes, count: int, start: int = 0, stop: int | None = None) -> list[tuple[bytes | None, bytes]]:
    """The (key, value) pairs ``start:stop`` of a blob made by :func:`encode_batch`."""
    lengths = struct.unpack_from(f"<{2 * count}i", data)
    total = 8 * count + sum(length for length in lengths if length > 0)
    if total != len(data):
        raise ValueError(f"record batch of {count} records holds {len(data)} bytes, not {total}")
    stop = count if stop is None else min(stop, count)
    pos = 8 * count + sum(length for length in lengths[: 2 * start] if length > 0)
    view = memoryview(data)
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(2 * start, 2 * stop, 2):
        klen, vlen = lengths[i], lengths[i + 1]
        if klen < 0:
            key = None
        else:
            key = bytes(view[pos : pos + klen])
            pos += klen
        out.append((key, bytes(view[pos : pos + vlen])))
        pos += vlen
    return out


# A huge append is stored as several record batches of about this size, so a read
# from an offset never has to load much more than it returns.
_BATCH_BYTES = 1 << 20


def _chunks(items: list[Entry]) -> list[list[Entry]]:
    size = 0
    for _, value in items:
        size += len(value)
    if size <= _BATCH_BYTES:
        return [items]
    chunks: list[list[Entry]] = [[]]
    size = 0
    for item in items:
        if size >= _BATCH_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += len(item[1]) + (len(item[0]) if item[0] is not None else 0)
    return chunks


_INSERT_CHUNK = 32  # rows per INSERT statement (6 parameters each)


def _insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert record-batch rows with one multi-row INSERT per up to 32 rows.

    One statement step instead of one per row: the sqlite3 module releases and
    retakes the GIL around every step, and each retake on a busy event loop
    waits out a switch interval.
    """
    for start in range(0, len(rows), _INSERT_CHUNK):
        chunk = rows[start : start + _INSERT_CHUNK]
        params = [value for row in chunk for value in row]
        conn.execute("INSERT INTO record_batches VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk)), params)


def _merge_rows(txn: _Txn, merged: dict[tuple[str, int], list[_Part]]) -> None:
    ts = int(time.time() * 1000)
    for tp, pieces in merged.items():
        nxt = txn.next_offsets.get(tp)
        if nxt is None:
            nxt = _next_offset(txn.conn, tp[0], tp[1])
        # Rows of about _BATCH_BYTES at most (a piece is already at most about that big).
        start = 0
        while start < len(pieces):
            stop, size, count = start, 0, 0
            while stop < len(pieces):
                piece = pieces[stop]
                if stop > start and size + len(piece[3]) > _BATCH_BYTES:
                    break
                size += len(piece[3])
                count += piece[1]
                stop += 1
            nxt += count
            txn.rows.append((tp[0], tp[1], nxt - 1, count, ts, _join(pieces[start:stop])))
            start = stop
        txn.next_offsets[tp] = nxt


def _join(pieces: list[_Part]) -> bytes:
    if len(pieces) == 1:
        return pieces[0][2] + pieces[0][3]
    return b"".join([p[2] for p in pieces] + [p[3] for p in pieces])


def _one_row(pieces: list[_Part]) -> bool:
    """Whether a partition's pieces of one commit fit one record batch."""
    if len(pieces) == 1:
        return True
    size = 0
    for piece in pieces:
        size += len(piece[3])
    return size <= _BATCH_BYTES


# One row whose last_offset is worked out by SQLite: the partition's next offset (its
# highest, or the floor retention left in meta) plus the row's count minus one.
_SELF_OFFSET_ROW = (
    "(?, ?, (SELECT max(coalesce(max(last_offset) + 1, 0), "
    "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE name = ?), 0)) "
    "FROM record_batches WHERE topic = ? AND partition = ?) + ?, ?, ?, ?)"
)


def _insert_one_statement(conn: sqlite3.Connection, merged: dict[tuple[str, int], list[_Part]]) -> None:
    """The common commit (appends only, one row per partition) as one autocommit INSERT.

    A write statement outside BEGIN is its own transaction, taking the write lock
    before it reads (as BEGIN IMMEDIATE does), so the offsets it computes cannot
    race another writer, and it returns after the synchronous=FULL commit. One
    step for the whole transaction: the writer retakes the GIL once per commit,
    not once per statement (each retake waits out a switch interval on a busy loop).
    Each row's offset subquery reads only its own partition, which no other row of
    the statement touches, so every row sees the table as it was before the statement.
    """
    ts = int(time.time() * 1000)
    params: list[Any] = []
    for (topic, partition), pieces in merged.items():
        count = 0
        for piece in pieces:
            count += piece[1]
        params += (topic, partition, f"next:{topic}:{partition}", topic, partition, count - 1, count, ts, _join(pieces))
    conn.execute("INSERT INTO record_batches VALUES " + ", ".join([_SELF_OFFSET_ROW] * len(merged)), params)


def _next_offset(conn: sqlite3.Connection, topic: str, partition: int) -> int:
    (nxt,) = conn.execute(
        "SELECT coalesce(max(last_offset) + 1, 0) FROM record_batches WHERE topic = ? AND partition = ?",
        (topic, partition),
    ).fetchone()
    # Retention may have deleted everything; never reuse an offset.
    floor = conn.execute("SELECT value FROM meta WHERE name = ?", (f"next:{topic}:{partition}",)).fetchone()
    if floor is not None:
        nxt = max(nxt, int(floor[0]))
    return int(nxt)


class SqliteLog(EventLog):
    def __init__(
        self,
        path: str | Path,
        partitions: int = 4,
        *,
        max_batch_records: int = 10_000,
        retention_hours: int = 168,
    ) -> None:
        self.path = Path(path)
        self._requested_partitions = partitions
        self._partitions = partitions
        self._max_batch_records = max_batch_records
        self._retention_ms = retention_hours * 3600 * 1000
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._appended = asyncio.Event()
        self._closed = False
        self._started = False
        self.commits = 0  # transactions written (group-commit efficiency = appends / commits)

    # lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        self._appended = asyncio.Event()
        conn = connect(self.path)
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE name = 'partitions'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('partitions', ?)", (str(self._requested_partitions),))
        else:
            self._partitions = int(row[0])
            if self._partitions != self._requested_partitions:
                logger.warning(
                    "event log %s was created with %d partitions; keeping them (config asks %d)",
                    self.path, self._partitions, self._requested_partitions,
                )
        self._reader = connect(self.path)
        self._writer = threading.Thread(target=self._write_loop, args=(conn,), name="tripwire-log-writer", daemon=True)
        self._writer.start()
        self._started = True
        if self._retention_ms > 0:
            await self._submit(self._expire, 0)

    async def stop(self) -> None:
        if not self._started or self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        assert self._writer is not None
        await asyncio.to_thread(self._writer.join)
        if self._reader is not None:
            self._reader.close()

    async def ready(self) -> bool:
        return self._started and not self._closed and self._writer is not None and self._writer.is_alive()

    # writing -----------------------------------------------------------------

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                op = self._queue.get()
                if op is _STOP:
                    return
                batch = [op]
                count = op.records
                stop = False
                while count < self._max_batch_records:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stop = True
                        break
                    batch.append(nxt)
                    count += nxt.records
                self._commit(conn, batch)
                if stop:
                    return
        finally:
            conn.close()
            # Anything still queued can no longer be written: fail it, never hang it.
            while True:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is not _STOP:
                    self._resolve([op], LogClosed("event log stopped"))

    def _commit(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        # Every append of the transaction goes into one record batch per partition
        # (a few rows per commit instead of one per request), in queue order.
        merged: dict[tuple[str, int], list[_Part]] = {}
        others: list[_Op] = []
        for op in batch:
            if op.apply is not None:
                others.append(op)
                continue
            topic = op.topic
            for part in op.parts:  # type: ignore[union-attr]
                tp = (topic, part[0])
                pieces = merged.get(tp)
                if pieces is None:
                    merged[tp] = [part]
                else:
                    pieces.append(part)
        error: Exception | None = None
        try:
            if not others and len(merged) <= _INSERT_CHUNK and all(_one_row(p) for p in merged.values()):
                _insert_one_statement(conn, merged)
            else:
                self._commit_general(conn, others, merged)
            self.commits += 1
        except sqlite3.Error as exc:
            logger.exception("event log write failed")
            error = LogUnavailable(f"event log write failed: {exc}")
        self._resolve(batch, error)

    @staticmethod
    def _commit_general(conn: sqlite3.Connection, others: list[_Op], merged: dict[tuple[str, int], list[_Part]]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            txn = _Txn(conn)
            for op in others:
                op.apply(txn)  # type: ignore[misc]
            if merged:
                _merge_rows(txn, merged)
            _insert_rows(conn, txn.rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _resolve(self, batch: list[_Op], error: Exception | None) -> None:
        futures = [op.future for op in batch]

        def done() -> None:
            # One loop callback per transaction resolves all of its appends.
            if error is None:
                for future in futures:
                    if not future.done():
                        future.set_result(None)
            else:
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
            self._appended.set()
            self._appended = asyncio.Event()

        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(done)
        except RuntimeError:  # loop already closed at interpreter exit
            pass

    async def _submit(self, apply: Callable[[_Txn], None], records: int) -> None:
        if not self._started:
            raise LogClosed("event log not started")
        if self._closed:
            raise LogClosed("event log stopped")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put(_Op(apply, future, records))
        await future

    async def append(self, topic: str, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        if not self._started:
            raise LogClosed("event log not started")
        if self._closed:
            raise LogClosed("event log stopped")
        n = self._partitions
        parts: list[_Part]
        if len(entries) == 1:  # a single event: the collector's commonest request
            head, data = encode_parts(entries)
            parts = [(partition_for(entries[0][0], n), 1, head, data)]
        else:
            by_partition: dict[int, list[Entry]] = {}
            for entry in entries:
                by_partition.setdefault(partition_for(entry[0], n), []).append(entry)
            parts = []
            for partition, items in by_partition.items():
                for chunk in _chunks(items):
                    parts.append((partition, len(chunk), *encode_parts(chunk)))
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.put(_Op(None, future, len(entries), topic, parts))
        await future

    def _expire(self, txn: _Txn) -> None:
        conn = txn.conn
        cutoff = int(time.time() * 1000) - self._retention_ms
        for topic, partition, nxt in conn.execute(
            "SELECT topic, partition, max(last_offset) + 1 FROM record_batches WHERE ts < ? GROUP BY topic, partition",
            (cutoff,),
        ).fetchall():
            conn.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = max(CAST(value AS INTEGER), excluded.value)",
                (f"next:{topic}:{partition}", str(nxt)),
            )
        conn.execute("DELETE FROM record_batches WHERE ts < ?", (cutoff,))

    async def commit_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        rows = [(group, tp.topic, tp.partition, off) for tp, off in offsets.items()]

        def apply(txn: _Txn) -> None:
            txn.conn.executemany(
                "INSERT INTO group_offsets VALUES (?, ?, ?, ?) "
                "ON CONFLICT(grp, topic, partition) DO UPDATE SET offset = excluded.offset",
                rows,
            )

        await self._submit(apply, len(rows))

    # reading -----------------------------------------------------------------

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        if self._reader is None or self._closed:
            raise LogClosed("event log stopped")
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    async def partitions(self, topic: str) -> list[int]:
        return list(range(self._partitions))

    async def end_offsets(self, topic: str) -> dict[int, int]:
        rows = await asyncio.to_thread(
            self._query,
            "SELECT partition, max(last_offset) + 1 FROM record_batches WHERE topic = ? GROUP BY partition",
            (topic,),
        )
        ends = dict.fromkeys(range(self._partitions), 0)
        ends.update({p: o for p, o in rows})
        # Retention may have deleted a partition's newest records: the end never moves back.
        floors = await asyncio.to_thread(
            self._query, "SELECT name, value FROM meta WHERE name LIKE ?", (f"next:{topic}:%",)
        )
        for name, value in floors:
            partition = int(name.rsplit(":", 1)[1])
            if partition in ends:
                ends[partition] = max(ends[partition], int(value))
        return ends

    def read_sync(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[Record]:
        if max_records <= 0:
            return []
        if self._reader is None or self._closed:
            raise LogClosed("event log stopped")
        out: list[Record] = []
        with self._read_lock:
            # Every batch holds at least one record: max_records batches are always enough,
            # and the cursor is left as soon as enough records are in hand.
            cursor = self._reader.execute(
                "SELECT last_offset, count, ts, data FROM record_batches "
                "WHERE topic = ? AND partition = ? AND last_offset >= ? ORDER BY last_offset LIMIT ?",
                (topic, partition, offset, max_records),
            )
            try:
                for last, count, ts, data in cursor:
                    first = last - count + 1
                    skip = offset - first if offset > first else 0
                    wanted = decode_batch(data, count, skip, skip + max_records - len(out))
                    out.extend(
                        Record(topic, partition, i, key, value, ts) for i, (key, value) in enumerate(wanted, first + skip)
                    )
                    if len(out) >= max_records:
                        return out
            finally:
                cursor.close()
        return out

    async def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[Record]:
        return await asyncio.to_thread(self.read_sync, topic, partition, offset, max_records)

    async def read_spans(self, topic: str, spans: Sequence[tuple[int, int, int]]) -> list[list[Record]]:
        """Every span in one trip to a worker thread."""
        return await asyncio.to_thread(lambda: [self.read_sync(topic, p, offset, n) for p, offset, n in spans])

    async def committed_offset(self, group: str, tp: TopicPartition) -> int | None:
        rows = await asyncio.to_thread(
            self._query,
            "SELECT offset FROM group_offsets WHERE grp = ? AND topic = ? AND partition = ?",
            (group, tp.topic, tp.partition),
        )
        return rows[0][0] if rows else None

    async def wait_appended(self, timeout_s: float) -> None:
        """Wait for an append in this process, or a short while (other processes)."""
        try:
            await asyncio.wait_for(self._appended.wait(), min(timeout_s, _POLL_FALLBACK_S))
        except TimeoutError:
            pass

    def consumer(
        self, group: str, topics: Sequence[str], listener: RebalanceListener | None = None
    ) -> Consumer:
        return SqliteConsumer(self, group, topics, listener)


class SqliteConsumer(Consumer):
    """The embedded consumer: one member per group, assigned every partition.

    "One member" holds across processes too: a started consumer holds an exclusive
    ``flock`` on ``<log file>.group-<group>.lock`` until it stops, so a second member
    (``tripwire sink`` or ``engine`` next to ``tripwire run`` on the same data_dir)
    fails to start with :class:`GroupTaken` instead of reading every partition again
    (a second sink writing the same events into other files, a second engine firing
    every trigger twice). The lock goes with the process, even after a kill -9.
    """

    def __init__(
        self, log: SqliteLog, group: str, topics: Sequence[str], listener: RebalanceListener | None
    ) -> None:
        self._log = log
        self._group = group
        self._topics = list(topics)
        self._listener = listener
        self._positions: dict[TopicPartition, int] = {}
        self._next = 0  # round-robin start, so no partition starves
        self._running = False
        self._member: int | None = None  # fd holding the group's flock while started

    async def start(self) -> None:
        if self._running:
            return
        self._join()
        try:
            assigned: dict[TopicPartition, int] = {}
            for topic in self._topics:
                for p in await self._log.partitions(topic):
                    tp = TopicPartition(topic, p)
                    assigned[tp] = await self._log.committed_offset(self._group, tp) or 0
            self._positions = assigned
            self._running = True
            if self._listener is not None:
                await self._listener.on_assigned(self, set(assigned))
        except BaseException:
            self._running = False
            self._leave()
            raise

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        try:
            if self._listener is not None:
                await self._listener.on_revoked(self, set(self._positions))
        finally:
            self._positions = {}
            self._leave()

    def _join(self) -> None:
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in self._group)
        path = f"{self._log.path}.group-{name}.lock"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GroupTaken(
                f"consumer group '{self._group}' is already reading the event log {self._log.path} "
                "(another tripwire process on this data_dir?); the embedded log gives a group one member: "
                "stop the other process, or give this one another group"
            ) from None
        self._member = fd

    def _leave(self) -> None:
        if self._member is not None:
            os.close(self._member)  # releases the flock
            self._member = None

    def assignment(self) -> set[TopicPartition]:
        return set(self._positions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._positions:
            raise ValueError(f"partition {tp} is not assigned")
        self._positions[tp] = offset

    def _read_some(self, max_records: int) -> list[Record]:
        tps = list(self._positions)
        out: list[Record] = []
        for i in range(len(tps)):
            tp = tps[(self._next + i) % len(tps)]
            got = self._log.read_sync(tp.topic, tp.partition, self._positions[tp], max_records - len(out))
            if got:
                self._positions[tp] = got[-1].offset + 1
                out.extend(got)
            if len(out) >= max_records:
                break
        self._next = (self._next + 1) % max(1, len(tps))
        return out

    async def poll(self, timeout_ms: int = 1000, max_records: int = 1000) -> list[Record]:
        if not self._running:
            raise LogClosed("consumer not started")
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            records = await asyncio.to_thread(self._read_some, max_records)
            remaining = deadline - time.monotonic()
            if records or remaining <= 0 or not self._running:
                return records
            await self._log.wait_appended(remaining)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        await self._log.commit_offsets(self._group, offsets)

    async def committed(self, tp: TopicPartition) -> int | None:
        return await self._log.committed_offset(self._group, tp)

    async def lag(self, tp: TopicPartition) -> int | None:
        return (await self.lags([tp]))[tp]

    async def lags(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """One look at the end offsets per topic, however many partitions are asked about."""
        ends = {topic: await self._log.end_offsets(topic) for topic in {tp.topic for tp in tps}}
        out: dict[TopicPartition, int | None] = {}
        for tp in tps:
            position = self._positions.get(tp)
            out[tp] = None if position is None else max(0, ends[tp.topic].get(tp.partition, 0) - position)
        return out
