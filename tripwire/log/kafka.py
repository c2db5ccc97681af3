"""The scale-out event log: Kafka via aiokafka, with an on-disk spill buffer.

Topics are ``<topic_prefix>.<logical name>``, created on connect when missing
with ``log.partitions`` partitions (existing topics keep their own count).
Records go to ``murmur2(key) % partitions`` exactly like
:func:`tripwire.log.partition.partition_for` (keyless records to partition 0);
the partition is chosen here, not by the client's partitioner.

Appends go through the write path (:mod:`tripwire.log.kafka_writer`, which states its contract):
group-committed produces with ``acks=all``, a spill on disk while the broker is away, and a
forwarder that replays it. When the spill is full, ``append`` raises :class:`LogUnavailable`
with ``retry_after_s`` (HTTP 503). Delivery is at-least-once: a produce that timed out
may still have landed, so a replay can duplicate records (``messageId`` identifies them),
never lose or reorder them. ``ready()`` is False while anything is spilled or the broker is
unreachable.

A broker that loses acknowledged records (a single broker whose disk is gone,
tansu with memory storage) is not recovered from: what it had acknowledged and
nobody had consumed is lost, and offsets start again at 0 (see deploy/README.md).

Identity links (:mod:`tripwire.log.kafka_identities`) go to the compacted
``<prefix>.identities`` topic in the same group commit as the events of their
append, through the same spill when the broker is away; ``links`` answers from
this process's local copy of that topic, which the first ``links`` (or
``forget_links``) call starts reading from the start (waiting, bounded, until it
has read what was there) and which then follows the topic. While the copy is
not caught up, ``ready()`` is False.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tripwire.identity import Link

from .base import (
    IDENTITIES,
    TOPICS,
    Consumer,
    Entry,
    EventLog,
    LogClosed,
    LogError,
    LogUnavailable,
    RebalanceListener,
    Record,
)
from .kafka_consumer import KafkaConsumer
from .kafka_identities import IdentityFollower, LocalLinks
from .kafka_producer import OrderedProducer
from .kafka_reader import KafkaReader
from .kafka_writer import SpillingWriter
from .spill import Spill

if TYPE_CHECKING:
    from tripwire.config import Config

logger = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1_000_000  # under Kafka's default message.max.bytes and aiokafka's max_request_size


class KafkaLog(EventLog):
    def __init__(
        self,
        bootstrap: str,
        *,
        spill_dir: str | Path,
        topic_prefix: str = "tripwire",
        partitions: int = 4,
        replication_factor: int = 1,
        idempotent: bool = False,
        linger_ms: int = 0,
        request_timeout_ms: int = 10_000,
        spill_max_bytes: int = 512 * 1024 * 1024,
        spill_retry_after_s: int = 5,
        spill_segment_bytes: int = 4 * 1024 * 1024,
        reconnect_backoff_ms: int = 500,
        max_batch_records: int = 10_000,
        client_id: str = "tripwire",
        identities_dir: str | Path | None = None,
    ) -> None:
        """``identities_dir``: where this process keeps its copy of the identity links (default: beside the
        spill, ``<spill_dir>/../identities``)."""
        self.bootstrap = bootstrap
        self.topic_prefix = topic_prefix
        self._timeout_ms = request_timeout_ms
        self._client_id = client_id
        self.spill = Spill(
            spill_dir, spill_max_bytes, segment_bytes=spill_segment_bytes, retry_after_s=spill_retry_after_s
        )
        self._local_links = LocalLinks(Path(identities_dir) if identities_dir is not None
                                       else Path(spill_dir).parent / "identities")
        self._follower: IdentityFollower | None = None
        self._producer = OrderedProducer(
            bootstrap,
            [self.topic(t) for t in (*TOPICS, IDENTITIES)],
            compacted=[self.topic(IDENTITIES)],
            partitions=partitions,
            replication_factor=replication_factor,
            idempotent=idempotent,
            linger_ms=linger_ms,
            request_timeout_ms=request_timeout_ms,
            client_id=client_id,
        )
        self._writer = SpillingWriter(self._producer, self.spill, bootstrap=bootstrap,
                                      identities_topic=self.topic(IDENTITIES), backoff_s=reconnect_backoff_ms / 1000,
                                      max_batch_records=max_batch_records)
        self._reader: KafkaReader | None = None
        self._started = False
        self._closed = False

    @classmethod
    def from_config(cls, config: Config) -> KafkaLog:
        log = config.log
        return cls(
            log.kafka_bootstrap,
            spill_dir=config.data_dir / "spill",
            identities_dir=config.data_dir / "identities",
            topic_prefix=log.topic_prefix,
            partitions=log.partitions,
            replication_factor=log.kafka_replication_factor,
            idempotent=log.kafka_idempotent,
            linger_ms=log.kafka_linger_ms,
            request_timeout_ms=log.kafka_request_timeout_ms,
            spill_max_bytes=log.spill_max_bytes,
            spill_retry_after_s=log.spill_retry_after_s,
            max_batch_records=log.group_commit_max_records,
        )

    def topic(self, name: str) -> str:
        """The Kafka topic behind a logical topic name."""
        return f"{self.topic_prefix}.{name}"

    @property
    def produce_batches(self) -> int:
        """Direct produce round trips (group-commit efficiency)."""
        return self._writer.produce_batches

    # lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._reader = KafkaReader(self.bootstrap, self.topic, self._timeout_ms, self._client_id)
        await self._writer.start()
        self._started = True

    async def stop(self) -> None:
        """Answer queued appends, give the forwarder a bounded time to drain, close.

        Records still spilled stay on disk and are replayed by the next start.
        """
        if not self._started or self._closed:
            return
        self._closed = True
        await self._writer.stop(drain_s=self._timeout_ms / 1000)
        if self._reader is not None:
            await self._reader.stop()
        if self._follower is not None:
            await self._follower.stop()
        await self._producer.stop()
        self._local_links.close()

    # writing -----------------------------------------------------------------

    async def append(self, topic: str, entries: Sequence[Entry], links: Sequence[Link] = ()) -> None:
        if not entries and not links:
            return
        if not self._started:
            raise LogClosed("event log not started")
        if self._closed:
            raise LogClosed("event log stopped")
        if self._writer.failed is not None:
            raise LogUnavailable(f"event log failed: {self._writer.failed!r}")
        for key, value in entries:
            # Kafka would refuse it for ever; spilled, it would block every record behind it.
            if len(value) + len(key or b"") > MAX_RECORD_BYTES:
                raise LogError(
                    f"a record of {len(value) + len(key or b'')} bytes is over the Kafka log's "
                    f"limit of {MAX_RECORD_BYTES} bytes"
                )
        await self._writer.append(self.topic(topic), entries, links)
        if links:  # known here at once; other processes read them from the topic
            if not self._local_links.opened:
                self._local_links.open()
            self._local_links.apply(links)

    # identity links ------------------------------------------------------------

    async def _following(self) -> IdentityFollower:
        """The follower of the identities topic, started (and waited for, bounded) on first use."""
        if self._follower is None:
            if not self._started or self._closed:
                raise LogClosed("event log not running")
            if not self._local_links.opened:
                self._local_links.open()
            self._follower = IdentityFollower(self.bootstrap, self.topic(IDENTITIES), self._local_links,
                                              request_timeout_ms=self._timeout_ms, client_id=self._client_id)
            self._follower.start()
            if not await self._follower.wait_caught_up(self._timeout_ms / 1000):
                logger.warning("identity links: %s not read to its end within %.0fs; events with only a userId "
                               "are keyed by it until it is", self.topic(IDENTITIES), self._timeout_ms / 1000)
        return self._follower

    async def links(self, user_ids: Collection[str]) -> dict[str, list[Link]]:
        await self._following()
        return self._local_links.select(user_ids) if user_ids else {}

    async def forget_links(self, user_id: str) -> list[Link]:
        follower = await self._following()
        if not follower.caught_up:
            raise LogUnavailable(f"the identity links of {self.topic(IDENTITIES)} could not be read")
        links = self._local_links.select([user_id]).get(user_id, [])
        if not links:
            return []
        tombstones = [(self.topic(IDENTITIES), link.pair_key(), None) for link in links]
        failed = await self._writer.produce_in_turn(tombstones)
        if failed:
            raise LogUnavailable(f"Kafka did not acknowledge the deletion of {len(failed)} identity link(s)")
        self._local_links.delete_pairs([(link.user_id, link.anonymous_id) for link in links])
        return links

    # reading -----------------------------------------------------------------

    async def ready(self) -> bool:
        """Not spilling, and a broker answered just now (so a dead broker shows before an append fails)."""
        if not (self._started and not self._closed and self._writer.failed is None):
            return False
        if not self._writer.reachable or self.spill.depth:
            return False
        if self._follower is not None and not self._follower.caught_up:
            return False  # a collector that has not read the identity links yet would key by userId
        return await self._producer.ping(min(2.0, self._timeout_ms / 1000))

    def spill_depth(self) -> int:
        return self.spill.depth

    def _require_reader(self) -> KafkaReader:
        if self._reader is None or self._closed:
            raise LogClosed("event log not running")
        return self._reader

    async def partitions(self, topic: str) -> list[int]:
        return await self._require_reader().partitions(topic)

    async def end_offsets(self, topic: str) -> dict[int, int]:
        return await self._require_reader().end_offsets(topic)

    async def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[Record]:
        return await self._require_reader().read(topic, partition, offset, max_records)

    def consumer(
        self, group: str, topics: Sequence[str], listener: RebalanceListener | None = None, exclusive: bool = False
    ) -> Consumer:
        self._require_reader()
        return KafkaConsumer(
            self.bootstrap, group, topics, listener,
            topic_prefix=self.topic_prefix, request_timeout_ms=self._timeout_ms, client_id=self._client_id,
        )
