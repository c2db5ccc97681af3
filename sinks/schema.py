"""Normalised Segment envelopes to Arrow record batches, and Arrow tables to Parquet bytes.

Columns of the events table, in file order (snake_case, as Segment's warehouse
loaders name them; the names are the spine's, :mod:`tripwire.lake_layout`):

* ids and kind: ``message_id``, ``type``, ``event`` (track), ``name`` and
  ``category`` (page/screen), ``anonymous_id``, ``user_id``, ``previous_id``
  (alias), ``group_id`` (group);
* times, ``timestamp[ms, UTC]``: ``timestamp`` (the corrected event time, which
  also picks the partition), ``original_timestamp`` (as the client sent it),
  ``sent_at``, ``received_at``;
* ``source`` (the write key's source), ``channel`` (as RudderStack's SDKs send it);
* context: ``context_page_url|path|referrer|title|search``, ``context_user_agent``,
  ``context_ip`` (as the collector stored it, i.e. truncated), ``context_locale``,
  ``context_campaign_name|source|medium|term|content``, ``context_library_name|version``;
* JSON text: ``properties`` and ``traits`` (what has no typed column; ``{}``
  when the event had the object, NULL when it had none), ``context`` (the rest
  of the context), ``extra`` (other top-level fields, e.g. integrations);
* typed columns ``properties_<key>`` / ``traits_<key>`` (see :mod:`sinks.columns`):
  a file has those that hold a value in it, in the registry's order.

Partition columns (``date``, ``hour``) are not stored in the files: readers get
them, typed, from the Hive directory names.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from tripwire.lake_layout import (
    CONTEXT_COLUMNS,
    JSON_COLUMNS,
    SOURCE_COLUMNS,
    TIME_COLUMNS,
    TOP_COLUMNS,
    ColumnRegistry,
    base_columns,
)
from tripwire.times import format_datetime, parse_iso_ms

from .columns import NOT_FITTING, Columns, Slot, fit

TS = pa.timestamp("ms", tz="UTC")
ARROW_TYPES = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_(), "date-time": TS}

_TOP = [k for _, k in TOP_COLUMNS]
_TIMES = [k for c, k in TIME_COLUMNS if c != "timestamp"]  # the event time comes parsed, as ts_ms
_SOURCES = [k for _, k in SOURCE_COLUMNS]
_KNOWN_TOP = frozenset(_TOP + [k for _, k in TIME_COLUMNS] + _SOURCES + ["context", "properties", "traits"])
_CONTEXT_GROUPS: dict[str, set[str]] = {}
for _, _group, _sub in CONTEXT_COLUMNS:
    if _sub is not None:
        _CONTEXT_GROUPS.setdefault(_group, set()).add(_sub)
_CONTEXT_TOP = frozenset(g for _, g, sub in CONTEXT_COLUMNS if sub is None)
_BASE = base_columns()
BASE_NAMES = frozenset(c for c, _ in _BASE)
_MISSING: Any = object()
assert JSON_COLUMNS == ("properties", "traits", "context", "extra")  # the order BatchBuilder fills them in


def base_fields() -> list[pa.Field]:
    return [pa.field(c, ARROW_TYPES[kind]) for c, kind in _BASE]


def events_schema(registry: ColumnRegistry) -> pa.Schema:
    """Every column of the events table: the base columns, then the registry's typed ones."""
    return pa.schema(base_fields() + [pa.field(c.column, ARROW_TYPES[c.kind]) for c in registry.columns])


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _json(value: Any) -> str | None:
    return orjson.dumps(value).decode() if value else None


class BatchBuilder:
    """Accumulates envelopes of one partition folder column by column; ``build()`` returns one batch.

    Typed columns are decided by ``columns`` as keys are met; ``day`` (the
    folder's date) is what a new column or a conflict records as first seen.
    """

    def __init__(self, columns: Columns, day: str | None) -> None:
        self.columns = columns
        self.day = day
        self._top: list[list[Any]] = [[] for _ in _TOP]
        self._ts: list[int] = []
        self._times: list[list[Any]] = [[] for _ in _TIMES]
        self._sources: list[list[Any]] = [[] for _ in _SOURCES]
        self._ctx: list[list[Any]] = [[] for _ in CONTEXT_COLUMNS]
        self._json: list[list[Any]] = [[], [], [], []]
        self._typed: dict[str, tuple[Slot, list[int], list[Any]]] = {}
        self.rows = 0

    def add(self, env: Mapping[str, Any], ts_ms: int) -> None:
        get = env.get
        for col, key in zip(self._top, _TOP):
            col.append(_text(get(key)))
        self._ts.append(ts_ms)
        for col, key in zip(self._times, _TIMES):
            col.append(get(key))
        for col, key in zip(self._sources, _SOURCES):
            col.append(_text(get(key)))
        ctx = get("context")
        rest: Any = None
        if isinstance(ctx, dict) and ctx:
            for col, (_, group, sub) in zip(self._ctx, CONTEXT_COLUMNS):
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
        label = get("event") if get("type") == "track" else get("type")
        label = label if isinstance(label, str) else "?"
        j = self._json
        j[0].append(self._typed_values("properties", get("properties"), label))
        j[1].append(self._typed_values("traits", get("traits"), label))
        j[2].append(_json(rest))
        j[3].append(_json({k: v for k, v in env.items() if k not in _KNOWN_TOP}))
        self.rows += 1

    def _typed_values(self, field: str, obj: Any, label: str) -> str | None:
        """Move the values of ``obj`` with a typed column there; the JSON text of the rest."""
        if type(obj) is not dict:
            return None if obj is None else _text(obj)
        if not obj:
            return "{}"
        columns, slots, typed, row = self.columns, self.columns.slots[field], self._typed, self.rows
        left = {}
        for k, v in obj.items():
            slot = slots.get(k, _MISSING)
            if slot is _MISSING:
                slot = columns.discover(field, k, v, label, self.day)
            if slot is None:
                left[k] = v
                continue
            if v is None:
                continue  # a null of a typed property: the column's null
            value = fit(slot.kind, v)
            if value is NOT_FITTING:
                value = columns.misfit(slot, v, label, self.day)
                if value is NOT_FITTING:
                    left[k] = v
                    continue
            acc = typed.get(slot.column)
            if acc is None:
                acc = typed[slot.column] = (slot, [], [])
            acc[1].append(row)
            acc[2].append(value)
            if label not in slot.events:
                columns.seen_with(slot, label)
        return orjson.dumps(left).decode()

    def build(self) -> pa.RecordBatch:
        n = self.rows
        arrays: list[pa.Array] = [pa.array(c, pa.string()) for c in self._top]
        arrays.append(pa.array(self._ts, pa.int64()).cast(TS))
        arrays += [_times(c) for c in self._times]
        arrays += [pa.array(c, pa.string()) for c in self._sources]
        arrays += [pa.array(c, pa.string()) for c in self._ctx]
        arrays += [pa.array(c, pa.string()) for c in self._json]
        fields = base_fields()
        day = self.day
        for slot, rows, values in sorted(self._typed.values(), key=lambda t: t[0].order):
            if day is not None and (slot.first_seen is None or day < slot.first_seen):
                self.columns.seen_on(slot, day)
            dense: list[Any] = [None] * n
            for r, v in zip(rows, values):
                dense[r] = v
            if slot.kind == "date-time":
                arrays.append(pa.array(dense, pa.int64()).cast(TS))
            else:
                arrays.append(pa.array(dense, ARROW_TYPES[slot.kind]))
            fields.append(pa.field(slot.column, ARROW_TYPES[slot.kind]))
        return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def _times(values: list[Any]) -> pa.Array:
    strings = [v if isinstance(v, str) else None for v in values]
    try:
        return pa.array(strings, pa.string()).cast(TS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Some client sent a naive or odd time: parse one by one (unusable ones become null).
        return pa.array([parse_iso_ms(v) for v in strings], pa.int64()).cast(TS)


# -- files as the registry says ------------------------------------------------------------


def conform(table: pa.Table, registry: ColumnRegistry,
            source_of: Callable[[str], tuple[str, str] | None] = lambda _: None) -> pa.Table:
    """``table`` with the registry's types: widened columns cast, values of a column the registry
    does not have (or has with another type) moved back into their JSON column, base columns
    first (missing ones null), typed columns in the registry's order, unknown columns last.

    ``source_of(column)`` names the property of a column the registry does not know.
    """
    typed = {c.column: (i, c) for i, c in enumerate(registry.columns)}
    for name in list(table.column_names):
        if name in BASE_NAMES:
            continue
        hit = typed.get(name)
        if hit is not None:
            c = hit[1]
            have = table.column(name).type
            if have == ARROW_TYPES[c.kind]:
                continue
            if c.kind == "number" and pa.types.is_integer(have):
                table = table.set_column(table.column_names.index(name), name, table.column(name).cast(pa.float64()))
                continue
            table = _demote(table, name, c.field, c.key)
        else:
            source = source_of(name)
            if source is not None:
                table = _demote(table, name, *source)
    n = table.num_rows
    columns, fields = [], []
    for f in base_fields():
        columns.append(table.column(f.name) if f.name in table.column_names else pa.nulls(n, f.type))
        fields.append(f)
    rest = sorted((name for name in table.column_names if name not in BASE_NAMES),
                  key=lambda name: (typed[name][0] if name in typed else len(typed), name))
    for name in rest:
        columns.append(table.column(name))
        fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _demote(table: pa.Table, name: str, field: str, key: str) -> pa.Table:
    """Move the values of typed column ``name`` back into the JSON column ``field`` under ``key``."""
    values = table.column(name).to_pylist()
    has_json = field in table.column_names
    texts = table.column(field).to_pylist() if has_json else [None] * table.num_rows
    for i, v in enumerate(values):
        if v is None:
            continue
        text = texts[i]
        obj = orjson.loads(text) if text else {}
        obj[key] = format_datetime(v) if isinstance(v, datetime) else v
        texts[i] = orjson.dumps(obj).decode()
    table = table.drop_columns([name])
    array = pa.array(texts, pa.string())
    if has_json:
        return table.set_column(table.column_names.index(field), field, array)
    return table.append_column(field, array)


def concat(tables: Sequence[pa.Table]) -> pa.Table:
    """One table of ``tables`` whose columns may differ (missing ones become null)."""
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="default")


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
