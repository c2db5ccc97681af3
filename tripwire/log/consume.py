"""One consumer loop for every service that reads the log: the engine, the sink, the dispatcher.

A :class:`Runner` owns a consumer of one group and the loop around it; a
:class:`Handler` owns what is done with the records. The runner's contract:

* ``start()`` joins the group and returns once consuming; ``stop()`` leaves it
  (safe to call twice). Stopping lets the batch being handled finish (at most
  ``stop_grace_s``), then revokes every partition, so the handler makes what it
  holds durable, and commits what ``on_revoked`` returned (bounded in time: the
  commit is informational for handlers that keep their own offsets).
* ``on_assigned(partitions)`` is called before any record of a newly assigned
  partition reaches ``handle``; it returns, per partition, the offset to read
  from (kept with the handler's own state) or None for the group's committed
  offset. ``on_revoked(partitions)`` is called before they go; it returns the
  offsets to commit for the group.
* ``handle(batch)`` is called after every poll, also an empty one: that is the
  idle tick that lets the engine's watermark follow the wall clock and the sink
  cut files by age. Polls wait at most ``poll_timeout_ms()``. A batch holds only
  records of partitions the handler was given, in offset order per partition.
* The rebalance fence: the three callbacks never overlap (one lock), and a
  rebalance bumps a generation at both of its ends. A poll that overlapped a
  rebalance may have returned records from before a seek of ``on_assigned``: that
  batch is dropped and each partition read again from where the handler is.
* Log errors while polling or committing are transient: logged, retried with
  backoff (1 s doubling to 30 s), never seen by the handler. A commit refused
  because the group moved on (Kafka: ``CommitFailedError``) is only logged; the
  consumer rejoins on its next poll and the handler hears ``on_revoked`` and
  ``on_assigned`` as in any rebalance, so it resumes from its own state.
* Any exception of the handler ends the loop: ``failed`` is set, ``error`` holds
  the exception, and from then on nothing of the handler is saved or committed
  (``on_revoked`` is not called any more, also not by ``stop()``): whatever it held
  half done is dropped, and a new handler resumes from the last durable state, as
  after a kill -9. Restarting is the supervisor's part (:mod:`tripwire.service`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from .base import Consumer, EventLog, LogError, Record, TopicPartition

logger = logging.getLogger(__name__)

Offsets = Mapping[TopicPartition, int]

_CAUGHT_UP_FOR_S = 0.25  # a partition found caught up is not asked again for this long
_BACKOFF_S = (1.0, 30.0)  # first and longest wait after a log error
_COMMIT_TIMEOUT_S = 5.0  # a Kafka commit retries for as long as the broker is away


class Handler(Protocol):
    """What a service plugs into a :class:`Runner` (see the module doc for when each is called)."""

    name: str  # for log lines
    max_records: int  # at most this many records per batch
    read_ahead: bool  # poll the next batch while this one is handled

    def poll_timeout_ms(self) -> int: ...

    async def on_assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int | None]: ...

    async def handle(self, batch: Batch) -> None: ...

    async def on_revoked(self, partitions: set[TopicPartition]) -> Offsets: ...


class Batch:
    """The records of one poll, and what a handler may ask the runner while handling them."""

    __slots__ = ("records", "_runner")

    def __init__(self, records: list[Record], runner: Runner) -> None:
        self.records = records
        self._runner = runner

    @property
    def full(self) -> bool:
        """As many records as asked for: more are probably waiting (no need to ask for the lag)."""
        return len(self.records) >= self._runner.handler.max_records

    async def caught_up(self) -> set[TopicPartition]:
        """The handler's partitions read to the end of the log (lag 0; unknown counts as behind)."""
        return await self._runner._caught_up()

    async def commit(self, offsets: Offsets) -> bool:
        """Commit group offsets; False (and a warning) when the log refused or did not answer."""
        return await self._runner._commit(offsets)


class Runner:
    """Runs ``handler`` on the partitions of ``topics`` that group ``group`` gives this member."""

    def __init__(self, log: EventLog, group: str, topics: Sequence[str], handler: Handler, *,
                 stop_grace_s: float = 30.0, backoff_s: tuple[float, float] = _BACKOFF_S, exclusive: bool = False) -> None:
        self.log = log
        self.exclusive = exclusive  # the group's only member on this log (EventLog.consumer)
        self.group = group
        self.topics = list(topics)
        self.handler = handler
        self.stop_grace_s = stop_grace_s
        self.backoff_s = backoff_s
        self.consumer: Consumer | None = None
        self.failed = False
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._generation = 0  # bumped at both ends of every rebalance callback
        self._owned: set[TopicPartition] = set()  # assigned, and on_assigned succeeded
        self._positions: dict[TopicPartition, int] = {}  # next offset to handle, where known
        self._caught_up_at: dict[TopicPartition, float] = {}
        self._busy = False  # inside a handler call
        self._abandoned = False  # failed, or stopped mid-batch: nothing more is saved
        self._stopping = False
        self._stopped = False
        self._wake = asyncio.Event()

    # lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group (:class:`~tripwire.log.GroupTaken` if exclusive and another member runs)."""
        if self.consumer is not None:
            return
        consumer = self.log.consumer(self.group, self.topics, listener=self, exclusive=self.exclusive)
        await consumer.start()
        self.consumer = consumer
        self._task = asyncio.create_task(self._run(), name=f"tripwire-{self.handler.name}")
        self._task.add_done_callback(self._done)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = self._stopping = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            if not self._busy:
                task.cancel()  # polling or waiting: nothing half done
            done, _ = await asyncio.wait({task}, timeout=self.stop_grace_s)
            if not done:
                logger.warning("%s: the batch in hand did not finish within %.0f s; dropped (read again on the "
                               "next start)", self.handler.name, self.stop_grace_s)
                self._abandoned = True
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.consumer is not None:
            try:
                await self.consumer.stop()  # revokes: the handler saves what it holds
            except LogError as exc:
                logger.warning("%s: leaving consumer group %r: %s", self.handler.name, self.group, exc)

    async def ready(self) -> bool:
        return self._task is not None and not self._task.done() and not self.failed

    def handled(self) -> dict[TopicPartition, int]:
        """Per owned partition, the next offset to hand to the handler: every record before it was
        handled (the handler's ``handle`` returned), or lies before the resume point."""
        return {tp: offset for tp, offset in self._positions.items() if tp in self._owned}

    def _done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._fail(task.exception())

    def _fail(self, exc: BaseException | None) -> None:
        if self.failed:
            return
        self.failed = self._abandoned = True
        self.error = exc
        logger.error("%s stopped on an error: %s", self.handler.name, _describe(exc), exc_info=exc)

    # rebalance listener ----------------------------------------------------------

    async def on_assigned(self, consumer: Consumer, partitions: set[TopicPartition]) -> None:
        async with self._lock:
            self._generation += 1
            self._caught_up_at.clear()
            self._busy = True
            try:
                resume = await self.handler.on_assigned(set(partitions))
                for tp in partitions:
                    offset = resume.get(tp)
                    self._owned.add(tp)
                    if offset is None:
                        self._positions.pop(tp, None)
                    else:
                        consumer.seek(tp, offset)
                        self._positions[tp] = offset
            finally:
                self._busy = False
                self._generation += 1  # a poll that began while this ran may predate the seeks

    async def on_revoked(self, consumer: Consumer, partitions: set[TopicPartition]) -> None:
        offsets: Offsets = {}
        async with self._lock:
            self._generation += 1
            self._caught_up_at.clear()
            mine = partitions & self._owned
            self._owned -= partitions
            for tp in partitions:
                self._positions.pop(tp, None)
            if mine and not self._abandoned:
                self._busy = True
                try:
                    offsets = await self.handler.on_revoked(mine)
                except Exception as exc:  # noqa: BLE001 - the next owner resumes from the last durable state
                    if self._stopping:
                        logger.exception("%s: partitions could not be handed over cleanly", self.handler.name)
                    else:
                        self._fail(exc)
                    offsets = {}
                finally:
                    self._busy = False
            self._generation += 1
        if offsets:
            await self._commit(offsets, consumer)

    # the loop --------------------------------------------------------------------

    async def _poll(self) -> tuple[list[Record], int]:
        assert self.consumer is not None
        generation = self._generation
        records = await self.consumer.poll(self.handler.poll_timeout_ms(), self.handler.max_records)
        return records, generation

    async def _run(self) -> None:
        backoff_s = self.backoff_s[0]
        ahead: asyncio.Task[tuple[list[Record], int]] | None = None
        try:
            while not (self._stopping or self.failed):
                try:
                    records, generation = await (ahead or self._poll())
                except LogError as exc:
                    logger.warning("%s cannot read the event log (%s); retrying in %g s", self.handler.name, exc,
                                   backoff_s)
                    await self._sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, self.backoff_s[1])
                    continue
                finally:
                    ahead = None
                backoff_s = self.backoff_s[0]
                async with self._lock:
                    # Checked under the lock: a rebalance callback holds it from its first change to its
                    # last seek, and bumps the generation at both ends.
                    if self._stopping or self.failed:
                        return
                    if generation != self._generation:
                        self._rewind(records)
                        continue
                    last: dict[tuple[str, int], int] = {}  # per partition, the batch's last offset
                    for r in records:
                        last[r.topic, r.partition] = r.offset
                    if any(tp not in self._owned for tp in last):
                        records = [r for r in records if (r.topic, r.partition) in self._owned]
                        last = {tp: offset for tp, offset in last.items() if tp in self._owned}
                    if records and self.handler.read_ahead:
                        ahead = asyncio.create_task(self._poll())
                    self._busy = True
                    try:
                        await self.handler.handle(Batch(records, self))
                    except Exception as exc:  # noqa: BLE001 - the handler's failure ends the loop (module doc)
                        self._fail(exc)  # at once: nothing half done may be saved by a revoke from now on
                        return
                    finally:
                        self._busy = False
                    for (topic, partition), offset in last.items():
                        self._positions[TopicPartition(topic, partition)] = offset + 1
        finally:
            if ahead is not None:
                # Let a read in a worker thread finish before anyone seeks this consumer again.
                with contextlib.suppress(BaseException):
                    await ahead

    def _rewind(self, records: Sequence[Record]) -> None:
        """Drop a batch fetched across a rebalance; read each partition again from where the handler is.

        Its records may predate a listener's seek: handling them would process a
        partition out of order. A partition without a known position goes back to
        the batch's first record of it.
        """
        assert self.consumer is not None
        self._caught_up_at.clear()
        first: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            first[tp] = min(first.get(tp, r.offset), r.offset)
        for tp in self.consumer.assignment():
            offset = self._positions.get(tp, first.get(tp))
            if tp in self._owned and offset is not None:
                self.consumer.seek(tp, offset)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # for the handler -----------------------------------------------------------------

    async def _caught_up(self) -> set[TopicPartition]:
        assert self.consumer is not None
        now = time.monotonic()
        out = {tp for tp in self._owned if now - self._caught_up_at.get(tp, float("-inf")) < _CAUGHT_UP_FOR_S}
        ask = sorted(self._owned - out)
        if ask:
            try:
                lags = await self.consumer.lags(ask)
            except LogError:
                lags = {}
            for tp in ask:
                if lags.get(tp) == 0:
                    self._caught_up_at[tp] = now
                    out.add(tp)
        return out

    async def _commit(self, offsets: Offsets, consumer: Consumer | None = None) -> bool:
        consumer = consumer or self.consumer
        if not offsets or consumer is None or self._abandoned:
            return False
        try:
            await asyncio.wait_for(consumer.commit(offsets), _COMMIT_TIMEOUT_S)
            return True
        except (LogError, TimeoutError) as exc:
            logger.warning("%s: offsets of consumer group %r not committed (%s); they are committed again with the "
                           "next batch, or read again by the partition's next owner", self.handler.name, self.group,
                           exc or "the log did not answer")
            return False


def _describe(exc: BaseException | None) -> str:
    return "unknown" if exc is None else f"{type(exc).__name__}: {exc}"
