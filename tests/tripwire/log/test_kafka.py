"""The Kafka backend against a real tansu broker: topics, produce/consume/commit, consumer groups."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.fixtures.tansu import TansuBroker
from tripwire.config import from_dict
from tripwire.log import EVENTS, INVALID, TRIGGERS, Consumer, LogClosed, LogError, TopicPartition, open_log
from tripwire.log.kafka import MAX_RECORD_BYTES, KafkaLog
from tripwire.log.partition import partition_for

from .helpers import poll_until, read_all, wait_for


async def test_open_log_builds_kafka_from_config_and_creates_prefixed_topics(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    config = from_dict(
        {
            "data_dir": str(tmp_path / "data"),
            "log": {"backend": "kafka", "kafka_bootstrap": tansu.bootstrap, "topic_prefix": "shop", "partitions": 3},
        }
    )
    log = open_log(config)
    assert isinstance(log, KafkaLog)
    async with log:
        assert await log.ready()
        assert log.spill_depth() == 0
        admin = AIOKafkaAdminClient(bootstrap_servers=tansu.bootstrap)
        await admin.start()
        try:
            assert {"shop.events", "shop.invalid", "shop.triggers"} <= set(await admin.list_topics())
            described = await admin.describe_topics(["shop.events"])
        finally:
            await admin.close()
        assert len(described[0]["partitions"]) == 3
        for name in (EVENTS, INVALID, TRIGGERS):
            assert await log.partitions(name) == [0, 1, 2]
        await log.append(INVALID, [(b"anon-1", b'{"reason": "x"}')])
        assert [r.value for r in await read_all(log, INVALID)] == [b'{"reason": "x"}']
    # spill lives under the data dir
    assert (tmp_path / "data" / "spill").is_dir()


async def test_existing_topics_keep_their_partition_count(tansu: TansuBroker, tmp_path: Path) -> None:
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "a", partitions=2):
        pass
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "b", partitions=5) as log:
        assert await log.partitions(EVENTS) == [0, 1]
        await log.append(EVENTS, [(b"k%d" % i, b"v") for i in range(20)])
        for r in await read_all(log, EVENTS):
            assert r.partition == partition_for(r.key, 2)


async def test_produce_consume_commit_many_concurrent_appends(tansu: TansuBroker, tmp_path: Path) -> None:
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill") as log:
        await asyncio.gather(
            *(log.append(EVENTS, [(b"user-%d" % (i % 9), b"%d" % i)]) for i in range(300))
        )
        # group commit: concurrent appends shared produce round trips
        assert log.produce_batches < 300
        consumer = log.consumer("readers", [EVENTS])
        async with consumer:
            got = await poll_until(consumer, 300)
            assert sorted(int(r.value) for r in got) == list(range(300))
            positions = {}
            for r in got:
                positions[TopicPartition(r.topic, r.partition)] = r.offset + 1
            await consumer.commit(positions)
            for tp, offset in positions.items():
                assert await consumer.committed(tp) == offset
            assert await consumer.poll(timeout_ms=300) == []


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, frozenset[TopicPartition]]] = []

    async def on_assigned(self, consumer: Consumer, partitions: set[TopicPartition]) -> None:
        self.events.append(("assigned", frozenset(partitions)))

    async def on_revoked(self, consumer: Consumer, partitions: set[TopicPartition]) -> None:
        self.events.append(("revoked", frozenset(partitions)))


async def _pump(consumer: Consumer, seen: list[bytes], stop: asyncio.Event) -> None:
    while not stop.is_set():
        seen.extend(r.value for r in await consumer.poll(timeout_ms=100))


async def test_two_members_split_partitions_and_rebalance_when_one_leaves(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    all_tps = {TopicPartition(EVENTS, p) for p in range(4)}
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", partitions=4) as log:
        await log.append(EVENTS, [(b"user-%d" % i, b"before-%d" % i) for i in range(40)])
        one, two = Recorder(), Recorder()
        a = log.consumer("scale", [EVENTS], one)
        b = log.consumer("scale", [EVENTS], two)
        seen_a: list[bytes] = []
        seen_b: list[bytes] = []
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        await a.start()
        await b.start()
        pumps = [
            asyncio.create_task(_pump(a, seen_a, stop_a)),
            asyncio.create_task(_pump(b, seen_b, stop_b)),
        ]
        try:
            await wait_for(
                lambda: len(a.assignment()) == 2 and len(b.assignment()) == 2, 40, "partitions split 2/2"
            )
            assert a.assignment() | b.assignment() == all_tps
            assert not a.assignment() & b.assignment()
            await wait_for(lambda: len(seen_a) + len(seen_b) >= 40, 30, "both members read the backlog")
            assert sorted(seen_a + seen_b) == sorted(b"before-%d" % i for i in range(40))
            assert seen_a and seen_b

            # b leaves: a takes every partition and reads what is appended afterwards
            stop_b.set()
            await pumps[1]
            await b.stop()
            assert two.events[-1][0] == "revoked"
            await wait_for(lambda: a.assignment() == all_tps, 40, "the remaining member owning all partitions")
            await log.append(EVENTS, [(b"user-%d" % i, b"after-%d" % i) for i in range(40)])
            await wait_for(lambda: sum(v.startswith(b"after-") for v in seen_a) >= 40, 30, "a reading every partition")
            assert one.events[-1] == ("assigned", frozenset(all_tps))
            assert any(kind == "revoked" for kind, _ in one.events)
        finally:
            stop_a.set()
            stop_b.set()
            await asyncio.gather(*pumps, return_exceptions=True)
            await a.stop()
            await b.stop()


async def test_a_record_kafka_would_refuse_is_refused_up_front(tansu: TansuBroker, tmp_path: Path) -> None:
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill") as log:
        with pytest.raises(LogError, match="over the Kafka log's limit"):
            await log.append(EVENTS, [(b"user-1", b"x" * (MAX_RECORD_BYTES + 1))])
        assert log.spill_depth() == 0
        await log.append(EVENTS, [(b"user-1", b"x" * 100_000)])
        assert await log.ready()
        assert [len(r.value) for r in await read_all(log, EVENTS)] == [100_000]


async def test_lifecycle_is_safe_to_repeat_and_refuses_after_stop(tansu: TansuBroker, tmp_path: Path) -> None:
    log = KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill")
    with pytest.raises(LogClosed):
        await log.append(EVENTS, [(b"k", b"v")])
    await log.start()
    await log.start()
    consumer = log.consumer("twice", [EVENTS])
    await consumer.start()
    await consumer.start()
    await consumer.stop()
    await consumer.stop()
    with pytest.raises(LogClosed):
        await consumer.poll(timeout_ms=10)
    await log.append(EVENTS, [(b"k", b"v")])
    await log.stop()
    await log.stop()
    assert not await log.ready()
    with pytest.raises(LogClosed):
        await log.append(EVENTS, [(b"k", b"v")])
    # the spill slot was released: another log can take the same directory
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill") as again:
        assert again.spill.dir == tmp_path / "spill" / "0"


class FailsFirst:
    """A listener whose first assignment fails (its checkpoint store is down), then resumes every
    partition where its own state says (here: after what was appended before it started)."""

    def __init__(self, resume: dict[int, int]) -> None:
        self.resume = resume
        self.calls = 0
        self.ready: set[TopicPartition] = set()

    async def on_assigned(self, consumer: Consumer, partitions: set[TopicPartition]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise OSError("checkpoint store unreachable")
        for tp in partitions:
            consumer.seek(tp, self.resume[tp.partition])
        self.ready |= partitions

    async def on_revoked(self, consumer: Consumer, partitions: set[TopicPartition]) -> None:
        self.ready -= partitions


async def test_a_listener_that_fails_on_assignment_is_asked_again_before_its_partitions_are_read(
    tansu: TansuBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # aiokafka logs a failing listener and goes on fetching from the committed offset (here the
    # start): an engine whose checkpoint store was down matched old events with empty state.
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", partitions=4) as log:
        await log.append(EVENTS, [(b"user-%d" % i, b"old-%d" % i) for i in range(20)])
        listener = FailsFirst(await log.end_offsets(EVENTS))
        await log.append(EVENTS, [(b"user-%d" % i, b"new-%d" % i) for i in range(10)])
        consumer = log.consumer("fails-first", [EVENTS], listener)
        async with consumer:
            got = await poll_until(consumer, 10, 40)
            owned = sorted(consumer.assignment())

            async def drained() -> bool:  # nothing after what poll returned: no old record can follow
                got.extend(await consumer.poll(timeout_ms=100))
                return all(lag == 0 for lag in (await consumer.lags(owned)).values())
            await wait_for(drained, 30, "the consumer's lag to reach 0")
        assert sorted(r.value for r in got) == sorted(b"new-%d" % i for i in range(10))
        assert listener.calls >= 2
        assert "checkpoint store unreachable" in caplog.text


async def test_a_consumer_leaves_in_bounded_time_when_the_broker_hangs(tansu: TansuBroker, tmp_path: Path) -> None:
    # SIGTERM of an engine, sink or dispatcher while the broker hung took 1-2 minutes (aiokafka
    # waits out its coordinator and LeaveGroup requests): past any container's stop grace period.
    # The group forgets a silent member after the session timeout anyway.
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", request_timeout_ms=2000) as log:
        await log.append(EVENTS, [(b"user-%d" % i, b"%d" % i) for i in range(8)])
        consumer = log.consumer("hung", [EVENTS], Recorder())
        await consumer.start()
        await poll_until(consumer, 8, 40)
        tansu.pause()
        try:
            await asyncio.wait_for(consumer.stop(), 30)
        finally:
            tansu.resume()
        with pytest.raises(LogClosed):
            await consumer.poll(timeout_ms=10)


@pytest.mark.parametrize("value", ["kafka://127.0.0.1:9092", "127.0.0.1:9092,kafka://b:9092", "", " "])
def test_a_bootstrap_written_as_a_url_or_left_empty_is_a_config_error_naming_the_key(tmp_path: Path, value: str) -> None:
    # TRIPWIRE_LOG__KAFKA_BOOTSTRAP=kafka://host:port (the --log form) reached a broker that was there
    # and reported 'no broker answered'; the collector spilled for ever and answered 200.
    from tripwire.config import ConfigError, load_config

    config = load_config(None, environ={"TRIPWIRE_DATA_DIR": str(tmp_path), "TRIPWIRE_LOG__BACKEND": "kafka",
                                        "TRIPWIRE_LOG__KAFKA_BOOTSTRAP": value})
    with pytest.raises(ConfigError) as info:
        open_log(config)
    assert "'log.kafka_bootstrap'" in str(info.value)
    assert config.locate(str(info.value)).endswith("(set by TRIPWIRE_LOG__KAFKA_BOOTSTRAP)")
    assert not (tmp_path / "spill").exists()


@pytest.mark.parametrize("key", ["kafka_epochs", "kafka_retain_s", "kafka_retain_max_bytes"])
def test_the_removed_epoch_keys_are_a_config_error_naming_the_key(tmp_path: Path, key: str) -> None:
    # The epoch markers and the retain journal recovered from a broker that came back empty (tansu's
    # memory storage); they are gone, and a config that still asks for them must say so, not start quietly.
    from tripwire.config import ConfigError, load_config

    path = tmp_path / "tripwire.toml"
    path.write_text(f'[log]\nbackend = "kafka"\n{key} = true\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert f"Config 'log.{key}' was removed" in message, message
    assert "survives a restart" in message and message.endswith(f"(in {path})"), message
