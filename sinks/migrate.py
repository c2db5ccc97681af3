"""``tripwire lake migrate``: give files written before a typed column existed that column, filled.

Typed columns appear in new files as soon as the catalog declares them or the
sink meets the property (:mod:`sinks.columns`); files written before keep
those values in their JSON column (``properties``/``traits``), so a typed
column reads null there. This command declares the catalog's columns in the
registry, as a starting sink does, and rewrites every events file whose JSON
column holds values of a registry column: the values that fit the column's
type move into it (and out of the JSON, as the sink does for new rows); values
that do not fit stay. Other files are left as they are.

Each directory switches through :meth:`Lake.swap` (atomic on local disk) under
the directory's lock, so a sink may keep running; running it again is
harmless (a value already in its typed column is kept). Restart the sinks
afterwards so they write the catalog's new columns with the catalog's types.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import orjson
import pyarrow as pa

from tripwire.lake_layout import ColumnRegistry, TypedColumn
from tripwire.times import datetime_ms

from .columns import NOT_FITTING, fit
from .config import SinkConfig
from .lake import Lake, data_files
from .registry import open_columns
from .schema import ARROW_TYPES, TS, conform, decode_parquet, encode_parquet

logger = logging.getLogger(__name__)


@dataclass
class Migration:
    columns: list[str] = field(default_factory=list)  # declared by the catalog, new to the lake
    files: int = 0
    values: int = 0  # typed values taken out of the JSON columns


def migrate(lake: Lake, cfg: SinkConfig) -> Migration:
    from .registry import read_registry

    before = {c.column for c in (read_registry(lake) or ColumnRegistry()).columns}
    registry = open_columns(lake, cfg).registry
    report = Migration(columns=[c.column for c in registry.columns if c.column not in before])
    for directory, files in sorted(data_files(lake).items()):
        puts = {}
        for name in sorted(files):
            if not name.endswith(".parquet"):
                continue  # the invalid table has no typed columns
            data = lake.read(f"{directory}/{name}")
            if data is None:
                continue
            table = decode_parquet(data)
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
            table, moved = _fill(table.replace_schema_metadata(None), registry.columns)
            if not moved:
                continue
            report.values += moved
            puts[name] = encode_parquet(conform(table, registry), compression=cfg.compression,
                                        compression_level=cfg.compression_level, row_group_rows=cfg.row_group_rows,
                                        metadata=meta)
        if puts:
            with lake.lock(directory, exclusive=True):
                lake.swap(directory, puts, [])
            report.files += len(puts)
    logger.info("lake migrated: %d value(s) moved into typed columns in %d file(s)", report.values, report.files)
    return report


def _fill(table: pa.Table, columns: list[TypedColumn]) -> tuple[pa.Table, int]:
    moved = 0
    for c in columns:
        if c.field not in table.column_names:
            continue
        texts = table.column(c.field).to_pylist()
        n = len(texts)
        current = table.column(c.column).to_pylist() if c.column in table.column_names else [None] * n
        changed = 0
        for i, text in enumerate(texts):
            if not text or current[i] is not None:
                continue
            obj = orjson.loads(text)
            if not isinstance(obj, dict) or obj.get(c.key) is None:
                continue
            value = fit(c.kind, obj[c.key])
            if value is NOT_FITTING:
                continue
            current[i] = value
            del obj[c.key]
            texts[i] = orjson.dumps(obj).decode()
            changed += 1
        if not changed:
            continue
        moved += changed
        table = table.set_column(table.column_names.index(c.field), c.field, pa.array(texts, pa.string()))
        if c.kind == "date-time":
            array = pa.array([datetime_ms(v) if isinstance(v, datetime) else v for v in current], pa.int64()).cast(TS)
        else:
            array = pa.array(current, ARROW_TYPES[c.kind])
        if c.column in table.column_names:
            table = table.set_column(table.column_names.index(c.column), c.column, array)
        else:
            table = table.append_column(c.column, array)
    return table, moved
