"""Sinks of one lake agree on column types through the lake's registry (local and S3)."""

from __future__ import annotations

import threading

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from tripwire.lake_layout import ColumnRegistry, columns_path
from tripwire.log.memory import MemoryLog
from tripwire.sinks.registry import open_columns, publish, read_registry
from tripwire.sinks.writer import LakeWriter
from tests.sinks.helpers import event, lake_table, send
from tests.sinks.lakes import LakeSetup


async def test_two_sinks_that_type_a_new_property_differently_agree_on_the_first_published(lake: LakeSetup) -> None:
    # Two sinks own different log partitions and meet property "code" at the same time: one sees
    # a number, the other a string. The first to publish fixes the type; the other's values go
    # to the JSON column of their rows, and nothing is lost.
    from tripwire.log.partition import partition_for

    log = MemoryLog(2)
    await log.start()
    users = {partition_for(f"u{i}".encode(), 2): f"u{i}" for i in range(20)}  # a visitor in each partition
    numbers = [event(i, user=users[0], props={"code": 7 + i}) for i in range(5)]
    strings = [event(100 + i, user=users[1], props={"code": f"C-{i}"}) for i in range(5)]
    await send(log, numbers + strings)
    partitions = {p: await log.read("events", p, 0, 100) for p in range(2)}
    by_code = {type(orjson.loads(r[0].value)["properties"]["code"]): p for p, r in partitions.items()}
    a, b = LakeWriter(lake.lake, lake.cfg), LakeWriter(lake.lake, lake.cfg)
    a.assign(by_code[int])
    b.assign(by_code[str])
    a.process(partitions[by_code[int]])
    b.process(partitions[by_code[str]])  # both decided before either published
    a.close()
    b.close()
    registry = read_registry(lake.lake)
    assert registry is not None
    code = registry.column("properties_code")
    assert code is not None and code.kind == "integer"
    assert [(c.column, c.kind, c.why) for c in registry.conflicts] == [("properties_code", "string", "type")]
    df = lake_table(lake.lake)
    assert len(df) == 10
    rows = {r.message_id: r for r in df.itertuples()}
    for e in numbers:
        assert rows[e["messageId"]].properties_code == e["properties"]["code"]
    for e in strings:  # back in the JSON, where an analyst finds them
        assert orjson.loads(rows[e["messageId"]].properties) == e["properties"]
    for path in lake.lake.list("", ".parquet"):
        schema = pq.read_schema(pa.BufferReader(lake.lake.read(path)))
        assert "properties_code" not in schema.names or schema.field("properties_code").type == pa.int64()
    assert len(lake.pandas()) == 10 and lake.duckdb("SELECT sum(properties_code) AS s FROM lake").s[0] == 45


def test_concurrent_publishers_lose_no_column_and_the_column_file_keeps_up(lake: LakeSetup) -> None:
    # Registry updates are compare-and-swap (an flock locally, a conditional PUT on S3): sinks
    # publishing at the same moment each add their columns, none overwrites another's.
    open_columns(lake.lake, lake.cfg)
    errors: list[BaseException] = []

    def sink(n: int) -> None:
        try:
            for round_ in range(3):
                columns = open_columns(lake.lake, lake.cfg)
                columns.discover("properties", f"p{n}_{round_}", 1, "E", "2026-01-01")
                publish(lake.lake, columns, lake.cfg)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sink, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    registry = read_registry(lake.lake)
    assert registry is not None
    assert sorted(c.column for c in registry.columns) == sorted(f"properties_p{n}_{r}" for n in range(4) for r in range(3))
    data = lake.lake.read(columns_path(lake.cfg.partitioning))
    assert data is not None
    schema = pq.read_schema(pa.BufferReader(data))
    assert {c.column for c in registry.columns} <= set(schema.names)  # no older registry wrote it last
    assert int(schema.metadata[b"tripwire.revision"]) == registry.revision


def test_a_registry_of_the_first_format_still_loads(lake: LakeSetup) -> None:
    lake.lake.write("_tripwire_sink/schema.json", orjson.dumps(
        {"columns": [["properties_price", "properties", "price", "number"]], "partitioning": "date"}))
    columns = open_columns(lake.lake, lake.cfg)
    assert [(s.column, s.kind, s.origin) for s in columns.ordered()] == [("properties_price", "number", "catalog")]
    assert ColumnRegistry.from_bytes(lake.lake.read("_tripwire_sink/schema.json") or b"", "x").columns[0].kind == "number"
