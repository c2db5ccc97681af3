"""The embedded SQLite log: group commit, durability on return, retention, reopening."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from tripwire.config import ConfigError, from_dict
from tripwire.log import EVENTS, TRIGGERS, GroupTaken, LogClosed, TopicPartition, open_log
from tripwire.log.partition import partition_for
from tripwire.log.sqlite import SqliteLog
from tripwire.log.sqlite_batch import encode_batch
from tripwire.log.sqlite_retention import STEP_BYTES, expire_batches

from .helpers import poll_until, read_all, wait_for


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
    async with SqliteLog(path, 1, retention_s=3600) as log:
        await log.append(EVENTS, [(b"k", b"old-%d" % i) for i in range(5)])
        await log.append(TRIGGERS, [(b"k", b"trigger")])
    _age_records(path, 2)  # these records are now two hours old
    async with SqliteLog(path, 1, retention_s=3600) as log:
        await wait_for(lambda: _batches(path) == 0, 10, "the aged records deleted at start")
        await log.append(EVENTS, [(b"k", b"new")])
        assert [(r.offset, r.value) for r in await log.read(EVENTS, 0, 0)] == [(5, b"new")]
        assert await log.read(TRIGGERS, 0, 0) == []
        assert (await log.end_offsets(EVENTS))[0] == 6

    _age_records(path, 2)
    async with SqliteLog(path, 1, retention_s=3600) as log:  # everything expired
        await wait_for(lambda: _batches(path) == 0, 10, "the aged record deleted at start")
        assert await log.read(EVENTS, 0, 0) == []
        assert (await log.end_offsets(EVENTS))[0] == 6, "the end must not move back after retention"
        await log.append(EVENTS, [(b"k", b"newer")])
        assert [(r.offset, r.value) for r in await log.read(EVENTS, 0, 0)] == [(6, b"newer")]


def _batches(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM record_batches").fetchone()[0])


async def test_records_expire_while_the_log_runs(tmp_path: Path) -> None:
    # Retention ran only when the log started: a tripwire run of a month kept every event (issue 18).
    path = tmp_path / "log.db"
    async with SqliteLog(path, 2, retention_s=1) as log:
        await log.append(EVENTS, [(b"k%d" % i, b"old-%d" % i) for i in range(20)])
        ends = await log.end_offsets(EVENTS)
        await wait_for(lambda: _batches(path) == 0, 20, "records older than the retention deleted by the running log")
        assert [await log.read(EVENTS, p, 0) for p in (0, 1)] == [[], []]
        assert await log.end_offsets(EVENTS) == ends, "the end must not move back after retention"
        await log.append(EVENTS, [(b"k%d" % i, b"new-%d" % i) for i in range(20)])
        records = await read_all(log, EVENTS)
        assert sorted(r.value for r in records) == sorted(b"new-%d" % i for i in range(20))
        for r in records:  # offsets continue after the expired ones, never reused
            assert r.offset >= ends[r.partition]
        assert log.retention.expired_records == 20


async def test_a_retention_step_deletes_a_bounded_prefix_of_every_partition(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path, 2, retention_s=0) as log:
        for i in range(10):  # one record batch per append, alternating partitions
            await log.append(EVENTS, [(_key_for(i % 2), b"%d" % i)])
    with sqlite3.connect(path, isolation_level=None) as conn:
        # batches 1-7 and 9 expired; 8 did not (a clock step, another process): 9 must wait behind it
        conn.execute("UPDATE record_batches SET ts = 0 WHERE rowid <= 7 OR rowid = 9")
        cutoff = 1000  # after the aged batches, before the others
        conn.execute("BEGIN IMMEDIATE")
        assert expire_batches(conn, cutoff, limit=3) == (3, 3)
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        assert expire_batches(conn, cutoff) == (4, 4)  # up to batch 7, not 9
        conn.execute("COMMIT")
        assert [r for (r,) in conn.execute("SELECT rowid FROM record_batches ORDER BY rowid")] == [8, 9, 10]
    async with SqliteLog(path, 2, retention_s=0) as log:
        values = sorted(int(r.value) for r in await read_all(log, EVENTS))
        assert values == [7, 8, 9]
        assert await log.end_offsets(EVENTS) == {0: 5, 1: 5}


def _key_for(partition: int) -> bytes:
    return next(b"k%d" % i for i in range(100) if partition_for(b"k%d" % i, 2) == partition)


async def test_the_file_stops_growing_once_the_retention_window_is_full(tmp_path: Path) -> None:
    # Deleted pages are reused by later appends: rounds of the same volume, each expiring before
    # the next, keep the database at the size the first rounds gave it.
    path = tmp_path / "log.db"
    pages = []
    async with SqliteLog(path, 4, retention_s=1) as log:
        for round_ in range(6):
            for i in range(40):
                await log.append(EVENTS, [(b"k%d" % j, os.urandom(600)) for j in range(25)])
            await wait_for(lambda: _batches(path) == 0, 30, f"round {round_}'s records expired")
            with sqlite3.connect(path) as conn:
                pages.append(conn.execute("PRAGMA page_count").fetchone()[0])
    assert max(pages[2:]) <= pages[1] * 1.1, f"database pages per round: {pages}"


async def test_a_consumer_behind_retention_gets_what_is_left_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = _key_for(0)
    async with SqliteLog(tmp_path / "log.db", 1, retention_s=1) as log:
        consumer = log.consumer("sink", [EVENTS])
        async with consumer:
            await log.append(EVENTS, [(key, b"old-%d" % i) for i in range(5)])
            await wait_for(lambda: _batches(tmp_path / "log.db") == 0, 20, "the first records expired")
            await log.append(EVENTS, [(key, b"new-%d" % i) for i in range(3)])
            assert await consumer.lag(TopicPartition(EVENTS, 0)) == 3  # what is left, not what expired
            got = await poll_until(consumer, 3)
        assert [(r.offset, r.value) for r in got] == [(5 + i, b"new-%d" % i) for i in range(3)]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "expired" in r.getMessage()]
    assert "consumer group 'sink'" in warning and "records 0 to 4 expired" in warning, warning


@pytest.mark.parametrize(("log_keys", "seconds"), [
    ({"retention": "90m"}, 5400), ({"retention": "30s"}, 30), ({"retention": "7d"}, 7 * 86400),
    ({"retention": "0"}, 0), ({}, 7 * 86400),
])
def test_log_retention_takes_a_duration(tmp_path: Path, log_keys: dict, seconds: int) -> None:
    log = open_log(from_dict({"data_dir": str(tmp_path), "log": log_keys}))
    assert isinstance(log, SqliteLog)
    assert log.retention.retention_ms == seconds * 1000


@pytest.mark.parametrize(("log_keys", "message"), [
    ({"retention": "a week"}, "Config 'log.retention' has value 'a week'. Not a duration such as '7d'"),
    ({"retention": "7"}, "Config 'log.retention' has value '7'. Not a duration"),
    ({"retention_hours": 2}, "Unknown config key 'log.retention_hours'"),
])
def test_a_bad_retention_is_a_config_error_naming_the_key(log_keys: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict({"log": log_keys})
    assert message in str(info.value), str(info.value)


async def test_retention_zero_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path, 1, retention_s=0) as log:
        await log.append(EVENTS, [(b"k", b"v")])
    _age_records(path, 24 * 365)
    async with SqliteLog(path, 1, retention_s=0) as log:
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


async def test_members_of_a_group_share_its_partitions_across_processes(tmp_path: Path) -> None:
    # Two processes on one data_dir (two engines of `tripwire run --engines 2`, say) open their own log on
    # the file: members of one group split the partitions between them, as on Kafka, and never read one
    # partition both; when one leaves, the other takes everything over.
    path = tmp_path / "log.db"
    every = {TopicPartition(EVENTS, p) for p in range(4)}
    async with SqliteLog(path, 4) as a, SqliteLog(path, 4) as b:
        first = a.consumer("engine", [EVENTS])
        await first.start()
        assert first.assignment() == every
        second = b.consumer("engine", [EVENTS])
        await second.start()  # the first still holds every partition: the second waits for its share
        assert second.assignment() == set()
        for _ in range(60):  # each looks at the group once a second while it polls
            await asyncio.gather(first.poll(50), second.poll(50))
            if len(first.assignment()) == len(second.assignment()) == 2:
                break
        assert first.assignment() | second.assignment() == every and not first.assignment() & second.assignment()
        async with b.consumer("rules", [EVENTS]) as other:  # another group: another reader of everything
            assert other.assignment() == every
        await first.stop()
        for _ in range(60):
            await second.poll(50)
            if second.assignment() == every:
                break
        assert second.assignment() == every
        await second.stop()


async def test_an_exclusive_member_is_its_groups_only_one(tmp_path: Path) -> None:
    # The webhook dispatcher's deliveries live in one store: a second dispatcher on the data_dir is refused.
    path = tmp_path / "log.db"
    async with SqliteLog(path, 2) as a, SqliteLog(path, 2) as b:
        first = a.consumer("webhooks", [EVENTS], exclusive=True)
        await first.start()
        with pytest.raises(GroupTaken, match="consumer group 'webhooks' is already reading the event log"):
            await b.consumer("webhooks", [EVENTS], exclusive=True).start()
        await first.stop()
        async with b.consumer("webhooks", [EVENTS], exclusive=True) as second:  # stopping left the group
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
            waiting = asyncio.create_task(consumer.poll(timeout_ms=60_000))
            await asyncio.sleep(0.05)  # lets the poll start waiting (not a wait for a result)
            await log.append(EVENTS, [(b"k", b"hello")])
            # woken by the append: a poll left to its timeout would outlast this bound
            got = await asyncio.wait_for(waiting, 30)
        assert [r.value for r in got] == [b"hello"]


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


def _event(i: int) -> tuple[bytes, bytes]:
    """A collector-shaped event (the repetitive JSON compression is for)."""
    visitor = b"%08x-7b3d-4e8f-9a0b-%012x" % (i % 97, i % 89)
    sku = (i * 7919) % 100_000
    value = (
        b'{"type":"track","event":"Product Viewed","messageId":"m-%08d","anonymousId":"%s","timestamp":'
        b'"2026-01-01T12:%02d:%02d.%03dZ","properties":{"sku":"SKU-%d","price":%d.99,"quantity":1},"context":'
        b'{"library":{"name":"tripwire.js","version":"0.1.0"},"page":{"path":"/p/%d","title":"Product %d",'
        b'"url":"https://shop.example/p/%d"},"locale":"en-US","userAgent":"Mozilla/5.0 (X11; Linux x86_64) '
        b'AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36","ip":"203.0.113.0"},'
        b'"receivedAt":"2026-01-01T12:00:00.000Z","source":"web"}'
    ) % (i, visitor, i // 60 % 60, i % 60, i % 1000, sku, i % 200, sku, sku, sku)
    return visitor, value


def _stored(path: Path, topic: str, where: str = "1") -> tuple[int, int]:
    """(records, bytes of the stored blobs) of a topic's batches."""
    with sqlite3.connect(path) as conn:
        n, size = conn.execute(f"SELECT sum(count), sum(length(data)) FROM record_batches WHERE topic = ? AND {where}",
                               (topic,)).fetchone()
    return int(n or 0), int(size or 0)


async def test_batches_are_stored_compressed_with_a_dictionary_per_topic(tmp_path: Path) -> None:
    # log.db grew by ~836 bytes per event (issue 18): records went to disk as appended.
    path = tmp_path / "log.db"
    events = [_event(i) for i in range(1200)]
    raw = sum(len(k) + len(v) for k, v in events) / len(events)
    async with SqliteLog(path, 4, retention_s=0) as log:
        for i in range(0, 1000, 50):  # group commits of a few records per partition
            await asyncio.gather(*(log.append(EVENTS, [e]) for e in events[i : i + 50]))
        n, size = _stored(path, EVENTS)
        assert n == 1000 and size / n < raw / 3, f"{size / n:.0f} bytes per record stored, {raw:.0f} appended"

        def trained() -> bool:
            with sqlite3.connect(path) as conn:
                return conn.execute("SELECT count(*) FROM zstd_dictionaries WHERE topic = ?", (EVENTS,)).fetchone()[0] == 1
        await wait_for(trained, 30, "a compression dictionary for the events topic")
        for e in events[1000:]:  # one record per commit: what a dictionary is for
            await log.append(EVENTS, [e])
        n, size = _stored(path, EVENTS, "count = 1 AND rowid > (SELECT max(rowid) - 200 FROM record_batches)")
        assert n == 200 and size / n < raw / 4, f"{size / n:.0f} bytes per single record stored, {raw:.0f} appended"
        assert sorted(r.value for r in await read_all(log, EVENTS)) == sorted(v for _, v in events)
    async with SqliteLog(path, 4, retention_s=0) as log:  # reopened: the dictionary comes from the file
        await log.append(EVENTS, [_event(5000)])
        assert len(await read_all(log, EVENTS)) == 1201


async def test_a_log_reads_batches_an_older_version_or_another_process_wrote(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path, 1, retention_s=0):
        pass
    with sqlite3.connect(path) as conn:  # a batch as written before compression: the framing itself
        conn.execute("INSERT INTO record_batches VALUES ('events', 0, 1, 2, 0, ?)",
                     (encode_batch([(b"k", b"older-0"), (None, b"older-1")]),))
    events = [_event(i) for i in range(1100)]
    async with SqliteLog(path, 1, retention_s=0) as reader, SqliteLog(path, 1, retention_s=0) as writer:
        for i in range(0, 1100, 100):
            await asyncio.gather(*(writer.append(EVENTS, [e]) for e in events[i : i + 100]))
        await wait_for(lambda: _stored(path, EVENTS)[0] == 1102, 10, "every append")

        def trained() -> bool:
            with sqlite3.connect(path) as conn:
                return conn.execute("SELECT count(*) FROM zstd_dictionaries").fetchone()[0] == 1
        await wait_for(trained, 30, "a compression dictionary")
        await writer.append(EVENTS, [(b"k", b"after the dictionary")])
        got = [(r.offset, r.key, r.value) for r in await read_all(reader, EVENTS)]  # learns the writer's dictionary
    assert got[:2] == [(0, b"k", b"older-0"), (1, None, b"older-1")]
    assert [(k, v) for _, k, v in got[2:]] == events + [(b"k", b"after the dictionary")]
    assert [o for o, _, _ in got] == list(range(1103))


async def test_a_retention_step_stops_at_about_step_bytes(tmp_path: Path) -> None:
    # A huge append is stored as 1 MB batches: 256 of them would hold the write lock for a long while.
    path = tmp_path / "log.db"
    async with SqliteLog(path, 1, retention_s=0) as log:
        await log.append(EVENTS, [(b"k", os.urandom(200_000)) for _ in range(60)])  # ~12 MB, incompressible
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("UPDATE record_batches SET ts = 0")
        total = _batches(path)
        conn.execute("BEGIN IMMEDIATE")
        batches, _ = expire_batches(conn, 1000)
        conn.execute("COMMIT")
        (left,) = conn.execute("SELECT sum(length(data)) FROM record_batches").fetchone()
    assert 0 < batches < total and left > 0, (batches, total)
    assert batches * (1 << 20) <= STEP_BYTES + (1 << 20)
