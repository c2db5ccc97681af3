"""The lake's two tables as the writer sees them: how a log record becomes a row, and where it goes.

:class:`Rows` is what :class:`sinks.partition.PartitionWriter` needs of a
table: the folder and time of a record, a builder of record batches per folder,
and the last step before a file is encoded. :class:`EventRows` is the events
table (folders by event time, typed columns agreed through the lake's registry,
:mod:`sinks.columns`); :class:`sinks.invalid.InvalidRows` the invalid table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pyarrow as pa

from tripwire.lake_layout import EVENTS_TABLE, Table, date_of, directory_of, directory_of_ms
from tripwire.log import Record
from tripwire.times import format_time_ms, parse_iso_ms

from .columns import Columns
from .schema import BatchBuilder, concat, conform


class Builder(Protocol):
    rows: int

    def add(self, row: Mapping[str, Any], ts_ms: int) -> None: ...

    def build(self) -> pa.RecordBatch: ...


class Rows(Protocol):
    table: Table

    def route(self, record: Mapping[str, Any], log_record: Record, /) -> tuple[str, int]:
        """The folder of a decoded record, and its time (ms)."""

    def builder(self, directory: str) -> Builder: ...

    def finish(self, batches: Sequence[pa.RecordBatch]) -> pa.Table:
        """One file's table from its batches, as the lake's layout says now."""


def directory_for(ts: object, partitioning: str) -> tuple[str, int] | None:
    """The lake directory and event time (ms) of a normalised ``timestamp``."""
    if not isinstance(ts, str):
        return None
    ms = parse_iso_ms(ts, cache=False)
    if ms is None:
        return None
    if len(ts) == 24 and ts[10] == "T" and ts[-1] == "Z":
        return directory_of(ts, partitioning), ms
    try:
        return directory_of_ms(ms, partitioning), ms
    except (ValueError, OverflowError, OSError):
        return None


class EventRows:
    """The events table: a row per envelope, in the folder of its event time."""

    table = EVENTS_TABLE

    def __init__(self, columns: Columns, partitioning: str) -> None:
        self.columns = columns
        self.partitioning = partitioning

    def route(self, env: Mapping[str, Any], record: Record) -> tuple[str, int]:
        p = self.partitioning
        where = directory_for(env.get("timestamp"), p) or directory_for(env.get("receivedAt"), p)
        return where or directory_for(format_time_ms(record.timestamp_ms), p) or ("", 0)

    def builder(self, directory: str) -> BatchBuilder:
        return BatchBuilder(self.columns, date_of(directory))

    def finish(self, batches: Sequence[pa.RecordBatch]) -> pa.Table:
        registry, source_of = self.columns.registry, self.columns.source_of
        tables = [conform(pa.Table.from_batches([b]), registry, source_of) for b in batches]
        return tables[0] if len(tables) == 1 else conform(concat(tables), registry)  # concat appends new columns
