"""How the Kafka log recovers from a broker that lost its data (a mixin of :class:`~tripwire.log.kafka.KafkaLog`).

* :meth:`_connect` finds every partition's epoch marker, writing one where
  there is none (:mod:`tripwire.log.epoch`), and queues for replay the kept
  records acknowledged in an epoch the broker has lost since;
* :meth:`_produce` checks every acknowledgement against the markers: an offset
  at or before the marker, or before an earlier acknowledgement, is a restarted
  broker answering for a topic it no longer has;
* :meth:`_watch_loop` checks once a second that the markers are still there;
* :meth:`_reset` queues the topic's kept records (:class:`~tripwire.log.retain.Retained`)
  for :meth:`_recover`, which reconnects and produces them before the spill
  and anything newer (the writer spills while ``_replay`` is not empty).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError
from prometheus_client import Counter

from .base import LogUnavailable
from .spill import SpilledRecord

if TYPE_CHECKING:
    from .epoch import EpochBook
    from .kafka_producer import OrderedProducer
    from .kafka_reader import KafkaReader
    from .retain import Retained

logger = logging.getLogger(__name__)

EPOCH_RESETS = Counter(
    "tripwire_log_epoch_resets", "Times the Kafka broker lost a topic and this process produced its retained records again"
)
_WATCH_S = 1.0  # how often the log checks that the broker still has its epoch markers
_REPLAY_CHUNK = 2000


class EpochRecovery:
    bootstrap: str
    book: EpochBook
    retained: Retained
    epoch_resets: int
    _producer: OrderedProducer
    _reader: KafkaReader | None
    _reachable: bool
    _replay: list[SpilledRecord]
    _last_ack: dict[tuple[str, int], int]
    _spilled: asyncio.Event

    async def _connect(self) -> None:
        """Start the producer, create the topics, find (or write) their epoch markers; raises while away."""
        await self._producer.connect()
        await self._ensure_marks()
        stale = self.retained.take_stale(self.book)  # acknowledged in an epoch the broker has lost since
        if stale:
            logger.warning("Kafka lost %d records this process had written before (in an earlier run, or while it "
                           "was away); producing them again", len(stale))
            self._replay.extend(stale)
        self._reachable = True

    async def _ensure_marks(self) -> None:
        assert self._reader is not None
        for name in self._producer.topics:
            parts = list(range(self._producer.partition_count(name)))
            before = self.book.marks(name)
            found = await self._reader.find_marks(name, parts)
            missing = [p for p in parts if found.get(p) is None]
            if missing:
                await self._producer.write_markers(name, missing, self.book.next_epoch(name))
                found.update(await self._reader.find_marks(name, missing))
                if any(found.get(p) is None for p in missing):
                    raise LogUnavailable(f"Kafka topic {name!r}: epoch markers written but not found")
            if any(found.get(p) != mark for p, mark in before.items()):
                self._reset(name, "its epoch markers changed")
                for p, mark in found.items():
                    if mark is not None:
                        self.book.set(name, p, mark)

    async def _produce(self, records: Sequence[SpilledRecord]) -> list[int]:
        """Produce; the indexes to retry. Acknowledged records are kept for ``retain_s``.

        An acknowledgement at or before the partition's epoch marker, or before an
        earlier one, means the broker lost the topic (a phantom acknowledgement from
        a restarted broker): every record of that topic in this call is retried and
        what it acknowledged before is produced again (:meth:`_reset`).
        """
        results = await self._producer.produce(records)
        reset: set[str] = set()
        for (topic, _, _), result in zip(records, results, strict=True):
            if result is None or topic in reset:
                continue
            partition, offset = result
            mark = self.book.get(topic, partition)
            last = self._last_ack.get((topic, partition), -1)
            if mark is None or offset <= mark.offset or offset <= last:
                reset.add(topic)
            else:
                self._last_ack[(topic, partition)] = offset
        retry = [i for i, r in enumerate(results) if r is None or records[i][0] in reset]
        if self.retained.retain_s > 0:
            now = time.time()
            book = self.book
            self.retained.add([
                (now, topic, r[0], book.get(topic, r[0]).epoch, key, value)  # type: ignore[union-attr]
                for (topic, key, value), r in zip(records, results, strict=True)
                if r is not None and topic not in reset
            ])
        for topic in reset:
            self._reset(topic, "Kafka acknowledged records at offsets it had already used")
        return retry

    def _reset(self, topic: str, why: str) -> None:
        """The broker lost ``topic``: produce what it had acknowledged again, before anything newer."""
        lost = self.retained.take(topic)
        self._replay.extend(lost)
        self.book.forget(topic)
        for tp in [tp for tp in self._last_ack if tp[0] == topic]:
            del self._last_ack[tp]
        self.epoch_resets += 1
        EPOCH_RESETS.inc()
        self._reachable = False
        self._spilled.set()  # wake the forwarder: it reconnects, writes new markers, replays
        logger.warning("Kafka lost topic %s (%s): producing its %d acknowledged records of the last %.0f s again",
                       topic, why, len(lost), self.retained.retain_s)

    async def _watch_loop(self) -> None:
        """Forget retained records past ``retain_s``; notice a broker that came back empty."""
        assert self._reader is not None
        seen_changes = -1
        while True:
            await asyncio.sleep(_WATCH_S)
            self.retained.expire()
            if self.book.changes != seen_changes:
                # Another part of this process (a consumer, a read) may have learnt a new epoch
                # first: what this producer wrote under the old one (maybe into the restarted
                # broker before its new marker, where consumers skip it) is written again.
                seen_changes = self.book.changes
                stale = self.retained.take_stale(self.book)
                if stale:
                    logger.warning("%d records this process wrote are in an epoch the broker has lost; "
                                   "producing them again", len(stale))
                    self._replay.extend(stale)
                    self._reachable = False
                    self._spilled.set()
            if not self._reachable:
                continue
            for name in self._producer.topics:
                try:
                    changed = await self._reader.changed_marks(name)
                except LogUnavailable as exc:
                    # The broker may come back empty: nothing goes to it directly until
                    # _connect has checked the markers again (an idle producer would
                    # otherwise write into the topic a restarted tansu re-creates on the fly).
                    logger.info("Kafka did not answer the epoch check (%s); checking again before producing", exc)
                    self._reachable = False
                    self._spilled.set()
                    break
                if changed and self.book.marks(name):
                    self._reset(name, f"the epoch markers of partitions {sorted(changed)} are gone")

    async def _replay_lost(self) -> bool:
        """Produce what a lost topic had acknowledged; False when the broker failed us again."""
        pending, self._replay = self._replay, []
        while pending:
            chunk, pending = pending[:_REPLAY_CHUNK], pending[_REPLAY_CHUNK:]
            retry = await self._produce(chunk)
            if retry:
                self._reachable = False
                # what a reset during this call took back comes first (it is older)
                self._replay += [chunk[i] for i in retry] + pending
                return False
        if not self._replay:
            logger.info("replayed every acknowledged record of the lost topics")
        return not self._replay

    async def _recover(self) -> bool:
        """Reconnect and replay what a lost topic held; False while the broker is away."""
        try:
            if not self._reachable:
                await self._connect()
                logger.info("Kafka at %s is reachable", self.bootstrap)
            while self._replay:
                if not await self._replay_lost():
                    return False
                if not self._reachable:
                    await self._connect()
        except (KafkaError, OSError, TimeoutError, LogUnavailable) as exc:
            self._reachable = False
            logger.debug("Kafka still unreachable: %s", exc)
            return False
        return True
