"""The Kafka log's identity links: the compacted topic, and this process's local copy of it.

Every link appended with events (:meth:`KafkaLog.append`) is produced to
``<prefix>.identities`` (``cleanup.policy=compact``) in the same group commit,
keyed by its pair ``["userId", "anonymousId"]`` and so acknowledged (or spilled)
with the events, then applied at once to this process's copy. A tombstone (a
record without value, from :meth:`KafkaLog.forget_links`) deletes its pair.

The copy (:class:`LocalLinks`) is a SQLite file under the data dir, one per
process, rebuilt on every start: it holds every link, and SQLite's page cache
bounds the memory lookups take. :class:`IdentityFollower` reads the topic from
the start into it, then follows it, so a link another collector learned is
known here within the follower's fetch latency (deploy/README.md measures that
window). Reading every pair's versions in any order gives the same copy
(:mod:`tripwire.log.links_sqlite`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import KafkaError

from tripwire.identity import Link

from . import links_sqlite

logger = logging.getLogger(__name__)

_FETCH_WAIT_MS = 50  # how long the broker may hold a fetch open: the follower's share of the link window
_MAX_BACKOFF_S = 30.0


class LocalLinks:
    """This process's copy of the identities topic: ``<directory>/<pid>.db``, removed on close.

    Written by the follower's thread and by the event loop (links this process
    appended), under one lock; read on the event loop through a connection of its own.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / f"{os.getpid()}.db"
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        if self._writer is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for old in self.directory.glob("*.db*"):
            pid = old.name.split(".", 1)[0]
            if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
                old.unlink(missing_ok=True)  # a copy left by a process that is gone: rebuilt from the topic
        writer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA synchronous=OFF")  # a cache of the topic: a crash rebuilds it
        writer.executescript(links_sqlite.SCHEMA)
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._writer = writer

    @property
    def opened(self) -> bool:
        return self._writer is not None

    def apply(self, links: Sequence[Link]) -> None:
        with self._lock:
            assert self._writer is not None
            links_sqlite.upsert(self._writer, links)

    def apply_records(self, records: Iterable[tuple[bytes | None, bytes | None]]) -> int:
        """Apply (key, value) records of the topic in order; tombstones delete their pair. Records that are
        not links are skipped (counted in the result)."""
        upserts: list[Link] = []
        deletes: list[tuple[str, str]] = []
        skipped = 0
        for key, value in records:
            try:
                if value is None:
                    pair = orjson.loads(key or b"")
                    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                        raise ValueError("not a pair")
                    upserts = [x for x in upserts if (x.user_id, x.anonymous_id) != tuple(pair)]
                    deletes.append((pair[0], pair[1]))
                else:
                    upserts.append(Link.from_json(value))
            except ValueError:
                skipped += 1
        with self._lock:
            assert self._writer is not None
            self._writer.execute("BEGIN")
            try:
                links_sqlite.delete_pairs(self._writer, deletes)
                links_sqlite.upsert(self._writer, upserts)
                self._writer.execute("COMMIT")
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
        return skipped

    def select(self, user_ids: Collection[str]) -> dict[str, list[Link]]:
        assert self._reader is not None
        return links_sqlite.select(self._reader, user_ids)

    def delete_pairs(self, pairs: Sequence[tuple[str, str]]) -> None:
        with self._lock:
            assert self._writer is not None
            links_sqlite.delete_pairs(self._writer, pairs)

    def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = None
        for path in (self.path, self.path.with_name(self.path.name + "-wal"), self.path.with_name(self.path.name + "-shm")):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class IdentityFollower:
    """Reads the identities topic from the start into a :class:`LocalLinks`, then follows it.

    ``caught_up`` turns true once every partition has been read up to the end it
    had when the follower (re)connected; a broker outage only delays it.
    """

    def __init__(self, bootstrap: str, topic: str, local: LocalLinks, *, request_timeout_ms: int,
                 client_id: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._local = local
        self._timeout_ms = request_timeout_ms
        self._client_id = client_id
        self._task: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()
        self._positions: dict[int, int] = {}
        self.applied = 0  # records read from the topic

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tripwire-kafka-identities")

    async def wait_caught_up(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._caught_up.wait(), timeout_s)
        return self.caught_up

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        backoff_s = 0.5
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap, client_id=self._client_id, enable_auto_commit=False,
                auto_offset_reset="earliest", fetch_max_wait_ms=_FETCH_WAIT_MS, request_timeout_ms=self._timeout_ms,
            )
            try:
                await consumer.start()
                await self._follow(consumer)
            except (KafkaError, OSError, TimeoutError) as exc:
                logger.warning("identity links: cannot read %s (%s); retrying in %.0fs", self._topic, exc, backoff_s)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, _MAX_BACKOFF_S)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        parts = consumer.partitions_for_topic(self._topic)
        if not parts:
            cluster = await consumer._client.fetch_all_metadata()
            parts = cluster.partitions_for_topic(self._topic)
        if not parts:
            raise KafkaError(f"topic {self._topic} has no partitions yet")
        tps = [KafkaTP(self._topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, self._positions.get(tp.partition, 0))
        while True:
            got = await consumer.getmany(*tps, timeout_ms=1000, max_records=2000)
            batch = [(m.key, m.value) for tp in tps for m in got.get(tp, [])]
            if batch:
                skipped = await asyncio.to_thread(self._local.apply_records, batch)
                if skipped:
                    logger.warning("identity links: skipped %d record(s) of %s that are not links", skipped, self._topic)
                self.applied += len(batch)
            for tp in tps:  # the fetch position: past gaps that compaction left, too
                self._positions[tp.partition] = await consumer.position(tp)
            if not self.caught_up and await self._at_end(consumer, tps):
                self._caught_up.set()
                logger.info("identity links: read %d record(s) of %s", self.applied, self._topic)

    async def _at_end(self, consumer: AIOKafkaConsumer, tps: list[KafkaTP]) -> bool:
        for tp in tps:
            highwater = consumer.highwater(tp)
            if highwater is None or self._positions.get(tp.partition, 0) < highwater:
                return False
        return True
