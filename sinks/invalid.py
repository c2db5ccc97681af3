"""The invalid table: events the collector acknowledged but refused, next to the good ones.

The collector writes an event that breaks its catalog schema (or, with
``strict``, is not in the catalog; or is older than the collector accepts) to
the ``invalid`` topic as ``{"reason", "field", "message", "messageId",
"source", "receivedAt", "event": <the envelope>}``. The sink writes those
records to ``<lake>/_invalid/date=<received date>/part-invalid-p<partition>-o<offset>.parq``
with the columns of :data:`tripwire.lake_layout.INVALID_COLUMNS`: when, why
(``reason``, ``message``, and ``field``: the schema path that failed), who
(``source``, ``message_id``, ``anonymous_id``, ``user_id``), what (``type``,
``event``, ``timestamp``) and the event itself as JSON (``raw_event``), with
its PII already hashed by the collector. Partitioned by the day it was
received, so a burst of old events lands in today's folder.

Why these paths: the events table's readers glob ``<lake>/**/*.parquet``
(DuckDB descends into every folder) or discover the root with pyarrow (which
skips ``_`` folders); neither ever reads an invalid row. Read this table with
``read_parquet('<lake>/_invalid/**/*.parq', hive_partitioning=true)`` or
``pandas.read_parquet('<lake>/_invalid')``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pyarrow as pa

from tripwire.lake_layout import INVALID_COLUMNS, INVALID_TABLE, directory_of
from tripwire.log import Record
from tripwire.times import format_time_ms, parse_iso_ms

from .schema import ARROW_TYPES, TS, concat

SCHEMA = pa.schema([pa.field(c, ARROW_TYPES[kind]) for c, kind in INVALID_COLUMNS])
_TOP = ("reason", "field", "message", "source", "messageId")
_EVENT = ("type", "event", "anonymousId", "userId")


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


class InvalidRows:
    """How records of the invalid topic become rows of the invalid table."""

    table = INVALID_TABLE

    def route(self, record: Mapping[str, Any], log_record: Record) -> tuple[str, int]:
        """The folder (by the received date; else the log's append time) and the row's time."""
        received = record.get("receivedAt")
        ms = parse_iso_ms(received)
        if ms is None:
            ms = log_record.timestamp_ms
            received = format_time_ms(ms)
        elif not (isinstance(received, str) and len(received) == 24 and received[-1] == "Z"):
            received = format_time_ms(ms)
        return INVALID_TABLE.prefix + directory_of(received, "date"), ms

    def builder(self, directory: str) -> InvalidBuilder:
        return InvalidBuilder()

    def finish(self, batches: Sequence[pa.RecordBatch]) -> pa.Table:
        return concat([pa.Table.from_batches([b]) for b in batches])


class InvalidBuilder:
    def __init__(self) -> None:
        self._received: list[int] = []
        self._top: list[list[Any]] = [[] for _ in _TOP]
        self._event: list[list[Any]] = [[] for _ in _EVENT]
        self._timestamp: list[int | None] = []
        self._raw: list[str | None] = []
        self.rows = 0

    def add(self, record: Mapping[str, Any], ts_ms: int) -> None:
        self._received.append(ts_ms)
        for col, key in zip(self._top, _TOP):
            col.append(_text(record.get(key)))
        env = record.get("event")
        if not isinstance(env, dict):
            env = {}
        for col, key in zip(self._event, _EVENT):
            col.append(_text(env.get(key)))
        self._timestamp.append(parse_iso_ms(env.get("timestamp")))
        raw = record.get("event")
        self._raw.append(None if raw is None else orjson.dumps(raw).decode())
        self.rows += 1

    def build(self) -> pa.RecordBatch:
        arrays: list[pa.Array] = [pa.array(self._received, pa.int64()).cast(TS)]
        arrays += [pa.array(c, pa.string()) for c in self._top]
        arrays += [pa.array(c, pa.string()) for c in self._event]
        arrays.append(pa.array(self._timestamp, pa.int64()).cast(TS))
        arrays.append(pa.array(self._raw, pa.string()))
        return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)
