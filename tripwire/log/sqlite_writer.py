"""The embedded log's writer thread: group commits, and retention steps between them.

One thread owns the write connection. It takes every operation queued while
the previous transaction was being written (appends, offset commits; up to
``max_batch_records`` records) and commits them together with
``synchronous=FULL``, so many concurrent requests share one fsync; only then
are their futures resolved (one event-loop callback per transaction).

Every append of a transaction goes into one record batch per partition, in
queue order. Offsets are assigned inside the write transaction from the table
itself, so several processes may append to the same file (SQLite serialises
writers). The usual commit (appends only) is a single autocommit INSERT that
works its offsets out in SQL: one statement step, so the writer thread retakes
the GIL once per commit.

Between commits, when one is due, the thread runs one bounded retention step
(:mod:`tripwire.log.sqlite_retention`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from .base import LogClosed, LogUnavailable
from .sqlite_batch import BATCH_BYTES, Part, fits_one_batch, join
from .sqlite_codec import Codec
from .sqlite_retention import Retention

logger = logging.getLogger(__name__)

_STOP = object()
_INSERT_CHUNK = 32  # rows per INSERT statement (6 parameters each)

Compress = Callable[[str, bytes], bytes]  # (topic, framing) -> the blob to store


class Txn:
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


class Op:
    """One queued write: an append's framed ``parts`` for ``topic``, and/or ``apply`` run inside the transaction."""

    __slots__ = ("apply", "future", "records", "topic", "parts")

    def __init__(
        self,
        apply: Callable[[Txn], None] | None,
        future: asyncio.Future[None],
        records: int,
        topic: str = "",
        parts: list[Part] | None = None,
    ):
        self.apply = apply
        self.future = future
        self.records = records
        self.topic = topic
        self.parts = parts


class Writer:
    """The writer thread of one :class:`~tripwire.log.sqlite.SqliteLog`.

    ``committed`` runs on ``loop`` after every transaction (it wakes waiting consumers).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        loop: asyncio.AbstractEventLoop,
        *,
        max_batch_records: int,
        codec: Codec,
        retention: Retention,
        committed: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._loop = loop
        self._max_batch_records = max_batch_records
        self._codec = codec
        self._retention = retention
        self._committed = committed
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="tripwire-log-writer", daemon=True)
        self.commits = 0  # transactions written (group-commit efficiency = appends / commits)

    def start(self) -> None:
        self._thread.start()

    def put(self, op: Op) -> None:
        self._queue.put(op)

    def stop(self) -> None:
        """Write what is queued, then end the thread (blocks: call it from a worker thread)."""
        self._queue.put(_STOP)
        self._thread.join()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        conn, retention = self._conn, self._retention
        try:
            while True:
                # One retention step between commits when one is due: a backlog of expired
                # batches goes step by step, each after the appends queued meanwhile.
                wait = retention.due_in_s()
                if wait is not None and wait <= 0:
                    retention.step(conn)
                    wait = retention.due_in_s()
                try:
                    op = self._queue.get(timeout=None if wait is None else max(wait, 0.001))
                except queue.Empty:
                    continue
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
                self._commit(batch)
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

    def _commit(self, batch: list[Op]) -> None:
        # Every append of the transaction goes into one record batch per partition
        # (a few rows per commit instead of one per request), in queue order.
        merged: dict[tuple[str, int], list[Part]] = {}
        others: list[Op] = []
        for op in batch:
            if op.apply is not None:
                others.append(op)  # runs in the same transaction as the batch's records (identity links)
                if op.parts is None:
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
            if not others and len(merged) <= _INSERT_CHUNK and all(fits_one_batch(p) for p in merged.values()):
                _insert_one_statement(self._conn, merged, self._codec.compress)
            else:
                _commit_general(self._conn, others, merged, self._codec.compress)
            self.commits += 1
        except sqlite3.Error as exc:
            logger.exception("event log write failed")
            error = LogUnavailable(f"event log write failed: {exc}")
        self._resolve(batch, error)

    def _resolve(self, batch: list[Op], error: Exception | None) -> None:
        futures = [op.future for op in batch]
        committed = self._committed

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
            committed()

        try:
            self._loop.call_soon_threadsafe(done)
        except RuntimeError:  # loop already closed at interpreter exit
            pass


def _commit_general(
    conn: sqlite3.Connection, others: list[Op], merged: dict[tuple[str, int], list[Part]], compress: Compress
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        txn = Txn(conn)
        for op in others:
            op.apply(txn)  # type: ignore[misc]
        if merged:
            _merge_rows(txn, merged, compress)
        _insert_rows(conn, txn.rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


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


def _merge_rows(txn: Txn, merged: dict[tuple[str, int], list[Part]], compress: Compress) -> None:
    ts = int(time.time() * 1000)
    for tp, pieces in merged.items():
        nxt = txn.next_offsets.get(tp)
        if nxt is None:
            nxt = _next_offset(txn.conn, tp[0], tp[1])
        # Rows of about BATCH_BYTES at most (a piece is already at most about that big).
        start = 0
        while start < len(pieces):
            stop, size, count = start, 0, 0
            while stop < len(pieces):
                piece = pieces[stop]
                if stop > start and size + len(piece[3]) > BATCH_BYTES:
                    break
                size += len(piece[3])
                count += piece[1]
                stop += 1
            nxt += count
            txn.rows.append((tp[0], tp[1], nxt - 1, count, ts, compress(tp[0], join(pieces[start:stop]))))
            start = stop
        txn.next_offsets[tp] = nxt


# One row whose last_offset is worked out by SQLite: the partition's next offset (its
# highest, or the floor retention left in meta) plus the row's count minus one.
_SELF_OFFSET_ROW = (
    "(?, ?, (SELECT max(coalesce(max(last_offset) + 1, 0), "
    "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE name = ?), 0)) "
    "FROM record_batches WHERE topic = ? AND partition = ?) + ?, ?, ?, ?)"
)


def _insert_one_statement(conn: sqlite3.Connection, merged: dict[tuple[str, int], list[Part]], compress: Compress) -> None:
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
        params += (topic, partition, f"next:{topic}:{partition}", topic, partition, count - 1, count, ts,
                   compress(topic, join(pieces)))
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
