"""The lake's column registry and column file: read at start, merged into as the sink learns.

``_tripwire_sink/schema.json`` (format: :class:`tripwire.lake_layout.ColumnRegistry`)
is what every sink of a lake agrees on: each typed column's type, when it was
first seen, which events carry it, and the values that did not fit. It only
grows: columns are added, ``integer`` widens to ``number``, conflicts and event
names are appended. Every sink merges its own decisions into it with
:meth:`sinks.lake.Lake.update` (an ``flock``, or a conditional S3 PUT), so two
sinks never overwrite each other; the first to publish a column fixes its type.

Order at a flush: publish (registry, then the column file), then save the
partition state, then write the data files. So no data file has a column the
registry and the column file do not (readers of the column file, i.e. pandas,
would drop it), and a crash in between leaves at most a column no file has yet.

The catalog still wins: its properties (and ``sink.promote``) are declared at
start, typed as it says; an existing column of another type keeps its type
(files have it), except that ``integer`` widens to ``number``.
"""

from __future__ import annotations

import copy
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from tripwire.lake_layout import REGISTRY_PATH, ColumnRegistry, Conflict, TypedColumn, columns_path

from .catalog import wanted_columns
from .columns import MAX_CONFLICTS, MAX_EVENTS_PER_COLUMN, Columns, Proposal
from .config import SinkConfig
from .errors import SinkError
from .lake import Lake
from .schema import encode_parquet, events_schema

logger = logging.getLogger(__name__)

SCHEMA_PATH = REGISTRY_PATH
_REVISION = "tripwire.revision"


def read_registry(lake: Lake) -> ColumnRegistry | None:
    data = lake.read(REGISTRY_PATH)
    return None if data is None else _parse(data, lake)


def _parse(data: bytes, lake: Lake) -> ColumnRegistry:
    try:
        return ColumnRegistry.from_bytes(data, lake.full(REGISTRY_PATH))
    except ValueError as exc:
        raise SinkError(str(exc)) from None


def declared_columns(cfg: SinkConfig) -> list[TypedColumn]:
    """The catalog's typed properties and ``sink.promote``'s."""
    out = []
    for p in wanted_columns(cfg.catalog, cfg.promote):
        origin = "promote" if p.key in cfg.promote or f"{p.field}.{p.key}" in cfg.promote else "catalog"
        out.append(TypedColumn(p.column, p.field, p.key, p.kind, origin))
    return out


def open_columns(lake: Lake, cfg: SinkConfig) -> Columns:
    """The lake's columns with the catalog's declared, for a sink starting; refuses another partitioning."""
    declared = declared_columns(cfg)
    kept: dict[str, ColumnRegistry] = {}

    def change(data: bytes | None) -> bytes | None:
        registry = _parse(data, lake) if data is not None else ColumnRegistry(cfg.partitioning)
        written = registry.partitioning or cfg.partitioning
        if written != cfg.partitioning:
            raise SinkError(
                f"lake {lake.url} is partitioned by {written!r}, config 'sink.partitioning' says "
                f"{cfg.partitioning!r}; use a new lake_url to change it")
        merged = declare(registry, declared)
        if data is not None and merged is None and registry.partitioning is not None:
            kept["registry"] = registry
            return None
        merged = merged or copy.deepcopy(registry)
        merged.partitioning = cfg.partitioning
        kept["registry"] = merged
        return merged.to_bytes()

    lake.update(REGISTRY_PATH, change)
    registry = kept["registry"]
    write_column_file(lake, registry, cfg)
    return Columns(registry, infer=cfg.infer_columns, max_columns=cfg.max_typed_columns)


def publish(lake: Lake, columns: Columns, cfg: SinkConfig) -> None:
    """Merge what ``columns`` decided into the lake's registry, refresh the column file, adopt the result."""
    if not columns.changed:
        return
    proposal = columns.proposal()
    kept: dict[str, ColumnRegistry] = {}

    def change(data: bytes | None) -> bytes | None:
        registry = _parse(data, lake) if data is not None else ColumnRegistry(cfg.partitioning)
        merged = merge(registry, proposal, cfg.max_typed_columns)
        kept["registry"] = merged or registry
        return None if merged is None else merged.to_bytes()

    lake.update(REGISTRY_PATH, change)
    registry = kept["registry"]
    write_column_file(lake, registry, cfg)
    columns.adopt(registry)


def declare(registry: ColumnRegistry, declared: list[TypedColumn]) -> ColumnRegistry | None:
    """``registry`` with the catalog's columns (None when it has them already)."""
    out = copy.deepcopy(registry)
    changed = False
    by_name = {c.column: c for c in out.columns}
    for d in declared:
        have = by_name.get(d.column)
        if have is None:
            out.columns.append(copy.copy(d))
            by_name[d.column] = out.columns[-1]
            changed = True
        elif (have.field, have.key) != (d.field, d.key):
            logger.warning("property %s.%s maps to existing column %s; it stays in JSON", d.field, d.key, d.column)
        elif have.kind == d.kind or (have.kind, d.kind) == ("number", "integer"):
            if have.origin == "inferred":  # the catalog wins from now on: no more widening
                have.origin = d.origin
                changed = True
        elif (have.kind, d.kind) == ("integer", "number"):
            have.kind, have.origin = "number", d.origin
            changed = True
        else:
            logger.warning("column %s keeps type %s (the catalog says %s); values that do not fit stay in JSON",
                           have.column, have.kind, d.kind)
    if changed:
        out.revision += 1
        return out
    return None


def merge(registry: ColumnRegistry, proposal: Proposal, max_columns: int) -> ColumnRegistry | None:
    """``registry`` with one sink's decisions (None when it says all of them already).

    A new column whose name the registry has for another property, or of
    another type, or past ``max_columns``, is not added: it becomes a conflict,
    and the sink, adopting the result, moves those values to the JSON column.
    """
    out = copy.deepcopy(registry)
    changed = False
    by_name = {c.column: c for c in out.columns}
    recorded = {(c.column, c.event, c.kind, c.why) for c in out.conflicts}
    first_seen = dict(proposal.first_seen)
    events = {name: set(names) for name, names in proposal.events.items()}

    def record(c: Conflict) -> None:
        nonlocal changed
        token = (c.column, c.event, c.kind, c.why)
        if token not in recorded and len(out.conflicts) < MAX_CONFLICTS:
            recorded.add(token)
            out.conflicts.append(c)
            changed = True

    for c in proposal.new:
        have = by_name.get(c.column)
        event = c.events[0] if c.events else "?"
        if have is None:
            if len(out.columns) >= max_columns:
                record(Conflict(c.column, c.field, c.key, event, c.kind, "limit", c.first_seen))
                continue
            out.columns.append(copy.deepcopy(c))
            by_name[c.column] = out.columns[-1]
            changed = True
        elif (have.field, have.key) != (c.field, c.key):
            record(Conflict(c.column, c.field, c.key, event, c.kind, "name", c.first_seen))
        elif have.kind == "integer" and c.kind == "number" and have.origin == "inferred":
            have.kind, have.widened = "number", c.widened or c.first_seen
            changed = True
        elif have.kind != c.kind and (have.kind, c.kind) != ("number", "integer"):
            record(Conflict(c.column, c.field, c.key, event, c.kind, "type", c.first_seen))
        else:  # another sink published it first: what this one saw of it still counts
            if c.first_seen is not None:
                first_seen[c.column] = min(c.first_seen, first_seen.get(c.column, c.first_seen))
            events.setdefault(c.column, set()).update(c.events)
    for name, day in proposal.widened.items():
        have = by_name.get(name)
        if have is not None and have.kind == "integer" and have.origin == "inferred":
            have.kind, have.widened = "number", day
            changed = True
    for name, day in first_seen.items():
        have = by_name.get(name)
        if have is not None and (have.first_seen is None or day < have.first_seen):
            have.first_seen = day
            changed = True
    for name, names in events.items():
        have = by_name.get(name)
        if have is None:
            continue
        for event in sorted(names - set(have.events)):
            if len(have.events) >= MAX_EVENTS_PER_COLUMN:
                break
            have.events.append(event)
            changed = True
    for conflict in proposal.conflicts:
        record(conflict)
    if changed:
        out.revision += 1
        return out
    return None


def write_column_file(lake: Lake, registry: ColumnRegistry, cfg: SinkConfig) -> None:
    """The zero-row file with every column, unless the lake has one of this revision or newer."""
    data = encode_parquet(events_schema(registry).empty_table(), compression=cfg.compression,
                          compression_level=cfg.compression_level,
                          metadata={_REVISION: str(registry.revision)})

    def change(old: bytes | None) -> bytes | None:
        if old is not None and column_file_revision(old) >= registry.revision:
            return None
        return data

    path = columns_path(cfg.partitioning)
    with lake.lock(path.rsplit("/", 1)[0], exclusive=False):  # as a data file: never lost to a swap of its folder
        lake.update(path, change)


def column_file_revision(data: bytes) -> int:
    try:
        meta = pq.read_schema(pa.BufferReader(data)).metadata or {}
        return int(meta.get(_REVISION.encode(), b"-1"))
    except (pa.ArrowInvalid, ValueError):
        return -1
