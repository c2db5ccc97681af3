"""The sink's durable state per log partition, kept in the lake next to the data.

``_tripwire_sink/state/<topic>-<partition>.json``::

    {"version": 2, "topic": "events", "partition": 3,
     "resume": 1200,                       # every record below is in a durable file (or dropped)
     "closed": [["date=2026-11-29", 1100, 1250], ...],
     "pending": [["date=2026-11-28", 1180, 1300], ...],
     "dedup": [[7, 1764412345000, 2], ...],   # id segments: sequence number, newest append time, format
     "seq": 8}

A *cut* ``[dir, first, end]`` is one data file: every record of partition
``dir`` with ``first <= offset < end`` that was not a duplicate, in offset order,
named ``part-<topic>-p<partition>-o<first>.parquet``. ``closed`` cuts are
written; only those ending after ``resume`` are kept (a replay from ``resume``
skips the records they hold). ``pending`` cuts were decided and then the state
was saved *before* their files were written: after a crash the sink replays
them exactly (same rows, same name) unless their file exists already. So the
time-based and memory-based rotation decisions, which depend on the wall clock,
are journaled and replay identically.

When it is written: at every flush, before the files of the new cuts (which
become ``pending``; the previous flush's ``pending`` become ``closed``), and
when the resume point moves without a new file; once more after the last
files are written when the sink stops or hands a partition over, and at the
first flush after a restart that found pending cuts already written (a run
killed between writing its files and the next flush), so even an idle sink
leaves an exact state. Resume offset for a restarted sink: ``min(resume,
first of every pending cut still to write)``.

``_tripwire_sink/dedup/<topic>-<partition>/<seq>.bin`` hold the message-id
segments listed under ``dedup`` (see :mod:`sinks.dedup`).
``_tripwire_sink/removed/<dir>.json`` lists data files that compaction or
erasure removed on purpose, so a pending cut whose file is gone for that reason
is not written again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from tripwire import lake_layout
from tripwire.lake_layout import SINK_DIR

from .errors import StateError
from .lake import Lake

VERSION = 2


@dataclass(frozen=True, slots=True)
class Cut:
    directory: str
    first: int
    end: int

    def to_json(self) -> list[Any]:
        return [self.directory, self.first, self.end]


def file_name(topic: str, partition: int, first: int) -> str:
    return lake_layout.file_name(topic, partition, first)


def file_prefix(topic: str, partition: int) -> str:
    return lake_layout.file_prefix(topic, partition)


@dataclass
class PartitionState:
    topic: str
    partition: int
    resume: int = 0
    closed: list[Cut] = field(default_factory=list)
    pending: list[Cut] = field(default_factory=list)
    dedup: list[tuple[int, int, int]] = field(default_factory=list)  # (seq, newest append ms, format)
    seq: int = 0

    @property
    def key(self) -> str:
        return f"{self.topic}-{self.partition:03d}"

    def path_of(self, cut: Cut) -> str:
        return f"{cut.directory}/{file_name(self.topic, self.partition, cut.first)}"

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "version": VERSION, "topic": self.topic, "partition": self.partition, "resume": self.resume,
            "closed": [c.to_json() for c in self.closed], "pending": [c.to_json() for c in self.pending],
            "dedup": [list(d) for d in self.dedup], "seq": self.seq,
        }, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> PartitionState:
        try:
            doc = orjson.loads(data)
            if doc.get("version") != VERSION:
                raise StateError(f"sink state {where} has version {doc.get('version')!r}, expected {VERSION}")
            return cls(
                topic=str(doc["topic"]), partition=int(doc["partition"]), resume=int(doc["resume"]),
                closed=[Cut(str(d), int(f), int(e)) for d, f, e in doc["closed"]],
                pending=[Cut(str(d), int(f), int(e)) for d, f, e in doc["pending"]],
                dedup=[_segment(d) for d in doc["dedup"]], seq=int(doc["seq"]),
            )
        except StateError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise StateError(f"sink state {where} is unreadable: {exc}") from exc


def _segment(entry: Any) -> tuple[int, int, int]:
    seq, newest, fmt = entry
    return int(seq), int(newest), int(fmt)


def state_path(topic: str, partition: int) -> str:
    return f"{SINK_DIR}/state/{topic}-{partition:03d}.json"


def dedup_path(topic: str, partition: int, seq: int) -> str:
    return f"{SINK_DIR}/dedup/{topic}-{partition:03d}/{seq:012d}.bin"


def removed_path(directory: str) -> str:
    return f"{SINK_DIR}/removed/{directory.replace('/', '%')}.json"


def load_state(lake: Lake, topic: str, partition: int) -> PartitionState | None:
    path = state_path(topic, partition)
    data = lake.read(path)
    return None if data is None else PartitionState.from_bytes(data, lake.full(path))


def save_state(lake: Lake, state: PartitionState) -> None:
    lake.write(state_path(state.topic, state.partition), state.to_bytes())


def removed_names(lake: Lake, directory: str) -> set[str]:
    data = lake.read(removed_path(directory))
    return set(orjson.loads(data)) if data else set()


def add_removed(lake: Lake, directory: str, names: set[str]) -> None:
    """Record data files about to be removed on purpose (maintenance runs one at a time)."""
    if names:
        lake.write(removed_path(directory), orjson.dumps(sorted(removed_names(lake, directory) | names)))
