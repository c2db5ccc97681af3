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

logger = logging.getLogger(__name__)
# The reader re-assigns partitions on every read; aiokafka logs each at INFO.
logging.getLogger("aiokafka.consumer.subscription_state").setLevel(logging.WARNING)


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
    """One member of a Kafka consumer group over logical topics."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener | None = None,
        *,
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

    def _kafka(self, tp: TopicPartition) -> KafkaTP:
        return KafkaTP(self._prefix + tp.topic, tp.partition)

    def _logical(self, tp: KafkaTP) -> TopicPartition:
        return TopicPartition(tp.topic.removeprefix(self._prefix), tp.partition)

    async def _assigned(self, partitions: set[TopicPartition]) -> None:
        self._assignment = set(partitions)
        if self._listener is not None and partitions:
            await self._listener.on_assigned(self, partitions)

    async def _revoked(self, partitions: set[TopicPartition]) -> None:
        self._assignment -= partitions
        if self._listener is not None and partitions:
            await self._listener.on_revoked(self, partitions)

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
        return [
            Record(tp.topic.removeprefix(self._prefix), tp.partition, m.offset, m.key, m.value, m.timestamp)
            for tp, messages in batches.items()
            for m in messages
        ]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._assignment:
            raise ValueError(f"partition {tp} is not assigned")
        self._require().seek(self._kafka(tp), offset)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            await self._require().commit({self._kafka(tp): off for tp, off in offsets.items()})
        except KafkaError as exc:
            raise LogUnavailable(f"consumer group {self._group!r}: commit failed: {exc}") from exc

    async def committed(self, tp: TopicPartition) -> int | None:
        try:
            offset = await self._require().committed(self._kafka(tp))
        except KafkaError as exc:
            raise LogUnavailable(f"consumer group {self._group!r}: committed offsets unavailable: {exc}") from exc
        return offset if offset is not None and offset >= 0 else None

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

    async def end_offsets(self, topic: str) -> dict[int, int]:
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
