"""Reading the Kafka event log in a consumer group.

:class:`KafkaConsumer` is a real Kafka consumer-group member: partitions are
shared between the members of a group, manual commits only, and a rebalance
listener that tells the spine's :class:`RebalanceListener` about every
assignment before ``poll`` returns records of a new partition (so it can
``seek`` to offsets it keeps itself). Without a seek a partition starts at the
group's committed offset, or at the beginning.

A listener that fails on an assignment (an engine whose checkpoint store is
down) does not get its partitions read from wherever the group was: aiokafka
would log the error and fetch on. Those partitions are paused and ``poll``
asks the listener again (after 1 s, then backing off to 30 s), one warning
per try, and resumes them once it succeeded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import KafkaConnectionError, KafkaError

from .base import Consumer, LogClosed, LogUnavailable, RebalanceListener, Record, TopicPartition

logger = logging.getLogger(__name__)
_PREPARE_RETRY_S = (1.0, 30.0)  # first and longest wait before asking a failed listener again


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
    """One member of a Kafka consumer group over logical topic names."""

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
        self._unprepared: set[TopicPartition] = set()  # assigned, but the listener failed on them (paused)
        self._prepare_wait_s = _PREPARE_RETRY_S[0]
        self._prepare_at = 0.0

    def _kafka(self, tp: TopicPartition) -> KafkaTP:
        return KafkaTP(self._prefix + tp.topic, tp.partition)

    def _logical(self, tp: KafkaTP) -> TopicPartition:
        return TopicPartition(tp.topic.removeprefix(self._prefix), tp.partition)

    async def _assigned(self, partitions: set[TopicPartition]) -> None:
        self._assignment = set(partitions)
        self._unprepared.clear()
        self._prepare_wait_s = _PREPARE_RETRY_S[0]
        if self._listener is not None and partitions:
            await self._prepare(set(partitions))

    async def _prepare(self, partitions: set[TopicPartition]) -> None:
        """Hand ``partitions`` to the listener; if it fails, keep them paused until a retry succeeds."""
        assert self._listener is not None
        consumer = self._consumer
        try:
            await self._listener.on_assigned(self, partitions)
        except Exception as exc:  # noqa: BLE001 - any failure of the room's listener: retried by poll
            if consumer is not None:
                consumer.pause(*[self._kafka(tp) for tp in partitions if self._kafka(tp) in consumer.assignment()])
            self._unprepared = set(partitions)
            self._prepare_at = time.monotonic() + self._prepare_wait_s
            logger.warning("consumer group %r: taking over %s failed (%s: %s); partitions paused, trying again in %.0f s",
                           self._group, _names(partitions), type(exc).__name__, exc, self._prepare_wait_s)
            self._prepare_wait_s = min(self._prepare_wait_s * 2, _PREPARE_RETRY_S[1])
            return
        if self._unprepared:
            if consumer is not None:
                consumer.resume(*[self._kafka(tp) for tp in self._unprepared])
            logger.info("consumer group %r: took over %s after all", self._group, _names(self._unprepared))
        self._unprepared.clear()
        self._prepare_wait_s = _PREPARE_RETRY_S[0]

    async def _prepare_again(self, timeout_ms: int) -> None:
        pending = self._unprepared & self._assignment
        if not pending:
            self._unprepared.clear()
            return
        wait = self._prepare_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(min(wait, timeout_ms / 1000))
            if time.monotonic() < self._prepare_at:
                return
        await self._prepare(pending)

    async def _revoked(self, partitions: set[TopicPartition]) -> None:
        self._assignment -= partitions
        self._unprepared -= partitions
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
            reason = "no broker answered" if isinstance(exc, KafkaConnectionError) else str(exc)
            raise LogUnavailable(
                f"consumer group {self._group!r} cannot reach Kafka at {self._bootstrap} (log.kafka_bootstrap): {reason}"
            ) from exc
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
            await self._close(consumer)

    async def _close(self, consumer: AIOKafkaConsumer) -> None:
        """Leave the group, waiting at most a session timeout: a hung broker made aiokafka wait out its
        coordinator and LeaveGroup requests (1-2 minutes), and the group drops a silent member after
        a session timeout anyway."""
        closing = asyncio.ensure_future(consumer.stop())
        done, _ = await asyncio.wait({closing}, timeout=self._session_timeout_ms / 1000)
        if closing in done and not closing.cancelled() and closing.exception() is None:
            return
        if closing in done:
            # A broker that went away: aiokafka's stop() ends with its fetch task's CancelledError (or a
            # connection error) half-way through closing. Leaving is best effort; finish the closing below.
            logger.warning("consumer group %r: Kafka at %s went away; left without telling the group (%s)", self._group,
                           self._bootstrap, "a request was cut off" if closing.cancelled() else closing.exception())
        else:
            logger.warning("consumer group %r: Kafka at %s did not answer within %.0f s; left without telling the "
                           "group (it hands the partitions on after its session timeout)", self._group, self._bootstrap,
                           self._session_timeout_ms / 1000)
            closing.cancel()
            await asyncio.gather(closing, return_exceptions=True)
        # What the cancelled stop() did not get to: the coordinator's tasks, the fetcher, the connections.
        coordinator = getattr(consumer, "_coordinator", None)
        parts = [
            getattr(coordinator, "_stop_heartbeat_task", None),
            getattr(coordinator, "_stop_commit_offsets_refresh_task", None),
            getattr(getattr(consumer, "_fetcher", None), "close", None),
            getattr(getattr(consumer, "_client", None), "close", None),
        ]
        for part in parts:
            if part is not None:
                await asyncio.gather(asyncio.wait_for(part(), 2.0), return_exceptions=True)

    def _require(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise LogClosed(f"consumer of group {self._group!r} is not started")
        return self._consumer

    async def poll(self, timeout_ms: int = 1000, max_records: int = 1000) -> list[Record]:
        consumer = self._require()
        if self._unprepared:
            began = time.monotonic()
            await self._prepare_again(timeout_ms)
            timeout_ms = max(0, timeout_ms - int((time.monotonic() - began) * 1000))
        try:
            batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except KafkaError as exc:
            raise LogUnavailable(f"consumer group {self._group!r}: fetch failed: {exc}") from exc
        out: list[Record] = []
        prefix = len(self._prefix)
        for ktp, messages in batches.items():
            topic, partition = ktp.topic[prefix:], ktp.partition
            out.extend(Record(topic, partition, m.offset, m.key, m.value, m.timestamp) for m in messages)
        return out

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
        return None if offset is None else int(offset)

    async def lag(self, tp: TopicPartition) -> int | None:
        """From the high watermark of the last fetch response: no request of its own."""
        consumer = self._require()
        ktp = self._kafka(tp)
        highwater: int | None = consumer.highwater(ktp)
        if highwater is None or tp not in self._assignment:
            return None
        try:
            position: int = await asyncio.wait_for(consumer.position(ktp), 0.1)  # waits only while resetting
        except (KafkaError, TimeoutError):
            return None
        return max(0, highwater - position)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)


def _names(partitions: set[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}-{tp.partition}" for tp in sorted(partitions))
