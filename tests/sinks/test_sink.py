"""End to end through the real embedded log: what is sent is what analysts read, once."""

from __future__ import annotations

from pathlib import Path

import orjson
import pandas as pd
import pytest
from prometheus_client import REGISTRY

from tripwire.sinks.errors import LakeError
from tripwire.sinks.lake import LocalLake, data_files
from tripwire.sinks.service import SinkService
from tests.fixtures.waiting import until
from tests.sinks.helpers import BASE_MS, DAY_MS, event, lake_table, send, wait_caught_up
from tests.sinks.lakes import LakeSetup
from tripwire.log.sqlite import SqliteLog


async def run_sink(lake: LakeSetup, log: SqliteLog, **cfg: object) -> None:
    """Start a sink, wait until everything in the log is in durable files, stop it."""
    service = SinkService(lake.config(**cfg), log, lake.lake)
    await service.start()
    assert await service.ready()
    try:
        await wait_caught_up(lake.lake, await log.end_offsets("events"))
    finally:
        await service.stop()
    assert not service.failed


@pytest.fixture
async def log(tmp_path: Path):
    log = SqliteLog(tmp_path / "log.db", 4)
    await log.start()
    yield log
    await log.stop()


async def test_duckdb_and_pandas_read_exactly_the_rows_sent(lake: LakeSetup, log: SqliteLog) -> None:
    sent = [event(i) for i in range(600)]
    await send(log, sent)
    rows_before = REGISTRY.get_sample_value("tripwire_sink_rows_written_total") or 0
    await run_sink(lake, log, max_file_rows=70, promote={"price": "number", "qty": "integer"})
    assert REGISTRY.get_sample_value("tripwire_sink_rows_written_total") == rows_before + 600
    assert (REGISTRY.get_sample_value("tripwire_sink_bytes_written_total") or 0) > 0

    df = lake.duckdb("SELECT * FROM lake ORDER BY message_id")
    assert len(df) == len(sent)
    assert sorted(df.message_id) == sorted(e["messageId"] for e in sent)
    by_id = {e["messageId"]: e for e in sent}
    for row in df.itertuples():
        e = by_id[row.message_id]
        assert row.anonymous_id == e["anonymousId"]
        assert row.event == "Product Added" and row.type == "track" and row.source == "web"
        assert row.properties_price == e["properties"]["price"]
        assert row.properties_qty == e["properties"]["qty"]
        assert row.properties_sku == e["properties"]["sku"]  # no catalog says so: typed from the data
        assert orjson.loads(row.properties) == {}
        assert row.context_page_url == e["context"]["page"]["url"]
        assert row.context_campaign_name == "winter" and row.context_ip == "203.0.113.0"
        assert orjson.loads(row.context) == {"screen": {"width": 1024}}
        assert int(row.timestamp.timestamp() * 1000) == BASE_MS + int(row.message_id[2:]) * 1000
        assert str(row.date)[:10] == e["timestamp"][:10]
    types = dict(lake.duckdb("DESCRIBE SELECT * FROM lake")[["column_name", "column_type"]].values)
    assert types["date"] == "DATE"
    assert types["timestamp"] == types["received_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["properties_price"] == "DOUBLE" and types["properties_qty"] == "BIGINT"

    pdf = lake.pandas()
    assert sorted(pdf.message_id) == sorted(by_id)
    # Files were cut at max_file_rows and none is visible twice.
    files = lake_table(lake.lake)
    assert files.groupby("_file").size().max() <= 70
    assert files.message_id.is_unique


async def test_late_events_land_in_their_own_date_partition(lake: LakeSetup, log: SqliteLog) -> None:
    today = [event(i) for i in range(100)]
    late = [event(1000 + i, at_ms=BASE_MS - 3 * DAY_MS + i) for i in range(5)]
    later = [event(2000 + i, at_ms=BASE_MS - 10 * DAY_MS) for i in range(3)]
    await send(log, today[:50] + late + today[50:] + later)
    await run_sink(lake, log)

    df = lake.duckdb("SELECT message_id, CAST(date AS VARCHAR) AS d FROM lake")
    got = dict(zip(df.message_id, df.d))
    assert len(got) == len(df) == 108
    for e in today + late + later:
        assert got[e["messageId"]] == e["timestamp"][:10]
    assert len({got[e["messageId"]] for e in late}) == 1 != len({got[e["messageId"]] for e in today + late})
    assert len(data_files(lake.lake)) == 3


async def test_a_new_property_mid_stream_keeps_writing_and_is_readable(lake: LakeSetup, log: SqliteLog) -> None:
    first = [event(i) for i in range(50)]
    second = [event(100 + i, props={"sku": "x", "price": 2.5, "coupon": f"C{i}", "nested": {"a": [1, 2]}})
              for i in range(50)]
    odd = [event(200, props={"price": "not a number", "qty": 3})]
    await send(log, first)
    await run_sink(lake, log, promote={"price": "number"})
    await send(log, second + odd)
    await run_sink(lake, log, promote={"price": "number"})

    df = lake.duckdb("SELECT message_id, properties, properties_price FROM lake")
    assert len(df) == 101 and df.message_id.is_unique
    rows = {r.message_id: r for r in df.itertuples()}
    assert orjson.loads(rows["m-120"].properties) == {"nested": {"a": [1, 2]}}  # the rest got columns
    assert rows["m-120"].properties_price == 2.5
    # A value that does not fit the typed column stays in the JSON, nothing is lost.
    assert pd.isna(rows["m-200"].properties_price)
    assert orjson.loads(rows["m-200"].properties) == {"price": "not a number"}
    coupons = lake.duckdb("SELECT message_id, properties_coupon FROM lake WHERE properties_coupon IS NOT NULL")
    assert len(coupons) == 50  # a column the first files do not have, read across all of them


async def test_a_repeated_message_id_gives_one_row_also_across_restarts(lake: LakeSetup, log: SqliteLog) -> None:
    sent = [event(i) for i in range(40)]
    await send(log, sent + sent[:10])
    await run_sink(lake, log)
    await send(log, sent[5:20] + [event(40)])  # client retries after the sink restarted
    await run_sink(lake, log)
    df = lake.duckdb("SELECT message_id FROM lake")
    assert sorted(df.message_id) == sorted(e["messageId"] for e in sent + [event(40)])


async def test_restart_resumes_exactly(lake: LakeSetup, log: SqliteLog) -> None:
    for round_ in range(3):
        await send(log, [event(round_ * 100 + i) for i in range(100)])
        await run_sink(lake, log, max_file_rows=33)
    df = lake.duckdb("SELECT message_id FROM lake")
    assert len(df) == 300 and df.message_id.is_unique


async def test_hourly_partitioning_gives_a_typed_hour_column(tmp_path: Path, log: SqliteLog) -> None:
    from tests.sinks.lakes import make_lake

    lake = make_lake("local", tmp_path, None, partitioning="date/hour")
    sent = [event(i * 600) for i in range(12)]  # every 10 minutes over 2 hours
    await send(log, sent)
    await run_sink(lake, log)
    df = lake.duckdb("SELECT message_id, hour, typeof(hour) AS t FROM lake")
    assert len(df) == 12 and set(df.t) == {"BIGINT"}
    for row in df.itertuples():
        e = next(e for e in sent if e["messageId"] == row.message_id)
        assert row.hour == int(e["timestamp"][11:13])


class FlakyLake(LocalLake):
    """The local lake, refusing writes while ``broken`` (an S3 outage, a full disk)."""

    broken = False

    def write(self, path: str, data: bytes) -> None:
        if self.broken:
            raise LakeError(f"cannot write {path}: the test says no")
        super().write(path, data)


async def test_a_lake_outage_costs_time_not_events(tmp_path: Path, log: SqliteLog) -> None:
    # A refused write fails the sink with nothing half written kept; its supervisor starts another, which
    # replays from the journal in the lake (and fails again while the outage lasts).
    from tests.sinks.lakes import make_lake
    from tripwire.service import Supervisor

    setup = make_lake("local", tmp_path, None, max_file_rows=20)
    lake = FlakyLake(setup.url)
    service = Supervisor(lambda: SinkService(setup.cfg, log, lake), delays_s=(0.2, 1.0))
    await service.start()
    try:
        await send(log, [event(i) for i in range(100)])
        await wait_caught_up(lake, await log.end_offsets("events"))
        lake.broken = True
        await send(log, [event(100 + i) for i in range(100)] + [event(5)])
        await until(lambda: not service.up, 30, "the sink failing on the outage")
        lake.broken = False
        await wait_caught_up(lake, await log.end_offsets("events"), timeout_s=30)
        assert service.up and service.restarts >= 1
    finally:
        await service.stop()
    df = setup.duckdb("SELECT message_id FROM lake")
    assert sorted(df.message_id) == sorted(f"m-{i}" for i in range(200))


async def test_sinks_of_one_group_share_the_partitions_on_the_embedded_log(
        lake: LakeSetup, log: SqliteLog, tmp_path: Path) -> None:
    # Two sinks on one data_dir (`tripwire run --sinks 2`, or `tripwire sink` next to `tripwire run`):
    # the group's partitions are split between them and every event is in the lake once.
    sent = [event(i, user=f"u{i % 17}") for i in range(400)]
    await send(log, sent[:200])
    first = SinkService(lake.config(), log, lake.lake)
    await first.start()
    other_process_log = SqliteLog(tmp_path / "log.db", 4)  # another handle on the same file
    await other_process_log.start()
    second = SinkService(lake.config(), other_process_log, lake.lake)
    try:
        await second.start()

        async def split() -> bool:
            a, b = first.consumer.assignment(), second.consumer.assignment()  # type: ignore[union-attr]
            return bool(a) and bool(b) and not a & b

        await until(split, 30, "the second sink to get a share of the partitions",
                    detail=lambda: (first.consumer.assignment(), second.consumer.assignment()))  # type: ignore[union-attr]
        await send(log, sent[200:])
        await wait_caught_up(lake.lake, await log.end_offsets("events"), timeout_s=60)
    finally:
        await second.stop()
        await first.stop()
        await other_process_log.stop()
    df = lake.duckdb("SELECT message_id FROM lake")
    assert sorted(df.message_id) == sorted(e["messageId"] for e in sent)


async def test_a_message_id_is_a_duplicate_only_for_the_same_source_and_visitor(tmp_path: Path, log: SqliteLog) -> None:
    # Dedup by messageId alone let anyone with the public write key suppress other visitors' events
    # by sending their ids first: six visitors sending "same-mid-1" left one row per log partition.
    from tests.sinks.lakes import make_lake

    lake = make_lake("local", tmp_path, None)
    visitors = [event(i, user=f"visitor-{i}", message_id="same-mid-1") for i in range(6)]
    retry = dict(visitors[2])  # the same visitor sending the same event again: a duplicate
    other_source = event(9, user="visitor-2", message_id="same-mid-1")
    other_source["source"] = "server"
    await send(log, visitors + [retry, other_source])
    await run_sink(lake, log)
    df = lake.duckdb("SELECT anonymous_id, source FROM lake ORDER BY ALL")
    assert list(df.itertuples(index=False, name=None)) == sorted(
        [(f"visitor-{i}", "web") for i in range(6)] + [("visitor-2", "server")])
