"""Scale-out: two sinks in one consumer group on a real Kafka-protocol broker (tansu).

Partitions move between the sinks as members join and leave; each hand-over
goes through the lake (the leaving owner writes its open files and state, the
new owner resumes from that state), so every event lands exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from tripwire.sinks.service import SinkService
from tests.fixtures.tansu import TansuBroker
from tests.fixtures.waiting import until
from tests.sinks.helpers import event, send, wait_caught_up
from tests.sinks.lakes import make_lake
from tripwire.log import EVENTS
from tripwire.log.kafka import KafkaLog
from tripwire.sinks.lake import LocalLake


def owned(sink: SinkService) -> int:
    """Partitions of the events topic the sink owns (it also reads the invalid topic's)."""
    assert sink.consumer is not None
    return sum(tp.topic == EVENTS for tp in sink.consumer.assignment())


async def test_two_sinks_share_the_partitions_and_hand_them_over_exactly(tansu: TansuBroker, tmp_path: Path) -> None:
    lake = make_lake("local", tmp_path, None, max_file_rows=25)
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", partitions=4) as log:
        sent = [event(i, user=f"u{i % 13}") for i in range(150)]
        await send(log, sent)
        a = SinkService(lake.cfg, log, lake.lake)
        b = SinkService(lake.cfg, log, lake.lake)
        await a.start()
        try:
            await b.start()
            try:
                await until(lambda: owned(a) == 2 and owned(b) == 2, 40, "the partitions split 2/2")
                more = [event(1000 + i, user=f"u{i % 13}") for i in range(150)]
                await send(log, more + sent[:20])  # the repeats are client retries
                sent += more
                await wait_caught_up(lake.lake, await log.end_offsets(EVENTS), timeout_s=40)
            finally:
                await b.stop()
            await until(lambda: owned(a) == 4, 40, "the remaining sink owning every partition")
            last = [event(2000 + i, user=f"u{i % 13}") for i in range(100)]
            await send(log, last)
            sent += last
            await wait_caught_up(lake.lake, await log.end_offsets(EVENTS), timeout_s=40)
        finally:
            await a.stop()
        assert not a.failed and not b.failed
    df = lake.duckdb("SELECT message_id FROM lake")
    assert sorted(df.message_id) == sorted(str(e["messageId"]) for e in sent)


async def test_a_sink_stops_promptly_while_the_broker_is_away(tansu: TansuBroker, tmp_path: Path) -> None:
    # With the broker away a Kafka offset commit retries for ever: a sink stopped then did not exit
    # (593 s seen) until it was killed. Its files and state are in the lake; the commit is bounded.
    lake = make_lake("local", tmp_path, None, max_file_rows=25)
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", partitions=4) as log:
        sent = [event(i, user=f"u{i % 13}") for i in range(60)]
        await send(log, sent)
        sink = SinkService(lake.cfg, log, lake.lake)
        await sink.start()
        await until(lambda: owned(sink) == 4, 40, "the sink owning every partition")
        await send(log, [event(100 + i, user=f"u{i % 13}") for i in range(20)])
        ends = await log.end_offsets(EVENTS)

        def handled() -> dict[int, int]:
            return {tp.partition: o for tp, o in sink.runner.handled().items() if tp.topic == EVENTS}
        # the sink has read everything, and holds some of it in open files
        await until(lambda: all(handled().get(p, 0) >= end for p, end in ends.items()), 40,
                    "the sink to handle every record", detail=lambda: f"handled {handled()}, ends {ends}")
        tansu.kill()  # the broker is gone: connections refused
        await asyncio.wait_for(sink.stop(), 60)  # a bound, not a speed figure: it used to never return
    written = lake.duckdb("SELECT message_id FROM lake")
    assert set(written.message_id) >= {str(e["messageId"]) for e in sent}  # what it had read is in the lake



class GatedLake(LocalLake):
    """The local lake; while ``closed``, a write waits (in the sink's worker thread) until it opens."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.open = threading.Event()
        self.open.set()
        self.waiting = threading.Event()  # a write is held at the gate

    def write(self, path: str, data: bytes) -> None:
        if not self.open.is_set():
            self.waiting.set()
            self.open.wait(120)
        super().write(path, data)


def _rival_member(bootstrap: str, spill: Path, group: str, assigned: threading.Event, leave: threading.Event) -> None:
    """Another member of ``group`` on its own event loop: it joins, says when it has partitions, leaves when told."""
    async def run() -> None:
        async with KafkaLog(bootstrap, spill_dir=spill, partitions=4) as log:
            consumer = log.consumer(group, [EVENTS])
            await consumer.start()
            try:
                while not leave.is_set():
                    await consumer.poll(timeout_ms=200)
                    if consumer.assignment():
                        assigned.set()
            finally:
                await consumer.stop()

    asyncio.run(run())


async def test_a_sink_whose_group_moved_on_rejoins_and_resumes_from_the_lake(
    tansu: TansuBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # After a pause longer than the session timeout the group had rebalanced without the sink; its next
    # offset commit raised CommitFailedError ("the group has already rebalanced") and the sink stopped for
    # good. Reproduced on the real broker: while the sink is writing files (held at the lake's gate), its
    # event loop is held too (no heartbeat) until another member of the group has been given partitions.
    # Then the write completes and the sink commits into a group that moved on.
    setup = make_lake("local", tmp_path, None, max_file_rows=25)
    lake = GatedLake(setup.url)
    assigned, leave = threading.Event(), threading.Event()
    rival = threading.Thread(target=_rival_member, args=(tansu.bootstrap, tmp_path / "rival", setup.cfg.group, assigned,
                                                         leave), daemon=True)

    def logged(text: str) -> int:
        return sum(text in r.getMessage() for r in caplog.records)

    caplog.set_level(logging.INFO)
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", partitions=4) as log:
        sent = [event(i, user=f"u{i % 13}") for i in range(80)]
        await send(log, sent)
        sink = SinkService(setup.cfg, log, lake)
        await sink.start()
        try:
            await until(lambda: owned(sink) == 4, 40, "the sink owning every events partition")
            await wait_caught_up(lake, await log.end_offsets(EVENTS), timeout_s=40)
            lake.open.clear()
            more = [event(100 + i, user=f"u{i % 13}") for i in range(40)]
            await send(log, more)
            sent += more
            await until(lake.waiting.is_set, 30, "the sink writing the new events")
            rival.start()
            assert assigned.wait(60), "the rival member never got partitions"  # holds the loop: no heartbeat
            lake.open.set()
            await until(lambda: sink.failed or logged("not committed") > 0, 30, "the sink's commit refused by the group")
            assert not sink.failed, f"the sink stopped: {sink.error!r}"
            assert "rebalanced" in next(r.getMessage() for r in caplog.records if "not committed" in r.getMessage())
            # It rejoins and takes a share of the partitions from the lake's state, next to the rival...
            await until(lambda: logged("sink owns") >= 2, 60, "the sink back in the group")
            assert not sink.failed
            # ... and all of them once the rival has left (not earlier: tansu loses a rebalance whose
            # elected leader leaves half-way).
            leave.set()
            rival.join(30)
            last = [event(200 + i, user=f"u{i % 13}") for i in range(40)]
            await send(log, last)
            sent += last
            await wait_caught_up(lake, await log.end_offsets(EVENTS), timeout_s=60)
            assert not sink.failed
        finally:
            leave.set()
            lake.open.set()
            await sink.stop()
            rival.join(30)
    df = setup.duckdb("SELECT message_id FROM lake")
    assert sorted(df.message_id) == sorted(str(e["messageId"]) for e in sent)  # every event exactly once
