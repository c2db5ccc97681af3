"""``tripwire lake migrate``: give the whole lake the catalog's new typed columns.

Every data file of a lake carries the same columns (readers take a glob's
schema from its first file). When the catalog gains properties, the sink keeps
writing them into the ``properties``/``traits`` JSON until this command has
rewritten every file with the new columns, filled from that JSON where the
value fits the column's type (and then removed from the JSON, as the sink does
for new rows), and recorded the columns in ``_tripwire_sink/schema.json``.
Existing columns never change type.

Each directory switches through :meth:`Lake.swap` (atomic on local disk); the
registry is written last, so an interrupted run is finished by running it
again (a value already in a typed column is kept). Stop the sinks first and
start them afterwards: a running sink keeps the columns it started with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import orjson
import pyarrow as pa

from .catalog import Promoted, merge_registry, wanted_columns
from .compact import conform
from .config import SinkConfig
from .lake import Lake, data_files
from .schema import NOT_FITTING, ARROW_TYPES, TS, fit_value, arrow_schema, decode_parquet, encode_parquet
from .registry import read_registry, write_registry

logger = logging.getLogger(__name__)


@dataclass
class Migration:
    columns: list[str] = field(default_factory=list)
    files: int = 0
    values: int = 0  # typed values taken out of the JSON columns


def migrate(lake: Lake, cfg: SinkConfig) -> Migration:
    registered = read_registry(lake) or []
    merged = merge_registry(registered, wanted_columns(cfg.catalog, cfg.promote))
    new = merged[len(registered) :]
    report = Migration(columns=[p.column for p in new])
    if not new:
        return report
    schema = arrow_schema(merged)
    for directory, files in sorted(data_files(lake).items()):
        puts = {}
        for name in sorted(files):
            data = lake.read(f"{directory}/{name}")
            if data is None:
                continue
            table = decode_parquet(data)
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
            table, moved = _promote(conform(table, schema), new)
            report.values += moved
            puts[name] = encode_parquet(table.replace_schema_metadata(None), compression=cfg.compression,
                                        compression_level=cfg.compression_level, row_group_rows=cfg.row_group_rows,
                                        metadata=meta)
        if puts:
            with lake.lock(directory, exclusive=True):
                lake.swap(directory, puts, [])
            report.files += len(puts)
    write_registry(lake, merged)
    logger.info("lake has %d new typed column(s) in %d file(s)", len(new), report.files)
    return report


def _promote(table: pa.Table, new: list[Promoted]) -> tuple[pa.Table, int]:
    moved = 0
    for field_name in ("properties", "traits"):
        cols = [p for p in new if p.field == field_name]
        if not cols or field_name not in table.column_names:
            continue
        texts = table.column(field_name).to_pylist()
        current = {p.column: table.column(p.column).to_pylist() for p in cols}
        for i, text in enumerate(texts):
            if text is None:
                continue
            obj = orjson.loads(text)
            changed = False
            for p in cols:
                if current[p.column][i] is not None or not isinstance(obj, dict) or p.key not in obj:
                    continue
                value = fit_value(p.kind, obj[p.key])
                if value is NOT_FITTING:
                    continue
                current[p.column][i] = value
                del obj[p.key]
                changed = True
                moved += 1
            if changed:
                texts[i] = orjson.dumps(obj).decode() if obj else None
        table = table.set_column(table.column_names.index(field_name), field_name, pa.array(texts, pa.string()))
        for p in cols:
            kind = p.kind
            values = current[p.column]
            if kind == "date-time":
                arr = pa.array([v if isinstance(v, int) or v is None else int(v.timestamp() * 1000) for v in values],
                               pa.int64()).cast(TS)
            else:
                arr = pa.array(values, ARROW_TYPES[kind])
            table = table.set_column(table.column_names.index(p.column), p.column, arr)
    return table, moved
