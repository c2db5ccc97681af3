"""The Kafka backend when the broker goes away: spill, forward, refuse when full, replay after restart."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.fixtures.tansu import TansuBroker
from tripwire.log import EVENTS, LogUnavailable, Record
from tripwire.log.kafka import KafkaLog

from .helpers import read_all, wait_for

FAST = {"request_timeout_ms": 2000, "reconnect_backoff_ms": 100}


def per_key(records: list[Record]) -> dict[bytes, list[bytes]]:
    """Values per key in partition order, duplicates (at-least-once replays) dropped after the first."""
    out: dict[bytes, list[bytes]] = {}
    seen: set[bytes] = set()
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        if r.value not in seen:
            seen.add(r.value)
            assert r.key is not None
            out.setdefault(r.key, []).append(r.value)
    return out


def assert_all_acked_in_order(records: list[Record], acked: dict[bytes, list[bytes]]) -> None:
    found = per_key(records)
    for key, values in acked.items():
        assert found.get(key, [])[: len(values)] == values, f"key {key!r}: acknowledged records missing or out of order"


async def test_broker_killed_under_load_then_restarted_loses_nothing(
    tansu_durable: TansuBroker, tmp_path: Path
) -> None:
    broker = tansu_durable
    acked: dict[bytes, list[bytes]] = {}
    stop = asyncio.Event()

    async def client(key: bytes, batch: int) -> None:
        seq = 0
        while not stop.is_set():
            values = [b"%s:%d" % (key, seq + i) for i in range(batch)]
            await log.append(EVENTS, [(key, v) for v in values])  # must never fail here
            acked.setdefault(key, []).extend(values)
            seq += batch
            await asyncio.sleep(0.002)  # paces the client (not a wait)

    def total() -> int:
        return sum(len(v) for v in acked.values())

    log = KafkaLog(broker.bootstrap, spill_dir=tmp_path / "spill", **FAST)
    async with log:
        clients = [asyncio.create_task(client(b"user-%d" % i, 1 + i % 3)) for i in range(12)]
        try:
            await wait_for(lambda: total() >= 300, 30, "appends before the kill")
            await asyncio.to_thread(broker.kill)
            at_kill = total()
            await wait_for(lambda: log.spill_depth() > 0, 30, "appends going to the spill")
            await wait_for(lambda: total() >= at_kill + 500, 30, "appends acknowledged from the spill")
            assert not await log.ready()
            await asyncio.to_thread(broker.restart)
            await wait_for(lambda: log.spill_depth() == 0, 60, "the spill forwarded to Kafka")
            await wait_for(log.ready, 30, "ready again")
            after = total()
            await wait_for(lambda: total() >= after + 200, 30, "direct appends after recovery")
        finally:
            stop.set()
            await asyncio.gather(*clients)
        records = await read_all(log, EVENTS)
    assert_all_acked_in_order(records, acked)
    assert len({r.value for r in records}) == total()


async def test_full_spill_refuses_with_retry_after_then_drains(tmp_path: Path) -> None:
    broker = TansuBroker(tmp_path / "tansu")  # not started yet: nothing listens on its port
    try:
        log = KafkaLog(
            broker.bootstrap, spill_dir=tmp_path / "spill", spill_max_bytes=4000, spill_retry_after_s=3, **FAST
        )
        async with log:
            assert not await log.ready()
            acked = []
            with pytest.raises(LogUnavailable) as info:
                for i in range(1000):
                    await log.append(EVENTS, [(b"user-%d" % (i % 4), b"event-%d" % i)])
                    acked.append(b"event-%d" % i)
            assert info.value.retry_after_s == 3
            assert len(acked) > 10  # it buffered (4000 bytes hold dozens of these) before refusing
            assert log.spill_depth() == len(acked)
            with pytest.raises(LogUnavailable):  # still full, still refused
                await log.append(EVENTS, [(b"user-0", b"refused")])

            await asyncio.to_thread(broker.start)
            await wait_for(lambda: log.spill_depth() == 0, 60, "the spill forwarded")
            await wait_for(log.ready, 30, "ready")
            await log.append(EVENTS, [(b"user-0", b"after")])
            records = await read_all(log, EVENTS)
        values = [r.value for r in records]
        assert set(values) == set(acked) | {b"after"}
        assert b"refused" not in values
    finally:
        broker.close()


async def test_restart_with_a_non_empty_spill_replays_it(tmp_path: Path) -> None:
    broker = TansuBroker(tmp_path / "tansu")
    spill_dir = tmp_path / "spill"
    try:
        first = KafkaLog(broker.bootstrap, spill_dir=spill_dir, **FAST)
        async with first:
            for i in range(30):
                await first.append(EVENTS, [(b"user-%d" % (i % 5), b"%d" % i)])
            assert first.spill_depth() == 30
        # the process is gone; its acknowledged records are on disk
        assert list(spill_dir.glob("*/*.spill"))

        await asyncio.to_thread(broker.start)
        second = KafkaLog(broker.bootstrap, spill_dir=spill_dir, **FAST)
        async with second:
            assert second.spill_depth() == 30
            await wait_for(lambda: second.spill_depth() == 0, 60, "replay of the previous run's spill")
            await wait_for(second.ready, 30, "ready")
            records = await read_all(second, EVENTS)
        assert_all_acked_in_order(records, {b"user-%d" % k: [b"%d" % i for i in range(k, 30, 5)] for k in range(5)})
        assert not list(spill_dir.glob("*/*.spill"))
    finally:
        broker.close()


async def test_a_dead_forwarder_fails_appends_instead_of_acknowledging(tmp_path: Path) -> None:
    broker = TansuBroker(tmp_path / "tansu")
    spill_dir = tmp_path / "spill"
    try:
        log = KafkaLog(broker.bootstrap, spill_dir=spill_dir, **FAST)
        async with log:
            await log.append(EVENTS, [(b"user-1", b"x" * 100) for _ in range(5)])
            (segment,) = spill_dir.glob("*/*.spill")
            data = bytearray(segment.read_bytes())
            data[len(data) // 2] ^= 0xFF  # the disk corrupts a record
            segment.write_bytes(bytes(data))
            await asyncio.to_thread(broker.start)  # the forwarder reads the segment and dies
            errors: list[LogUnavailable] = []

            async def refused() -> bool:
                try:
                    await log.append(EVENTS, [(b"user-2", b"y")])
                except LogUnavailable as exc:
                    errors.append(exc)
                    return True
                return False

            await wait_for(refused, 30, "appends refused after the forwarder died")
            assert "failed" in str(errors[0]) and "damaged" in str(errors[0])
            assert not await log.ready()
        # nothing is deleted: the damaged segment stays for an operator to inspect
        assert segment.exists()
    finally:
        broker.close()


async def test_a_hung_broker_times_out_into_the_spill(tansu: TansuBroker, tmp_path: Path) -> None:
    """SIGSTOP: connections stay open but nothing answers, so produce times out instead of failing fast."""
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", **FAST) as log:
        await log.append(EVENTS, [(b"user-1", b"before")])
        # On a busy machine the first connect can time out, so "before" may have gone
        # through the spill: start the hang from "nothing spilled, broker answering".
        await wait_for(log.ready, 30, "ready before the hang")
        await asyncio.to_thread(tansu.pause)  # returns once the broker really stopped
        try:
            # bounded by the produce timeout, not by the hang: acknowledged from the spill
            await asyncio.wait_for(log.append(EVENTS, [(b"user-1", b"during-0")]), 30)
            assert log.spill_depth() == 1
            assert not await log.ready()
            for i in range(1, 20):
                await asyncio.wait_for(log.append(EVENTS, [(b"user-1", b"during-%d" % i)]), 30)
        finally:
            tansu.resume()
        await wait_for(lambda: log.spill_depth() == 0, 60, "the spill forwarded after the broker woke up")
        await wait_for(log.ready, 30, "ready")
        await log.append(EVENTS, [(b"user-1", b"after")])
        records = await read_all(log, EVENTS)
    expected = [b"before"] + [b"during-%d" % i for i in range(20)] + [b"after"]
    assert_all_acked_in_order(records, {b"user-1": expected})
    # a produce that timed out may still land when the broker wakes (at-least-once), nothing else does
    assert {r.value for r in records} == set(expected)


async def test_ready_notices_a_dead_broker_before_any_append(tansu_durable: TansuBroker, tmp_path: Path) -> None:
    broker = tansu_durable
    async with KafkaLog(broker.bootstrap, spill_dir=tmp_path / "spill", **FAST) as log:
        await log.append(EVENTS, [(b"user-1", b"before")])
        assert await log.ready()
        await asyncio.to_thread(broker.kill)
        assert not await log.ready()
        await asyncio.to_thread(broker.start)
        await wait_for(log.ready, 30, "ready once the broker is back")
        await log.append(EVENTS, [(b"user-1", b"after")])
        assert log.spill_depth() == 0
        assert [r.value for r in await read_all(log, EVENTS)] == [b"before", b"after"]


_SPILLING_CHILD = """
import asyncio, sys
from tripwire.log.kafka import KafkaLog

async def main(bootstrap, spill_dir):
    log = KafkaLog(bootstrap, spill_dir=spill_dir, request_timeout_ms=1000, reconnect_backoff_ms=100)
    await log.start()
    i = 0
    while True:
        key = b"user-%d" % (i % 7)
        await log.append("events", [(key, b"%d" % i)])
        sys.stdout.write("%d\\n" % i)  # acknowledged
        sys.stdout.flush()
        i += 1

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_kill_9_while_spilling_loses_no_acknowledged_record(tmp_path: Path) -> None:
    broker = TansuBroker(tmp_path / "tansu")  # down while the child spills
    spill_dir = tmp_path / "spill"
    repo = Path(__file__).resolve().parents[3]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SPILLING_CHILD, broker.bootstrap, str(spill_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=repo,
    )
    acked: list[int] = []
    try:
        assert child.stdout is not None
        async with asyncio.timeout(60):
            while len(acked) < 500:
                line = await child.stdout.readline()
                assert line, "the child exited early"
                acked.append(int(line))
    finally:
        child.kill()  # SIGKILL, mid-append
        await child.wait()
    try:
        await asyncio.to_thread(broker.start)
        async with KafkaLog(broker.bootstrap, spill_dir=spill_dir, **FAST) as log:
            assert log.spill_depth() >= len(acked)
            await wait_for(lambda: log.spill_depth() == 0, 60, "replay of the killed process's spill")
            records = await read_all(log, EVENTS)
    finally:
        broker.close()
    expected = {b"user-%d" % k: [b"%d" % i for i in acked if i % 7 == k] for k in range(7)}
    assert_all_acked_in_order(records, expected)


async def test_the_start_warning_names_the_setting_and_says_what_happens_to_appends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # "Kafka at X is unreachable (...); spilling until it is back" was all a collector with a mistyped
    # broker address said (while answering 200), and it read oddly from a sink, which appends nothing.
    from tests.fixtures.tansu import free_port

    bootstrap = f"127.0.0.1:{free_port()}"
    async with KafkaLog(bootstrap, spill_dir=tmp_path / "spill", **FAST):
        pass
    (line,) = [r.getMessage() for r in caplog.records if r.name == "tripwire.log.kafka" and r.levelname == "WARNING"]
    assert f"Kafka at {bootstrap} (log.kafka_bootstrap) is unreachable" in line, line
    assert "appends wait in the spill buffer" in line and "KafkaConnectionError" not in line, line
