"""Recorded events of a JSONL file in event-time order, in memory bounded by a run, not by the file.

Order: by event time, events of equal time in file order (a trigger's events, hence its id, depend
on what matches first). Two ways to read a file, both yielding ``(time ms, envelope)``:

* :meth:`JsonlHistory.in_file_order`: the common case, a file already in time order (an export),
  read line by line. The first event older than the one before it raises :class:`NotInOrder`;
  the caller starts over with the other way (whatever it did with the events so far is void).
* :meth:`JsonlHistory.in_time_order`: sorted out of core. Runs of lines (``run_bytes`` of them)
  are sorted in memory and spilled to temporary files (``$TMPDIR``), then merged, at most
  ``MAX_FANIN`` runs at a time. A line is decoded twice: once for its time, once when merged.

Lines that are not JSON objects with a usable ``timestamp`` are counted in ``skipped``; events
outside ``since``..``until`` (UTC days, inclusive) are left out and not counted.
"""

from __future__ import annotations

import heapq
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import date, timedelta
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import orjson

from tripwire.times import parse_iso_ms

from .codec import parse_event_time
from .errors import RulesError
from .progress import Progress

RUN_BYTES = 64 * 1024 * 1024  # lines held while sorting one run (their bytes plus ~100 bytes each)
MAX_FANIN = 64  # runs merged at once (open files); more are merged in passes first
_LINE_COST = 100  # a held line's Python overhead: the bytes object, its (time, line) tuple, the list slot
_first = itemgetter(0)


class NotInOrder(RulesError):
    """The file is not in event-time order (raised by :meth:`JsonlHistory.in_file_order`)."""

    def __init__(self, source: str, line: int) -> None:
        super().__init__(f"{source}: line {line:,} is older than an event before it")
        self.line = line


def day_bounds(since: str | None, until: str | None) -> tuple[int | None, int | None]:
    """``since``..``until`` (``YYYY-MM-DD``, inclusive) as [start ms, end ms) of event time."""
    start = None if since is None else parse_iso_ms(f"{since}T00:00:00.000Z")
    end = None if until is None else parse_iso_ms(f"{date.fromisoformat(until) + timedelta(days=1)}T00:00:00.000Z")
    return start, end


class JsonlHistory:
    """One JSONL source (a path, or ``-`` for stdin), read in one of the two ways above."""

    def __init__(self, source: str, since: str | None = None, until: str | None = None, *,
                 run_bytes: int | None = None, progress: Progress | None = None) -> None:
        self.source = source
        self.start_ms, self.end_ms = day_bounds(since, until)
        self.run_bytes = RUN_BYTES if run_bytes is None else run_bytes
        self.progress = progress
        self.skipped = 0  # of the last pass
        self.read_bytes = 0
        self.line = 0
        self.size: int | None = None
        if source != "-":
            st = os.stat(source)
            self.size = st.st_size if stat.S_ISREG(st.st_mode) else None

    @property
    def rereadable(self) -> bool:
        """True when the source can be read again from the start (a regular file, not a pipe)."""
        return self.size is not None

    def fraction(self) -> float:
        """How much of the file the current pass has read (0 when its size is unknown)."""
        return self.read_bytes / self.size if self.size else 0.0

    def _open(self) -> Any:
        return nullcontext(sys.stdin.buffer) if self.source == "-" else open(self.source, "rb")  # noqa: SIM115

    def _lines(self, f: IO[bytes]) -> Iterator[tuple[int, dict[str, Any], bytes]]:
        """(time, envelope, line) of each usable line within the days; the rest counted in ``skipped``."""
        self.skipped = self.read_bytes = self.line = 0
        start, end = self.start_ms, self.end_ms
        loads = orjson.loads
        for raw in f:
            self.line += 1
            self.read_bytes += len(raw)
            line = raw.strip()
            if not line:
                continue
            try:
                env = loads(line)
            except orjson.JSONDecodeError:
                self.skipped += 1
                continue
            t = parse_event_time(env) if type(env) is dict else None
            if t is None:
                self.skipped += 1
                continue
            if (start is not None and t < start) or (end is not None and t >= end):
                continue
            yield t, env, line

    def in_file_order(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """The events as the file has them; :class:`NotInOrder` at the first one older than the one before."""
        if self.progress is not None:
            self.progress.phase("backtest", fraction=self.fraction if self.size else None)
        last = -(2**63)
        with self._open() as f:
            for t, env, _ in self._lines(f):
                if t < last:
                    raise NotInOrder(self.source, self.line)
                last = t
                yield t, env

    def in_time_order(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """The events sorted by time (stable), spilling sorted runs to temporary files."""
        bar = self.progress
        if bar is not None:
            bar.phase("sorting", fraction=self.fraction if self.size else None, unit="lines")
        with tempfile.TemporaryDirectory(prefix="tripwire-backtest-") as tmp:
            runs: list[Path] = []
            held: list[tuple[int, bytes]] = []
            held_bytes = kept = 0
            with self._open() as f:
                for t, _, line in self._lines(f):
                    held.append((t, line))
                    kept += 1
                    held_bytes += len(line) + _LINE_COST
                    if held_bytes >= self.run_bytes:
                        runs.append(_spill(held, Path(tmp, f"run-{len(runs)}")))
                        held, held_bytes = [], 0
                    if bar is not None and kept % 1000 == 0:
                        bar.update(self.line)
            if bar is not None:
                bar.update(self.line, force=True)
            held.sort(key=_first)
            runs = _merge_passes(runs, Path(tmp))
            if bar is not None:
                bar.phase("backtest", total=kept)
            # the lines still held are the file's last: they go last among equal times
            merged = heapq.merge(*map(_read_run, runs), iter(held), key=_first) if runs else iter(held)
            loads = orjson.loads
            for t, line in merged:
                yield t, loads(line)


def _spill(held: list[tuple[int, bytes]], path: Path) -> Path:
    held.sort(key=_first)  # stable: lines of equal time stay in file order
    with open(path, "wb", buffering=1 << 20) as f:
        f.writelines(b"%d %s\n" % item for item in held)
    return path


def _read_run(path: Path) -> Iterator[tuple[int, bytes]]:
    # a line that decoded as JSON holds no raw newline, so one record is one line
    with open(path, "rb", buffering=1 << 16) as f:
        for record in f:
            cut = record.index(b" ")
            yield int(record[:cut]), record[cut + 1 : -1]


def _merge_passes(runs: list[Path], tmp: Path) -> list[Path]:
    """Merge consecutive runs until at most ``MAX_FANIN`` are left (consecutive, so ties keep file order)."""
    level = 0
    while len(runs) > MAX_FANIN:
        level += 1
        merged = []
        for i in range(0, len(runs), MAX_FANIN):
            group = runs[i : i + MAX_FANIN]
            if len(group) == 1:
                merged.append(group[0])
                continue
            path = tmp / f"merge-{level}-{i}"
            with open(path, "wb", buffering=1 << 20) as f:
                f.writelines(b"%d %s\n" % item for item in heapq.merge(*map(_read_run, group), key=_first))
            for p in group:
                p.unlink()
            merged.append(path)
        runs = merged
    return runs
