"""When files are cut: event-time span, open-file and memory limits, age."""

from __future__ import annotations

from pathlib import Path

from tripwire.sinks.config import SinkConfig
from tripwire.sinks.lake import LocalLake
from tripwire.sinks.writer import LakeWriter
from tests.sinks.helpers import BASE_MS, DAY_MS, event, lake_table, send
from tripwire.log.memory import MemoryLog


async def write(tmp_path: Path, events: list[dict[str, object]], read: int = 10,
                **cfg: object) -> tuple[LakeWriter, MemoryLog]:
    log = MemoryLog(1)
    await log.start()
    await send(log, events)
    writer = LakeWriter(LocalLake(tmp_path), SinkConfig(lake_url=str(tmp_path), **cfg))  # type: ignore[arg-type]
    offset = writer.assign(0)
    while records := await log.read("events", 0, offset, read):
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


async def test_open_files_are_bounded_as_rows_are_routed(tmp_path: Path) -> None:
    today = [event(i) for i in range(40)]
    late = [event(100 + d, at_ms=BASE_MS - d * DAY_MS) for d in range(1, 6)]  # five past days, one event each
    writer, _ = await write(tmp_path, today[:20] + late + today[20:], max_open_files=3)
    pw = writer.parts[0]
    assert len(pw.open) == 3 and len(pw.overflow) == 3 and writer.open_files() == 4  # the limit, and the overflow
    assert lake_table(LocalLake(tmp_path)).empty  # no file was cut to make room for a late day
    writer.close()
    df = lake_table(LocalLake(tmp_path))
    assert len(df) == 45 and df.message_id.is_unique and df._file.nunique() == 6


async def test_todays_rows_make_room_by_cutting_the_largest_bucket(tmp_path: Path) -> None:
    late = [event(100 + d, at_ms=BASE_MS - d * DAY_MS) for d in range(1, 4) for _ in range(1 + d)]
    late = [dict(e, messageId=f"late-{i}") for i, e in enumerate(late)]
    writer, _ = await write(tmp_path, late + [event(i) for i in range(5)], max_open_files=3)
    files = lake_table(LocalLake(tmp_path)).groupby("_file").size()
    assert list(files) == [4]  # the day with four rows went out; today has a bucket, nothing in the overflow
    assert not writer.parts[0].overflow
    writer.close()
    assert len(lake_table(LocalLake(tmp_path))) == 14


async def test_memory_pressure_cuts_the_largest_first_counting_an_overflow_as_one(tmp_path: Path) -> None:
    late = [event(1000 + d, at_ms=BASE_MS - d * DAY_MS) for d in range(1, 30)]
    big = [event(i) for i in range(200)]
    writer, _ = await write(tmp_path, late + big, max_open_files=2, max_buffer_bytes=40_000)
    assert writer.buffered_bytes() <= 40_000
    files = lake_table(LocalLake(tmp_path)).groupby("_file").size()
    assert files.max() >= 100  # today's big bucket went first, as often as needed; late days keep collecting
    writer.close()
    assert len(lake_table(LocalLake(tmp_path))) == 229


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


async def test_a_burst_of_distinct_past_dates_opens_a_bounded_number_of_files_and_loses_none(tmp_path: Path) -> None:
    # One 90 KB batch of 1,000 events with distinct past dates made 771 files within 15 s: the open-file
    # limit was applied after the batch by cutting the largest buckets, i.e. a one-row file per date,
    # again for every batch. Rows beyond the limit now wait in one overflow per log partition, cut
    # like a late file (max_late_file_age_s), as one file per date holding every row it got meanwhile.
    cfg = SinkConfig(lake_url=str(tmp_path), max_open_files=8, max_late_file_age_s=3600, poll_max_records=5000)
    log = MemoryLog(1)
    await log.start()
    today = [event(i) for i in range(30)]
    bursts = [[event(10_000 * (b + 1) + d, at_ms=BASE_MS - (d + 1) * DAY_MS) for d in range(400)] for b in range(3)]
    writer = LakeWriter(LocalLake(tmp_path), cfg)
    offset = writer.assign(0)
    for burst in bursts:  # three client batches a few seconds apart, each with the same 400 past days
        await send(log, today[:10] + burst)
        today = today[10:]
        records = await log.read("events", 0, offset, cfg.poll_max_records)
        offset = records[-1].offset + 1
        writer.process(records)
        assert writer.open_files() <= cfg.max_open_files + 1  # the limit, and one overflow
        writer.flush()
        assert lake_table(LocalLake(tmp_path)).empty  # nothing cut early: no late file is due yet
    pw = writer.parts[0]
    opened = min(b.opened for b in [*pw.open.values(), *pw.overflow.values()])
    writer.seal_aged(now=opened + 3600)
    writer.flush()
    writer.close()
    df = lake_table(LocalLake(tmp_path))
    assert len(df) == 1230 and df.message_id.is_unique  # every event, once
    per_file = df.groupby("_file").size()
    assert len(per_file) == 401  # one file per day: 400 past days and today
    assert per_file.min() == 3 and per_file.max() == 30


async def test_small_polls_do_not_pile_up_record_batches(tmp_path: Path) -> None:
    # A steady site's polls are small (a client batch or two), and each poll's rows of a bucket became a
    # record batch of its own: a 30 s file held thousands of few-row batches, each some 35 KB of Arrow
    # objects outside the memory pool and outside the buffered bytes, so a soak's sink grew past 1 GB.
    events = []
    for i in range(600):
        props: dict[str, object] = {"sku": f"sku-{i}", "qty": i % 5 if i < 300 else i % 5 + 0.5}  # widened halfway
        if i % 7 == 0:
            props["coupon"] = f"c-{i}"  # a column only some polls have
        events.append(event(i, props=props))
    writer, _ = await write(tmp_path, events, read=1)
    (bucket,) = writer.parts[0].open.values()
    assert bucket.rows == 600 and len(bucket.batches) <= 64
    assert bucket.nbytes == sum(b.nbytes for b in bucket.batches)
    writer.close()
    df = lake_table(LocalLake(tmp_path))
    assert list(df.message_id) == [f"m-{i}" for i in range(600)]
    assert list(df.properties_qty) == [i % 5 if i < 300 else i % 5 + 0.5 for i in range(600)]
    assert df.properties_coupon.notna().sum() == 86 and df.properties_coupon[7] == "c-7"
