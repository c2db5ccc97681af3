"""The event log interface shared by every backend.

Semantics (identical for SQLite, Kafka and the in-memory twin):

* A log holds named topics (``events``, ``invalid``, ``triggers``); each topic
  has a fixed number of partitions. A record's partition follows its key with
  Kafka's default partitioner (murmur2), so all records of one key stay in one
  partition, in append order.
* ``append`` returns only once every record it was given is durable (SQLite:
  committed to the WAL with fsync; Kafka: acknowledged by all in-sync replicas,
  or written to the collector's spill buffer). It raises :class:`LogUnavailable`
  when that cannot be promised; the caller must then not acknowledge.
* Offsets are per (topic, partition), start at 0 and grow by one per record.
  A committed offset is the offset of the *next* record to read. Retention
  deletes a partition's oldest records (never others), so the first offset
  still there may be above 0; a consumer whose position retention took goes on
  from the first record still there.
* A :class:`Consumer` belongs to a consumer group. Partitions of its topics are
  assigned to it (all of them in embedded mode; a share of them with Kafka
  consumer groups) and the listener hears about every change before records
  of a newly assigned partition are returned by ``poll``. On assignment a
  consumer starts at the group's committed offset (or at the beginning) unless
  the listener calls ``seek`` — which is how a service that keeps its offsets
  next to its own state (the rules engine, the sink) resumes exactly.
* Identity links (:mod:`tripwire.identity`) given to ``append`` are durable
  when it returns, with its records (SQLite: in the same transaction; Kafka:
  acknowledged or spilled with them, on the compacted ``identities`` topic).
  The store keeps one link per (userId, anonymousId) pair, the version with the
  greater (trust, time) (:func:`tripwire.identity.wins`). ``links`` answers from
  what this process knows: every link appended through this log object at once;
  on Kafka, links other processes appended once this process has read them from
  the identities topic (it reads the topic from the start on first use, then
  follows it). ``forget_links`` deletes a user's links everywhere (Kafka:
  tombstones).

Logical topic names are used everywhere; the Kafka backend maps them to
``<prefix>.<name>``.

Exceptions::

    LogError
     ├── LogUnavailable   backend unreachable and no spill space: answer 503
     └── LogClosed        used after stop()
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from tripwire.identity import Link

EVENTS = "events"
INVALID = "invalid"
TRIGGERS = "triggers"
TOPICS = (EVENTS, INVALID, TRIGGERS)
IDENTITIES = "identities"  # Kafka only: the compacted topic of identity links (SQLite keeps a table)


class LogError(Exception):
    """Root of the event log's errors."""


class LogUnavailable(LogError):
    """The backend cannot durably take records right now (retry later)."""

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LogClosed(LogError):
    """The log or consumer was used after ``stop()``."""


class GroupTaken(LogError):
    """The consumer group already has its one member (the embedded log gives each group one)."""


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int  # append time


Entry = tuple["bytes | None", bytes]  # (key, value) as handed to append()


def records_between(position: int, end: int) -> int:
    """Records from offset ``position`` up to the end offset ``end`` (0 once ``position`` reached it)."""
    return max(0, end - position)


class RebalanceListener(Protocol):
    async def on_assigned(self, consumer: Consumer, partitions: set[TopicPartition]) -> None: ...

    async def on_revoked(self, consumer: Consumer, partitions: set[TopicPartition]) -> None: ...


class Consumer(abc.ABC):
    """Reads assigned partitions of some topics for one consumer group."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None:
        """Leave the group; safe to call twice."""

    @abc.abstractmethod
    async def poll(self, timeout_ms: int = 1000, max_records: int = 1000) -> list[Record]:
        """Records from assigned partitions, waiting up to ``timeout_ms`` for the first."""

    @abc.abstractmethod
    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` next (only for assigned partitions)."""

    @abc.abstractmethod
    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Store the next offset to read per partition for this group."""

    @abc.abstractmethod
    async def committed(self, tp: TopicPartition) -> int | None: ...

    @abc.abstractmethod
    async def lag(self, tp: TopicPartition) -> int | None:
        """Records of ``tp`` after what ``poll`` has returned (0: caught up); None when unknown yet."""

    async def lags(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """:meth:`lag` of each of ``tps`` (backends answer it in one trip where they can)."""
        return {tp: await self.lag(tp) for tp in tps}

    @abc.abstractmethod
    def assignment(self) -> set[TopicPartition]: ...

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class EventLog(abc.ABC):
    """Append keyed records to topics; read partitions; commit group offsets."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None:
        """Flush what was accepted and close; safe to call twice."""

    @abc.abstractmethod
    async def append(self, topic: str, entries: Sequence[Entry], links: Sequence[Link] = ()) -> None:
        """Durably append; returns when every entry, and every identity link given, is durable (see module doc)."""

    @abc.abstractmethod
    async def links(self, user_ids: Collection[str]) -> dict[str, list[Link]]:
        """The stored identity links of each of ``user_ids`` (a user without any is left out)."""

    @abc.abstractmethod
    async def forget_links(self, user_id: str) -> list[Link]:
        """Delete every identity link of ``user_id`` (durably); the links it had."""

    @abc.abstractmethod
    async def ready(self) -> bool:
        """True when the backend is reachable (spilling counts as not ready)."""

    @abc.abstractmethod
    async def partitions(self, topic: str) -> list[int]: ...

    @abc.abstractmethod
    async def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset the next appended record will get."""

    @abc.abstractmethod
    async def read(
        self, topic: str, partition: int, offset: int, max_records: int = 1000
    ) -> list[Record]:
        """Up to ``max_records`` records of one partition from ``offset`` (no waiting)."""

    async def read_spans(self, topic: str, spans: Sequence[tuple[int, int, int]]) -> list[list[Record]]:
        """:meth:`read` for each ``(partition, offset, max_records)`` span, answers in the same order.

        For a reader that wants many scattered records at once (the engine reading
        back the envelopes a trigger carries); backends answer it in one trip where
        they can.
        """
        return [await self.read(topic, partition, offset, n) for partition, offset, n in spans]

    @abc.abstractmethod
    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        listener: RebalanceListener | None = None,
        exclusive: bool = False,
    ) -> Consumer:
        """A member of ``group``. Members of a group share its partitions (Kafka: brokers balance them; the
        embedded log: processes on one data_dir, see :mod:`tripwire.log.sqlite_consumer`). ``exclusive``:
        this member is the group's only one on this log (its state is not partitioned: the webhook
        dispatcher's store); another fails with :class:`GroupTaken` (Kafka: ignored, one store per host)."""
        ...

    def spill_depth(self) -> int:
        """Records waiting in a local spill buffer (0 for backends without one)."""
        return 0

    async def __aenter__(self) -> EventLog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
