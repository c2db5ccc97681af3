"""The Kafka log's own group-less reads: ``EventLog.read``/``end_offsets`` and epoch markers.

tansu (the test broker) answers ListOffsets(latest) with an offset that lags
behind the real end (often the last batch's base offset + 1), so
``end_offsets`` fetches from just below it and takes the high watermark of the
fetch response — the same answer a real Kafka broker gives. Offsets in and out
are logical (:mod:`tripwire.log.epoch`); the epoch markers themselves are
found here too, and kept in the shared :class:`~tripwire.log.epoch.EpochBook`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from .base import LogUnavailable, Record
from .epoch import NO_EPOCHS, EpochBook, Mark, marker_of

# The reader re-assigns partitions on every read; aiokafka logs each at INFO.
logging.getLogger("aiokafka.consumer.subscription_state").setLevel(logging.WARNING)
_MARK_SCAN = 500  # records read per round while looking for a partition's epoch marker


class KafkaReader:
    """Group-less reads of single partitions for ``EventLog.read``/``end_offsets``, and epoch marks."""

    def __init__(
        self, bootstrap: str, topic_name: Callable[[str], str], request_timeout_ms: int, client_id: str,
        book: EpochBook | None = None, *, epochs: bool = True,
    ):
        self._bootstrap = bootstrap
        self._topic_name = topic_name
        self._timeout_ms = request_timeout_ms
        self._client_id = client_id
        self.book = book if book is not None else EpochBook()
        self.epochs = epochs  # False: no markers, every partition reads as NO_EPOCHS
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
        if not self.epochs:
            return self._no_epochs(name, parts)
        async with self._lock:
            return await self._find_marks(name, parts)

    def _no_epochs(self, name: str, parts: Sequence[int]) -> dict[int, Mark | None]:
        for p in parts:
            self.book.set(name, p, NO_EPOCHS)
        return dict.fromkeys(parts, NO_EPOCHS)

    async def _find_marks(self, name: str, parts: Sequence[int]) -> dict[int, Mark | None]:
        if not self.epochs:
            return self._no_epochs(name, parts)
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
        if not marks or not self.epochs:
            return set()
        async with self._lock:
            consumer = await self._get()
            starts = {KafkaTP(name, p): m.offset for p, m in marks.items()}
            try:
                got = await self._fetch(consumer, starts, self._timeout_ms, 1)
            except KafkaError as exc:
                raise LogUnavailable(f"Kafka topic {name!r}: epoch markers unavailable: {exc}") from exc
        if any(tp not in got for tp in starts):
            raise LogUnavailable(f"Kafka topic {name!r}: no answer while checking the epoch markers")
        changed = set()
        for tp, messages in got.items():
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
