"""The consumer runner on its own: idle ticks, the rebalance fence, backoff, commits refused, failure.

A small recording handler plays the service. The log is the in-memory twin or
the embedded SQLite log; where a test needs the log to misbehave at a precise
moment (a poll that straddles a rebalance, a poll or a commit that fails), the
twin's consumer is subclassed to do just that. How each real handler behaves on
each real backend is :mod:`tests.tripwire.log.test_consume_contract`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from tripwire.log import EVENTS, Consumer, LogUnavailable, RebalanceListener, Record, TopicPartition
from tripwire.log.consume import Batch, Runner
from tripwire.log.memory import MemoryConsumer, MemoryLog
from tripwire.log.sqlite import SqliteLog

from tests.fixtures import waiting

TP0 = TopicPartition(EVENTS, 0)


class Recorder:
    """A handler that keeps what it was given; resumes each partition from ``resume`` if set there."""

    name = "recorder"
    read_ahead = False

    def __init__(self, max_records: int = 1000, poll_ms: int = 100) -> None:
        self.max_records = max_records
        self.poll_ms = poll_ms
        self.handled: list[tuple[int, int]] = []  # (partition, offset)
        self.batches: list[int] = []  # sizes, empty ones too
        self.resume: dict[TopicPartition, int | None] = {}
        self.revoked: list[set[TopicPartition]] = []
        self.fail_on: int | None = None  # raise when handed a batch with this offset
        self.commit_each = False
        self.commits: list[bool] = []

    def poll_timeout_ms(self) -> int:
        return self.poll_ms

    async def on_assigned(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int | None]:
        return {tp: self.resume.get(tp) for tp in partitions}

    async def handle(self, batch: Batch) -> None:
        self.batches.append(len(batch.records))
        if self.fail_on is not None and any(r.offset == self.fail_on for r in batch.records):
            raise RuntimeError(f"cannot handle offset {self.fail_on}")
        self.handled += [(r.partition, r.offset) for r in batch.records]
        if self.commit_each and batch.records:
            self.commits.append(await batch.commit({TopicPartition(r.topic, r.partition): r.offset + 1 for r in batch.records}))

    async def on_revoked(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
        self.revoked.append(set(partitions))
        return {}


class ScriptedLog(MemoryLog):
    """The in-memory twin whose consumers fail their first polls or commits, or hold a poll's records."""

    def __init__(self, partitions: int = 1) -> None:
        super().__init__(partitions)
        self.poll_failures = 0
        self.commit_failures = 0
        self.hold: asyncio.Event | None = None  # a poll that read records waits for this before returning
        self.holding = asyncio.Event()

    def consumer(self, group: str, topics: Sequence[str], listener: RebalanceListener | None = None,
                 exclusive: bool = False) -> Consumer:
        return ScriptedConsumer(self, group, topics, listener)


class ScriptedConsumer(MemoryConsumer):
    _log: ScriptedLog

    async def poll(self, timeout_ms: int = 1000, max_records: int = 1000) -> list[Record]:
        if self._log.poll_failures:
            self._log.poll_failures -= 1
            raise LogUnavailable("the test's broker is away")
        records = await super().poll(timeout_ms, max_records)
        hold = self._log.hold
        if records and hold is not None:
            self._log.hold = None
            self._log.holding.set()
            await hold.wait()
        return records

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self._log.commit_failures:
            self._log.commit_failures -= 1
            raise LogUnavailable("commit failed: CommitFailedError: the group has already rebalanced")
        await super().commit(offsets)


async def until(predicate, what: str, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    await waiting.until(predicate, timeout_s, what, interval_s=0.01)


def entries(first: int, n: int) -> list[tuple[bytes, bytes]]:
    return [(b"k", f"v{i}".encode()) for i in range(first, first + n)]


async def test_the_handler_is_called_on_idle_polls_too() -> None:
    # The engine's watermark follows the wall clock and the sink cuts files by age on these ticks.
    log = MemoryLog(1)
    await log.start()
    handler = Recorder(poll_ms=20)
    runner = Runner(log, "g", [EVENTS], handler)
    await runner.start()
    try:
        await until(lambda: handler.batches.count(0) >= 3, "three empty batches")
        await log.append(EVENTS, entries(0, 5))
        await until(lambda: len(handler.handled) == 5, "the records")
        assert handler.handled == [(0, i) for i in range(5)]
    finally:
        await runner.stop()


async def test_a_batch_polled_across_a_rebalance_is_read_again_from_where_the_handler_is() -> None:
    # Kafka: a fetch can return records from before a seek made by the rebalance listener. The poll here
    # reads offsets 0-9, then a rebalance restores the partition at offset 5 (the handler's own state),
    # then the poll returns: handling its records would process 0-4, then 5-9 twice.
    log = ScriptedLog(1)
    await log.start()
    await log.append(EVENTS, entries(0, 10))
    handler = Recorder()
    handler.resume[TP0] = 0
    release = log.hold = asyncio.Event()
    runner = Runner(log, "g", [EVENTS], handler)
    await runner.start()
    try:
        await asyncio.wait_for(log.holding.wait(), 10)
        handler.resume[TP0] = 5
        assert runner.consumer is not None
        await runner.on_revoked(runner.consumer, {TP0})
        await runner.on_assigned(runner.consumer, {TP0})
        release.set()
        await until(lambda: len(handler.handled) >= 5, "the partition from offset 5")
        await log.append(EVENTS, entries(10, 2))
        await until(lambda: len(handler.handled) >= 7, "the new records")
        assert handler.handled == [(0, i) for i in range(5, 12)]
    finally:
        await runner.stop()


async def test_log_errors_while_polling_are_retried_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    log = ScriptedLog(1)
    await log.start()
    await log.append(EVENTS, entries(0, 3))
    log.poll_failures = 3
    handler = Recorder()
    runner = Runner(log, "g", [EVENTS], handler, backoff_s=(0.01, 0.02))
    await runner.start()
    try:
        await until(lambda: len(handler.handled) == 3, "the records once the log answers")
    finally:
        await runner.stop()
    waits = [r.getMessage().rsplit("retrying in ", 1)[1] for r in caplog.records if "cannot read the event log" in r.getMessage()]
    assert waits == ["0.01 s", "0.02 s", "0.02 s"]  # doubling up to the cap; the handler never saw an error
    assert not runner.failed and handler.handled == [(0, 0), (0, 1), (0, 2)]


async def test_a_refused_commit_is_logged_and_the_handler_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    # The sink died of this: a Kafka commit refused because the group had rebalanced without it.
    log = ScriptedLog(1)
    await log.start()
    log.commit_failures = 1
    handler = Recorder()
    handler.commit_each = True
    runner = Runner(log, "g", [EVENTS], handler)
    await runner.start()
    try:
        await log.append(EVENTS, entries(0, 2))
        await until(lambda: len(handler.commits) == 1, "the first commit")
        await log.append(EVENTS, entries(2, 2))
        await until(lambda: len(handler.commits) == 2, "the second commit")
    finally:
        await runner.stop()
    assert handler.commits == [False, True] and not runner.failed
    assert await log.consumer("g", [EVENTS]).committed(TP0) == 4
    assert any("not committed" in r.getMessage() and "rebalanced" in r.getMessage() for r in caplog.records)


async def test_a_handler_that_raises_fails_the_runner_and_nothing_more_is_saved(tmp_path: Path) -> None:
    # A failing engine saved its read positions past the failing batch on its way out (the revoke), and the
    # triggers that batch should have produced were lost. A failed handler is not asked to save anything.
    log = SqliteLog(tmp_path / "log.db", 1)
    await log.start()
    try:
        await log.append(EVENTS, entries(0, 3))
        handler = Recorder()
        handler.fail_on = 4
        runner = Runner(log, "g", [EVENTS], handler)
        await runner.start()
        await until(lambda: len(handler.handled) == 3, "the first records")
        await log.append(EVENTS, entries(3, 3))
        await until(lambda: runner.failed, "the runner to fail")
        assert isinstance(runner.error, RuntimeError) and "offset 4" in str(runner.error)
        assert not await runner.ready()
        await runner.stop()
        assert handler.revoked == []  # stop() did not hand the partitions over for saving
        again = Runner(log, "g", [EVENTS], Recorder())
        await again.start()  # the failed runner left the group (the embedded log allows one member)
        await again.stop()
    finally:
        await log.stop()


async def test_stop_lets_the_batch_in_hand_finish_then_revokes() -> None:
    log = MemoryLog(1)
    await log.start()
    release = asyncio.Event()

    class Slow(Recorder):
        async def handle(self, batch: Batch) -> None:
            if batch.records:
                await release.wait()
            await super().handle(batch)

    handler = Slow()
    runner = Runner(log, "g", [EVENTS], handler)
    await runner.start()
    await log.append(EVENTS, entries(0, 2))
    await until(lambda: runner._busy and handler.batches == [], "the batch in hand")
    stopping = asyncio.create_task(runner.stop())
    await asyncio.sleep(0)  # lets stop() begin (not a wait for a result): it must then wait for the batch
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert handler.handled == [(0, 0), (0, 1)] and handler.revoked == [{TP0}]


async def test_what_the_handler_hands_over_on_revoke_is_committed_for_the_group() -> None:
    log = MemoryLog(1)
    await log.start()
    await log.append(EVENTS, entries(0, 4))

    class HandsOver(Recorder):
        async def on_revoked(self, partitions: set[TopicPartition]) -> Mapping[TopicPartition, int]:
            await super().on_revoked(partitions)
            return {tp: 3 for tp in partitions}  # say, its last durable file ends there

    handler = HandsOver()
    runner = Runner(log, "g", [EVENTS], handler)
    await runner.start()
    await until(lambda: len(handler.handled) == 4, "the records")
    await runner.stop()
    assert await log.consumer("g", [EVENTS]).committed(TP0) == 3
