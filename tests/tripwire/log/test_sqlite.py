"""The embedded SQLite log: group commit, durability on return, retention, reopening."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from tripwire.log import EVENTS, TRIGGERS, GroupTaken, LogClosed, TopicPartition
from tripwire.log.partition import partition_for
from tripwire.log.sqlite import SqliteLog

from .helpers import poll_until, read_all


async def test_concurrent_appends_share_few_transactions(tmp_path: Path) -> None:
    async with SqliteLog(tmp_path / "log.db", 4) as log:
        before = log.commits
        await asyncio.gather(*(log.append(EVENTS, [(b"k%d" % i, b"v%d" % i)]) for i in range(400)))
        transactions = log.commits - before
        assert 1 <= transactions <= 40, f"400 concurrent appends took {transactions} transactions"
        assert sum((await log.end_offsets(EVENTS)).values()) == 400


async def test_group_commit_respects_the_batch_bound(tmp_path: Path) -> None:
    async with SqliteLog(tmp_path / "log.db", 2, max_batch_records=10) as log:
        before = log.commits
        await asyncio.gather(*(log.append(EVENTS, [(b"k", b"%d" % i)]) for i in range(100)))
        assert log.commits - before >= 10
        # one key, one partition: offsets follow the order the appends were made in
        records = await log.read(EVENTS, partition_for(b"k", 2), 0, 1000)
        assert [r.value for r in records] == [b"%d" % i for i in range(100)]


async def test_a_group_commit_keeps_every_append_whole_and_in_order_per_key(tmp_path: Path) -> None:
    # Concurrent appends share transactions and record batches: single records, multi-record
    # appends over several partitions, both topics, and offset commits in the same groups.
    async with SqliteLog(tmp_path / "log.db", 3) as log:
        def append(i: int):  # type: ignore[no-untyped-def]
            if i % 5 == 0:
                return log.append(EVENTS, [(b"u%d" % (i % 7), b"%d.%d" % (i, j)) for j in range(4)])
            topic = TRIGGERS if i % 11 == 0 else EVENTS
            return log.append(topic, [(b"u%d" % (i % 7), b"%d.0" % i)])

        before = log.commits
        await asyncio.gather(*(append(i) for i in range(150)))  # appends only: one INSERT per commit
        await asyncio.gather(  # appends and offset commits: the BEGIN ... COMMIT path
            *(append(i) for i in range(150, 300)),
            *(log.commit_offsets("g", {TopicPartition(EVENTS, i % 3): i}) for i in range(0, 300, 30)),
        )
        assert log.commits - before < 100
        records = await read_all(log, EVENTS) + await read_all(log, TRIGGERS)
        assert await log.committed_offset("g", TopicPartition(EVENTS, 0)) is not None
    expected = {(i, j) for i in range(300) for j in range(4 if i % 5 == 0 else 1)}
    got = [tuple(int(x) for x in r.value.split(b".")) for r in records]
    assert sorted(got) == sorted(expected)
    for topic in (EVENTS, TRIGGERS):
        for p in range(3):
            offsets = [r.offset for r in records if r.topic == topic and r.partition == p]
            assert offsets == list(range(len(offsets))), (topic, p)
    for key in {r.key for r in records}:  # per key: the order the appends were made in
        seq = [tuple(int(x) for x in r.value.split(b".")) for r in records if r.key == key and r.topic == EVENTS]
        assert seq == sorted(seq)


async def test_an_append_is_committed_when_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path, 4) as log:
        await log.append(EVENTS, [(b"user-1", b"durable")])
        # another connection (another process would see the same) finds it at once
        async with SqliteLog(path, 4) as other:
            rows = [(r.key, r.value) for p in range(4) for r in await other.read(EVENTS, p, 0)]
        assert rows == [(b"user-1", b"durable")]


async def test_reopen_keeps_records_offsets_partitions_and_group_offsets(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path, 3) as log:
        await log.append(EVENTS, [(b"u%d" % i, b"first-%d" % i) for i in range(30)])
        consumer = log.consumer("g", [EVENTS])
        async with consumer:
            await consumer.commit({TopicPartition(EVENTS, 1): 4})
        ends_before = await log.end_offsets(EVENTS)

    async with SqliteLog(path, 8) as log:  # the partition count is fixed at creation
        assert await log.partitions(EVENTS) == [0, 1, 2]
        assert await log.end_offsets(EVENTS) == ends_before
        await log.append(EVENTS, [(b"u%d" % i, b"second-%d" % i) for i in range(30)])
        records = await read_all(log, EVENTS)
        for p in range(3):
            offsets = [r.offset for r in records if r.partition == p]
            assert offsets == list(range(len(offsets)))
        for r in records:
            assert r.partition == partition_for(r.key, 3)
        consumer = log.consumer("g", [EVENTS])
        async with consumer:
            assert await consumer.committed(TopicPartition(EVENTS, 1)) == 4
            got = await poll_until(consumer, 60 - 4)
        assert not any(r.partition == 1 and r.offset < 4 for r in got)


def _age_records(path: Path, hours: float) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE record_batches SET ts = ts - ?", (int(hours * 3600 * 1000),))


async def test_retention_deletes_old_records_and_never_reuses_offsets(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path, 1, retention_hours=1) as log:
        await log.append(EVENTS, [(b"k", b"old-%d" % i) for i in range(5)])
        await log.append(TRIGGERS, [(b"k", b"trigger")])
    _age_records(path, 2)  # these records are now two hours old
    async with SqliteLog(path, 1, retention_hours=1) as log:
        await log.append(EVENTS, [(b"k", b"new")])

    async with SqliteLog(path, 1, retention_hours=1) as log:
        assert [(r.offset, r.value) for r in await log.read(EVENTS, 0, 0)] == [(5, b"new")]
        assert await log.read(TRIGGERS, 0, 0) == []
        assert (await log.end_offsets(EVENTS))[0] == 6

    _age_records(path, 2)
    async with SqliteLog(path, 1, retention_hours=1) as log:  # everything expired
        assert await log.read(EVENTS, 0, 0) == []
        assert (await log.end_offsets(EVENTS))[0] == 6, "the end must not move back after retention"
        await log.append(EVENTS, [(b"k", b"newer")])
        assert [(r.offset, r.value) for r in await log.read(EVENTS, 0, 0)] == [(6, b"newer")]


async def test_retention_zero_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path, 1, retention_hours=0) as log:
        await log.append(EVENTS, [(b"k", b"v")])
    _age_records(path, 24 * 365)
    async with SqliteLog(path, 1, retention_hours=0) as log:
        assert len(await log.read(EVENTS, 0, 0)) == 1


async def test_two_logs_on_one_file_never_share_an_offset(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path, 2) as a, SqliteLog(path, 2) as b:
        await asyncio.gather(
            *(log.append(EVENTS, [(b"k%d" % (i % 3), b"%s-%d" % (name, i))])
              for i in range(100) for name, log in ((b"a", a), (b"b", b)))
        )
        records = await read_all(a, EVENTS)
    assert len(records) == 200
    for p in (0, 1):
        offsets = [r.offset for r in records if r.partition == p]
        assert offsets == list(range(len(offsets)))


async def test_a_group_has_one_member_across_processes(tmp_path: Path) -> None:
    # Another process on the same data_dir (`tripwire sink` next to `tripwire run`) opens its own
    # log on the file; a second member of a group would read every partition again.
    path = tmp_path / "log.db"
    async with SqliteLog(path, 2) as a, SqliteLog(path, 2) as b:
        first = a.consumer("sink", [EVENTS])
        await first.start()
        with pytest.raises(GroupTaken, match="consumer group 'sink' is already reading the event log"):
            await b.consumer("sink", [EVENTS]).start()
        async with b.consumer("rules", [EVENTS]):  # another group: another reader, allowed
            pass
        await first.stop()
        async with b.consumer("sink", [EVENTS]) as second:  # stopping left the group
            assert second.assignment() == {TopicPartition(EVENTS, 0), TopicPartition(EVENTS, 1)}


async def test_stopped_log_refuses_and_stop_is_idempotent(tmp_path: Path) -> None:
    log = SqliteLog(tmp_path / "log.db", 2)
    with pytest.raises(LogClosed):
        await log.append(EVENTS, [(b"k", b"v")])
    await log.start()
    await log.start()
    assert await log.ready()
    await log.stop()
    await log.stop()
    assert not await log.ready()
    with pytest.raises(LogClosed):
        await log.append(EVENTS, [(b"k", b"v")])


async def test_consumer_poll_wakes_on_append(tmp_path: Path) -> None:
    async with SqliteLog(tmp_path / "log.db", 2) as log:
        consumer = log.consumer("g", [EVENTS])
        async with consumer:
            waiting = asyncio.create_task(consumer.poll(timeout_ms=10_000))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await log.append(EVENTS, [(b"k", b"hello")])
            got = await asyncio.wait_for(waiting, 10)
        assert [r.value for r in got] == [b"hello"]
        assert time.monotonic() - started < 10


async def test_reads_start_inside_a_record_batch_and_span_batches(tmp_path: Path) -> None:
    # each append is stored as one row per partition: reads must still see single records
    async with SqliteLog(tmp_path / "log.db", 1) as log:
        await log.append(EVENTS, [(b"k", b"a%d" % i) for i in range(5)])
        await log.append(EVENTS, [(None, b""), (b"", b"empty key"), (b"k" * 300, b"v" * 70_000)])
        await log.append(EVENTS, [(b"k", b"c%d" % i) for i in range(4)])
        everything = await log.read(EVENTS, 0, 0)
        assert [r.offset for r in everything] == list(range(12))
        assert [(r.key, r.value) for r in everything[5:8]] == [(None, b""), (b"", b"empty key"), (b"k" * 300, b"v" * 70_000)]
        got = await log.read(EVENTS, 0, 3, max_records=4)
        assert [(r.offset, r.value) for r in got] == [(3, b"a3"), (4, b"a4"), (5, b""), (6, b"empty key")]
        assert [r.offset for r in await log.read(EVENTS, 0, 9, max_records=1)] == [9]
        assert [r.value for r in await log.read(EVENTS, 0, 11)] == [b"c3"]
        assert await log.read(EVENTS, 0, 12) == []
        assert (await log.end_offsets(EVENTS)) == {0: 12}


async def test_a_huge_append_is_split_into_several_batches_with_the_same_offsets(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    big = [(b"k", b"%06d" % i + b"x" * 50_000) for i in range(60)]  # ~3 MB in one append
    async with SqliteLog(path, 1) as log:
        await log.append(EVENTS, big)
        assert [r.value for r in await log.read(EVENTS, 0, 0)] == [v for _, v in big]
        assert [r.offset for r in await log.read(EVENTS, 0, 30, max_records=3)] == [30, 31, 32]
    with sqlite3.connect(path) as conn:
        (rows,) = conn.execute("SELECT count(*) FROM record_batches").fetchone()
    assert rows >= 3
