"""The Kafka backend's bounded on-disk spill buffer.

When the broker cannot take records, the Kafka log writes them here instead and
acknowledges them; a background task forwards them to Kafka, oldest first, once
the broker is back. The contract:

* :meth:`Spill.append` returns only after the records are written and fsync'd
  (file and, for a new segment, the directory), so an acknowledged record
  survives a kill -9 or power cut. It raises :class:`SpillFull` (a
  :class:`LogUnavailable`) instead of going over ``max_bytes``.
* Records are kept in append order across segment files
  (``<slot>/<sequence>.spill``); :meth:`oldest` seals the segment being written
  when it is the only one, so the forwarder always reads a closed file while new
  records go to a fresh one behind it.
* A segment is deleted only by :meth:`remove`, which the forwarder calls after
  Kafka acknowledged every record in it. A crash in between replays the segment
  (at-least-once; ``messageId`` is the dedup key downstream).
* A torn frame at the end of the newest segment (a crash during a write that was
  therefore never acknowledged) is truncated on open; anything else corrupt
  raises :class:`SpillCorrupt` rather than being skipped silently.

Several processes may share a data dir (collector workers): each claims its own
numbered slot directory under the spill root with an exclusive ``flock``, and
on start takes over (and so replays) the lowest free slot.

Frame layout: ``>II`` (payload length, CRC-32 of payload), then the payload
``>Hi`` (topic length, key length or -1 for no key), topic, key, value.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .base import LogError, LogUnavailable

logger = logging.getLogger(__name__)

SpilledRecord = tuple[str, "bytes | None", bytes]  # (topic, key, value)

_FRAME = struct.Struct(">II")
_HEAD = struct.Struct(">Hi")
_SUFFIX = ".spill"
_MAX_SLOTS = 1024


class SpillFull(LogUnavailable):
    """The spill buffer has no room for these records."""


class SpillCorrupt(LogError):
    """A spill segment holds a damaged record that is not a torn tail."""


@dataclass(slots=True)
class Segment:
    path: Path
    sequence: int
    records: int = 0
    size: int = 0
    done: int = 0  # records known to be forwarded (in memory only; a restart replays them)
    sealed: bool = False  # no more appends go to this file


def encode(records: Sequence[SpilledRecord]) -> bytes:
    out = bytearray()
    for topic, key, value in records:
        t = topic.encode()
        payload = _HEAD.pack(len(t), -1 if key is None else len(key)) + t + (key or b"") + value
        out += _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
    return bytes(out)


def _decode(data: bytes) -> tuple[list[SpilledRecord], int]:
    """Records of a segment and the length of its valid prefix."""
    records: list[SpilledRecord] = []
    pos = 0
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        start = pos + _FRAME.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != crc or length < _HEAD.size:
            break
        tlen, klen = _HEAD.unpack_from(payload)
        body = _HEAD.size + tlen
        topic = payload[_HEAD.size : body].decode()
        if klen < 0:
            key = None
        else:
            key, body = payload[body : body + klen], body + klen
        records.append((topic, key, payload[body:]))
        pos = start + length
    return records, pos


def _try_lock(slot: Path) -> BinaryIO | None:
    """An exclusive flock on a slot directory, or None when another process holds it."""
    lock = (slot / "lock").open("ab")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spill:
    """Append-only, bounded, fsync'd record buffer in one slot directory. Thread-safe."""

    def __init__(
        self,
        root: str | Path,
        max_bytes: int,
        *,
        segment_bytes: int = 4 * 1024 * 1024,
        retry_after_s: int = 5,
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.retry_after_s = retry_after_s
        self.dir: Path | None = None
        self._segments: list[Segment] = []  # oldest first; the last one takes appends unless sealed
        self._active: int | None = None  # fd of the segment taking appends (unbuffered: O_APPEND)
        self._lock_files: list[BinaryIO] = []  # our slot's first, then adopted ones
        self._lock = threading.Lock()
        self.depth = 0  # records not yet removed
        self.size = 0  # bytes on disk

    # lifecycle ---------------------------------------------------------------

    def open(self) -> None:
        """Claim a slot, load its segments and adopt orphaned slots (safe to call twice).

        A slot whose process is gone (unlocked) but still holds records, e.g.
        after restarting with fewer workers, is adopted: its records are
        forwarded first, as they are older than anything appended from now on.
        """
        if self.dir is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        for slot in range(_MAX_SLOTS):
            path = self.root / str(slot)
            path.mkdir(exist_ok=True)
            lock = _try_lock(path)
            if lock is not None:
                self._lock_files.append(lock)
                self.dir = path
                break
        else:
            raise LogError(f"spill root {self.root} has no free slot (more than {_MAX_SLOTS} processes?)")
        try:
            adopted: list[Segment] = []
            for other in sorted(self.root.iterdir()):
                if other == self.dir or not other.name.isdigit() or not any(other.glob("*" + _SUFFIX)):
                    continue
                lock = _try_lock(other)
                if lock is None:  # a live process owns it
                    continue
                self._lock_files.append(lock)
                adopted += self._load(other)
                logger.warning("adopting orphaned spill slot %s", other)
            self._segments = adopted + self._load(self.dir)
        except BaseException:
            self.close()
            raise
        self.depth = sum(seg.records for seg in self._segments)
        self.size = sum(seg.size for seg in self._segments)
        if self.depth:
            logger.warning("spill %s holds %d records from a previous run; replaying", self.root, self.depth)

    @staticmethod
    def _load(directory: Path) -> list[Segment]:
        segments = []
        paths = sorted(directory.glob("*" + _SUFFIX))
        for i, path in enumerate(paths):
            data = path.read_bytes()
            records, valid = _decode(data)
            if valid < len(data):
                if i != len(paths) - 1:
                    raise SpillCorrupt(f"spill segment {path} is damaged at byte {valid}")
                logger.warning("spill segment %s: dropping a torn write of %d bytes", path, len(data) - valid)
                with path.open("r+b") as f:
                    f.truncate(valid)
                    os.fsync(f.fileno())
            if not records:
                path.unlink()
                continue
            # sealed: never append behind a previous run's bytes
            segments.append(Segment(path, int(path.stem), len(records), valid, sealed=True))
        return segments

    def close(self) -> None:
        """Close files and release the slot; spilled records stay for the next open."""
        with self._lock:
            if self._active is not None:
                os.close(self._active)
                self._active = None
            for lock in self._lock_files:
                lock.close()  # releases the flock
            self._lock_files = []
            self.dir = None
            self._segments = []
            self.depth = self.size = 0

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    # writing -----------------------------------------------------------------

    def append(self, records: Sequence[SpilledRecord]) -> None:
        """Write and fsync ``records`` behind everything spilled before."""
        if not records:
            return
        data = encode(records)
        with self._lock:
            if self.dir is None:
                raise LogError("spill is not open")
            if self.size + len(data) > self.max_bytes:
                raise SpillFull(
                    f"spill buffer {self.dir} is full ({self.size} of {self.max_bytes} bytes used)",
                    retry_after_s=self.retry_after_s,
                )
            seg = self._writable_segment()
            fd = self._active
            assert fd is not None
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError as exc:
                # Leave no half-written frame behind: those records were not acknowledged.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, seg.size)
                raise LogUnavailable(f"cannot write spill segment {seg.path}: {exc}", self.retry_after_s) from exc
            seg.records += len(records)
            seg.size += len(data)
            self.depth += len(records)
            self.size += len(data)

    def _writable_segment(self) -> Segment:
        assert self.dir is not None
        last = self._segments[-1] if self._segments else None
        if last is not None and not last.sealed and last.size < self.segment_bytes:
            return last
        if last is not None:
            last.sealed = True
        if self._active is not None:
            os.close(self._active)
            self._active = None
        mine = [seg.sequence for seg in self._segments if seg.path.parent == self.dir]
        sequence = max(mine) + 1 if mine else 0
        seg = Segment(self.dir / f"{sequence:020d}{_SUFFIX}", sequence)
        self._active = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        _fsync_dir(self.dir)
        self._segments.append(seg)
        return seg

    # forwarding --------------------------------------------------------------

    def oldest(self) -> Segment | None:
        """The oldest segment, sealed so no more records join it (None when empty)."""
        with self._lock:
            if not self._segments:
                return None
            seg = self._segments[0]
            if not seg.sealed:
                seg.sealed = True
                if self._active is not None:
                    os.close(self._active)
                    self._active = None
            return seg

    def read(self, seg: Segment) -> list[SpilledRecord]:
        """Every record of a sealed segment, in order."""
        records, _ = _decode(seg.path.read_bytes())
        if len(records) != seg.records:
            raise SpillCorrupt(
                f"spill segment {seg.path} is damaged: {len(records)} readable records of {seg.records}"
            )
        return records

    def remove(self, seg: Segment) -> None:
        """Delete a segment whose records Kafka has acknowledged."""
        with self._lock:
            seg.path.unlink(missing_ok=True)
            if seg not in self._segments:  # closed meanwhile (stop): nothing to account
                return
            self._segments.remove(seg)
            self.depth -= seg.records
            self.size -= seg.size
            _fsync_dir(seg.path.parent)
