"""Producing to Kafka in key order, and knowing exactly what was not acknowledged.

:class:`OrderedProducer` wraps one ``AIOKafkaProducer`` (``acks=all``, the
idempotent producer only when configured) for the whole life of a log, so
batches it still holds after a timeout are delivered before anything produced
later (aiokafka keeps one batch in flight per partition). It creates missing
topics, picks partitions with :func:`~tripwire.log.partition.partition_for`,
and :meth:`OrderedProducer.produce` answers which records must be retried:
every record Kafka did not acknowledge, plus every later record of the same
partition, so retrying them (or spilling them) never lets a key's records
overtake each other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code

from .partition import partition_for

logger = logging.getLogger(__name__)

# (topic, key, value): a spilled record, or a tombstone (value None) deleting a key of a compacted topic
ProducedRecord = tuple[str, "bytes | None", "bytes | None"]

_TOPIC_ALREADY_EXISTS = 36


class OrderedProducer:
    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        *,
        partitions: int,
        replication_factor: int,
        idempotent: bool,
        linger_ms: int,
        request_timeout_ms: int,
        client_id: str,
        compacted: Collection[str] = (),
    ) -> None:
        """``compacted``: topics (of ``topics``) created with ``cleanup.policy=compact``."""
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self._compacted = set(compacted)
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._idempotent = idempotent
        self._linger_ms = linger_ms
        self._timeout_ms = request_timeout_ms
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._counts: dict[str, int] = {}

    async def connect(self) -> None:
        """Start the producer (once) and create missing topics; raises while the broker is away."""
        timeout_s = self._timeout_ms / 1000
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                client_id=self._client_id,
                acks="all",
                enable_idempotence=self._idempotent,
                linger_ms=self._linger_ms,
                request_timeout_ms=self._timeout_ms,
                max_batch_size=1024 * 1024,
            )
            try:
                await asyncio.wait_for(producer.start(), timeout_s)
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        await asyncio.wait_for(self._ensure_topics(), timeout_s)
        for topic in self.topics:
            self._counts[topic] = len(await asyncio.wait_for(self._producer.partitions_for(topic), timeout_s))

    async def _ensure_topics(self) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap, client_id=self._client_id, request_timeout_ms=self._timeout_ms
        )
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in self.topics if t not in existing]
            if not missing:
                return
            response = await admin.create_topics([
                NewTopic(t, self._partitions, self._replication_factor,
                         topic_configs={"cleanup.policy": "compact"} if t in self._compacted else None)
                for t in missing
            ])
            for name, code, *_ in response.topic_errors:
                if code not in (0, _TOPIC_ALREADY_EXISTS):  # another process may have been faster
                    raise for_code(code)(f"cannot create Kafka topic {name!r}")
            logger.info("created Kafka topics %s with %d partitions", ", ".join(missing), self._partitions)
        finally:
            await admin.close()

    async def ping(self, timeout_s: float) -> bool:
        """True when a broker answers a metadata request within ``timeout_s``."""
        if self._producer is None:
            return False
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout_s)
        except (KafkaError, OSError, TimeoutError):
            return False
        return True

    async def stop(self) -> None:
        """Flush (bounded by the request timeout) and close; safe to call twice."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            await asyncio.wait_for(producer.stop(), self._timeout_ms / 1000)
        except (KafkaError, TimeoutError) as exc:
            logger.warning("Kafka producer did not stop cleanly: %s", exc)

    async def produce(self, records: Sequence[ProducedRecord]) -> list[int]:
        """Produce ``records`` in order; the indexes of those not acknowledged (retry them, in order)."""
        producer = self._producer
        if producer is None:
            return list(range(len(records)))
        futures: list[asyncio.Future[object]] = []
        try:
            for topic, key, value in records:
                count = self._counts.get(topic)
                if count is None:
                    count = len(await producer.partitions_for(topic))
                    self._counts[topic] = count
                futures.append(await producer.send(topic, value, key=key, partition=partition_for(key, count)))
        except (KafkaError, TimeoutError) as exc:
            logger.warning("Kafka produce failed at record %d of %d: %s", len(futures), len(records), exc)
        try:
            results: list[object] = await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True), 2 * self._timeout_ms / 1000
            )
        except TimeoutError:
            results = [TimeoutError("no acknowledgement")] * len(futures)
        broken: set[tuple[str, int]] = set()
        retry: list[int] = []
        for i, (topic, key, _) in enumerate(records):
            tp = (topic, partition_for(key, self._counts.get(topic, 1)))
            result = results[i] if i < len(results) else None
            if result is None or isinstance(result, BaseException) or tp in broken:
                broken.add(tp)
                retry.append(i)
        if retry and len(futures) == len(records):
            first = next((r for r in results if isinstance(r, BaseException)), None)
            logger.warning("Kafka did not acknowledge %d of %d records: %r", len(retry), len(records), first)
        return retry
