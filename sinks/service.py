"""The sink as a service: consume the events (and invalid) topics, write the lake, commit after durability.

Lifecycle: ``start()`` loads the lake's column registry, joins consumer group
``sink.group`` on the ``events`` topic (the events table) and the ``invalid``
topic (the invalid table, unless ``sink.invalid_table`` is off) and returns
once consuming; ``stop()`` cuts every open file, writes it, commits and leaves
the group (safe to call twice).
If the background task dies (e.g. the lake is unreachable for good), ``failed``
is set and the error logged; nothing acknowledged is lost, since the log keeps
the records until a restart writes them.

Partitions come and go through the rebalance listener: on assignment the
partition's state is read from the lake and the consumer seeks to its resume
offset (the group's committed offset is only informational); on revocation its
open files are cut and written and the resume offset committed, so the next
owner continues exactly there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from tripwire.config import Config
from tripwire.log import EVENTS, INVALID, Consumer, EventLog, Record, TopicPartition, records_between

from . import metrics
from .config import SinkConfig, sink_config
from .errors import LakeError
from .lake import Lake, open_lake
from .writer import LakeWriter

logger = logging.getLogger(__name__)

_COMMIT_ON_STOP_S = 5.0

_LAG_EVERY_S = 5.0
_MAX_BACKOFF_S = 30.0


class SinkService:
    name = "sink"

    def __init__(self, cfg: SinkConfig, log: EventLog, lake: Lake | None = None) -> None:
        self.cfg = cfg
        self.log = log
        self.lake = lake or open_lake(cfg.lake_url, cfg.storage_options() if cfg.is_s3 else None)
        self.topics = [EVENTS, INVALID] if cfg.invalid_table else [EVENTS]
        self.writers: dict[str, LakeWriter] = {}  # by topic
        self.consumer: Consumer | None = None
        self.failed = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = False
        self._lock = asyncio.Lock()  # the writer is touched by one task at a time
        self._generation = 0  # bumped by every rebalance
        self._owned: set[TopicPartition] = set()
        self._backoff_s = 1.0
        self._poll_ms = int(max(50, min(1000, cfg.max_file_age_s * 500)))

    @property
    def writer(self) -> LakeWriter | None:
        """The events table's writer."""
        return self.writers.get(EVENTS)

    async def start(self) -> None:
        if self._task is not None:
            return
        writers = [await asyncio.to_thread(LakeWriter, self.lake, self.cfg, topic) for topic in self.topics]
        for w in writers:
            w.group = writers  # one sink, one set of limits
        self.writers = {w.topic: w for w in writers}
        self.consumer = self.log.consumer(self.cfg.group, self.topics, self)
        await self.consumer.start()  # the embedded log: GroupTaken when another sink of the group runs
        self._task = asyncio.create_task(self._run(), name="tripwire-sink")
        self._task.add_done_callback(self._done)
        logger.info("sink writing %s (partitioning %s)", _redact(self.cfg.lake_url), self.cfg.partitioning)

    async def ready(self) -> bool:
        """For ``/readyz``: consuming, and the background task alive."""
        return self._task is not None and not self._task.done() and not self.failed

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.failed = True
            logger.error("sink stopped on an error", exc_info=task.exception())

    async def stop(self) -> None:
        if self._stopped or self._task is None:
            return
        self._stopped = True
        self._stopping = True
        with contextlib.suppress(Exception):
            await self._task
        assert self.consumer is not None
        try:
            if not self.failed:
                async with self._lock:  # a rebalance may be handing partitions over right now
                    offsets = await asyncio.to_thread(self._each, lambda w: w.close())
                await self._commit_offsets(offsets)
        finally:
            await self.consumer.stop()

    # rebalance listener --------------------------------------------------------

    def _each(self, step: Callable[[LakeWriter], dict[int, int]]) -> dict[TopicPartition, int]:
        """``step`` for every table's writer; the resume offsets it returns, by topic and partition."""
        out = {}
        for topic, w in self.writers.items():
            out.update({TopicPartition(topic, p): o for p, o in step(w).items()})
        return out

    def _seek_all(self) -> None:
        """Read every owned partition again from where its writer is."""
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            w = self.writers.get(tp.topic)
            if w is not None and tp.partition in w.parts:
                self.consumer.seek(tp, w.parts[tp.partition].position)

    async def on_assigned(self, consumer: Consumer, partitions: set[TopicPartition]) -> None:
        async with self._lock:
            self._generation += 1
            owned = []
            for tp in sorted(partitions):
                w = self.writers.get(tp.topic)
                if w is None:
                    continue
                offset = await asyncio.to_thread(w.assign, tp.partition)
                self._owned.add(tp)
                consumer.seek(tp, offset)
                owned.append(f"{tp.topic}-{tp.partition} from offset {offset}")
            if owned:  # one line per rebalance, not one per partition
                logger.info("sink owns %s", ", ".join(owned))
            self._generation += 1  # a poll that began while this ran may predate the seeks

    async def on_revoked(self, consumer: Consumer, partitions: set[TopicPartition]) -> None:
        offsets = {}
        async with self._lock:
            self._generation += 1
            self._owned -= partitions
            if self.failed:
                return  # nothing can be written; the next owner replays from the lake
            for tp in sorted(partitions):
                w = self.writers.get(tp.topic)
                if w is not None and tp.partition in w.parts:
                    try:
                        resume = await asyncio.to_thread(w.revoke, tp.partition)
                    except LakeError as exc:  # the next owner replays from the lake's state
                        logger.warning("could not write %s-%d before handing it over: %s", tp.topic, tp.partition, exc)
                        w.parts.pop(tp.partition, None)
                        continue
                    if resume is not None:
                        offsets[tp] = resume
        await self._commit_offsets(offsets, consumer)

    # loop ----------------------------------------------------------------------

    async def _poll(self) -> tuple[list[Record], int]:
        assert self.consumer is not None
        generation = self._generation
        records = await self.consumer.poll(timeout_ms=self._poll_ms, max_records=self.cfg.poll_max_records)
        return records, generation

    async def _run(self) -> None:
        assert self.consumer is not None
        cfg, writers = self.cfg, list(self.writers.values())
        tick_s = min(1.0, cfg.max_file_age_s / 2)
        last_tick = last_lag = time.monotonic()
        ahead: asyncio.Task[tuple[list[Record], int]] | None = None
        try:
            while not self._stopping:
                records, generation = await (ahead or self._poll())
                ahead = None
                now = time.monotonic()
                try:
                    if records:
                        async with self._lock:
                            # Checked under the lock: a rebalance listener holds it from its first
                            # change to its last seek, and bumps the generation at both ends.
                            if generation != self._generation:
                                # Fetched across a rebalance: drop it and read again from where the writer is.
                                self._seek_all()
                                continue
                            # Read the next batch while this one is processed (the read releases the GIL).
                            ahead = asyncio.create_task(self._poll())
                            await asyncio.to_thread(self._process, records)
                    tick = now - last_tick >= tick_s
                    if tick or any(pw.sealed for w in writers for pw in w.parts.values()):
                        async with self._lock:
                            if tick:
                                last_tick = now
                                await asyncio.to_thread(self._each, lambda w: w.seal_aged(now) or {})
                            offsets = await asyncio.to_thread(self._each, lambda w: w.flush())
                        await self._commit(offsets)
                    self._backoff_s = 1.0
                except LakeError as exc:
                    await self._recover(exc)
                    continue
                metrics.OPEN_FILES.set(sum(w.open_files() for w in writers))
                metrics.BUFFERED.set(sum(w.buffered_bytes() for w in writers))
                if now - last_lag >= _LAG_EVERY_S:
                    last_lag = now
                    await self._lag()
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead

    def _process(self, records: Iterable[Record]) -> None:
        by_topic: dict[str, list[Record]] = {}
        for r in records:
            by_topic.setdefault(r.topic, []).append(r)
        for topic, recs in by_topic.items():
            w = self.writers.get(topic)
            if w is not None:
                w.process(recs)

    async def _recover(self, error: LakeError) -> None:
        """After a failed lake operation: wait, then restart from the lake's state, like a new process.

        Whatever was buffered or half written is dropped; the journal in the lake
        replays it exactly, so a lake outage costs time, never an event.
        """
        assert self.consumer is not None
        while not self._stopping:
            self._generation += 1  # a batch read meanwhile is stale
            logger.warning("lake unavailable, retrying in %.0fs: %s", self._backoff_s, error)
            await asyncio.sleep(self._backoff_s)
            self._backoff_s = min(self._backoff_s * 2, _MAX_BACKOFF_S)
            async with self._lock:
                for w in self.writers.values():
                    w.parts.clear()
                try:
                    for tp in sorted(self._owned):
                        await asyncio.to_thread(self.writers[tp.topic].assign, tp.partition)
                except LakeError as exc:
                    error = exc
                    continue
                self._seek_all()
                self._generation += 1
                return

    async def _commit(self, offsets: dict[TopicPartition, int], consumer: Consumer | None = None) -> None:
        consumer = consumer or self.consumer
        if offsets and consumer is not None:
            await consumer.commit(offsets)

    async def _commit_offsets(self, offsets: dict[TopicPartition, int], consumer: Consumer | None = None) -> None:
        """Commit group offsets when handing over or stopping: informational (the lake's state is where a
        sink resumes), so bounded: with the broker away a Kafka commit retries for ever, and a sink
        stopped then would not exit until it is killed."""
        try:
            await asyncio.wait_for(self._commit(offsets, consumer), _COMMIT_ON_STOP_S)
        except Exception as exc:  # noqa: BLE001
            logger.warning("group offsets not committed (%s); the lake's state says where to resume",
                           exc or "the broker did not answer")

    async def _lag(self) -> None:
        if self.writer is None:
            return
        try:
            ends = await self.log.end_offsets(EVENTS)
        except Exception:  # lag is best effort; the loop must not die for it
            logger.debug("cannot read end offsets for the lag metric", exc_info=True)
            return
        for partition, pw in self.writer.parts.items():
            metrics.LAG.labels(str(partition)).set(records_between(pw.position, ends.get(partition, 0)))


def _redact(url: str) -> str:
    return url.split("@", 1)[-1] if "://" in url else url


def create_service(config: Config, log: EventLog) -> SinkService | None:
    """The sink for ``tripwire run`` (None when ``sink.enabled`` is false)."""
    cfg = sink_config(config)
    if not cfg.enabled:
        return None
    return SinkService(cfg, log)
