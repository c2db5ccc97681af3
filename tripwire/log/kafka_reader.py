"""The Kafka log's own group-less reads: ``EventLog.read``/``end_offsets``.

tansu (the test broker) answers ListOffsets(latest) with an offset that lags
behind the real end (often the last batch's base offset + 1), so
``end_offsets`` fetches from just below it and takes the high watermark of the
fetch response — the same answer a real Kafka broker gives.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from .base import LogUnavailable, Record

# The reader re-assigns partitions on every read; aiokafka logs each at INFO.
logging.getLogger("aiokafka.consumer.subscription_state").setLevel(logging.WARNING)


class KafkaReader:
    """Group-less reads of single partitions for ``EventLog.read``/``end_offsets``."""

    def __init__(self, bootstrap: str, topic_name: Callable[[str], str], request_timeout_ms: int, client_id: str):
        self._bootstrap = bootstrap
        self._topic_name = topic_name
        self._timeout_ms = request_timeout_ms
        self._client_id = client_id
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

    # reads -------------------------------------------------------------------

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset the next record will get."""
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
            except KafkaError as exc:
                raise LogUnavailable(f"Kafka topic {name!r}: offsets unavailable: {exc}") from exc
        return ends

    async def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[Record]:
        name = self._topic_name(topic)
        tp = KafkaTP(name, partition)
        async with self._lock:
            consumer = await self._get()
            try:
                got = await self._fetch(consumer, {tp: offset}, self._timeout_ms, max_records)
            except KafkaError as exc:
                raise LogUnavailable(f"Kafka topic {name!r} partition {partition}: read failed: {exc}") from exc
        return [
            Record(topic, partition, m.offset, m.key, m.value, m.timestamp)  # type: ignore[attr-defined]
            for m in got.get(tp, [])
            if m.offset >= offset  # type: ignore[attr-defined]
        ][:max_records]
