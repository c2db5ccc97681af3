"""Normalised Segment envelopes to Arrow record batches, and Arrow tables to Parquet bytes.

Columns, in file order (snake_case, as Segment's warehouse loaders name them;
the names are the spine's, :mod:`tripwire.lake_layout`):

* ids and kind: ``message_id``, ``type``, ``event`` (track), ``name`` (page/screen),
  ``anonymous_id``, ``user_id``, ``previous_id`` (alias), ``group_id`` (group);
* times, ``timestamp[ms, UTC]``: ``timestamp`` (the corrected event time, which
  also picks the partition), ``original_timestamp`` (as the client sent it),
  ``sent_at``, ``received_at``;
* ``source`` (the write key's source);
* context: ``context_page_url|path|referrer|title|search``, ``context_user_agent``,
  ``context_ip`` (as the collector stored it, i.e. truncated), ``context_locale``,
  ``context_campaign_name|source|medium|term|content``, ``context_library_name|version``;
* JSON strings: ``properties`` (what was not promoted), ``traits``, ``context``
  (the rest of the context), ``extra`` (other top-level fields, e.g. integrations);
* promoted catalog properties (see :mod:`sinks.catalog`).

Partition columns (``date``, ``hour``) are not stored in the files: readers get
them, typed, from the Hive directory names.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from tripwire.lake_layout import CONTEXT_COLUMNS, JSON_COLUMNS, SOURCE_COLUMNS, TIME_COLUMNS, TOP_COLUMNS, base_columns
from tripwire.times import parse_iso_ms

from .catalog import Promoted

TS = pa.timestamp("ms", tz="UTC")
ARROW_TYPES = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_(), "date-time": TS}

_TOP = list(TOP_COLUMNS)
_TIMES = [(c, k) for c, k in TIME_COLUMNS if c != "timestamp"]  # the event time comes parsed, as ts_ms
_CONTEXT = list(CONTEXT_COLUMNS)
_KNOWN_TOP = frozenset([k for _, k in _TOP] + [k for _, k in TIME_COLUMNS] + [k for _, k in SOURCE_COLUMNS]
                       + ["context", "properties", "traits"])
_CONTEXT_GROUPS: dict[str, set[str]] = {}
for _, _group, _sub in CONTEXT_COLUMNS:
    if _sub is not None:
        _CONTEXT_GROUPS.setdefault(_group, set()).add(_sub)
_CONTEXT_TOP = frozenset(g for _, g, sub in CONTEXT_COLUMNS if sub is None)
assert JSON_COLUMNS == ("properties", "traits", "context", "extra")  # the order BatchBuilder fills them in


def base_fields() -> list[pa.Field]:
    return [pa.field(c, ARROW_TYPES[kind]) for c, kind in base_columns()]


def arrow_schema(promoted: Sequence[Promoted]) -> pa.Schema:
    return pa.schema(base_fields() + [pa.field(p.column, ARROW_TYPES[p.kind]) for p in promoted])


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _json(value: Any) -> str | None:
    return orjson.dumps(value).decode() if value else None


NOT_FITTING = object()  # fit_value: the value stays in the JSON column


def fit_value(kind: str, value: Any) -> Any:
    """The value converted for a column of ``kind``, or ``NOT_FITTING`` when it does not fit."""
    if value is None:
        return None
    if kind == "string":
        return value if isinstance(value, str) else NOT_FITTING
    if kind == "number":
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else NOT_FITTING
    if kind == "integer":
        if isinstance(value, bool):
            return NOT_FITTING
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return value if isinstance(value, int) and -(2**63) <= value < 2**63 else NOT_FITTING
    if kind == "boolean":
        return value if isinstance(value, bool) else NOT_FITTING
    ms = parse_iso_ms(value)
    return NOT_FITTING if ms is None else ms



class BatchBuilder:
    """Accumulates envelopes column by column; ``build()`` returns one record batch."""

    def __init__(self, schema: pa.Schema, promoted: Sequence[Promoted]) -> None:
        self.schema = schema
        self._promoted = list(promoted)
        self._by_field: dict[str, list[tuple[int, Promoted]]] = {"properties": [], "traits": []}
        for i, p in enumerate(self._promoted):
            self._by_field[p.field].append((i, p))
        self._top: list[list[Any]] = [[] for _ in _TOP]
        self._ts: list[int] = []
        self._times: list[list[Any]] = [[] for _ in _TIMES]
        self._source: list[Any] = []
        self._ctx: list[list[Any]] = [[] for _ in _CONTEXT]
        self._json: list[list[Any]] = [[], [], [], []]
        self._prom: list[list[Any]] = [[] for _ in self._promoted]
        self.rows = 0

    def add(self, env: Mapping[str, Any], ts_ms: int) -> None:
        get = env.get
        for col, (_, key) in zip(self._top, _TOP):
            col.append(_text(get(key)))
        self._ts.append(ts_ms)
        for col, (_, key) in zip(self._times, _TIMES):
            col.append(get(key))
        self._source.append(_text(get("source")))
        ctx = get("context")
        rest: Any = None
        if isinstance(ctx, dict) and ctx:
            for col, (_, group, sub) in zip(self._ctx, _CONTEXT):
                v = ctx.get(group)
                if sub is not None:
                    v = v.get(sub) if isinstance(v, dict) else None
                col.append(_text(v))
            rest = {}
            for k, v in ctx.items():
                if k in _CONTEXT_GROUPS and isinstance(v, dict):
                    left = {kk: vv for kk, vv in v.items() if kk not in _CONTEXT_GROUPS[k]}
                    if left:
                        rest[k] = left
                elif k not in _CONTEXT_TOP:
                    rest[k] = v
        else:
            for col in self._ctx:
                col.append(None)
        props = self._promote("properties", get("properties"))
        traits = self._promote("traits", get("traits"))
        extra = {k: v for k, v in env.items() if k not in _KNOWN_TOP}
        j = self._json
        j[0].append(_json(props))
        j[1].append(_json(traits))
        j[2].append(_json(rest))
        j[3].append(_json(extra))
        self.rows += 1

    def _promote(self, field: str, obj: Any) -> Any:
        cols = self._by_field[field]
        if not isinstance(obj, dict):  # normalised envelopes only carry objects here
            for i, _ in cols:
                self._prom[i].append(None)
            return None
        if not cols:
            return obj
        left = dict(obj)
        for i, p in cols:
            value = fit_value(p.kind, left.get(p.key))
            if value is NOT_FITTING:
                value = None  # keeps the raw value in the JSON column
            elif p.key in left:
                del left[p.key]
            self._prom[i].append(value)
        return left

    def build(self) -> pa.RecordBatch:
        arrays: list[pa.Array] = [pa.array(c, pa.string()) for c in self._top]
        arrays.append(pa.array(self._ts, pa.int64()).cast(TS))
        arrays += [_times(c) for c in self._times]
        arrays.append(pa.array(self._source, pa.string()))
        arrays += [pa.array(c, pa.string()) for c in self._ctx]
        arrays += [pa.array(c, pa.string()) for c in self._json]
        for p, c in zip(self._promoted, self._prom):
            if p.kind == "date-time":
                arrays.append(pa.array(c, pa.int64()).cast(TS))
            else:
                arrays.append(pa.array(c, ARROW_TYPES[p.kind]))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def _times(values: list[Any]) -> pa.Array:
    strings = [v if isinstance(v, str) else None for v in values]
    try:
        return pa.array(strings, pa.string()).cast(TS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Some client sent a naive or odd time: parse one by one (unusable ones become null).
        return pa.array([parse_iso_ms(v) for v in strings], pa.int64()).cast(TS)


def encode_parquet(
    table: pa.Table,
    *,
    compression: str = "zstd",
    compression_level: int | None = 3,
    row_group_rows: int = 131_072,
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """The whole Parquet file for ``table`` as bytes (written to the lake in one go)."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    buf = io.BytesIO()
    pq.write_table(
        table,
        buf,
        compression=compression,
        compression_level=compression_level if compression in ("zstd", "gzip") else None,
        row_group_size=row_group_rows,
        write_statistics=True,
    )
    return buf.getvalue()


def decode_parquet(data: bytes) -> pa.Table:
    return pq.read_table(pa.BufferReader(data))
