"""Open files (buckets) and when to cut them.

A *bucket* collects the rows of one log partition for one lake directory
(``date=...``) from its first offset on. It is cut ("sealed") at whichever
comes first:

* ``max_file_rows`` rows (checked per record, so files and row groups line up),
* ``max_file_span_s`` of event time between its oldest and newest row,
* ``max_file_bytes`` of buffered Arrow data,
* its wall-clock age: ``max_file_age_s`` for today's directory (freshness on a
  quiet site), ``max_late_file_age_s`` for past dates, so a trickle of late
  events does not make a tiny file every few minutes,
* memory pressure across the sink: more than ``max_buffer_bytes`` buffered,
  the largest buckets are cut first (big files, and the small late buckets keep
  collecting).

How many buckets may be open at once (``max_open_files``) is decided as rows
are routed, see :mod:`sinks.partition`.

Every cut is journaled before its file is written (see :mod:`sinks.state`), so
these wall-clock decisions replay identically after a crash.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import pyarrow as pa

from .config import SinkConfig
from .tables import Builder, Rows

T = TypeVar("T")


@dataclass(eq=False)
class Bucket:
    directory: str
    first: int
    kind: Rows  # the table it is a file of
    today: bool
    builder: Builder = field(init=False)
    batches: list[pa.RecordBatch] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    min_ms: int = 0
    max_ms: int = 0
    opened: float = field(default_factory=time.monotonic)
    force_end: int | None = None  # a journaled cut being replayed
    overflow: bool = False  # part of its partition's overflow (rows beyond max_open_files), cut with it

    def __post_init__(self) -> None:
        self.builder = self.kind.builder(self.directory)

    def add(self, env: dict[str, object], ts_ms: int) -> None:
        if self.rows == 0:
            self.min_ms = self.max_ms = ts_ms
        elif ts_ms < self.min_ms:
            self.min_ms = ts_ms
        elif ts_ms > self.max_ms:
            self.max_ms = ts_ms
        self.builder.add(env, ts_ms)
        self.rows += 1

    def span_exceeded(self, ts_ms: int, span_ms: int) -> bool:
        return self.rows > 0 and (max(self.max_ms, ts_ms) - min(self.min_ms, ts_ms)) > span_ms

    def finish_batch(self) -> None:
        """Move the rows gathered so far into a record batch (compact Arrow memory)."""
        if self.builder.rows:
            batch = self.builder.build()
            self.batches.append(batch)
            self.nbytes += batch.nbytes
            self.builder = self.kind.builder(self.directory)

    def table(self) -> pa.Table:
        """The file's rows, with the columns and types the lake has now."""
        self.finish_batch()
        return self.kind.finish(self.batches)


def aged(buckets: Iterable[Bucket], cfg: SinkConfig, now: float | None = None) -> list[Bucket]:
    """Buckets (not being replayed) older than their maximum age."""
    now = time.monotonic() if now is None else now
    out = []
    for b in buckets:
        if b.force_end is not None:
            continue
        limit = cfg.max_file_age_s if b.today else cfg.max_late_file_age_s
        if now - b.opened >= limit:
            out.append(b)
    return out


def over_budget(units: list[tuple[int, T]], total: int, budget: int) -> list[T]:
    """The largest of ``units`` (``(bytes, unit)``) to cut so that ``total`` bytes fit ``budget``."""
    out = []
    for nbytes, unit in sorted(units, key=lambda u: u[0], reverse=True):
        if total <= budget:
            break
        out.append(unit)
        total -= nbytes
    return out
