"""Reading the Kafka event log: group consumers and the log's own partition reader.

:class:`KafkaConsumer` is a real Kafka consumer-group member: partitions are
shared between the members of a group, manual commits only, and a rebalance
listener that tells the spine's :class:`RebalanceListener` about every
assignment before ``poll`` returns records of a new partition (so it can
``seek`` to offsets it keeps itself). Without a seek a partition starts at the
group's committed offset, or at the beginning.

:class:`KafkaReader` serves ``EventLog.read``/``end_offsets`` with a group-less
consumer. tansu (the test broker) answers ListOffsets(latest) with an offset
that lags behind the real end (often the last batch's base offset + 1), so
``end_offsets`` fetches from just below it and takes the high watermark of
the fetch response — the same answer a real Kafka broker gives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from .base import Consumer, LogClosed, LogUnavailable, RebalanceListener, Record, TopicPartition
from .epoch import OFFSET_BITS, EpochBook, Mark, marker_of

logger = logging.getLogger(__name__)
# The reader re-assigns partitions on every read; aiokafka logs each at INFO.
logging.getLogger("aiokafka.consumer.subscription_state").setLevel(logging.WARNING)
_RESCAN_S = 0.5  # how often a consumer looks again for a partition's missing epoch marker
_MARK_SCAN = 500  # records read per round while looking for a partition's epoch marker


def _leave_at_generation_zero(consumer: AIOKafkaConsumer) -> None:
    """Make ``stop()`` send LeaveGroup also for generation 0.

    tansu numbers group generations from 0 while aiokafka only leaves a group
    from generation 1 up; without this the first member of a group never leaves,
    and the others wait a whole session timeout before they get its partitions.
    The generation is read only after the heartbeat task has stopped.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    leave = getattr(coordinator, "_maybe_leave_group", None)
    if coordinator is None or leave is None:
        return

    async def maybe_leave_group() -> None:
        if coordinator.generation == 0 and coordinator.member_id:
            coordinator.generation = 1
        await leave()

    coordinator._maybe_leave_group = maybe_leave_group


class _Bridge(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: KafkaConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[KafkaTP]) -> None:
        await self._owner._revoked({self._owner._logical(tp) for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[KafkaTP]) -> None:
        await self._owner._assigned({self._owner._logical(tp) for tp in assigned})


class KafkaConsumer(Consumer):
    """One member of a Kafka consumer group over logical topics, in logical (epoch) offsets."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener | None = None,
        *,
        reader: KafkaReader,
        topic_prefix: str = "tripwire",
        request_timeout_ms: int = 10_000,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 1_000,
        client_id: str = "tripwire",
    ) -> None:
        self._bootstrap = bootstrap
        self._group = group
        self._topics = list(topics)
        self._listener = listener
        self._prefix = topic_prefix + "."
        self._request_timeout_ms = request_timeout_ms
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._client_id = client_id
        self._consumer: AIOKafkaConsumer | None = None
        self._assignment: set[TopicPartition] = set()
        self._reader = reader
        self._book = reader.book
        self._book_version = -1
        self._reading: dict[KafkaTP, Mark | None] = {}  # the epoch our fetch position is in
        self._highwater: dict[KafkaTP, int] = {}
        self._scanned: dict[KafkaTP, float] = {}  # last marker scan that found nothing

    def _kafka(self, tp: TopicPartition) -> KafkaTP:
        return KafkaTP(self._prefix + tp.topic, tp.partition)

    def _logical(self, tp: KafkaTP) -> TopicPartition:
        return TopicPartition(tp.topic.removeprefix(self._prefix), tp.partition)

    async def _assigned(self, partitions: set[TopicPartition]) -> None:
        self._assignment = set(partitions)
        await self._learn_marks([self._kafka(tp) for tp in partitions])
        if self._listener is not None and partitions:
            await self._listener.on_assigned(self, partitions)

    async def _revoked(self, partitions: set[TopicPartition]) -> None:
        self._assignment -= partitions
        for tp in partitions:
            self._reading.pop(self._kafka(tp), None)
            self._highwater.pop(self._kafka(tp), None)
        if self._listener is not None and partitions:
            await self._listener.on_revoked(self, partitions)

    async def _learn_marks(self, ktps: Sequence[KafkaTP]) -> None:
        """Read the current epoch marks of these partitions from the log (a broker may have lost them)."""
        by_topic: dict[str, list[int]] = {}
        for ktp in ktps:
            by_topic.setdefault(ktp.topic, []).append(ktp.partition)
        for name, parts in by_topic.items():
            try:
                found = await self._reader.find_marks(name, parts)
            except LogUnavailable as exc:
                logger.warning("consumer group %r: epoch markers of %s unavailable (%s)", self._group, name, exc)
                found = {}
            for p in parts:
                self._reading[KafkaTP(name, p)] = found.get(p)
        self._book_version = -1

    async def start(self) -> None:
        """Join the group; partitions arrive (and the listener hears) while polling."""
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # JoinGroup waits out the broker's rebalance delay: keep the client's
            # request timeout (40 s) well above it rather than the producer's.
            request_timeout_ms=max(self._request_timeout_ms, 40_000),
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=self._heartbeat_interval_ms,
        )
        try:
            await consumer.start()
        except KafkaError as exc:
            await consumer.stop()
            raise LogUnavailable(f"consumer group {self._group!r} cannot reach Kafka at {self._bootstrap}: {exc}") from exc
        consumer.subscribe([self._prefix + t for t in self._topics], listener=_Bridge(self))
        self._consumer = consumer

    async def stop(self) -> None:
        """Tell the listener its partitions are revoked, then leave the group; safe twice."""
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            if self._assignment:
                await self._revoked(set(self._assignment))
        finally:
            _leave_at_generation_zero(consumer)
            await consumer.stop()

    def _require(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise LogClosed(f"consumer of group {self._group!r} is not started")
        return self._consumer

    async def poll(self, timeout_ms: int = 1000, max_records: int = 1000) -> list[Record]:
        consumer = self._require()
        try:
            batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise LogUnavailable(f"consumer group {self._group!r}: fetch failed: {exc}") from exc
        stale = await self._epoch_changes(consumer)
        out: list[Record] = []
        for ktp, messages in batches.items():
            if ktp in stale:
                continue  # read again from the new epoch's start
            mark = self._reading.get(ktp)
            if mark is None:
                mark = await self._mark_for_unmarked(consumer, ktp)
                if mark is None:
                    continue
            topic, partition = ktp.topic.removeprefix(self._prefix), ktp.partition
            base, first = mark.base, mark.offset
            for m in messages:
                if m.offset <= first:
                    continue  # the marker, or written before it (the producer writes it again)
                if m.headers:
                    seen = marker_of(m.headers, m.offset)
                    if seen is not None:
                        mark = await self._marker_in_stream(consumer, ktp, seen, out, topic, partition)
                        if mark is None:
                            break
                        base, first = mark.base, mark.offset
                        continue
                out.append(Record(topic, partition, base + m.offset, m.key, m.value, m.timestamp))
        return out

    async def _epoch_changes(self, consumer: AIOKafkaConsumer) -> set[KafkaTP]:
        """Partitions that moved to another epoch since we last looked; sought to its start."""
        stale: set[KafkaTP] = set()
        for ktp in self._reading:
            highwater = consumer.highwater(ktp)
            if highwater is None:
                continue
            if highwater < self._highwater.get(ktp, 0):  # the partition shrank: the broker lost it
                logger.warning("consumer group %r: %s partition %d shrank (%d -> %d records): the broker lost its "
                               "data; re-reading its epoch marker", self._group, ktp.topic, ktp.partition,
                               self._highwater[ktp], highwater)
                self._book.forget(ktp.topic)
                await self._learn_marks([ktp])
                self._resume(consumer, ktp, stale)
            self._highwater[ktp] = highwater
        if self._book.version != self._book_version:
            self._book_version = self._book.version
            for ktp, mark in list(self._reading.items()):
                known = self._book.get(ktp.topic, ktp.partition)
                if known is not None and known != mark:
                    self._reading[ktp] = known
                    self._resume(consumer, ktp, stale)
        return stale

    def _resume(self, consumer: AIOKafkaConsumer, ktp: KafkaTP, stale: set[KafkaTP]) -> None:
        mark = self._reading.get(ktp)
        logger.warning("consumer group %r: %s partition %d is in epoch %s now; reading it from its start",
                       self._group, ktp.topic, ktp.partition, mark.epoch if mark else "(none yet)")
        consumer.seek(ktp, mark.offset + 1 if mark is not None else 0)
        stale.add(ktp)

    async def _mark_for_unmarked(self, consumer: AIOKafkaConsumer, ktp: KafkaTP) -> Mark | None:
        """Records arrived for a partition without a known marker: look for it, or read again later."""
        now = time.monotonic()
        mark = self._book.get(ktp.topic, ktp.partition)
        if mark is None and now - self._scanned.get(ktp, 0.0) >= _RESCAN_S:
            found = await self._reader.find_marks(ktp.topic, [ktp.partition])
            mark = found.get(ktp.partition)
            self._scanned[ktp] = now
        if mark is None:
            consumer.seek(ktp, 0)  # nothing here belongs to an epoch yet
            return None
        self._reading[ktp] = mark
        return mark

    async def _marker_in_stream(
        self, consumer: AIOKafkaConsumer, ktp: KafkaTP, seen: Mark, out: list[Record], topic: str, partition: int
    ) -> Mark | None:
        """A marker we did not know in the middle of a fetch: a second writer's, or a new epoch."""
        current = self._reading.get(ktp)
        await self._learn_marks([ktp])
        first = self._reading.get(ktp)
        if first is not None and first == current:
            return current  # a later duplicate marker of the epoch we read: skip it
        # A new epoch: what this fetch returned before its marker is not part of it.
        out[:] = [r for r in out if (r.topic, r.partition) != (topic, partition)]
        if first is not None and first.offset == seen.offset:
            return first
        stale: set[KafkaTP] = set()
        self._resume(consumer, ktp, stale)
        return None

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._assignment:
            raise ValueError(f"partition {tp} is not assigned")
        ktp = self._kafka(tp)
        mark = self._reading.get(ktp)
        self._require().seek(ktp, mark.kafka(offset) if mark is not None else 0)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        kafka_offsets = {}
        for tp, off in offsets.items():
            ktp = self._kafka(tp)
            mark = self._reading.get(ktp)
            if mark is not None and off >> OFFSET_BITS == mark.epoch:
                kafka_offsets[ktp] = (mark.kafka(off), str(mark.epoch))
        if not kafka_offsets:
            return
        try:
            await self._require().commit(kafka_offsets)
        except KafkaError as exc:
            raise LogUnavailable(f"consumer group {self._group!r}: commit failed: {exc}") from exc

    async def committed(self, tp: TopicPartition) -> int | None:
        ktp = self._kafka(tp)
        try:
            offset = await self._require().committed(ktp)
        except KafkaError as exc:
            raise LogUnavailable(f"consumer group {self._group!r}: committed offsets unavailable: {exc}") from exc
        mark = self._reading.get(ktp)
        if offset is None or mark is None or offset <= mark.offset:
            return None
        return mark.logical(offset)

    async def lag(self, tp: TopicPartition) -> int | None:
        """From the high watermark of the last fetch response: no request of its own."""
        consumer = self._require()
        ktp = self._kafka(tp)
        highwater = consumer.highwater(ktp)
        if highwater is None or tp not in self._assignment:
            return None
        try:
            position = await asyncio.wait_for(consumer.position(ktp), 0.1)  # waits only while resetting
        except (KafkaError, TimeoutError):
            return None
        return max(0, highwater - position)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)


class KafkaReader:
    """Group-less reads of single partitions for ``EventLog.read``/``end_offsets``, and epoch marks."""

    def __init__(
        self, bootstrap: str, topic_name: Callable[[str], str], request_timeout_ms: int, client_id: str,
        book: EpochBook | None = None,
    ):
        self._bootstrap = bootstrap
        self._topic_name = topic_name
        self._timeout_ms = request_timeout_ms
        self._client_id = client_id
        self.book = book if book is not None else EpochBook()
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                client_id=self._client_id,
                enable_auto_commit=False,
                auto_offset_reset="none",
                fetch_max_wait_ms=50,
                request_timeout_ms=self._timeout_ms,
            )
            try:
                await consumer.start()
            except KafkaError as exc:
                await consumer.stop()
                raise LogUnavailable(f"cannot reach Kafka at {self._bootstrap}: {exc}") from exc
            self._consumer = consumer
        return self._consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def partitions(self, topic: str) -> list[int]:
        name = self._topic_name(topic)
        async with self._lock:  # two concurrent first calls would each create (and one leak) a consumer
            return await self._partitions(name)

    async def _partitions(self, name: str) -> list[int]:
        consumer = await self._get()
        try:
            parts = consumer.partitions_for_topic(name)
            if not parts:
                # The cached metadata may predate the topic (consumer.topics() does not
                # refresh that cache): ask the cluster.
                cluster = await consumer._client.fetch_all_metadata()
                parts = cluster.partitions_for_topic(name)
        except KafkaError as exc:
            raise LogUnavailable(f"Kafka topic {name!r}: metadata unavailable: {exc}") from exc
        return sorted(parts or ())

    async def _fetch(
        self, consumer: AIOKafkaConsumer, starts: dict[KafkaTP, int], timeout_ms: int, max_records: int
    ) -> dict[KafkaTP, list[object]]:
        """Records from each start offset; an empty list once a fetch shows nothing is there."""
        consumer.assign(list(starts))  # fresh partition states: no high watermark seen yet
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        out: dict[KafkaTP, list[object]] = {}
        deadline = time.monotonic() + timeout_ms / 1000
        while len(out) < len(starts):
            remaining = int((deadline - time.monotonic()) * 1000)
            if remaining <= 0:
                break
            waiting = [tp for tp in starts if tp not in out]
            try:
                got = await consumer.getmany(*waiting, timeout_ms=min(remaining, 50), max_records=max_records)
            except OffsetOutOfRangeError as exc:
                for tp in exc.args[0] if exc.args and isinstance(exc.args[0], dict) else starts:
                    out.setdefault(tp, [])
                continue
            for tp, messages in got.items():
                out[tp] = messages
            for tp in waiting:
                highwater = consumer.highwater(tp)
                if tp not in out and highwater is not None and highwater <= starts[tp]:
                    out[tp] = []  # the broker answered: nothing at or after this offset yet
        return out

    # epochs ------------------------------------------------------------------

    async def find_marks(self, name: str, parts: Sequence[int]) -> dict[int, Mark | None]:
        """Each partition's first epoch marker (None: none yet), read from the log; updates the book."""
        async with self._lock:
            return await self._find_marks(name, parts)

    async def _find_marks(self, name: str, parts: Sequence[int]) -> dict[int, Mark | None]:
        consumer = await self._get()
        found: dict[int, Mark | None] = {}
        starts = {KafkaTP(name, p): 0 for p in parts}
        try:
            while starts:
                got = await self._fetch(consumer, starts, self._timeout_ms, _MARK_SCAN)
                if any(tp not in got for tp in starts):
                    raise LogUnavailable(f"Kafka topic {name!r}: no answer while looking for epoch markers")
                nxt = {}
                for tp, messages in got.items():
                    mark = next((m for m in (marker_of(r.headers, r.offset) for r in messages) if m), None)  # type: ignore[attr-defined]
                    if mark is not None or not messages:
                        found[tp.partition] = mark
                        if mark is not None:
                            self.book.set(name, tp.partition, mark)
                    else:
                        nxt[tp] = messages[-1].offset + 1  # type: ignore[attr-defined]
                starts = nxt
        except KafkaError as exc:
            raise LogUnavailable(f"Kafka topic {name!r}: epoch markers unavailable: {exc}") from exc
        return found

    async def changed_marks(self, name: str) -> set[int]:
        """Partitions whose known marker is no longer where it was (the broker lost the topic)."""
        marks = self.book.marks(name)
        if not marks:
            return set()
        async with self._lock:
            consumer = await self._get()
            starts = {KafkaTP(name, p): m.offset for p, m in marks.items()}
            try:
                got = await self._fetch(consumer, starts, self._timeout_ms, 1)
            except KafkaError as exc:
                raise LogUnavailable(f"Kafka topic {name!r}: epoch markers unavailable: {exc}") from exc
        changed = set()
        for tp, messages in got.items():  # no answer for a partition: unknown, not changed
            first = messages[0] if messages else None
            seen = marker_of(first.headers, first.offset) if first is not None else None  # type: ignore[attr-defined]
            if seen != marks[tp.partition]:
                changed.add(tp.partition)
        return changed

    async def _mark(self, name: str, partition: int) -> Mark | None:
        mark = self.book.get(name, partition)
        if mark is None:
            mark = (await self._find_marks(name, [partition])).get(partition)
        return mark

    # reads -------------------------------------------------------------------

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """Logical end offsets (0 for a partition that has no epoch yet)."""
        name = self._topic_name(topic)
        parts = await self.partitions(topic)
        async with self._lock:
            consumer = await self._get()
            tps = [KafkaTP(name, p) for p in parts]
            try:
                listed = await consumer.end_offsets(tps) if tps else {}
                # tansu's ListOffsets lags behind the real end; a fetch response's
                # high watermark does not. Fetch from an offset that surely exists.
                probe = {tp: end - 1 for tp, end in listed.items() if end > 0}
                got = await self._fetch(consumer, probe, self._timeout_ms, 1) if probe else {}
                ends = {tp.partition: end for tp, end in listed.items()}
                for tp in probe:
                    highwater = consumer.highwater(tp)
                    last = got.get(tp) or []
                    ends[tp.partition] = max(
                        ends[tp.partition],
                        highwater or 0,
                        last[-1].offset + 1 if last else 0,  # type: ignore[attr-defined]
                    )
                for p, end in ends.items():
                    mark = await self._mark(name, p) if end > 0 else None
                    ends[p] = mark.end(end) if mark is not None else 0
            except KafkaError as exc:
                raise LogUnavailable(f"Kafka topic {name!r}: offsets unavailable: {exc}") from exc
        return ends

    async def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[Record]:
        name = self._topic_name(topic)
        tp = KafkaTP(name, partition)
        async with self._lock:
            consumer = await self._get()
            try:
                mark = await self._mark(name, partition)
                if mark is None:
                    return []
                got = await self._fetch(consumer, {tp: mark.kafka(offset)}, self._timeout_ms, max_records)
            except KafkaError as exc:
                raise LogUnavailable(f"Kafka topic {name!r} partition {partition}: read failed: {exc}") from exc
        base, start = mark.base, mark.offset
        return [
            Record(topic, partition, base + m.offset, m.key, m.value, m.timestamp)  # type: ignore[attr-defined]
            for m in got.get(tp, [])
            if m.offset > start and base + m.offset >= offset and not m.headers  # type: ignore[attr-defined]
        ][:max_records]
