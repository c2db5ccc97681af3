"""The event log's semantics, checked the same way against every backend.

memory (the twin), sqlite (embedded) and kafka (a real tansu broker) must agree
on: where a key's records go, offsets, reading a partition from an offset,
committed offsets per group, resuming a group, and seeking from the listener.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tripwire.log import EVENTS, TRIGGERS, Consumer, EventLog, TopicPartition
from tripwire.log.kafka import KafkaLog
from tripwire.log.memory import MemoryLog
from tripwire.log.partition import partition_for
from tripwire.log.sqlite import SqliteLog

from .helpers import poll_until, read_all, wait_assigned

PARTITIONS = 4


@pytest.fixture(params=["memory", "sqlite", "kafka"])
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    backend: EventLog
    if request.param == "memory":
        backend = MemoryLog(PARTITIONS)
    elif request.param == "sqlite":
        backend = SqliteLog(tmp_path / "log.db", PARTITIONS)
    else:
        broker = request.getfixturevalue("tansu")
        backend = KafkaLog(broker.bootstrap, spill_dir=tmp_path / "spill", partitions=PARTITIONS)
    async with backend:
        yield backend


def entries(n: int, keys: int = 5) -> list[tuple[bytes, bytes]]:
    return [(f"user-{i % keys}".encode(), f"value-{i}".encode()) for i in range(n)]


async def test_append_then_read_by_partition_and_offset(log: EventLog) -> None:
    await log.append(EVENTS, entries(40))
    await log.append(EVENTS, entries(10))

    assert await log.partitions(EVENTS) == list(range(PARTITIONS))
    ends = await log.end_offsets(EVENTS)
    assert sum(ends.values()) == 50
    records = await read_all(log, EVENTS)
    assert sorted(r.value for r in records) == sorted(v for _, v in entries(40) + entries(10))
    for partition, end in ends.items():
        if end < 3:
            continue
        tail = await log.read(EVENTS, partition, end - 2)
        assert [r.offset for r in tail] == [end - 2, end - 1]
        assert await log.read(EVENTS, partition, end) == []
    # other topics are separate
    assert sum((await log.end_offsets(TRIGGERS)).values()) == 0


async def test_keys_stay_in_one_partition_in_order(log: EventLog) -> None:
    batch = entries(60, keys=7)
    for i in range(0, 60, 20):
        await log.append(EVENTS, batch[i : i + 20])
    await log.append(EVENTS, [(None, b"keyless-1"), (None, b"keyless-2")])

    records = await read_all(log, EVENTS)
    by_key: dict[bytes | None, list[bytes]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert r.partition == partition_for(r.key, PARTITIONS)
        by_key.setdefault(r.key, []).append(r.value)
    for key in {k for k, _ in batch}:
        assert by_key[key] == [v for k, v in batch if k == key]
    assert by_key[None] == [b"keyless-1", b"keyless-2"]
    offsets = {}
    for r in records:
        offsets.setdefault(r.partition, []).append(r.offset)
    assert all(o == list(range(len(o))) for o in offsets.values())


async def test_commit_and_committed(log: EventLog) -> None:
    await log.append(EVENTS, entries(20))
    consumer = log.consumer("group-a", [EVENTS])
    async with consumer:
        await wait_assigned(consumer)
        tp = TopicPartition(EVENTS, partition_for(b"user-0", PARTITIONS))
        assert await consumer.committed(tp) is None
        await consumer.commit({tp: 3})
        assert await consumer.committed(tp) == 3
        await consumer.commit({tp: 4})
        assert await consumer.committed(tp) == 4
    other = log.consumer("group-b", [EVENTS])
    async with other:
        assert await other.committed(tp) is None


async def test_group_resumes_from_committed_offsets(log: EventLog) -> None:
    await log.append(EVENTS, entries(30))
    first = log.consumer("resume", [EVENTS])
    async with first:
        got = await poll_until(first, 30)
        assert len(got) == 30
        # commit only the first 2 records of every partition
        await first.commit({TopicPartition(EVENTS, p): 2 for p in range(PARTITIONS)})
    ends = await log.end_offsets(EVENTS)
    expected = {r.value for r in await read_all(log, EVENTS) if r.offset >= 2}
    await log.append(EVENTS, [(b"user-0", b"late")])

    second = log.consumer("resume", [EVENTS])
    async with second:
        got = await poll_until(second, len(expected) + 1)
    assert {r.value for r in got} == expected | {b"late"}
    assert all(r.offset >= 2 for r in got)
    assert sum(ends.values()) == 30


class SeekingListener:
    """Keeps its own offsets, like the rules engine: seeks every assigned partition."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.assigned: list[set[TopicPartition]] = []
        self.revoked: list[set[TopicPartition]] = []

    async def on_assigned(self, consumer: Consumer, partitions: set[TopicPartition]) -> None:
        self.assigned.append(set(partitions))
        for tp in partitions:
            consumer.seek(tp, self.offset)

    async def on_revoked(self, consumer: Consumer, partitions: set[TopicPartition]) -> None:
        self.revoked.append(set(partitions))


async def test_listener_seek_decides_where_reading_starts(log: EventLog) -> None:
    await log.append(EVENTS, entries(40))
    ends = await log.end_offsets(EVENTS)
    committer = log.consumer("seeker", [EVENTS])
    async with committer:  # a committed offset that the listener's seek must win over
        await wait_assigned(committer)
        await committer.commit({TopicPartition(EVENTS, p): 1 for p in range(PARTITIONS)})
    listener = SeekingListener(offset=3)
    consumer = log.consumer("seeker", [EVENTS], listener)
    async with consumer:
        want = sum(max(0, end - 3) for end in ends.values())
        got = await poll_until(consumer, want)
        assert listener.assigned == [{TopicPartition(EVENTS, p) for p in range(PARTITIONS)}]
    assert len(got) == want
    assert all(r.offset >= 3 for r in got)
    assert listener.revoked == listener.assigned


async def test_lag_counts_what_poll_has_not_returned_yet(log: EventLog) -> None:
    await log.append(EVENTS, entries(20))
    tp = TopicPartition(EVENTS, partition_for(b"user-0", PARTITIONS))
    consumer = log.consumer("lagging", [EVENTS])
    async with consumer:
        got = await poll_until(consumer, 20)
        assert len(got) == 20
        assert await consumer.lag(tp) == 0  # everything returned: caught up
        mine = sum(1 for r in got if r.partition == tp.partition)
        consumer.seek(tp, 1)  # a rewind puts it behind again
        lag = await consumer.lag(tp)
        assert lag is None or lag == mine - 1  # Kafka knows only after its next fetch
        again = await poll_until(consumer, mine - 1)
        assert [r.offset for r in again] == list(range(1, mine))
        assert await consumer.lag(tp) == 0
