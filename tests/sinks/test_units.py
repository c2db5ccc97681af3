"""The sink's parts on their own: catalog promotion, envelope columns, dedup, config."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from tripwire.lake_layout import ColumnRegistry
from tripwire.sinks.catalog import Promoted, read_catalog
from tripwire.sinks.config import SinkConfig, sink_config
from tripwire.sinks.dedup import FORMAT as DEDUP_FORMAT
from tripwire.sinks.dedup import Dedup
from tripwire.sinks.errors import CatalogError
from tripwire.sinks.lake import LocalLake
from tripwire.sinks.columns import Columns
from tripwire.sinks.registry import declared_columns, open_columns
from tripwire.sinks.schema import BatchBuilder
from tripwire.sinks.service import SinkService, create_service
from tripwire.sinks.tables import directory_for
from tests.sinks.helpers import event
from tripwire.config import ConfigError, from_dict, load_config
from tripwire.log.memory import MemoryLog

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "catalog.json"


def test_the_example_catalog_promotes_scalar_properties_with_their_types() -> None:
    cols = {(p.field, p.key): p for p in read_catalog(EXAMPLE)}
    assert cols[("properties", "sku")].kind == "string"
    assert cols[("properties", "quantity")].kind == "integer"
    assert cols[("properties", "price")] == Promoted("properties_price", "properties", "price", "number")


def test_catalog_types_merge_across_events_and_odd_ones_stay_json(tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(orjson.dumps({"events": {
        "A": {"schema": {"properties": {"n": {"type": "integer"}, "x": {"type": "string"}, "o": {"type": "object"},
                                        "when": {"type": "string", "format": "date-time"}, "Odd Name!": {"type": ["boolean", "null"]}}}},
        "B": {"schema": {"properties": {"n": {"type": "number"}, "x": {"type": "integer"}}}},
    }, "traits": {"schema": {"properties": {"plan": {"type": "string"}}}}}).decode())
    cols = {p.column: p.kind for p in read_catalog(path)}
    assert cols == {"properties_n": "number", "properties_when": "date-time", "properties_odd_name": "boolean",
                    "traits_plan": "string"}


def test_an_enum_or_const_without_a_type_is_typed_by_its_values(tmp_path: Path) -> None:
    # {"enum": ["free", "pro"]} (the example catalog's traits.plan) is as much a string as {"type": "string"}.
    path = tmp_path / "catalog.json"
    path.write_text(orjson.dumps({"events": {"A": {"schema": {"properties": {
        "plan": {"enum": ["free", "pro", None]}, "level": {"enum": [1, 2, 3]}, "ratio": {"enum": [1, 2.5]},
        "flag": {"const": True}, "mixed": {"enum": ["a", 1]}, "boolint": {"enum": [True, 1]},
        "typed": {"type": "string", "enum": ["x"]}, "nothing": {"enum": []},
    }}}}}).decode())
    cols = {p.column: p.kind for p in read_catalog(path)}
    assert cols == {"properties_plan": "string", "properties_level": "integer", "properties_ratio": "number",
                    "properties_flag": "boolean", "properties_typed": "string"}
    assert {p.column: p.kind for p in read_catalog(EXAMPLE)}["traits_plan"] == "string"


def test_only_surprising_json_columns_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # An object or array property stays JSON by design: no INFO line on every start and lake command.
    path = tmp_path / "catalog.json"
    path.write_text(orjson.dumps({"events": {
        "A": {"schema": {"properties": {"shipping": {"type": "object"}, "tags": {"type": "array"}, "n": {"type": "string"}}}},
        "B": {"schema": {"properties": {"n": {"type": "boolean"}}}},
    }}).decode())
    with caplog.at_level("INFO", logger="tripwire.sinks.catalog"):
        assert read_catalog(path) == []
    assert [r.getMessage() for r in caplog.records] == [
        "catalog property properties.n has no single scalar type; it stays in the JSON column"]


def test_a_broken_catalog_is_named(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        read_catalog(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CatalogError, match="bad.json"):
        read_catalog(tmp_path / "bad.json")


def test_the_catalog_declares_columns_and_an_existing_column_keeps_its_type(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path)
    first = open_columns(lake, SinkConfig(promote={"qty": "integer"})).registry
    assert [(c.column, c.kind, c.origin) for c in first.columns] == [("properties_qty", "integer", "promote")]
    # The catalog later adds a column and says number for qty: the new column is there at once, and
    # qty widens (int64 files read as double); a type the files cannot be read as is refused.
    later = open_columns(lake, SinkConfig(promote={"qty": "number", "coupon": "string"})).registry
    assert [(c.column, c.kind) for c in later.columns] == [("properties_qty", "number"), ("properties_coupon", "string")]
    again = open_columns(lake, SinkConfig(promote={"coupon": "integer"})).registry  # dropped, retyped
    assert [(c.column, c.kind) for c in again.columns] == [("properties_qty", "number"), ("properties_coupon", "string")]
    assert again.revision == later.revision  # nothing changed: nothing written


def columns_for(promote: dict[str, str] | None = None, **kwargs: object) -> Columns:
    registry = ColumnRegistry("date", 0, declared_columns(SinkConfig(promote=promote or {})))
    return Columns(registry, **kwargs)  # type: ignore[arg-type]


def build(columns: Columns, *envs: dict[str, object], day: str = "2026-01-01") -> list[dict[str, object]]:
    builder = BatchBuilder(columns, day)
    for i, e in enumerate(envs):
        builder.add(e, 1000 + i)
    return pa.Table.from_batches([builder.build()]).to_pylist()


def test_envelope_columns_and_declared_columns() -> None:
    columns = columns_for({"price": "number", "qty": "integer", "when": "date-time", "traits.plan": "string"},
                          infer=False)
    e = event(1, props={"price": 3, "qty": 2.0, "when": "2026-01-02T03:04:05Z", "other": [1]})
    e["integrations"] = {"All": False}
    ident = {"type": "identify", "userId": "u1", "messageId": "x", "traits": {"plan": "pro", "age": 3},
             "timestamp": "2026-01-01T00:00:00.000Z", "receivedAt": "2026-01-01T00:00:00.000Z",
             "originalTimestamp": "2026-01-01T01:00:00+01:00"}
    page = {"type": "page", "anonymousId": "a", "messageId": "p", "name": "Home", "category": "Docs", "channel": "web",
            "properties": {}}
    rows = build(columns, e, ident, page)
    assert rows[0]["properties_price"] == 3.0 and rows[0]["properties_qty"] == 2
    assert rows[0]["properties_when"].isoformat() == "2026-01-02T03:04:05+00:00"
    assert orjson.loads(rows[0]["properties"]) == {"other": [1]}
    assert orjson.loads(rows[0]["extra"]) == {"integrations": {"All": False}}
    assert rows[0]["context_library_name"] == "t.js" and rows[0]["context_user_agent"] == "UA/1.0"
    assert rows[1]["traits_plan"] == "pro" and orjson.loads(rows[1]["traits"]) == {"age": 3}
    assert rows[1]["user_id"] == "u1" and rows[1]["anonymous_id"] is None and rows[1]["properties"] is None
    assert rows[1]["original_timestamp"].isoformat() == "2026-01-01T00:00:00+00:00"
    # Segment's page category and RudderStack's channel have columns; an empty properties object stays one.
    assert (rows[2]["category"], rows[2]["channel"], rows[2]["extra"], rows[2]["properties"]) == ("Docs", "web", None, "{}")


def test_types_are_inferred_from_the_first_value_and_integer_widens_to_number() -> None:
    columns = columns_for()
    rows = build(columns, event(1, props={"n": 1, "f": 1.5, "b": True, "s": "x", "t": "2026-01-02T03:04:05Z",
                                          "o": {"a": 1}, "l": [1], "z": None}),
                 event(2, props={"n": 2.5, "f": 2, "b": 1, "s": 5, "t": "soon", "big": 2**64 - 1}))
    kinds = {s.column: s.kind for s in columns.ordered()}
    assert kinds == {"properties_n": "number", "properties_f": "number", "properties_b": "boolean",
                     "properties_s": "string", "properties_t": "date-time"}  # no column for o, l, z, big
    assert [r["properties_n"] for r in rows] == [1.0, 2.5] and [r["properties_f"] for r in rows] == [1.5, 2.0]
    assert rows[0]["properties_t"].isoformat() == "2026-01-02T03:04:05+00:00"
    assert orjson.loads(rows[0]["properties"]) == {"o": {"a": 1}, "l": [1], "z": None}
    # What does not fit stays in the JSON, nothing is lost, and each kind of misfit is recorded once.
    assert orjson.loads(rows[1]["properties"]) == {"b": 1, "s": 5, "t": "soon", "big": 2**64 - 1}
    assert rows[1]["properties_b"] is None and rows[1]["properties_s"] is None
    proposal = columns.proposal()
    assert proposal.widened == {"properties_n": "2026-01-01"}
    assert {(c.column, c.kind, c.why, c.event) for c in proposal.conflicts} == {
        ("properties_b", "integer", "type", "Product Added"), ("properties_s", "integer", "type", "Product Added"),
        ("properties_t", "string", "type", "Product Added")}
    assert {c.column: c.kind for c in proposal.new}["properties_n"] == "number"


def test_declared_columns_do_not_widen_and_names_and_limits_are_conflicts() -> None:
    columns = columns_for({"qty": "integer"}, max_columns=3)
    rows = build(columns, event(1, props={"qty": 1.5, "price": 1, "Price": 2, "a": "x", "b": "y"}))
    assert "properties_qty" not in rows[0] and rows[0]["properties_price"] == 1  # a file has the columns it fills
    assert orjson.loads(rows[0]["properties"]) == {"qty": 1.5, "Price": 2, "b": "y"}
    assert {(c.column, c.why) for c in columns.proposal().conflicts} == {
        ("properties_qty", "type"), ("properties_price", "name"), ("properties_b", "limit")}


def test_random_property_names_cannot_grow_columns_or_memory_without_bound() -> None:
    columns = columns_for(max_columns=50)
    for i in range(300):
        build(columns, event(i, props={f"k{i}-{j}": j for j in range(100)} | {f"o{i}": {"a": 1}, "x" * 500: 1}))
    assert len(columns.by_column) == 50
    assert len(columns.slots["properties"]) <= 10_000 and len(columns.proposal().conflicts) <= 1000
    assert all(len(c.key) <= 128 for c in columns.proposal().conflicts)


def test_times_a_client_sent_oddly_are_parsed_or_left_empty() -> None:
    builder = BatchBuilder(columns_for(), None)
    for i, original in enumerate(["2026-01-01T00:00:00", "yesterday", None]):
        builder.add({"type": "track", "event": "E", "messageId": str(i), "originalTimestamp": original}, 0)
    rows = builder.build().to_pylist()
    assert rows[0]["original_timestamp"].isoformat() == "2026-01-01T00:00:00+00:00"  # naive means UTC
    assert rows[1]["original_timestamp"] is None and rows[2]["original_timestamp"] is None


def test_directory_for_uses_utc_event_time() -> None:
    assert directory_for("2026-03-04T23:59:59.999Z", "date") == ("date=2026-03-04", 1772668799999)
    assert directory_for("2026-03-05T01:30:00+02:00", "date/hour") == ("date=2026-03-04/hour=23", 1772667000000)
    assert directory_for("garbage", "date") is None


def seen(d: Dedup, mid: str, offset: int, ts_ms: int, key: bytes = b"v1", source: str = "web") -> bool:
    return d.seen(source, key, mid, offset, ts_ms)


def test_dedup_replays_the_same_answers_and_survives_a_restart() -> None:
    d = Dedup(window_ms=86_400_000, max_ids=1000)
    assert [seen(d, m, o, 1000) for o, m in enumerate(["a", "b", "a", "c", "b"])] == [False, False, True, False, True]
    saved = d.take_segment()
    assert saved is not None and d.take_segment() is None
    again = Dedup(86_400_000, 1000)
    again.load([(DEDUP_FORMAT, saved)])
    # Replaying offsets 2.. (as after a crash): the same answers, and offset 0's id is not its own duplicate.
    assert [seen(again, m, o, 1000) for o, m in [(2, "a"), (3, "c"), (4, "b")]] == [True, False, True]
    assert seen(again, "a", 0, 1000) is False and seen(again, "a", 7, 1000) is True


def test_dedup_scopes_ids_by_source_and_log_key() -> None:
    d = Dedup(window_ms=86_400_000, max_ids=1000)
    assert seen(d, "same", 0, 1000, key=b"visitor-1") is False
    assert seen(d, "same", 1, 1000, key=b"visitor-2") is False  # another visitor's event
    assert seen(d, "same", 2, 1000, key=b"visitor-1", source="server") is False  # another source's
    assert seen(d, "same", 3, 1000, key=b"visitor-1") is True  # a retry
    # No two scopes run together: ("ab", "c") is not ("a", "bc").
    assert seen(d, "x", 4, 1000, key=b"c", source="ab") is False
    assert seen(d, "x", 5, 1000, key=b"bc", source="a") is False


def test_dedup_forgets_after_the_window_and_stays_bounded() -> None:
    d = Dedup(window_ms=1000, max_ids=100)
    seen(d, "old", 0, 0)
    for i in range(1, 300):
        seen(d, f"m{i}", i, i * 20_000)  # 20 s apart
        d.expire()
    assert len(d) <= 100 and d.evicted_early > 0
    assert seen(d, "old", 400, 6_000_000 + 3_700_000) is False  # long gone: a new event
    seen(d, "new", 401, 6_000_000 + 3_700_000)
    d.expire()
    snap = Dedup(1000, 100)
    snap.load(d.snapshot())
    assert len(snap) == len(d) <= 3 and seen(snap, "new", 500, 9_700_001)


def test_dedup_at_its_cap_holds_no_more_memory_as_ids_go_by() -> None:
    # At the cap every poll adds ids at the end and evicts as many at the front. The table must
    # stay the size it had when the cap was reached (a dict used as a queue keeps the slots of
    # deleted keys, then resizes for three times the keys it holds: twice the table, for good).
    cap = 30_000
    d = Dedup(window_ms=86_400_000, max_ids=cap)
    offset = 0

    def poll(n: int) -> None:
        nonlocal offset
        for _ in range(n):
            seen(d, f"m{offset}", offset, 1000)
            offset += 1
        d.expire()
        d.take_segment()  # as each flush does

    while offset < cap:
        poll(500)
    at_cap = sys.getsizeof(d._ids)
    largest = at_cap
    while offset < 6 * cap:
        poll(500)
        largest = max(largest, sys.getsizeof(d._ids))
    assert len(d) == cap and d.evicted_early == 5 * cap
    assert largest <= at_cap
    # Still exact: the newest ids are duplicates, the evicted ones are new events again.
    assert seen(d, f"m{offset - 1}", offset, 1000) is True
    assert seen(d, "m0", offset + 1, 1000) is False


def test_a_state_or_segment_of_another_format_is_refused_by_name(tmp_path: Path) -> None:
    from tripwire.sinks.errors import StateError
    from tripwire.sinks.state import load_state, state_path

    lake = LocalLake(tmp_path)
    lake.write(state_path("events", 0), orjson.dumps({
        "version": 1, "topic": "events", "partition": 0, "resume": 2, "closed": [], "pending": [],
        "dedup": [[1, 1000]], "seq": 1}))
    with pytest.raises(StateError, match=r"sink state .*events-000.* has version 1, expected 2"):
        load_state(lake, "events", 0)
    with pytest.raises(ValueError, match="message-id segment format 1 is unknown"):
        Dedup(1000, 10).load([(1, b"")])


def test_config_defaults_env_overrides_and_errors(tmp_path: Path) -> None:
    cfg = sink_config(from_dict({"data_dir": str(tmp_path)}))
    assert cfg.lake_url == str((tmp_path / "lake").resolve()) and cfg.partitioning == "date"
    env = {"TRIPWIRE_SINK__LAKE_URL": "s3://bucket/lake/", "TRIPWIRE_SINK__MAX_FILE_AGE_S": "60",
           "TRIPWIRE_SINK__PROMOTE": '{ price = "number" }'}
    cfg = sink_config(load_config(None, env))
    assert cfg.lake_url == "s3://bucket/lake" and cfg.max_file_age_s == 60 and cfg.promote == {"price": "number"}
    aws = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "AWS_DEFAULT_REGION": "eu-west-1"}
    assert cfg.storage_options(aws) == {"key": "k", "secret": "s", "client_kwargs": {
        "endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"}}
    mine = SinkConfig(s3_endpoint_url="http://minio:9000", s3_key="a", s3_secret="b", s3_region="x")
    assert mine.storage_options(aws)["client_kwargs"] == {"endpoint_url": "http://minio:9000", "region_name": "x"}
    with pytest.raises(ConfigError, match="sink.partitioning"):
        sink_config(from_dict({"sink": {"partitioning": "week"}}))
    with pytest.raises(ConfigError, match="sink.promote.price"):
        sink_config(from_dict({"sink": {"promote": {"price": "money"}}}))
    with pytest.raises(ConfigError, match="sink.lake_url"):
        sink_config(from_dict({"sink": {"lake_url": "ftp://x"}}))


def test_the_collector_catalog_is_used_unless_the_sink_names_one(tmp_path: Path) -> None:
    cfg = sink_config(from_dict({"collector": {"catalog": str(EXAMPLE)}}))
    assert cfg.catalog == str(EXAMPLE)
    assert sink_config(from_dict({"collector": {"catalog": "a.json"}, "sink": {"catalog": "b.json"}})).catalog.endswith("b.json")


def test_create_service_for_tripwire_run(tmp_path: Path) -> None:
    config = from_dict({"data_dir": str(tmp_path)})
    service = create_service(config, MemoryLog())
    assert isinstance(service, SinkService) and service.name == "sink"
    assert create_service(from_dict({"data_dir": str(tmp_path), "sink": {"enabled": False}}), MemoryLog()) is None


def test_a_lake_keeps_the_partitioning_it_was_started_with(tmp_path: Path) -> None:
    from tripwire.sinks.errors import SinkError

    lake = LocalLake(tmp_path)
    open_columns(lake, SinkConfig(partitioning="date"))
    with pytest.raises(SinkError, match="partitioned by 'date'"):
        open_columns(lake, SinkConfig(partitioning="date/hour"))
