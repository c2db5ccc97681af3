"""One day of the lake in event-time order, without holding the day.

The order is the day's rows sorted by event time, ties in file order then row order (files in
name order): the order a backtest of the whole day in memory would use. A day's sort keys are
small even when its rows are not, so:

1. Each file's ``timestamp`` column is read alone (8 bytes a row). A file is a *source* read
   forward in record batches, holding the rows it reads ahead of the one due (sink files are in
   arrival order: close to time order). The rows held are bounded for the whole day
   (``MAX_HELD_ROWS``): the files furthest from time order beyond that budget are first sorted
   out of core instead: runs of ``RUN_ROWS`` rows, sorted with Arrow and spilled as Arrow IPC
   files (``$TMPDIR``), each run a source.
2. The sources' times, concatenated in source order, are sorted once (a stable Arrow sort):
   for each row of the day in order, which source it comes from and its row there.
3. Rows are handed out in that order: each source reads its batches as its rows come due, keeps
   the rows read ahead of the one due, and is closed after its last row.

Memory: about 20 bytes a row of the day for the keys, at most ``MAX_HELD_ROWS`` envelopes read
ahead, and a batch per open source (per file overlapping in time). Rows without an event time
come first, as ``(None, None)`` (a backtest counts them as skipped).
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .errors import RulesError

MAX_HELD_ROWS = 50_000  # rows read ahead, all files of a day together
RUN_ROWS = 100_000
BATCH_ROWS = 256  # a batch is turned into envelopes at once: per open file, this many are held
_CHUNK = 65_536  # positions of the day's order turned into Python ints at a time
TIME = "timestamp"

Batches = Callable[[], Generator[pa.RecordBatch, None, None]]  # a file's record batches, in row order, from the start
Convert = Callable[[pa.RecordBatch], list[dict[str, Any]]]


class LakeOrderError(RulesError):
    pass


def ms_times(column: pa.Array | pa.ChunkedArray, where: str) -> pa.Array:
    """A timestamp column as int64 milliseconds (truncated), nulls kept."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    typ = column.type
    if not pa.types.is_timestamp(typ):
        raise LakeOrderError(f"{where}: column {TIME} is {typ}, not a timestamp")
    if typ.unit != "ms":
        column = pc.cast(column, pa.timestamp("ms", typ.tz), safe=False)
    return pc.cast(column, pa.int64())


def held_ahead(times: pa.Array) -> int:
    """Rows a reader going forward holds at most to hand out ``times``' rows in time order."""
    n = len(times)
    if n < 2 or pc.all(pc.greater_equal(times[1:], times[:-1])).as_py():
        return 0
    order = pc.sort_indices(times)
    ahead = pc.subtract(pc.cumulative_max(order), pa.array(range(n), pa.uint64()))
    return int(pc.max(ahead).as_py())


class Source:
    """Rows (with an event time) of one file or run, read forward in batches; row ``i`` on demand."""

    def __init__(self, rows: int, batches: Batches, convert: Convert) -> None:
        self.rows = rows
        self._open = batches
        self._convert = convert
        self._batches: Generator[pa.RecordBatch, None, None] | None = None
        self._held: dict[int, dict[str, Any]] = {}
        self._read = 0
        self._taken = 0

    def take(self, i: int) -> dict[str, Any]:
        held = self._held
        while i >= self._read:
            if self._batches is None:
                self._batches = self._open()
            batch = next(self._batches)
            times = batch.column(TIME)
            if times.null_count:
                batch = batch.filter(pc.is_valid(times))
            read = self._read
            for k, env in enumerate(self._convert(batch), read):
                held[k] = env
            self._read = read + batch.num_rows
        self._taken += 1
        if self._taken == self.rows and self._batches is not None:
            self._batches.close()
            self._batches = None
        return held.pop(i)


def day_in_order(files: Sequence[str], read: Callable[[str], tuple[int, pa.Array | None, Batches]],
                 convert: Convert) -> Iterator[tuple[int | None, dict[str, Any] | None]]:
    """``(time ms, envelope)`` of every row of ``files`` in time order (see the module docstring).

    ``read(file)`` gives the file's row count, its ``timestamp`` column (None: it has none) and a
    function giving its record batches (with that column); ``convert`` turns a batch into envelopes."""
    with ExitStack() as stack:
        files_in: list[tuple[int, int, pa.Array, Batches]] = []  # (rows held ahead, index, times, batches)
        untimed = 0
        for f in files:
            rows, column, batches = read(f)
            if column is None:
                untimed += rows
                continue
            t = ms_times(column, f)
            untimed += t.null_count
            if t.null_count:
                t = t.drop_null()
            if len(t):
                files_in.append((held_ahead(t), len(files_in), t, batches))
        # Read ahead in the files closest to time order, within one budget for the day; sort the rest.
        budget = MAX_HELD_ROWS
        spill = set()
        for held, i, _, _ in sorted(files_in, key=lambda x: x[:2]):
            if held > budget:
                spill.add(i)
            else:
                budget -= held
        sources: list[Source] = []
        times: list[pa.Array] = []
        tmp = ""
        for _, i, t, batches in files_in:
            if i not in spill:
                sources.append(Source(len(t), batches, convert))
                times.append(t)
                continue
            tmp = tmp or stack.enter_context(tempfile.TemporaryDirectory(prefix="tripwire-backtest-"))
            for path, run_times in _spill(batches(), Path(tmp) / f"{i}-"):
                sources.append(Source(len(run_times), functools.partial(_read_run, path), convert))
                times.append(run_times)
        for _ in range(untimed):
            yield None, None
        if sources:
            yield from _merged(sources, times)


def _merged(sources: list[Source], times: list[pa.Array]) -> Iterator[tuple[int, dict[str, Any]]]:
    keys = pa.chunked_array(times, pa.int64())
    order = pc.sort_indices(keys)  # stable: ties in source order, then row order
    starts, owner = [], []
    at = 0
    for s, t in enumerate(times):
        starts.append(at)
        owner.append(pa.repeat(pa.scalar(s, pa.int32()), len(t)))
        at += len(t)
    owners = pa.chunked_array(owner, pa.int32())
    for lo in range(0, len(order), _CHUNK):
        chunk = order[lo : lo + _CHUNK]
        ts = pc.take(keys, chunk).to_pylist()
        who = pc.take(owners, chunk).to_pylist()
        for t, s, pos in zip(ts, who, chunk.to_pylist()):
            yield t, sources[s].take(pos - starts[s])


def _spill(batches: Iterator[pa.RecordBatch], prefix: Path) -> list[tuple[Path, pa.Array]]:
    """A file's rows (with a time) as sorted runs in Arrow IPC files ``<prefix><n>``: [(path, the run's times)]."""
    runs: list[tuple[Path, pa.Array]] = []
    held: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        times = batch.column(TIME)
        if times.null_count:
            batch = batch.filter(pc.is_valid(times))
        held.append(batch)
        rows += batch.num_rows
        if rows >= RUN_ROWS:
            runs.append(_write_run(held, Path(f"{prefix}{len(runs)}")))
            held, rows = [], 0
    if rows:
        runs.append(_write_run(held, Path(f"{prefix}{len(runs)}")))
    return runs


def _write_run(batches: list[pa.RecordBatch], path: Path) -> tuple[Path, pa.Array]:
    table = pa.Table.from_batches(batches)
    times = ms_times(table.column(TIME), str(path))
    order = pc.sort_indices(times)
    table = table.take(order)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=BATCH_ROWS)
    return path, pc.take(times, order)


def _read_run(path: Path) -> Generator[pa.RecordBatch, None, None]:
    with pa.OSFile(str(path), "rb") as f:
        reader = pa.ipc.open_file(f)
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
