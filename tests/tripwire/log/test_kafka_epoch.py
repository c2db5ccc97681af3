"""A broker that comes back empty (tansu's memory storage): producers replay, consumers follow.

With ``epochs`` on (``log.kafka_epochs``); off, the log uses Kafka's offsets as they are.

The log keeps what Kafka acknowledged for ``retain_s``; when the broker loses
its topics, the first producer that notices writes a new epoch marker and
produces its retained records again, and consumers move on to the new epoch
with offsets that keep growing (see :mod:`tripwire.log.epoch`).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaTP

from tests.fixtures.tansu import TansuBroker
from tripwire.log import EVENTS, Record, TopicPartition
from tripwire.log.epoch import OFFSET_BITS
from tripwire.log.kafka import KafkaLog

from .helpers import poll_until, read_all, wait_assigned, wait_for
from .test_kafka_spill import _SPILLING_CHILD, FAST, assert_all_acked_in_order

EPOCHS_CHILD = _SPILLING_CHILD.replace("reconnect_backoff_ms=100)", "reconnect_backoff_ms=100, epochs=True)")
assert EPOCHS_CHILD != _SPILLING_CHILD


async def test_offsets_start_at_zero_after_the_epoch_marker(tansu: TansuBroker, tmp_path: Path) -> None:
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", partitions=2, epochs=True, **FAST) as log:
        await log.append(EVENTS, [(b"k", b"a"), (b"k", b"b")])
        records = await read_all(log, EVENTS)
        assert [(r.offset, r.value) for r in records] == [(0, b"a"), (1, b"b")]
        assert sum((await log.end_offsets(EVENTS)).values()) == 2


async def test_broker_restarted_empty_under_load_gets_every_acknowledged_record_again(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    acked: dict[bytes, list[bytes]] = {}
    consumed: list[Record] = []
    stop = asyncio.Event()

    async def client(key: bytes) -> None:
        seq = 0
        while not stop.is_set():
            value = b"%s:%d" % (key, seq)
            await log.append(EVENTS, [(key, value)])  # must never fail here
            acked.setdefault(key, []).append(value)
            seq += 1
            await asyncio.sleep(0.005)

    def total() -> int:
        return sum(len(v) for v in acked.values())

    async def consume() -> None:
        while not stop.is_set() or len({r.value for r in consumed}) < total():
            consumed.extend(await consumer.poll(timeout_ms=200))

    log = KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", partitions=4, epochs=True, **FAST)
    async with log:
        consumer = log.consumer("readers", [EVENTS])
        await consumer.start()
        await wait_assigned(consumer)
        reader = asyncio.create_task(consume())
        clients = [asyncio.create_task(client(b"user-%d" % i)) for i in range(8)]
        try:
            await wait_for(lambda: len(consumed) >= 200, 30, "records consumed before the restart")
            before = total()
            await asyncio.to_thread(tansu.kill)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(tansu.restart)  # memory storage: every topic, record and offset is gone
            await wait_for(lambda: log.epoch_resets > 0, 30, "the log noticing the lost topics")
            await wait_for(log.ready, 60, "ready again")
            await wait_for(lambda: total() >= before + 300, 30, "appends after the restart")
        finally:
            stop.set()
            await asyncio.gather(*clients)
        await asyncio.wait_for(reader, 60)
        records = await read_all(log, EVENTS)
        await consumer.stop()
    # Everything acknowledged before the restart is in the new epoch again, in order per key.
    assert_all_acked_in_order(records, acked)
    assert all(r.offset >> OFFSET_BITS >= 1 for r in records)
    # The consumer saw every record; per partition its offsets only grew, across the epochs.
    assert {r.value for r in consumed} == {v for values in acked.values() for v in values}
    for p in range(4):
        offsets = [r.offset for r in consumed if r.partition == p]
        assert offsets == sorted(offsets) and len(offsets) == len(set(offsets)), f"partition {p} went backwards"
    assert any(r.offset >> OFFSET_BITS == 0 for r in consumed)


async def test_an_idle_producer_is_not_fooled_by_a_restarted_broker(tansu: TansuBroker, tmp_path: Path) -> None:
    """No request in flight during the outage: the next acknowledgement comes from an empty topic."""
    log = KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", partitions=2, epochs=True, **FAST)
    async with log:
        await log.append(EVENTS, [(b"k", b"%d" % i) for i in range(20)])
        await asyncio.to_thread(tansu.kill)
        await asyncio.to_thread(tansu.restart)
        await log.append(EVENTS, [(b"k", b"after")])
        await wait_for(lambda: log.epoch_resets > 0, 30, "the log noticing the lost topic")
        await wait_for(log.ready, 60, "ready again")
        values = [r.value for r in await read_all(log, EVENTS)]
    assert values[:20] == [b"%d" % i for i in range(20)]
    assert b"after" in values


async def test_a_new_run_numbers_the_next_epoch_after_the_one_it_saw(tansu: TansuBroker, tmp_path: Path) -> None:
    """Stopped cleanly, broker lost everything: the next run (same data dir) writes epoch 1 and replays."""
    spill = tmp_path / "spill"
    async with KafkaLog(tansu.bootstrap, spill_dir=spill, partitions=1, epochs=True, **FAST) as log:
        await log.append(EVENTS, [(b"k", b"first")])
        (first,) = await read_all(log, EVENTS)
    await asyncio.to_thread(tansu.kill)
    await asyncio.to_thread(tansu.restart)
    async with KafkaLog(tansu.bootstrap, spill_dir=spill, partitions=1, epochs=True, **FAST) as log:  # same data dir
        await wait_for(log.ready, 30, "the replay of what the first run had written")
        await log.append(EVENTS, [(b"k", b"second")])
        records = await read_all(log, EVENTS)
        consumer = log.consumer("late", [EVENTS])
        async with consumer:
            await wait_assigned(consumer)
            consumer.seek(TopicPartition(EVENTS, 0), first.offset + 1)  # a position from the lost epoch
            got = await consumer.poll(timeout_ms=5000)
    assert first.offset == 0
    assert [(r.offset, r.value) for r in records] == [(1 << OFFSET_BITS, b"first"), ((1 << OFFSET_BITS) + 1, b"second")]
    assert [r.value for r in got] == [b"first", b"second"]  # the new epoch from its start


async def test_a_process_killed_while_the_broker_is_away_still_replays_what_kafka_had_acknowledged(
    tmp_path: Path,
) -> None:
    """Acknowledged by Kafka, broker lost it, producer kill -9'd: the next run writes it again."""
    broker = TansuBroker(tmp_path / "tansu")
    broker.start()
    spill_dir = tmp_path / "spill"
    repo = Path(__file__).resolve().parents[3]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", EPOCHS_CHILD, broker.bootstrap, str(spill_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=repo,
    )
    acked: list[int] = []
    try:
        assert child.stdout is not None

        async def read_acks(count: int) -> None:
            async with asyncio.timeout(60):
                while len(acked) < count:
                    line = await child.stdout.readline()  # type: ignore[union-attr]
                    assert line, "the child exited early"
                    acked.append(int(line))

        await read_acks(300)  # acknowledged by Kafka
        await asyncio.to_thread(broker.kill)  # memory storage: gone
        await read_acks(len(acked) + 100)  # acknowledged from the spill
    finally:
        child.kill()
        await child.wait()
    try:
        await asyncio.to_thread(broker.start)
        async with KafkaLog(broker.bootstrap, spill_dir=spill_dir, epochs=True, **FAST) as log:
            await wait_for(log.ready, 60, "the replay of kept and spilled records")
            records = await read_all(log, EVENTS)
    finally:
        broker.close()
    expected = {b"user-%d" % k: [b"%d" % i for i in acked if i % 7 == k] for k in range(7)}
    assert_all_acked_in_order(records, expected)


async def test_without_epochs_the_log_writes_no_marker_and_uses_kafkas_offsets(tansu: TansuBroker, tmp_path: Path) -> None:
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", partitions=1, **FAST) as log:
        await log.append(EVENTS, [(b"k", b"a"), (b"k", b"b")])
        assert [(r.offset, r.value) for r in await read_all(log, EVENTS)] == [(0, b"a"), (1, b"b")]
        raw = AIOKafkaConsumer(bootstrap_servers=tansu.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
        await raw.start()
        try:
            raw.assign([KafkaTP(log.topic(EVENTS), 0)])
            got = await raw.getmany(timeout_ms=5000)
        finally:
            await raw.stop()
    assert [(m.offset, m.value, tuple(m.headers)) for ms in got.values() for m in ms] == [(0, b"a", ()), (1, b"b", ())]
    assert not (tmp_path / "spill" / "epochs.json").exists()


async def test_a_consumer_follows_a_new_epoch_that_is_already_longer_than_what_it_had_read(
    tansu: TansuBroker, tmp_path: Path
) -> None:
    """No shrinking high watermark to notice: the replay and new appends outgrow the old position."""
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", partitions=1, epochs=True, **FAST) as log:
        consumer = log.consumer("readers", [EVENTS])
        async with consumer:
            await wait_assigned(consumer)
            await log.append(EVENTS, [(b"k", b"old-%d" % i) for i in range(5)])
            before = await poll_until(consumer, 5)
            await asyncio.to_thread(tansu.kill)
            await asyncio.to_thread(tansu.restart)
            # (Appending before the log noticed would hit a tansu bug: a batch produced into the
            # topic it re-creates on the fly gets offsets that later appends use again.)
            await wait_for(lambda: log.epoch_resets > 0, 30, "the log noticing the lost topic")
            await wait_for(log.ready, 60, "the replay")
            await log.append(EVENTS, [(b"k", b"new-%d" % i) for i in range(30)])
            after: list[Record] = []
            while len([r for r in after if r.offset >> OFFSET_BITS]) < 35:
                after += await poll_until(consumer, 1, timeout_s=60)
    assert [r.value for r in before] == [b"old-%d" % i for i in range(5)]
    # The new epoch: what was lost first, then the appends made after the restart, in order.
    new_epoch = [r.value for r in after if r.offset >> OFFSET_BITS]
    assert new_epoch == [b"old-%d" % i for i in range(5)] + [b"new-%d" % i for i in range(30)]
    # Records the restarted broker took before the new marker was written may have been read
    # under the old epoch's numbers: only ever as copies of what the new epoch brings again.
    assert {r.value for r in after if not r.offset >> OFFSET_BITS} <= set(new_epoch)
