"""The sink as a service: consume the events (and invalid) topics, write the lake, commit after durability.

Lifecycle: ``start()`` loads the lake's column registry, joins consumer group
``sink.group`` on the ``events`` topic (the events table) and the ``invalid``
topic (the invalid table, unless ``sink.invalid_table`` is off) through a
:class:`~tripwire.log.consume.Runner` and returns once consuming; ``stop()`` cuts every open file, writes it, commits
and leaves the group (safe to call twice). If a batch fails (the lake refused a
write, say), ``failed`` is set and nothing more is written: whatever was
buffered or half written is dropped, and a new instance (the supervisor starts
it, with backoff) replays it exactly from the journal in the lake, so a lake
outage costs time, never an event.

Partitions come and go through the runner: on assignment the partition's state
is read from the lake and the consumer seeks to its resume offset (the group's
committed offset is only informational); on revocation its open files are cut
and written and the resume offset committed, so the next owner continues
exactly there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from tripwire.config import Config
from tripwire.log import EVENTS, INVALID, Consumer, EventLog, Record, TopicPartition, records_between
from tripwire.log.consume import Batch, Runner

from . import metrics
from .config import SinkConfig, sink_config
from .errors import CatalogError, LakeError
from .lake import Lake, open_lake
from .writer import LakeWriter

logger = logging.getLogger(__name__)

_LAG_EVERY_S = 5.0


class SinkService:
    """Service ``sink``, and the :class:`~tripwire.log.consume.Handler` of its runner."""

    name = "sink"
    read_ahead = True  # the next batch is read while this one is written (the read releases the GIL)
    fatal_errors = (CatalogError,)  # at the first start: the catalog cannot be used; a restart would not mend it

    def __init__(self, cfg: SinkConfig, log: EventLog, lake: Lake | None = None) -> None:
        self.cfg = cfg
        self.log = log
        self.lake = lake or open_lake(cfg.lake_url, cfg.storage_options() if cfg.is_s3 else None)
        self.topics = [EVENTS, INVALID] if cfg.invalid_table else [EVENTS]
        self.writers: dict[str, LakeWriter] = {}  # by topic: one table each
        self.runner = Runner(log, cfg.group, self.topics, self)
        self.max_records = cfg.poll_max_records
        self._poll_ms = int(max(50, min(1000, cfg.max_file_age_s * 500)))
        self._tick_s = min(1.0, cfg.max_file_age_s / 2)
        self._last_tick = self._last_lag = time.monotonic()
        self._started = False

    @property
    def consumer(self) -> Consumer | None:
        return self.runner.consumer

    @property
    def writer(self) -> LakeWriter | None:
        """The events table's writer."""
        return self.writers.get(EVENTS)

    @property
    def failed(self) -> bool:
        return self.runner.failed

    @property
    def error(self) -> BaseException | None:
        return self.runner.error

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        writers = [await asyncio.to_thread(LakeWriter, self.lake, self.cfg, topic) for topic in self.topics]
        for w in writers:
            w.group = writers  # one sink, one set of limits
        self.writers = {w.topic: w for w in writers}
        await self.runner.start()  # the embedded log: GroupTaken when another sink of the group runs
        logger.info("sink writing %s (partitioning %s)", _redact(self.cfg.lake_url), self.cfg.partitioning)

    async def ready(self) -> bool:
        """For ``/readyz``: consuming, and the loop alive."""
        return await self.runner.ready()

    async def stop(self) -> None:
        await self.runner.stop()  # revokes every partition: open files are cut, written and committed
        writers, self.writers = self.writers, {}
        for writer in writers.values():
            writer.parts.clear()  # what a failed sink still holds is not written: the lake's journal replays it
            await asyncio.to_thread(writer.close)

    # the runner's handler ------------------------------------------------------

    def poll_timeout_ms(self) -> int:
        return self._poll_ms

    async def on_assigned(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int | None]:
        resume: dict[TopicPartition, int | None] = {}
        for tp in sorted(partitions):
            w = self.writers.get(tp.topic)
            if w is not None:
                resume[tp] = await asyncio.to_thread(w.assign, tp.partition)
        if resume:  # one line per rebalance, not one per partition
            logger.info("sink owns %s", ", ".join(f"{tp.topic}-{tp.partition} from offset {o}" for tp, o in resume.items()))
        return resume

    async def on_revoked(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        offsets = {}
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
        return offsets

    async def handle(self, batch: Batch) -> None:
        writers = list(self.writers.values())
        if batch.records:
            await asyncio.to_thread(self._process, batch.records)
        now = time.monotonic()
        tick = now - self._last_tick >= self._tick_s
        if tick or any(pw.sealed for w in writers for pw in w.parts.values()):
            if tick:
                self._last_tick = now
                await asyncio.to_thread(self._each_writer, lambda w: w.seal_aged(now))
            offsets = await asyncio.to_thread(self._each, lambda w: w.flush())
            # Informational (the lake's state is where a sink resumes): a refusal is only logged.
            await batch.commit(offsets)
        metrics.OPEN_FILES.set(sum(w.open_files() for w in writers))
        metrics.BUFFERED.set(sum(w.buffered_bytes() for w in writers))
        if now - self._last_lag >= _LAG_EVERY_S:
            self._last_lag = now
            await self._lag()

    def _process(self, records: Iterable[Record]) -> None:
        by_topic: dict[str, list[Record]] = {}
        for r in records:
            by_topic.setdefault(r.topic, []).append(r)
        for topic, recs in by_topic.items():
            w = self.writers.get(topic)
            if w is not None:
                w.process(recs)

    def _each(self, step: Callable[[LakeWriter], dict[int, int]]) -> dict[TopicPartition, int]:
        """``step`` for every table's writer; the resume offsets it returns, by topic and partition."""
        out = {}
        for topic, w in self.writers.items():
            out.update({TopicPartition(topic, p): o for p, o in step(w).items()})
        return out

    def _each_writer(self, step: Callable[[LakeWriter], None]) -> None:
        for w in self.writers.values():
            step(w)

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
