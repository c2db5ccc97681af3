"""Drop repeated ``messageId``s (client retries) within a window, per log partition.

A message id is a duplicate only for the same **source and log key**: a retry
carries the same ``anonymousId``/``userId`` and comes through the same write
key, while another visitor (or another source) reusing an id is another event.
Keyed by the id alone, anyone holding the public write key could suppress other
visitors' events by sending their ids first. A retry has the same log key, so it
lands in the same partition: per-partition state is enough and scales out.

State: ``hash64(source, log key, messageId) -> first offset`` for the ids seen in the last
``window`` of log append time (plus one hour of slack so a replay after a crash
decides as the first pass did), at most ``max_ids`` of them (beyond that the
oldest are forgotten first and counted in ``evicted_early``). A record is a
duplicate when its id was first seen at a *smaller* offset, so replaying
records whose ids are already known (persisted ahead of the resume point)
gives the same answers as the first pass.

Persistence: ``take_segment()`` returns the ids added since the last call as a
compact blob (``int64`` triples: hash, offset, append time) that the sink writes
to the lake next to its state; ``load()`` rebuilds the state from the blobs the
state file lists, each with its format (``FORMAT``, 2: hashes of (source, log key,
messageId); any other is refused).
"""

from __future__ import annotations

import bisect
import hashlib
import sys
from array import array
from collections.abc import Callable, Iterable

_SLACK_MS = 3_600_000
FORMAT = 2


def id_hash(source: str, key: bytes, message_id: str) -> int:
    """The remembered form of a message id, scoped to its source and log key."""
    s = source.encode("utf-8", "surrogatepass")
    # Lengths first, so no two different triples give the same bytes.
    data = b"%d:%d:%s%s%s" % (len(s), len(key), s, key, message_id.encode("utf-8", "surrogatepass"))
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


class Dedup:
    def __init__(self, window_ms: int, max_ids: int) -> None:
        self.window_ms = window_ms
        self.max_ids = max_ids
        self._ids: dict[int, int] = {}  # insertion order ~ offset order
        self._table_bytes = sys.getsizeof(self._ids)  # the dict's size when it last grew or was copied
        self._dead = 0  # ids deleted since then: the dict keeps their slots
        self._mark_offsets: list[int] = []  # (offset, append time) samples, for expiry and snapshots
        self._mark_ts: list[int] = []
        self._new = array("q")
        self.evicted_early = 0
        self.newest_ms = 0
        self.rewrite = False  # ids were forgotten: persist a snapshot, not a segment on top of old ones

    def __len__(self) -> int:
        return len(self._ids)

    def seen(self, source: str, key: bytes, message_id: str, offset: int, ts_ms: int) -> bool:
        """True when ``message_id`` of ``source`` and log ``key`` is a duplicate at ``offset``;
        otherwise remember it."""
        h = id_hash(source, key, message_id)
        first = self._ids.get(h)
        if first is not None:
            if first < offset:
                return True
            if first > offset:
                self._ids[h] = offset
            return False
        self._ids[h] = offset
        self._new.extend((h, offset, ts_ms))
        if not self._mark_ts or ts_ms - self._mark_ts[-1] >= 1000:
            self._mark_offsets.append(offset)
            self._mark_ts.append(ts_ms)
        if ts_ms > self.newest_ms:
            self.newest_ms = ts_ms
        return False

    def forget(self, start: int, end: int, written: Callable[[int], bool]) -> int:
        """Forget ids first seen in ``[start, end)`` whose records are not ``written`` to a file.

        For a jump of the log's offsets (a broker that lost its data starts a new
        epoch): an earlier run saw those records ahead of its resume point, and
        they will now come again at new offsets, not at the ones remembered.
        """
        gone = [h for h, o in self._ids.items() if start <= o < end and not written(o)]
        for h in gone:
            del self._ids[h]
        self._dead += len(gone)
        self.rewrite = self.rewrite or bool(gone)
        return len(gone)

    def expire(self) -> None:
        """Forget ids older than the window (relative to the newest append time seen)."""
        limit = self.newest_ms - self.window_ms - _SLACK_MS
        cut = bisect.bisect_left(self._mark_ts, limit) if self._mark_ts and self._mark_ts[0] < limit else 0
        cutoff = self._mark_offsets[cut - 1] if cut else None
        if cut:
            del self._mark_offsets[:cut]
            del self._mark_ts[:cut]
        if cutoff is not None:
            gone = list(_front(self._ids, lambda o: o < cutoff))
            for h in gone:
                del self._ids[h]
            self._dead += len(gone)
        over = len(self) - self.max_ids
        if over > 0:
            self.evicted_early += over
            for h in list(_take(self._ids, over)):
                del self._ids[h]
            self._dead += over
        size = sys.getsizeof(self._ids)
        if size > self._table_bytes:
            if self._dead:
                # A dict keeps the slots of deleted keys until it runs out of room, then resizes for
                # three times the keys it holds: a queue at its cap (ids added at the end, evicted at
                # the front) would settle at twice the table it needs. A copy holds the live ids only.
                self._ids = dict(self._ids)
                self._dead = 0
                size = sys.getsizeof(self._ids)
            self._table_bytes = size

    def take_segment(self) -> bytes | None:
        """The ids added since the last call, as a segment of ``FORMAT`` (None when there are none)."""
        if not self._new:
            return None
        data = self._new.tobytes()
        self._new = array("q")
        return data

    def snapshot(self) -> list[tuple[int, bytes]]:
        """Every id held now as ``(format, segment)`` pairs (they replace the listed segments)."""
        out = [(FORMAT, self._entries(self._ids).tobytes())]
        self._new = array("q")
        self.rewrite = False
        return out

    def _entries(self, ids: dict[int, int]) -> array[int]:
        out = array("q")
        offs, ts = self._mark_offsets, self._mark_ts
        for h, o in ids.items():
            i = bisect.bisect_right(offs, o) - 1
            out.extend((h, o, ts[i] if i >= 0 else (ts[0] if ts else self.newest_ms)))
        return out

    def load(self, segments: Iterable[tuple[int, bytes]]) -> None:
        """Rebuild the state from ``(format, segment)`` pairs."""
        entries: list[tuple[int, int, int]] = []
        for fmt, data in segments:
            if fmt != FORMAT:
                raise ValueError(f"message-id segment format {fmt} is unknown (this build reads {FORMAT})")
            a = array("q")
            a.frombytes(data)
            entries.extend((o, h, t) for h, o, t in zip(a[0::3], a[1::3], a[2::3]))
        entries.sort()
        ids = self._ids
        for o, h, t in entries:
            if h not in ids or ids[h] > o:
                ids[h] = o
            if not self._mark_ts or t - self._mark_ts[-1] >= 1000:
                self._mark_offsets.append(o)
                self._mark_ts.append(t)
            self.newest_ms = max(self.newest_ms, t)
        self._new = array("q")
        self.expire()


def _front(ids: dict[int, int], pred: Callable[[int], bool]) -> Iterable[int]:
    for h, o in ids.items():
        if not pred(o):
            return
        yield h


def _take(ids: dict[int, int], n: int) -> Iterable[int]:
    for i, h in enumerate(ids):
        if i >= n:
            return
        yield h
