"""Log epochs: offsets that stay monotonic when a broker comes back empty.

A Kafka broker that loses its data (tansu's memory storage on a restart; a
real cluster only after losing every replica) comes back with empty topics
whose offsets start again at 0. Services that keep their own offsets (the
rules engine's checkpoints, the sink's offset-named files) would then skip the
new records or overwrite old files. So every partition starts with an *epoch
marker*: an empty record with the header ``tripwire-epoch: <n>:<id>``, written
by the first Tripwire process that finds the partition without one. The spine
hands out *logical* offsets::

    logical = (epoch << OFFSET_BITS) + kafka_offset - marker_offset - 1

so the first record after the marker of epoch 0 has offset 0 (as on the
embedded log) and every record of a later epoch sorts after every record of
an earlier one. Records before the first marker (a producer that did not know
the broker had restarted) and the markers themselves are never returned; the
producer that wrote them notices (see :mod:`tripwire.log.kafka`) and writes
them again. A new epoch's number is one more than the highest this process
(or, through ``epochs.json`` in its data dir, an earlier run) has seen for the
topic; a process that never saw the old epoch starts at 0 — the one case this
cannot order, and a double failure (new data dir and broker data lost).

Opt-in (``log.kafka_epochs``): Kafka's time or size retention deletes a
partition's oldest records, its marker with them, so this is for brokers that
can lose everything but never trim (tansu's memory storage, a dev broker). Off,
every partition reads as :data:`NO_EPOCHS` and logical offsets are Kafka's.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

EPOCH_HEADER = "tripwire-epoch"
OFFSET_BITS = 40  # 1.1e12 records per partition and epoch; 2**23 epochs fit an int64
_OFFSET_MASK = (1 << OFFSET_BITS) - 1


@dataclass(frozen=True, slots=True)
class Mark:
    """Where a partition's current epoch starts."""

    epoch: int
    offset: int  # Kafka offset of the marker record
    id: str  # tells two markers with the same number apart

    @property
    def base(self) -> int:
        """Add a Kafka offset to get the logical offset."""
        return (self.epoch << OFFSET_BITS) - self.offset - 1

    def logical(self, kafka_offset: int) -> int:
        return self.base + kafka_offset

    def kafka(self, logical: int) -> int:
        """The Kafka offset to read ``logical`` from; an earlier epoch's offset maps to this epoch's start."""
        if logical >> OFFSET_BITS < self.epoch:
            return self.offset + 1
        if logical >> OFFSET_BITS > self.epoch:  # from a newer epoch than this book knows: nothing of ours is past it
            return self.offset + 1
        return (logical & _OFFSET_MASK) + self.offset + 1

    def end(self, kafka_end: int) -> int:
        """The logical end offset for a Kafka end offset (never before the epoch's start)."""
        return self.base + max(kafka_end, self.offset + 1)


NO_EPOCHS = Mark(0, -1, "")  # epochs off: logical offsets are Kafka's own


def records_between(position: int, end: int) -> int:
    """Records from ``position`` up to ``end``; a position in an earlier epoch counts from the epoch's start."""
    if position >> OFFSET_BITS < end >> OFFSET_BITS:
        position = end >> OFFSET_BITS << OFFSET_BITS
    return max(0, end - position)


def new_marker_header(epoch: int) -> list[tuple[str, bytes]]:
    return [(EPOCH_HEADER, f"{epoch}:{uuid.uuid4().hex}".encode())]


def marker_of(headers: object, kafka_offset: int) -> Mark | None:
    """The :class:`Mark` a record's headers declare, or None for an ordinary record."""
    if not headers:
        return None
    for name, value in headers:  # type: ignore[attr-defined]
        if name == EPOCH_HEADER:
            number, _, ident = bytes(value).decode("ascii", "replace").partition(":")
            with contextlib.suppress(ValueError):
                return Mark(int(number), kafka_offset, ident)
    return None


class EpochBook:
    """The epoch marks one process knows, shared by its log, reader and consumers."""

    def __init__(self, path: Path | None = None) -> None:
        self._marks: dict[tuple[str, int], Mark] = {}
        self._highest: dict[str, int] = {}  # per Kafka topic: the highest epoch ever seen
        self._path = path
        self.changes = 0  # grows whenever a mark is set or forgotten
        if path is not None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                self._highest = {str(k): int(v) for k, v in json.loads(path.read_text()).items()}

    def get(self, topic: str, partition: int) -> Mark | None:
        return self._marks.get((topic, partition))

    def set(self, topic: str, partition: int, mark: Mark) -> None:
        if self._marks.get((topic, partition)) == mark:
            return
        self._marks[(topic, partition)] = mark
        self.changes += 1
        if mark.epoch > self._highest.get(topic, -1):
            self._highest[topic] = mark.epoch
            self._save()

    def forget(self, topic: str) -> None:
        """Drop every mark of a topic (its epoch ended); the highest epoch is kept."""
        for key in [k for k in self._marks if k[0] == topic]:
            del self._marks[key]
        self.changes += 1

    def marks(self, topic: str) -> dict[int, Mark]:
        return {p: m for (t, p), m in self._marks.items() if t == topic}

    def next_epoch(self, topic: str) -> int:
        return self._highest.get(topic, -1) + 1

    def _save(self) -> None:
        if self._path is None:
            return
        tmp = self._path.with_suffix(f".{os.getpid()}.tmp")
        with contextlib.suppress(OSError, ValueError, AttributeError):  # another process may know more
            for k, v in json.loads(self._path.read_text()).items():
                self._highest[str(k)] = max(self._highest.get(str(k), -1), int(v))
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._highest))
            os.replace(tmp, self._path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
