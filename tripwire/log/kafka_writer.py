"""The Kafka log's write path: group-committed appends, the spill buffer and its forwarder.

One writer task takes every append queued while the previous batch was in flight and

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
an append fails with :class:`LogUnavailable` (``retry_after_s``).

If the writer or the forwarder task dies, a done-callback fails every queued
append with :class:`LogUnavailable` and appends keep failing, so nothing is
acknowledged that was not stored. The contract of the whole log is in
:mod:`tripwire.log.kafka`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka.errors import KafkaConnectionError, KafkaError

from tripwire.identity import Link

from .base import Entry, LogClosed, LogUnavailable
from .kafka_producer import OrderedProducer, ProducedRecord
from .spill import Spill, SpilledRecord, SpillFull

# Part of the Kafka log: its messages go where the log's own do, so one logger name filters them all.
logger = logging.getLogger("tripwire.log.kafka")

_FORWARD_CHUNK = 2000


@dataclass(slots=True)
class _Append:
    topic: str
    entries: Sequence[Entry]
    links: Sequence[Link]
    future: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class SpillingWriter:
    """Appends to Kafka through ``producer``, or to ``spill`` while the broker is away (module docstring)."""

    def __init__(self, producer: OrderedProducer, spill: Spill, *, bootstrap: str, identities_topic: str,
                 backoff_s: float, max_batch_records: int) -> None:
        self.spill = spill
        self._producer = producer
        self._bootstrap = bootstrap
        self._identities = identities_topic
        self._backoff_s = backoff_s
        self._max_batch_records = max_batch_records
        self._queue: asyncio.Queue[_Append] | None = None
        self._spilled = asyncio.Event()
        self._gate = asyncio.Lock()  # held by the writer per batch, by the forwarder for the last segment
        self._tasks: list[asyncio.Task[None]] = []
        self.reachable = False
        self.failed: BaseException | None = None
        self.produce_batches = 0  # direct produce round trips (group-commit efficiency)

    async def start(self) -> None:
        """Open the spill, try the broker once (appends go to the spill while it is away), start the tasks."""
        await asyncio.to_thread(self.spill.open)
        self._queue = asyncio.Queue()
        self._spilled = asyncio.Event()
        if self.spill.depth:
            self._spilled.set()
        try:
            await self._connect()
        except (KafkaError, OSError, TimeoutError) as exc:
            reason = "no broker answered" if isinstance(exc, KafkaConnectionError) else repr(exc)
            logger.warning("Kafka at %s (log.kafka_bootstrap) is unreachable (%s); appends wait in the spill buffer "
                           "under %s until it is back", self._bootstrap, reason, self.spill.dir)
        for name, loop in (("writer", self._write_loop), ("forwarder", self._forward_loop)):
            task = asyncio.create_task(loop(), name=f"tripwire-kafka-{name}")
            task.add_done_callback(self._task_done)
            self._tasks.append(task)

    async def stop(self, drain_s: float) -> None:
        """Answer queued appends, give the forwarder ``drain_s`` to empty the spill, stop both tasks, close the spill.

        Records still spilled stay on disk and are replayed by the next start.
        """
        writer, forwarder = self._tasks
        assert self._queue is not None
        if not writer.done():
            await self._queue.join()
        writer.cancel()
        if self.spill.depth and self.reachable and not forwarder.done():
            deadline = time.monotonic() + drain_s
            while self.spill.depth and self.reachable and time.monotonic() < deadline and not forwarder.done():
                await asyncio.sleep(0.05)
        forwarder.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_queued(LogClosed("event log stopped"))
        await asyncio.to_thread(self.spill.close)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        logger.error("Kafka log %s died: %r", task.get_name(), exc, exc_info=exc)
        self.failed = exc
        self._fail_queued(LogUnavailable(f"event log {task.get_name()} died: {exc!r}"))

    def _fail_queued(self, error: Exception) -> None:
        if self._queue is None:
            return
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(error)
            self._queue.task_done()

    async def append(self, topic: str, entries: Sequence[Entry], links: Sequence[Link]) -> None:
        """Queue an append to Kafka topic ``topic``; returns once it is in Kafka or in the spill."""
        if self._queue is None:
            raise LogClosed("event log not started")
        item = _Append(topic, entries, links)
        self._queue.put_nowait(item)
        await asyncio.shield(item.future)

    async def produce_in_turn(self, records: Sequence[ProducedRecord]) -> list[int]:
        """Produce ``records`` after the appends already queued, never between a batch's records;
        the indexes of those not acknowledged."""
        async with self._gate:
            return await self._produce(records)

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
        identities = self._identities
        for i, a in enumerate(batch):
            records += [(a.topic, key, value) for key, value in a.entries]
            records += [(identities, link.pair_key(), link.to_json()) for link in a.links]
            owner += [i] * (len(a.entries) + len(a.links))
        if self.spill.depth == 0 and self.reachable:
            self.produce_batches += 1
            failed = await self._produce(records)
            if not failed:
                self._resolve(batch, set(), None)
                return
            self.reachable = False
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
            if not self.reachable and not await self._recover():
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
                    self.reachable = False
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
        self.reachable = True

    async def _recover(self) -> bool:
        """Reconnect; False while the broker is away."""
        try:
            await self._connect()
        except (KafkaError, OSError, TimeoutError) as exc:
            self.reachable = False
            logger.debug("Kafka still unreachable: %s", exc)
            return False
        logger.info("Kafka at %s is reachable", self._bootstrap)
        return True

    async def _produce(self, records: Sequence[ProducedRecord]) -> list[int]:
        """Produce ``records`` in order; the indexes of those to retry (see :meth:`OrderedProducer.produce`)."""
        return await self._producer.produce(records)
