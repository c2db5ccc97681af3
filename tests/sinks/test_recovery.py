"""The flush protocol under a crash at every kind of point, in-process and fast.

A real local lake whose ``write`` fails after a random number of calls stands
in for the process dying there (state saved but files not, some files of a
flush written, dedup ids saved but not the state...). Wall-clock rotation fires
at random moments. After each crash a fresh writer resumes from the lake alone.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from tripwire.sinks.config import SinkConfig
from tripwire.sinks.lake import LocalLake
from tripwire.sinks.writer import LakeWriter
from tripwire.sinks.state import load_state
from tests.sinks.helpers import BASE_MS, DAY_MS, caught_up, event, lake_table, send
from tripwire.log.memory import MemoryLog


class Crash(Exception):
    pass


class DyingLake(LocalLake):
    """The local lake, dying (raising) at its ``budget``-th write."""

    def __init__(self, root: Path, budget: int) -> None:
        super().__init__(root)
        self.budget = budget

    def write(self, path: str, data: bytes) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise Crash(path)
        super().write(path, data)


@pytest.mark.parametrize("seed", range(4))
async def test_a_crash_anywhere_in_a_flush_then_resume_gives_every_event_once(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    log = MemoryLog(2)
    await log.start()
    sent: dict[str, dict[str, object]] = {}
    n = 0

    def batch(k: int) -> list[dict[str, object]]:
        nonlocal n
        out = []
        for _ in range(k):
            roll = rng.random()
            if roll < 0.1 and sent:
                out.append(sent[rng.choice(list(sent))])
                continue
            e = event(n, at_ms=BASE_MS - rng.randint(1, 3) * DAY_MS if roll < 0.2 else None, user=f"u{rng.randint(0, 9)}")
            n += 1
            sent[str(e["messageId"])] = e
            out.append(e)
        return out

    cfg = SinkConfig(lake_url=str(tmp_path), max_file_rows=7, max_file_span_s=3600 * 30)
    crashes = 0
    for _ in range(15):
        await send(log, batch(rng.randint(5, 40)))
        writer = None
        try:
            writer = LakeWriter(DyingLake(tmp_path, rng.randint(0, 25)), cfg)
            pos = {p: writer.assign(p) for p in range(2)}
            for _ in range(rng.randint(1, 6)):
                for p in range(2):
                    records = await log.read("events", p, pos[p], rng.randint(1, 15))
                    if records:
                        pos[p] = records[-1].offset + 1
                    writer.process(records)
                if rng.random() < 0.5:
                    writer.seal_aged(now=1e12)  # the wall clock says every open file is due
                writer.flush()
            if rng.random() < 0.3:
                writer.close()
        except Crash:
            crashes += 1
        df = lake_table(LocalLake(tmp_path))
        assert df.message_id.is_unique, sorted(df[df.message_id.duplicated(keep=False)]._file)

    writer = LakeWriter(LocalLake(tmp_path), cfg)
    pos = {p: writer.assign(p) for p in range(2)}
    while True:
        got = 0
        for p in range(2):
            records = await log.read("events", p, pos[p], 1000)
            if records:
                pos[p] = records[-1].offset + 1
                got += len(records)
            writer.process(records)
        if not got:
            break
    assert all(not pw.forced and all(b.force_end is None for b in pw.open.values()) for pw in writer.parts.values())
    writer.close()
    assert caught_up(LocalLake(tmp_path), await log.end_offsets("events"))  # the state says so too
    df = lake_table(LocalLake(tmp_path))
    assert crashes > 3
    assert df.message_id.is_unique and set(df.message_id) == set(sent)


async def test_an_idle_restart_closes_the_cuts_a_killed_run_wrote_but_left_pending(tmp_path: Path) -> None:
    """Killed after writing a flush's files, before the next flush closed them: nothing new arrives."""
    log = MemoryLog(1)
    await log.start()
    await send(log, [event(i) for i in range(10)])
    cfg = SinkConfig(lake_url=str(tmp_path), max_file_rows=4)
    writer = LakeWriter(LocalLake(tmp_path), cfg)
    writer.assign(0)
    writer.process(await log.read("events", 0, 0, 100))
    writer.seal_aged(now=1e12)
    writer.flush()  # files written; the state still lists their cuts as pending (then: kill -9)
    before = load_state(LocalLake(tmp_path), "events", 0)
    assert before is not None and before.pending and before.resume == 10

    writer = LakeWriter(LocalLake(tmp_path), cfg)
    assert writer.assign(0) == 10
    assert writer.flush() == {0: 10}  # no record to read, yet the stale state is saved
    after = load_state(LocalLake(tmp_path), "events", 0)
    assert after is not None and not after.pending and after.resume == 10
    assert caught_up(LocalLake(tmp_path), {0: 10})
    assert writer.flush() == {}  # and only once
    writer.close()
    assert sorted(lake_table(LocalLake(tmp_path)).message_id) == sorted(f"m-{i}" for i in range(10))


async def test_records_seen_ahead_of_the_resume_point_are_written_when_they_come_again_at_new_offsets(
    tmp_path: Path,
) -> None:
    """The log's offsets jumped (a broker restored from elsewhere): what a killed run had only buffered comes
    back at new offsets."""
    log = MemoryLog(1)
    await log.start()
    await send(log, [event(i, user="u") for i in range(15)])
    cfg = SinkConfig(lake_url=str(tmp_path), max_file_rows=10)
    writer = LakeWriter(LocalLake(tmp_path), cfg)
    writer.assign(0)
    first = await log.read("events", 0, 0, 100)
    writer.process(first)
    writer.flush()  # 0..9 in a file; 10..14 buffered, their ids saved with the state (then: kill -9)
    state = load_state(LocalLake(tmp_path), "events", 0)
    assert state is not None and state.resume == 10

    epoch = 1 << 40  # the producers write 10..14 again, then 15..19, at the new offsets
    again = [replace(r, offset=epoch + i) for i, r in enumerate(first[10:])]
    await send(log, [event(i, user="u") for i in range(15, 20)])
    newer = [replace(r, offset=epoch + 5 + i) for i, r in enumerate(await log.read("events", 0, 15, 100))]
    writer = LakeWriter(LocalLake(tmp_path), cfg)
    assert writer.assign(0) == 10
    writer.process(again + newer + [replace(first[3], offset=epoch + 10)])  # and one that is in a file
    writer.seal_aged(now=1e12)
    writer.flush()
    writer.close()
    assert sorted(lake_table(LocalLake(tmp_path)).message_id) == sorted(f"m-{i}" for i in range(20))
