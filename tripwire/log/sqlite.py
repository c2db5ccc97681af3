"""The embedded event log: one SQLite database in WAL mode under the data dir.

Durability contract: ``append`` resolves only after the transaction holding its
records has committed with ``synchronous=FULL``, so an acknowledged record
survives a kill -9 of the process (and a power cut). Appends are *group
committed* by one writer thread (:mod:`tripwire.log.sqlite_writer`): many
concurrent requests share one fsync.

Records are stored Kafka-style as *record batches*: one row per (transaction,
partition) holding the records every append of that group commit made to the
partition, in queue order (split at about 1 MB), keyed by
``(topic, partition, last_offset)``. Offsets stay per record (a batch of ``n``
records ending at ``last_offset`` holds ``last_offset - n + 1 .. last_offset``);
a read from any offset finds the batch holding it with the primary key
(``last_offset >= ?``) and drops the records before it. A batch is framed on
the event loop (:mod:`tripwire.log.sqlite_batch`) and stored compressed with
zstd and a dictionary per topic (:mod:`tripwire.log.sqlite_codec`), as Kafka
compresses its record batches. A few rows per commit instead of one per event
(or per request) is what makes intake cheap.

Several processes may append to the same file (SQLite serialises writers).
The partition count is fixed when the file is created and stored in it.
Read the log through :class:`SqliteLog` (``read``/``read_sync``), not its tables.

Identity links live in their own table (:mod:`tripwire.log.links_sqlite`),
written in the group-committed transaction of the append that carries them, so
an acknowledged identify's link is as durable as its event; retention never
touches them. ``links`` is a primary-key read answered on the event loop.

Retention runs while the log does, in small steps between group commits
(:mod:`tripwire.log.sqlite_retention`); a consumer whose position retention
took goes on from the first record still there, with a warning
(:mod:`tripwire.log.sqlite_consumer`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from tripwire.identity import Link

from . import links_sqlite
from .base import Consumer, Entry, EventLog, LogClosed, RebalanceListener, Record, TopicPartition
from .sqlite_batch import decode_batch, frame
from .sqlite_codec import SCHEMA as _CODEC_SCHEMA
from .sqlite_codec import Codec
from .sqlite_consumer import SqliteConsumer
from .sqlite_retention import Retention
from .sqlite_writer import Op, Txn, Writer

__all__ = ["SqliteConsumer", "SqliteLog", "connect"]

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

# Appends of other processes (the collector of `tripwire run` is one, its engines and sinks others)
# are seen through SQLite's data_version, looked at this often while a consumer waits.
_CROSS_PROCESS_CHECK_S = 0.004

# Record batches are KBs to tens of KBs (1 MB at most): big pages keep them off long
# overflow-page chains. Takes effect when the file is created.
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


class SqliteLog(EventLog):
    def __init__(
        self,
        path: str | Path,
        partitions: int = 4,
        *,
        max_batch_records: int = 10_000,
        retention_s: float = 7 * 86400,
    ) -> None:
        """``retention_s``: records older than this are deleted (0: kept for ever)."""
        self.path = Path(path)
        self._requested_partitions = partitions
        self._partitions = partitions
        self._max_batch_records = max_batch_records
        self.retention = Retention(int(retention_s * 1000))
        self._codec = Codec(lambda: connect(self.path))
        self._writer: Writer | None = None
        self._reader: sqlite3.Connection | None = None
        self._links_reader: sqlite3.Connection | None = None  # used on the event loop only
        self._read_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._appended = asyncio.Event()
        self._closed = False
        self._started = False

    @property
    def commits(self) -> int:
        """Transactions written (group-commit efficiency = appends / commits)."""
        return self._writer.commits if self._writer is not None else 0

    # lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        self._appended = asyncio.Event()
        conn = connect(self.path)
        conn.executescript(_SCHEMA + _CODEC_SCHEMA + links_sqlite.SCHEMA)
        self._codec.load(conn)
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
        self._links_reader = connect(self.path)
        self._writer = Writer(conn, self._loop, max_batch_records=self._max_batch_records, codec=self._codec,
                              retention=self.retention, committed=self._committed)
        self._writer.start()
        self._started = True

    async def stop(self) -> None:
        if not self._started or self._closed:
            return
        self._closed = True
        assert self._writer is not None
        await asyncio.to_thread(self._writer.stop)
        for trainer in self._codec.trainers:  # a dictionary half-trained is only lost work, but finish it
            await asyncio.to_thread(trainer.join, 10)
        if self._reader is not None:
            self._reader.close()
        if self._links_reader is not None:
            self._links_reader.close()

    async def ready(self) -> bool:
        return self._started and not self._closed and self._writer is not None and self._writer.alive()

    def _committed(self) -> None:
        """A transaction was written (on the loop): wake the consumers waiting for appends."""
        self._appended.set()
        self._appended = asyncio.Event()

    # writing -----------------------------------------------------------------

    async def _submit(self, apply: Callable[[Txn], None], records: int) -> None:
        if not self._started:
            raise LogClosed("event log not started")
        if self._closed:
            raise LogClosed("event log stopped")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        assert self._writer is not None
        self._writer.put(Op(apply, future, records))
        await future

    async def append(self, topic: str, entries: Sequence[Entry], links: Sequence[Link] = ()) -> None:
        if not entries and not links:
            return
        if not self._started:
            raise LogClosed("event log not started")
        if self._closed:
            raise LogClosed("event log stopped")
        parts = None
        if entries:
            self._codec.sample(topic, entries)
            parts = frame(entries, self._partitions)
        apply = None
        if links:
            rows = list(links)

            def apply(txn: Txn) -> None:
                links_sqlite.upsert(txn.conn, rows)

        assert self._loop is not None and self._writer is not None
        future: asyncio.Future[None] = self._loop.create_future()
        self._writer.put(Op(apply, future, len(entries), topic, parts))
        await future

    async def links(self, user_ids: Collection[str]) -> dict[str, list[Link]]:
        if not user_ids:
            return {}
        if self._links_reader is None or self._closed:
            raise LogClosed("event log stopped")
        return links_sqlite.select(self._links_reader, user_ids)

    async def forget_links(self, user_id: str) -> list[Link]:
        gone: list[Link] = []

        def apply(txn: Txn) -> None:
            gone[:] = links_sqlite.delete_user(txn.conn, user_id)

        await self._submit(apply, 1)
        return gone

    async def commit_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        rows = [(group, tp.topic, tp.partition, off) for tp, off in offsets.items()]

        def apply(txn: Txn) -> None:
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

    def first_offset_sync(self, topic: str, partition: int) -> int | None:
        """The offset of the oldest record still there (None: the partition holds none)."""
        rows = self._query(
            "SELECT last_offset - count + 1 FROM record_batches WHERE topic = ? AND partition = ? "
            "ORDER BY last_offset LIMIT 1",
            (topic, partition),
        )
        return int(rows[0][0]) if rows else None

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
                    data = self._codec.decompress(data, self._reader)
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
        """Wait for an append: one of this process (signalled), or a commit of another process to the file
        (its data_version changes), or ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        seen = self._data_version()
        appended = self._appended
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(appended.wait(), min(remaining, _CROSS_PROCESS_CHECK_S))
                return
            except TimeoutError:
                pass
            if self._data_version() != seen:
                return

    def _data_version(self) -> int | None:
        """SQLite's count of the file's changes by other connections (None while a read holds the reader)."""
        if self._reader is None or self._closed or not self._read_lock.acquire(blocking=False):
            return None
        try:
            return int(self._reader.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return None
        finally:
            self._read_lock.release()

    def consumer(
        self, group: str, topics: Sequence[str], listener: RebalanceListener | None = None, exclusive: bool = False
    ) -> Consumer:
        return SqliteConsumer(self, group, topics, listener, exclusive)
