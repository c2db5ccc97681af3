"""Reading the Parquet lake back as Segment envelopes, day by day in event-time order (backtests).

The layout is the spine's (:mod:`tripwire.lake_layout`): ``<root>/date=YYYY-MM-DD[/hour=H]/*.parquet``
with Segment-envelope columns in snake_case, the rest of ``properties``/``traits``/
``context``/``extra`` as JSON strings, and typed property columns listed in the
column registry; files may differ in their typed columns (each file is read on
its own; a column a file lacks is a property its events did not carry). The
column file (no rows) and the invalid table (``_invalid/``) are not events.
This module only reads that layout; it does not import the sink.

Days are streamed in time order without holding them (:mod:`rules.lakeorder`). Given the
envelope fields a replay reads (:func:`rules.fields.fields_read`), only the columns that can
hold them are read (:func:`lake_columns`): the envelopes lack the rest, and read the same.
"""

from __future__ import annotations

from collections.abc import Collection, Generator, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from tripwire.lake_layout import (
    COLUMNS_FILE,
    CONTEXT_COLUMNS,
    REGISTRY_PATH,
    SOURCE_COLUMNS,
    TIME_COLUMNS,
    TOP_COLUMNS,
    ColumnRegistry,
)
from tripwire.times import format_datetime, format_time_ms

from .errors import RulesError

if TYPE_CHECKING:  # pyarrow is imported where a lake is read: importing the rules room stays light
    import pyarrow as pa

    from .lakeorder import Batches

_TOP = dict(TOP_COLUMNS + SOURCE_COLUMNS)
_TIMES = dict(TIME_COLUMNS)
_CONTEXT = {c: (group, key) for c, group, key in CONTEXT_COLUMNS}
_BY_FIELD = {key: col for col, key in TOP_COLUMNS + SOURCE_COLUMNS + TIME_COLUMNS}
_CONTEXT_GROUPS: dict[str, list[tuple[str, str | None]]] = {}
for _col, _group, _key in CONTEXT_COLUMNS:
    _CONTEXT_GROUPS.setdefault(_group, []).append((_col, _key))


class LakeReadError(RulesError):
    pass


def _iso(value: Any) -> Any:
    return format_datetime(value) if isinstance(value, datetime) else value


def _json(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


class _Layout:
    """How the columns of one schema make an envelope (:func:`row_to_envelope`): only the columns it has
    are looked at, in the order that gives every envelope the same key order."""

    __slots__ = ("top", "times", "props", "traits", "typed", "context", "ctx", "extra")

    def __init__(self, names: list[str], promoted: Mapping[str, tuple[str, str]]) -> None:
        pos = {n: i for i, n in enumerate(names)}
        self.top = [(pos[c], key) for c, key in _TOP.items() if c in pos]
        self.times = [(pos[c], key) for c, key in _TIMES.items() if c in pos]
        self.props, self.traits = pos.get("properties"), pos.get("traits")
        self.typed = [(pos[c], field == "properties", key) for c, (field, key) in promoted.items() if c in pos]
        self.context, self.extra = pos.get("context"), pos.get("extra")
        self.ctx = [(pos[c], group, key) for c, (group, key) in _CONTEXT.items() if c in pos]

    def envelope(self, row: tuple[Any, ...] | list[Any]) -> dict[str, Any]:
        env: dict[str, Any] = {}
        for i, key in self.top:
            if row[i] is not None:
                env[key] = row[i]
        for i, key in self.times:
            if row[i] is not None:
                env[key] = _iso(row[i])
        raw_props = None if self.props is None else row[self.props]
        props = _json(raw_props) or {}
        traits = (None if self.traits is None else _json(row[self.traits])) or {}
        for i, is_props, key in self.typed:
            value = row[i]
            if value is not None:
                if type(value) is float and value.is_integer() and abs(value) < 2**53:
                    value = int(value)  # a "number" column is float64; the event said 150, not 150.0 (payloads)
                (props if is_props else traits)[key] = _iso(value)
        if props or raw_props is not None or env.get("type") in ("track", "page", "screen"):
            env["properties"] = props
        if traits:
            env["traits"] = traits
        ctx = (None if self.context is None else _json(row[self.context])) or {}
        for i, group, sub in self.ctx:
            value = row[i]
            if value is None:
                continue
            if sub is None:
                ctx[group] = value
            else:
                ctx.setdefault(group, {})[sub] = value
        if ctx:
            env["context"] = ctx
        if self.extra is not None:
            extra = _json(row[self.extra])
            if isinstance(extra, dict):
                for k, v in extra.items():
                    env.setdefault(k, v)
        return env


def row_to_envelope(row: Mapping[str, Any], promoted: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """The envelope of a row of the events table (column -> value); ``promoted``: typed column -> (field, key)."""
    names = list(row)
    return _Layout(names, promoted).envelope([row[n] for n in names])


def lake_columns(fields: Collection[tuple[str, ...]], promoted: Mapping[str, tuple[str, str]]) -> frozenset[str]:
    """The columns that can hold the envelope ``fields`` (paths), as the sink writes them.

    Top-level fields and context values with a column of their own are only there (the sink puts
    every such value in its column, as JSON text when it is not a string); a property or trait may
    be in its typed column or in the JSON column (a value of another type, a file written before
    the column existed), so both are read; anything else is in a JSON column."""
    out: set[str] = set()
    for path in fields:
        head = path[0]
        if head in _BY_FIELD:
            out.add(_BY_FIELD[head])
        elif head in ("properties", "traits"):
            out.add(head)
            out.update(c for c, (f, k) in promoted.items() if f == head and (len(path) == 1 or k == path[1]))
        elif head == "context":
            group = _CONTEXT_GROUPS.get(path[1]) if len(path) > 1 else None
            if group is None:  # the whole context, or a part with no column
                out.add("context")
                if len(path) == 1:
                    out.update(_CONTEXT)
            elif group[0][1] is None:  # context.userAgent, .ip, .locale: a column each, never in the JSON
                out.add(group[0][0])
            else:
                mine = [c for c, key in group if len(path) > 2 and key == path[2]]
                out.update(mine or ["context", *(c for c, _ in group)])
        else:
            out.add("extra")
    return frozenset(out)


def batch_to_envelopes(batch: pa.RecordBatch, promoted: Mapping[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """:func:`row_to_envelope` of each row of ``batch``. Times are formatted from their milliseconds, as
    :func:`tripwire.times.format_datetime` formats them, without a datetime each."""
    import pyarrow as pa

    from .lakeorder import ms_times

    names = batch.schema.names
    columns = []
    for i, column in enumerate(batch.columns):
        if pa.types.is_timestamp(column.type):
            columns.append([None if ms is None else format_time_ms(ms)
                            for ms in ms_times(column, names[i]).to_pylist()])
        else:
            columns.append(column.to_pylist())
    envelope = _Layout(names, promoted).envelope
    return [envelope(values) for values in zip(*columns)]


class LakeReader:
    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **dict(storage_options or {}))
        except Exception as exc:  # noqa: BLE001 - any fsspec/s3fs failure names the lake
            raise LakeReadError(f"lake {url} cannot be opened: {exc}") from exc
        self.root = self.root.rstrip("/")
        self.promoted = self._promoted()

    def _promoted(self) -> dict[str, tuple[str, str]]:
        path = f"{self.root}/{REGISTRY_PATH}"
        try:
            data = self.fs.cat_file(path)
        except (FileNotFoundError, OSError):
            return {}
        try:
            registry = ColumnRegistry.from_bytes(data, path)
        except ValueError as exc:
            raise LakeReadError(str(exc)) from None
        return {c.column: (c.field, c.key) for c in registry.columns}

    def days(self, since: str | None = None, until: str | None = None) -> list[tuple[str, list[str]]]:
        """``[(date, [parquet files])]`` in date order, ``since <= date <= until``."""
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError as exc:
            raise LakeReadError(f"lake {self.url} does not exist") from exc
        out = []
        for entry in sorted(entries):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if not name.startswith("date="):
                continue
            day = name[5:]
            if (since and day < since) or (until and day > until):
                continue
            files = sorted(f for f in self.fs.find(entry)
                           if f.endswith(".parquet") and "/." not in f and not f.endswith("/" + COLUMNS_FILE))
            if files:
                out.append((day, files))
        return out

    def count(self, days: list[tuple[str, list[str]]]) -> int:
        import pyarrow.parquet as pq

        total = 0
        for _, files in days:
            for f in files:
                with self.fs.open(f, "rb") as fh:
                    total += pq.ParquetFile(fh).metadata.num_rows
        return total

    def envelopes(self, days: list[tuple[str, list[str]]], fields: Collection[tuple[str, ...]] | None = None,
                  ) -> Iterator[tuple[int | None, dict[str, Any] | None]]:
        """``(time ms, envelope)`` of every event of ``days`` in time order, a day at a time (days never overlap
        in time); ``(None, None)`` for a row without a time. ``fields``: the envelope paths wanted (None: all)."""
        from .lakeorder import day_in_order

        wanted = None if fields is None else lake_columns(fields, self.promoted)
        promoted = self.promoted
        for _, files in days:
            yield from day_in_order(files, lambda f: self._open_day_file(f, wanted),
                                    lambda batch: batch_to_envelopes(batch, promoted))

    def _open_day_file(self, path: str, wanted: frozenset[str] | None) -> tuple[int, pa.Array | None, Batches]:
        """A file's row count, its time column (None: it has none) and its batches of the ``wanted`` columns."""
        import pyarrow.parquet as pq

        from .lakeorder import BATCH_ROWS, TIME

        try:
            with self.fs.open(path, "rb") as fh:
                pf = pq.ParquetFile(fh)
                rows = pf.metadata.num_rows
                names = pf.schema_arrow.names
                times = pf.read(columns=[TIME], use_threads=False).column(0) if TIME in names else None
        except Exception as exc:  # noqa: BLE001 - any pyarrow/fsspec failure names the file
            raise LakeReadError(f"lake file {path} cannot be read: {exc}") from exc
        columns = names if wanted is None else [c for c in names if c in wanted]

        def batches() -> Generator[pa.RecordBatch, None, None]:
            try:
                with self.fs.open(path, "rb") as fh:
                    # one thread: the replay is one, and per-thread allocator heaps would hold memory
                    yield from pq.ParquetFile(fh).iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False)
            except Exception as exc:  # noqa: BLE001
                raise LakeReadError(f"lake file {path} cannot be read: {exc}") from exc

        return rows, None if times is None else times.combine_chunks(), batches
