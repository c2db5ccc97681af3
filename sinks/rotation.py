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

**Few record batches per bucket.** Each poll's rows of a bucket become a record
batch (compact Arrow memory, counted in ``nbytes``), but a record batch costs
some 35 KB of Arrow objects outside the memory pool (arrays, buffers, schema)
whatever its rows, and a steady site's polls are small: a 30 s file of a few
rows per poll held thousands of them, ten times its data and unseen by
``max_buffer_bytes`` (a soak's sink grew past 1 GB). So the small batches at a
bucket's end are merged once there are ``_MAX_SMALL_BATCHES`` of them, until
the merged one has ``_SMALL_BATCH_ROWS`` rows.
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

_SMALL_BATCH_ROWS = 8192  # a batch with fewer rows is merged with the next ones
_MAX_SMALL_BATCHES = 32


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
    small: int = 0  # batches at the end of ``batches`` with fewer than _SMALL_BATCH_ROWS rows

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
            self.small = self.small + 1 if batch.num_rows < _SMALL_BATCH_ROWS else 0
            if self.small >= _MAX_SMALL_BATCHES:
                self._merge_small()

    def _merge_small(self) -> None:
        """One batch of the small ones at the end (columns some lack are null there, as in the file)."""
        tail = self.batches[-self.small :]
        try:
            table = pa.concat_tables([pa.Table.from_batches([b]) for b in tail], promote_options="default")
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column changed type (widened, or the lake's registry
            self.small = 0  # differs): the file conforms each batch; merge the next ones among themselves
            return
        merged = table.combine_chunks().to_batches()
        del self.batches[-self.small :]
        self.batches += merged
        self.nbytes += sum(b.nbytes for b in merged) - sum(b.nbytes for b in tail)
        self.small = 1 if len(merged) == 1 and merged[0].num_rows < _SMALL_BATCH_ROWS else 0

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
