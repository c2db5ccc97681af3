"""The lake's layout as the sink writes it and every reader takes it, and the spine's time helpers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from tripwire.lake_layout import (
    EVENTS_TABLE,
    INVALID_TABLE,
    ColumnRegistry,
    Conflict,
    TypedColumn,
    columns_path,
    date_of,
    directory_of,
    table_of,
)
from tripwire.times import format_datetime, format_time_ms, parse_iso_ms


def test_each_path_belongs_to_one_table_and_the_column_file_to_none() -> None:
    assert table_of("date=2026-11-29/part-events-p000-o00000000000000000001.parquet") is EVENTS_TABLE
    assert table_of("date=2026-11-29/hour=3/compact-x-000.parquet") is EVENTS_TABLE
    assert table_of("_invalid/date=2026-11-29/" + INVALID_TABLE.file_name(2, 42)) is INVALID_TABLE
    assert INVALID_TABLE.file_name(2, 42) == "part-invalid-p002-o00000000000000000042.parq"
    for other in (columns_path("date"), columns_path("date/hour"), "_tripwire_sink/state/events-000.json",
                  "_tripwire_sink/x.parquet", "stray.parquet", "_invalid/date=2026-11-29/x.parquet"):
        assert table_of(other) is None, other
    assert columns_path("date/hour") == "date=0001-01-01/hour=0/0-lake-columns.parquet"


def test_partition_folders() -> None:
    assert directory_of("2026-03-04T23:59:59.999Z", "date") == "date=2026-03-04"
    assert directory_of("2026-03-04T03:00:00.000Z", "date/hour") == "date=2026-03-04/hour=3"
    assert date_of("date=2026-03-04/hour=3") == date_of("_invalid/date=2026-03-04") == "2026-03-04"
    assert date_of("_tripwire_sink") is None


def test_the_registry_reads_both_formats_and_names_what_it_cannot_read() -> None:
    registry = ColumnRegistry("date", 3, [TypedColumn("properties_price", "properties", "price", "number", "inferred",
                                                      "2026-11-29", "2026-11-30", ["Product Added"])],
                              [Conflict("properties_price", "properties", "price", "Signup", "string", "type", "2026-12-01")])
    assert ColumnRegistry.from_bytes(registry.to_bytes(), "here") == registry
    first = ColumnRegistry.from_bytes(orjson.dumps({"columns": [["traits_plan", "traits", "plan", "string"]]}), "here")
    assert first.columns == [TypedColumn("traits_plan", "traits", "plan", "string", "catalog")] and first.revision == 0
    with pytest.raises(ValueError, match="lake column registry here is unreadable"):
        ColumnRegistry.from_bytes(b"[", "here")
    with pytest.raises(ValueError, match="format 3 is newer"):
        ColumnRegistry.from_bytes(orjson.dumps({"format": 3, "columns": []}), "here")


def test_times_parse_any_iso_form_and_format_one() -> None:
    assert parse_iso_ms("2026-01-01T01:00:00+01:00") == parse_iso_ms("2026-01-01T00:00:00") == 1767225600000
    assert parse_iso_ms("2026-01-01T00:00:00.5Z", cache=False) == 1767225600500
    assert parse_iso_ms("yesterday") is None and parse_iso_ms(12) is None
    assert format_time_ms(-62135596800000) == "0001-01-01T00:00:00.000Z"  # zero-padded years
    dt = datetime(2026, 1, 1, 1, 2, 3, 456789, tzinfo=timezone(timedelta(hours=2)))
    assert format_datetime(dt) == "2025-12-31T23:02:03.456Z"
    assert format_datetime(datetime(2026, 1, 1)) == format_datetime(datetime(2026, 1, 1, tzinfo=UTC))
