"""What Kafka acknowledged, kept for a while in case the broker loses it.

A broker that comes back empty (see :mod:`tripwire.log.epoch`) has lost every
record nobody had consumed yet; the producer that wrote them is the only one
who can write them again. :class:`Retained` keeps each acknowledged record for
``retain_s`` seconds with the epoch it was acknowledged in, in memory for the
replay and in a journal next to the spill so a process killed while the broker
is away still has them on its next start (the journal is written through to
the OS, not fsync'd: it survives a kill -9, not a power cut of the same machine
at the same time as the broker's data loss).

Journal files are ``<slot>/retained/<start ms>.ret``, one per ``retain_s / 10``
interval, deleted once their newest record is older than ``retain_s``. Frame:
``>II`` (payload length, CRC-32) then ``>dIHHi`` (acknowledged at, epoch,
partition, topic length, key length or -1), topic, key, value. A torn tail is
ignored.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from .epoch import EpochBook
from .spill import SpilledRecord

logger = logging.getLogger(__name__)

# (acknowledged at, topic, partition, epoch, key, value)
Kept = tuple[float, str, int, int, "bytes | None", bytes]

_FRAME = struct.Struct(">II")
_HEAD = struct.Struct(">dIHHi")
_SUFFIX = ".ret"
_OVERHEAD = 160  # bytes per kept record beyond key and value (tuple, deque slot, floats)


def _size(k: Kept) -> int:
    return len(k[5]) + len(k[4] or b"") + _OVERHEAD


def _encode(kept: Sequence[Kept]) -> bytes:
    out = bytearray()
    for at, topic, partition, epoch, key, value in kept:
        t = topic.encode()
        payload = _HEAD.pack(at, epoch, partition, len(t), -1 if key is None else len(key)) + t + (key or b"") + value
        out += _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
    return bytes(out)


def _decode(data: bytes) -> list[Kept]:
    kept: list[Kept] = []
    pos = 0
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        payload = data[pos + _FRAME.size : pos + _FRAME.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc or length < _HEAD.size:
            break
        at, epoch, partition, tlen, klen = _HEAD.unpack_from(payload)
        body = _HEAD.size + tlen
        topic = payload[_HEAD.size : body].decode()
        key = None if klen < 0 else payload[body : body + klen]
        kept.append((at, topic, partition, epoch, key, payload[body + max(klen, 0) :]))
        pos += _FRAME.size + length
    return kept


class Retained:
    def __init__(self, retain_s: float, max_bytes: int) -> None:
        self.retain_s = retain_s
        self.max_bytes = max_bytes
        self.bytes = 0
        self.dropped = 0  # forgotten before retain_s because of max_bytes
        self._kept: deque[Kept] = deque()
        self._dir: Path | None = None
        self._file: BinaryIO | None = None
        self._file_until = 0.0
        self._roll_s = max(1.0, retain_s / 10)

    def open(self, directory: Path) -> None:
        """Load what an earlier run kept (still within ``retain_s``) and journal into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        self._dir = directory
        cutoff = time.time() - self.retain_s
        for path in sorted(directory.glob("*" + _SUFFIX)):
            try:
                kept = [k for k in _decode(path.read_bytes()) if k[0] >= cutoff]
            except OSError as exc:
                logger.warning("retained records in %s unreadable: %s", path, exc)
                continue
            self._kept.extend(kept)
            self.bytes += sum(_size(k) for k in kept)
            if not kept:
                path.unlink(missing_ok=True)
        # A record the broker lost and this process wrote again is in the journal twice:
        # keep the copy of the newest epoch only, or the next run would write it a third time.
        newest: dict[tuple[str, bytes | None, bytes], int] = {}
        for k in self._kept:
            if newest.get((k[1], k[4], k[5]), -1) < k[3]:
                newest[(k[1], k[4], k[5])] = k[3]
        if len(newest) < len(self._kept):
            self._take(lambda k: newest[(k[1], k[4], k[5])] != k[3])
        if self._kept:
            logger.info("%d records acknowledged by Kafka in an earlier run are kept for %.0f s more at most",
                        len(self._kept), self.retain_s)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def __len__(self) -> int:
        return len(self._kept)

    def add(self, kept: Sequence[Kept]) -> None:
        if not kept or self.retain_s <= 0:
            return
        self._kept.extend(kept)
        self.bytes += sum(_size(k) for k in kept)
        if self._dir is not None:
            try:
                self._journal(kept[0][0]).write(_encode(kept))
                self._file.flush()  # type: ignore[union-attr]  # to the OS: survives a kill -9
            except OSError as exc:
                logger.warning("cannot journal acknowledged records (kept in memory only): %s", exc)
        if self.bytes > self.max_bytes:
            self.expire(over_bytes=True)

    def _journal(self, now: float) -> BinaryIO:
        if self._file is None or now >= self._file_until:
            self.close()
            assert self._dir is not None
            self._file = (self._dir / f"{int(now * 1000):015d}{_SUFFIX}").open("ab")
            self._file_until = now + self._roll_s
        return self._file

    def expire(self, *, over_bytes: bool = False) -> None:
        """Forget what is older than ``retain_s`` (and the oldest beyond ``max_bytes``)."""
        now = time.time()
        cutoff = now - self.retain_s
        kept = self._kept
        dropped = 0
        while kept and (kept[0][0] < cutoff or (over_bytes and self.bytes > self.max_bytes)):
            k = kept.popleft()
            self.bytes -= _size(k)
            dropped += k[0] >= cutoff
        if dropped:
            self.dropped += dropped
            logger.warning("forgot %d acknowledged records before log.kafka_retain_s (over "
                           "log.kafka_retain_max_bytes = %d): a broker that loses its data now cannot get them again",
                           dropped, self.max_bytes)
        if self._dir is not None:
            files = sorted(self._dir.glob("*" + _SUFFIX))
            for path, nxt in zip(files, files[1:], strict=False):  # a file ends where the next one starts
                if int(nxt.stem) / 1000 < cutoff:
                    path.unlink(missing_ok=True)

    def take(self, topic: str) -> list[SpilledRecord]:
        """Every kept record of ``topic`` (its broker lost it), oldest first; they leave the memory."""
        return self._take(lambda k: k[1] == topic)

    def take_stale(self, book: EpochBook) -> list[SpilledRecord]:
        """Kept records acknowledged in an earlier epoch than their partition's current one."""
        def stale(k: Kept) -> bool:
            mark = book.get(k[1], k[2])
            return mark is not None and k[3] < mark.epoch

        return self._take(stale)

    def _take(self, pick: Callable[[Kept], bool]) -> list[SpilledRecord]:
        """Remove the kept records ``pick`` selects (one pass); them, oldest first."""
        out: list[Kept] = []
        remaining: deque[Kept] = deque()
        for k in self._kept:
            (out if pick(k) else remaining).append(k)
        if out:
            self._kept = remaining
            self.bytes -= sum(_size(k) for k in out)
        return [(k[1], k[4], k[5]) for k in out]
