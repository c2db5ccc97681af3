"""Scale-out: two sinks in one consumer group on a real Kafka-protocol broker (tansu).

Partitions move between the sinks as members join and leave; each hand-over
goes through the lake (the leaving owner writes its open files and state, the
new owner resumes from that state), so every event lands exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path

from tripwire.sinks.service import SinkService
from tests.fixtures.tansu import TansuBroker
from tests.sinks.helpers import event, send, wait_caught_up
from tests.sinks.lakes import make_lake
from tripwire.log import EVENTS
from tripwire.log.kafka import KafkaLog


async def _wait(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


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
                await _wait(lambda: owned(a) == 2 and owned(b) == 2, 40, "the partitions split 2/2")
                more = [event(1000 + i, user=f"u{i % 13}") for i in range(150)]
                await send(log, more + sent[:20])  # the repeats are client retries
                sent += more
                await wait_caught_up(lake.lake, await log.end_offsets(EVENTS), timeout_s=40)
            finally:
                await b.stop()
            await _wait(lambda: owned(a) == 4, 40, "the remaining sink owning every partition")
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
    import asyncio

    lake = make_lake("local", tmp_path, None, max_file_rows=25)
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", partitions=4) as log:
        sent = [event(i, user=f"u{i % 13}") for i in range(60)]
        await send(log, sent)
        sink = SinkService(lake.cfg, log, lake.lake)
        await sink.start()
        await _wait(lambda: owned(sink) == 4, 40, "the sink owning every partition")
        await send(log, [event(100 + i, user=f"u{i % 13}") for i in range(20)])
        await asyncio.sleep(1.0)  # the sink holds some of these in open files
        tansu.kill()  # the broker is gone: connections refused
        await asyncio.wait_for(sink.stop(), 60)  # a bound, not a speed figure: it used to never return
    written = lake.duckdb("SELECT message_id FROM lake")
    assert set(written.message_id) >= {str(e["messageId"]) for e in sent}  # what it had read is in the lake
