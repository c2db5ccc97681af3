"""The scale-out event log: Kafka via aiokafka, with an on-disk spill buffer.

Topics are ``<topic_prefix>.<logical name>``, created on connect when missing
with ``log.partitions`` partitions (existing topics keep their own count).
Records go to ``murmur2(key) % partitions`` exactly like
:func:`tripwire.log.partition.partition_for` (keyless records to partition 0);
the partition is chosen here, not by the client's partitioner.

Write path and its contract. One writer task group-commits appends: it takes
every append queued while the previous batch was in flight and

* when nothing is spilled and the broker is reachable, produces the batch with
  ``acks=all`` and answers each append once Kafka acknowledged all its records;
* when a produce fails or times out, writes the records that were not
  acknowledged (per partition: the first failed one and everything after it, so
  per-key order holds) to the :class:`~tripwire.log.spill.Spill` and answers
  once they are fsync'd;
* while anything is spilled, writes new appends to the spill too, behind the
  older records, so a key's records never overtake each other.

A forwarder task replays the spill oldest-first once the broker is back and
deletes a segment only after Kafka acknowledged every record in it; it also
replays a spill left over by a previous run on start. When the spill is full,
``append`` raises :class:`LogUnavailable` with ``retry_after_s`` (HTTP 503).
Delivery is at-least-once: a produce that timed out may still have landed, so
a replay can duplicate records (``messageId`` identifies them), never lose or
reorder them. ``ready()`` is False while anything is spilled or the broker is
unreachable.

A broker that loses acknowledged records (a single broker whose disk is gone,
tansu with memory storage) is not recovered from: what it had acknowledged and
nobody had consumed is lost, and offsets start again at 0 (see deploy/README.md).

Identity links (:mod:`tripwire.log.kafka_identities`) go to the compacted
``<prefix>.identities`` topic in the same group commit as the events of their
append, through the same spill when the broker is away; ``links`` answers from
this process's local copy of that topic, which the first ``links`` (or
``forget_links``) call starts reading from the start (waiting, bounded, until it
has read what was there) and which then follows the topic. While the copy is
not caught up, ``ready()`` is False.

If the writer or the forwarder task dies, a done-callback fails every queued
append with :class:`LogUnavailable` and ``append`` keeps failing, so nothing is
acknowledged that was not stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaConnectionError, KafkaError

from tripwire.identity import Link

from .base import (
    IDENTITIES,
    TOPICS,
    Consumer,
    Entry,
    EventLog,
    LogClosed,
    LogError,
    LogUnavailable,
    RebalanceListener,
    Record,
)
from .kafka_consumer import KafkaConsumer
from .kafka_identities import IdentityFollower, LocalLinks
from .kafka_producer import OrderedProducer
from .kafka_reader import KafkaReader
from .spill import Spill, SpilledRecord, SpillFull

if TYPE_CHECKING:
    from tripwire.config import Config

logger = logging.getLogger(__name__)

_FORWARD_CHUNK = 2000
MAX_RECORD_BYTES = 1_000_000  # under Kafka's default message.max.bytes and aiokafka's max_request_size


@dataclass(slots=True)
class _Append:
    topic: str
    entries: Sequence[Entry]
    links: Sequence[Link]
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class KafkaLog(EventLog):
    def __init__(
        self,
        bootstrap: str,
        *,
        spill_dir: str | Path,
        topic_prefix: str = "tripwire",
        partitions: int = 4,
        replication_factor: int = 1,
        idempotent: bool = False,
        linger_ms: int = 0,
        request_timeout_ms: int = 10_000,
        spill_max_bytes: int = 512 * 1024 * 1024,
        spill_retry_after_s: int = 5,
        spill_segment_bytes: int = 4 * 1024 * 1024,
        reconnect_backoff_ms: int = 500,
        max_batch_records: int = 10_000,
        client_id: str = "tripwire",
        identities_dir: str | Path | None = None,
    ) -> None:
        """``identities_dir``: where this process keeps its copy of the identity links (default: beside the
        spill, ``<spill_dir>/../identities``)."""
        self.bootstrap = bootstrap
        self.topic_prefix = topic_prefix
        self._timeout_ms = request_timeout_ms
        self._backoff_s = reconnect_backoff_ms / 1000
        self._max_batch_records = max_batch_records
        self._client_id = client_id
        self.spill = Spill(
            spill_dir, spill_max_bytes, segment_bytes=spill_segment_bytes, retry_after_s=spill_retry_after_s
        )
        self._local_links = LocalLinks(Path(identities_dir) if identities_dir is not None
                                       else Path(spill_dir).parent / "identities")
        self._follower: IdentityFollower | None = None
        self._producer = OrderedProducer(
            bootstrap,
            [self.topic(t) for t in (*TOPICS, IDENTITIES)],
            compacted=[self.topic(IDENTITIES)],
            partitions=partitions,
            replication_factor=replication_factor,
            idempotent=idempotent,
            linger_ms=linger_ms,
            request_timeout_ms=request_timeout_ms,
            client_id=client_id,
        )
        self._reader: KafkaReader | None = None
        self._queue: asyncio.Queue[_Append] | None = None
        self._spilled = asyncio.Event()
        self._gate = asyncio.Lock()  # held by the writer per batch, by the forwarder for the last segment
        self._tasks: list[asyncio.Task[None]] = []
        self._reachable = False
        self._started = False
        self._closed = False
        self._failed: BaseException | None = None
        self.produce_batches = 0  # direct produce round trips (group-commit efficiency)

    @classmethod
    def from_config(cls, config: Config) -> KafkaLog:
        log = config.log
        return cls(
            log.kafka_bootstrap,
            spill_dir=config.data_dir / "spill",
            identities_dir=config.data_dir / "identities",
            topic_prefix=log.topic_prefix,
            partitions=log.partitions,
            replication_factor=log.kafka_replication_factor,
            idempotent=log.kafka_idempotent,
            linger_ms=log.kafka_linger_ms,
            request_timeout_ms=log.kafka_request_timeout_ms,
            spill_max_bytes=log.spill_max_bytes,
            spill_retry_after_s=log.spill_retry_after_s,
            max_batch_records=log.group_commit_max_records,
        )

    def topic(self, name: str) -> str:
        """The Kafka topic behind a logical topic name."""
        return f"{self.topic_prefix}.{name}"

    # lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        await asyncio.to_thread(self.spill.open)
        self._queue = asyncio.Queue()
        self._spilled = asyncio.Event()
        if self.spill.depth:
            self._spilled.set()
        self._reader = KafkaReader(self.bootstrap, self.topic, self._timeout_ms, self._client_id)
        self._started = True
        try:
            await self._connect()
        except (KafkaError, OSError, TimeoutError) as exc:
            reason = "no broker answered" if isinstance(exc, KafkaConnectionError) else repr(exc)
            logger.warning("Kafka at %s (log.kafka_bootstrap) is unreachable (%s); appends wait in the spill buffer "
                           "under %s until it is back", self.bootstrap, reason, self.spill.dir)
        for name, loop in (("writer", self._write_loop), ("forwarder", self._forward_loop)):
            task = asyncio.create_task(loop(), name=f"tripwire-kafka-{name}")
            task.add_done_callback(self._task_done)
            self._tasks.append(task)

    async def stop(self) -> None:
        """Answer queued appends, give the forwarder a bounded time to drain, close.

        Records still spilled stay on disk and are replayed by the next start.
        """
        if not self._started or self._closed:
            return
        self._closed = True
        writer, forwarder = self._tasks
        assert self._queue is not None
        if not writer.done():
            await self._queue.join()
        writer.cancel()
        if self.spill.depth and self._reachable and not forwarder.done():
            deadline = time.monotonic() + self._timeout_ms / 1000
            while self.spill.depth and self._reachable and time.monotonic() < deadline and not forwarder.done():
                await asyncio.sleep(0.05)
        forwarder.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_queued(LogClosed("event log stopped"))
        if self._reader is not None:
            await self._reader.stop()
        if self._follower is not None:
            await self._follower.stop()
        await self._producer.stop()
        await asyncio.to_thread(self.spill.close)
        self._local_links.close()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        logger.error("Kafka log %s died: %r", task.get_name(), exc, exc_info=exc)
        self._failed = exc
        self._fail_queued(LogUnavailable(f"event log {task.get_name()} died: {exc!r}"))

    def _fail_queued(self, error: Exception) -> None:
        if self._queue is None:
            return
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(error)
            self._queue.task_done()

    # writing -----------------------------------------------------------------

    async def append(self, topic: str, entries: Sequence[Entry], links: Sequence[Link] = ()) -> None:
        if not entries and not links:
            return
        if not self._started or self._queue is None:
            raise LogClosed("event log not started")
        if self._closed:
            raise LogClosed("event log stopped")
        if self._failed is not None:
            raise LogUnavailable(f"event log failed: {self._failed!r}")
        for key, value in entries:
            # Kafka would refuse it for ever; spilled, it would block every record behind it.
            if len(value) + len(key or b"") > MAX_RECORD_BYTES:
                raise LogError(
                    f"a record of {len(value) + len(key or b'')} bytes is over the Kafka log's "
                    f"limit of {MAX_RECORD_BYTES} bytes"
                )
        item = _Append(self.topic(topic), entries, links)
        self._queue.put_nowait(item)
        await asyncio.shield(item.future)
        if links:  # known here at once; other processes read them from the topic
            if not self._local_links.opened:
                self._local_links.open()
            self._local_links.apply(links)

    # identity links ------------------------------------------------------------

    async def _following(self) -> IdentityFollower:
        """The follower of the identities topic, started (and waited for, bounded) on first use."""
        if self._follower is None:
            if not self._started or self._closed:
                raise LogClosed("event log not running")
            if not self._local_links.opened:
                self._local_links.open()
            self._follower = IdentityFollower(self.bootstrap, self.topic(IDENTITIES), self._local_links,
                                              request_timeout_ms=self._timeout_ms, client_id=self._client_id)
            self._follower.start()
            if not await self._follower.wait_caught_up(self._timeout_ms / 1000):
                logger.warning("identity links: %s not read to its end within %.0fs; events with only a userId "
                               "are keyed by it until it is", self.topic(IDENTITIES), self._timeout_ms / 1000)
        return self._follower

    async def links(self, user_ids: Collection[str]) -> dict[str, list[Link]]:
        await self._following()
        return self._local_links.select(user_ids) if user_ids else {}

    async def forget_links(self, user_id: str) -> list[Link]:
        follower = await self._following()
        if not follower.caught_up:
            raise LogUnavailable(f"the identity links of {self.topic(IDENTITIES)} could not be read")
        links = self._local_links.select([user_id]).get(user_id, [])
        if not links:
            return []
        tombstones = [(self.topic(IDENTITIES), link.pair_key(), None) for link in links]
        async with self._gate:  # after appends already queued, never between a batch's records
            failed = await self._produce(tombstones)  # type: ignore[arg-type]
        if failed:
            raise LogUnavailable(f"Kafka did not acknowledge the deletion of {len(failed)} identity link(s)")
        self._local_links.delete_pairs([(link.user_id, link.anonymous_id) for link in links])
        return links

    async def _write_loop(self) -> None:
        assert self._queue is not None
        while True:
            first = await self._queue.get()
            async with self._gate:
                batch = [first]
                count = len(first.entries)
                while count < self._max_batch_records and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    count += len(batch[-1].entries)
                try:
                    await self._write(batch)
                except BaseException as exc:
                    self._resolve(batch, set(range(len(batch))), LogUnavailable(f"event log write failed: {exc!r}"))
                    raise
                finally:
                    for _ in batch:
                        self._queue.task_done()

    async def _write(self, batch: list[_Append]) -> None:
        records: list[SpilledRecord] = []
        owner: list[int] = []
        identities = self.topic(IDENTITIES)
        for i, a in enumerate(batch):
            records += [(a.topic, key, value) for key, value in a.entries]
            records += [(identities, link.pair_key(), link.to_json()) for link in a.links]
            owner += [i] * (len(a.entries) + len(a.links))
        if self.spill.depth == 0 and self._reachable:
            self.produce_batches += 1
            failed = await self._produce(records)
            if not failed:
                self._resolve(batch, set(), None)
                return
            self._reachable = False
        else:
            failed = list(range(len(records)))
        try:
            await asyncio.to_thread(self.spill.append, [records[i] for i in failed])
        except SpillFull as exc:
            # Spill whole appends, oldest first, while they fit; refuse the rest.
            unfit = await self._spill_what_fits(batch, records, owner, failed)
            self._resolve(batch, unfit, exc)
        except LogUnavailable as exc:  # the disk refused (ENOSPC, EIO): refuse these, keep serving
            self._resolve(batch, {owner[i] for i in failed}, exc)
        except Exception as exc:
            self._resolve(batch, {owner[i] for i in failed}, exc)
            raise
        else:
            self._resolve(batch, set(), None)
        self._spilled.set()

    async def _spill_what_fits(
        self, batch: list[_Append], records: list[SpilledRecord], owner: list[int], failed: list[int]
    ) -> set[int]:
        by_owner: dict[int, list[SpilledRecord]] = {}
        for i in failed:
            by_owner.setdefault(owner[i], []).append(records[i])
        unfit: set[int] = set()
        for idx, recs in by_owner.items():
            if unfit:
                unfit.add(idx)
                continue
            try:
                await asyncio.to_thread(self.spill.append, recs)
            except SpillFull:
                unfit.add(idx)
        return unfit

    def _resolve(self, batch: list[_Append], failed: set[int], error: Exception | None) -> None:
        for i, item in enumerate(batch):
            if item.future.done():
                continue
            if i in failed:
                assert error is not None
                item.future.set_exception(
                    error if isinstance(error, LogUnavailable) else LogUnavailable(f"event log write failed: {error}")
                )
            else:
                item.future.set_result(None)

    async def _forward_loop(self) -> None:
        while True:
            if not self._reachable and not await self._recover():
                await asyncio.sleep(self._backoff_s)
                continue
            if self.spill.depth == 0:
                self._spilled.clear()
                if self.spill.depth == 0:
                    await self._spilled.wait()
                    continue
            if self.spill.segment_count > 1:
                await self._forward_oldest(once=False)
                continue
            # Hand-over: under steady load the writer would refill the spill as fast
            # as it drains. Hold new appends back while the last segment goes out,
            # so the writer finds the spill empty and produces directly again.
            async with self._gate:
                if await self._forward_oldest(once=True):
                    continue
            await self._forward_oldest(once=False)  # the broker failed us: retry without blocking appends

    async def _forward_oldest(self, *, once: bool) -> bool:
        """Forward and delete the oldest segment; with ``once``, give up (False) on a failure."""
        seg = await asyncio.to_thread(self.spill.oldest)
        if seg is None:
            return True
        records = await asyncio.to_thread(self.spill.read, seg)
        for start in range(seg.done, len(records), _FORWARD_CHUNK):
            pending = records[start : start + _FORWARD_CHUNK]
            while pending:
                retry = await self._produce(pending)
                pending = [pending[i] for i in retry]
                if pending:
                    self._reachable = False
                    if once:
                        seg.done = start  # chunks before this one are in Kafka
                        return False
                    await asyncio.sleep(self._backoff_s)
                    await self._recover()
        await asyncio.to_thread(self.spill.remove, seg)
        logger.debug("forwarded %d spilled records to Kafka; %d left", seg.records, self.spill.depth)
        return True

    async def _connect(self) -> None:
        """Start the producer and create missing topics; raises while the broker is away."""
        await self._producer.connect()
        self._reachable = True

    async def _recover(self) -> bool:
        """Reconnect; False while the broker is away."""
        try:
            await self._connect()
        except (KafkaError, OSError, TimeoutError) as exc:
            self._reachable = False
            logger.debug("Kafka still unreachable: %s", exc)
            return False
        logger.info("Kafka at %s is reachable", self.bootstrap)
        return True

    async def _produce(self, records: Sequence[SpilledRecord]) -> list[int]:
        """Produce ``records`` in order; the indexes of those to retry (see :meth:`OrderedProducer.produce`)."""
        return await self._producer.produce(records)

    # reading -----------------------------------------------------------------

    async def ready(self) -> bool:
        """Not spilling, and a broker answered just now (so a dead broker shows before an append fails)."""
        if not (self._started and not self._closed and self._failed is None):
            return False
        if not self._reachable or self.spill.depth:
            return False
        if self._follower is not None and not self._follower.caught_up:
            return False  # a collector that has not read the identity links yet would key by userId
        return await self._producer.ping(min(2.0, self._timeout_ms / 1000))

    def spill_depth(self) -> int:
        return self.spill.depth

    def _require_reader(self) -> KafkaReader:
        if self._reader is None or self._closed:
            raise LogClosed("event log not running")
        return self._reader

    async def partitions(self, topic: str) -> list[int]:
        return await self._require_reader().partitions(topic)

    async def end_offsets(self, topic: str) -> dict[int, int]:
        return await self._require_reader().end_offsets(topic)

    async def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[Record]:
        return await self._require_reader().read(topic, partition, offset, max_records)

    def consumer(
        self, group: str, topics: Sequence[str], listener: RebalanceListener | None = None, exclusive: bool = False
    ) -> Consumer:
        self._require_reader()
        return KafkaConsumer(
            self.bootstrap, group, topics, listener,
            topic_prefix=self.topic_prefix, request_timeout_ms=self._timeout_ms, client_id=self._client_id,
        )
