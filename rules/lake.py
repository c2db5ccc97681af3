"""Reading the Parquet lake back as Segment envelopes, day by day in event-time order (backtests).

The layout is the spine's (:mod:`tripwire.lake_layout`): ``<root>/date=YYYY-MM-DD[/hour=H]/*.parquet``
with Segment-envelope columns in snake_case, the rest of ``properties``/``traits``/
``context``/``extra`` as JSON strings, and typed property columns listed in the
column registry; files may differ in their typed columns (each file is read on
its own; a column a file lacks is a property its events did not carry). The
column file (no rows) and the invalid table (``_invalid/``) are not events.
This module only reads that layout; it does not import the sink.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

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
from tripwire.times import format_datetime

from .errors import RulesError

_TOP = dict(TOP_COLUMNS + SOURCE_COLUMNS)
_TIMES = dict(TIME_COLUMNS)
_CONTEXT = {c: (group, key) for c, group, key in CONTEXT_COLUMNS}


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


def row_to_envelope(row: Mapping[str, Any], promoted: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    env: dict[str, Any] = {}
    for col, key in _TOP.items():
        if row.get(col) is not None:
            env[key] = row[col]
    for col, key in _TIMES.items():
        if row.get(col) is not None:
            env[key] = _iso(row[col])
    props = _json(row.get("properties")) or {}
    traits = _json(row.get("traits")) or {}
    for col, (field, key) in promoted.items():
        value = row.get(col)
        if value is not None:
            if type(value) is float and value.is_integer() and abs(value) < 2**53:
                value = int(value)  # a "number" column is float64; the event said 150, not 150.0 (payloads)
            (props if field == "properties" else traits)[key] = _iso(value)
    if props or row.get("properties") is not None or env.get("type") in ("track", "page", "screen"):
        env["properties"] = props
    if traits:
        env["traits"] = traits
    ctx = _json(row.get("context")) or {}
    for col, (group, key) in _CONTEXT.items():
        value = row.get(col)
        if value is None:
            continue
        if key is None:
            ctx[group] = value
        else:
            ctx.setdefault(group, {})[key] = value
    if ctx:
        env["context"] = ctx
    extra = _json(row.get("extra"))
    if isinstance(extra, dict):
        for k, v in extra.items():
            env.setdefault(k, v)
    return env


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

    def envelopes(self, days: list[tuple[str, list[str]]]) -> Iterator[dict[str, Any]]:
        """Every event of ``days``, each day sorted by event time (days never overlap in time)."""
        import pyarrow.parquet as pq

        for day, files in days:
            rows: list[dict[str, Any]] = []
            for f in files:
                try:
                    with self.fs.open(f, "rb") as fh:
                        table = pq.read_table(fh)
                except Exception as exc:  # noqa: BLE001
                    raise LakeReadError(f"lake file {f} cannot be read: {exc}") from exc
                rows.extend(row_to_envelope(r, self.promoted) for r in table.to_pylist())
            rows.sort(key=lambda e: e.get("timestamp") or "")
            yield from rows
