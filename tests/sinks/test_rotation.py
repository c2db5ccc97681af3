"""When files are cut: event-time span, open-file and memory limits, age."""

from __future__ import annotations

from pathlib import Path

from tripwire.sinks.config import SinkConfig
from tripwire.sinks.lake import LocalLake
from tripwire.sinks.writer import LakeWriter
from tests.sinks.helpers import BASE_MS, DAY_MS, event, lake_table, send
from tripwire.log.memory import MemoryLog


async def write(tmp_path: Path, events: list[dict[str, object]], **cfg: object) -> tuple[LakeWriter, MemoryLog]:
    log = MemoryLog(1)
    await log.start()
    await send(log, events)
    writer = LakeWriter(LocalLake(tmp_path), SinkConfig(lake_url=str(tmp_path), **cfg))  # type: ignore[arg-type]
    offset = writer.assign(0)
    while records := await log.read("events", 0, offset, 10):
        offset = records[-1].offset + 1
        writer.process(records)
        writer.flush()
    return writer, log


async def test_a_file_spans_at_most_max_file_span_s_of_event_time(tmp_path: Path) -> None:
    events = [event(i, at_ms=BASE_MS + i * 20_000) for i in range(30)]  # 10 minutes
    writer, _ = await write(tmp_path, events, max_file_span_s=60)
    writer.close()
    df = lake_table(LocalLake(tmp_path))
    spans = df.groupby("_file").timestamp.agg(lambda t: (t.max() - t.min()).total_seconds())
    assert spans.max() <= 60 and len(spans) == 8 and len(df) == 30


async def test_open_files_are_bounded_and_the_largest_is_cut_first(tmp_path: Path) -> None:
    today = [event(i) for i in range(40)]
    late = [event(100 + d, at_ms=BASE_MS - d * DAY_MS) for d in range(1, 6)]  # five past days, one event each
    writer, _ = await write(tmp_path, today[:20] + late + today[20:], max_open_files=3)
    assert writer.open_files() <= 3
    files = lake_table(LocalLake(tmp_path)).groupby("_file").size()
    assert files.max() >= 20  # the big bucket (today) went out, not a string of one-row files
    writer.close()
    df = lake_table(LocalLake(tmp_path))
    assert len(df) == 45 and df.message_id.is_unique


async def test_buckets_are_cut_by_age_late_ones_later(tmp_path: Path) -> None:
    events = [event(i) for i in range(5)] + [event(10, at_ms=BASE_MS - 2 * DAY_MS)]
    writer, _ = await write(tmp_path, events, max_file_age_s=60, max_late_file_age_s=600)
    pw = writer.parts[0]
    opened = max(b.opened for b in pw.open.values())
    writer.seal_aged(now=opened + 61)
    assert [c.directory for c, _ in pw.sealed] == [f"date={str(events[0]['timestamp'])[:10]}"]
    assert list(pw.open) == [f"date={str(events[-1]['timestamp'])[:10]}"]  # the late one waits longer
    writer.seal_aged(now=opened + 601)
    assert not pw.open
    writer.close()
    assert len(lake_table(LocalLake(tmp_path))) == 6
