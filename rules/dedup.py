"""The engine's long memory of messageIds: ids older than the rules' horizon, for a day.

Duplicates are recognised in two tiers (per partition). Ids whose event time is
within the *recent* span (the longest rule window plus the grace and the
allowed lateness) are kept exactly, in ``PartitionState.seen``, because pending
states read their first event's time and offset there. Older ids move here,
as 64-bit hashes of (messageId, source-and-key fingerprint) in one sorted
``array('q')`` per minute of event time (8 bytes an id): a client retry of an
old event carries the original's event time (SDKs set ``sentAt`` per attempt,
so the collector's correction gives the same time back), so a lookup reads the
buckets of a few minutes around it. Only events older than the recent span
reach a lookup: live traffic never pays for this tier.

Bounds: buckets older than ``window_ms`` (the dedup window, a day by default)
before the watermark are dropped; beyond ``max_ids`` the oldest buckets go
first, and :attr:`floor` rises to the oldest event time still fully remembered
(the engine does not match events older than the floor: without their ids it
could not tell a retry from a first delivery).

Two homes, one interface (:class:`LongMemory`):

* :class:`OldIds` holds the hashes in memory; they travel in the partition's snapshot
  (:meth:`OldIds.dump` / :meth:`OldIds.load`, bucket -> bytes). Kafka mode, whose
  checkpoint is the partition's whole state, and backtests use it.
* :class:`StoredOldIds` keeps them on disk, in the embedded state database
  (``rules.state``): a day of ids at thousands of events a second is gigabytes, which
  memory would hold for a day before it stopped growing. Memory keeps a count per
  minute, the hashes moved since the last commit (written with that commit, in the same
  transaction as the journal row that moved them) and a few buckets read back for
  lookups. Lookups are rare (only events older than the recent span), and a run of them
  (a history import) reads each minute once.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Protocol

BUCKET_MS = 60_000
_SLACK_BUCKETS = 1  # a retry's corrected time may differ from the original's by its network delay
_MASK64 = (1 << 64) - 1
_CACHED_BUCKETS = 8  # minutes of stored hashes kept read back per partition (a few MB at most)


def id_hash(mid: int | str | tuple[int | str, int], fp: int) -> int:
    """Signed 64-bit hash of a compact messageId (``rules.codec.compact_mid``) and its source/key fingerprint."""
    if type(mid) is tuple:
        mid = mid[0]
    if type(mid) is int:
        h = (mid ^ (mid >> 64)) & _MASK64
    else:
        h = int.from_bytes(hashlib.blake2b(str(mid).encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    h ^= (fp * 0x9E3779B97F4A7C15) & _MASK64
    return h - (1 << 64) if h >= 1 << 63 else h


class LongMemory(Protocol):
    floor: int | None
    evicted: int

    def __len__(self) -> int: ...
    def __contains__(self, item: tuple[int, int]) -> bool: ...
    def add(self, entries: Iterable[tuple[int, int]]) -> None: ...
    def expire(self, cutoff: int, max_ids: int) -> None: ...
    def dump(self) -> dict[str, object]: ...


def _group(entries: Iterable[tuple[int, int]]) -> dict[int, array[int]]:
    """(event time, hash) pairs as one sorted array of distinct hashes per minute."""
    new: dict[int, list[int]] = {}
    for t, h in entries:
        new.setdefault(t // BUCKET_MS, []).append(h)
    return {b: array("q", sorted(set(hashes))) for b, hashes in new.items()}


def _holds(arr: array[int], h: int) -> bool:
    i = bisect_left(arr, h)
    return i < len(arr) and arr[i] == h


class _Bounded:
    """What both long memories share: their size, their floor and the ids they forgot early."""

    __slots__ = ("size", "floor", "evicted")

    def __init__(self, size: int = 0, floor: int | None = None) -> None:
        self.size = size
        self.floor = floor  # ids older than this event time were forgotten early (max_ids)
        self.evicted = 0

    def __len__(self) -> int:
        return self.size

    def _expired(self, minutes: Iterable[int], size_of: Callable[[int], int], cutoff: int, max_ids: int) -> list[int]:
        """The minutes to forget, oldest first: those before ``cutoff``, then the oldest while over ``max_ids``
        (forgotten early: counted in :attr:`evicted`, raising :attr:`floor`). :attr:`size` follows."""
        gone = []
        for b in sorted(minutes):
            end = (b + 1) * BUCKET_MS
            if end > cutoff and self.size <= max_ids:
                break
            n = size_of(b)
            gone.append(b)
            self.size -= n
            if end > cutoff:  # still inside the window: forgotten early
                self.evicted += n
                self.floor = end if self.floor is None else max(self.floor, end)
        return gone


class OldIds(_Bounded):
    __slots__ = ("buckets",)

    def __init__(self) -> None:
        super().__init__()
        self.buckets: dict[int, array[int]] = {}  # minute of event time -> sorted hashes

    def add(self, entries: Iterable[tuple[int, int]]) -> None:
        """Remember (event time, hash) pairs."""
        for b, arr in _group(entries).items():
            old = self.buckets.get(b)
            if old is not None:
                self.size -= len(old)
                arr = array("q", sorted(set(old).union(arr)))
            self.buckets[b] = arr
            self.size += len(arr)

    def __contains__(self, item: tuple[int, int]) -> bool:
        t, h = item
        b = t // BUCKET_MS
        for k in range(b - _SLACK_BUCKETS, b + _SLACK_BUCKETS + 1):
            arr = self.buckets.get(k)
            if arr is not None and _holds(arr, h):
                return True
        return False

    def expire(self, cutoff: int, max_ids: int) -> None:
        """Forget ids older than ``cutoff``, then the oldest beyond ``max_ids`` (raising :attr:`floor`)."""
        for b in self._expired(self.buckets, lambda b: len(self.buckets[b]), cutoff, max_ids):
            del self.buckets[b]

    def dump(self) -> dict[str, object]:
        return {"buckets": {b: arr.tobytes() for b, arr in self.buckets.items()}, "floor": self.floor}

    @classmethod
    def load(cls, data: dict[str, object] | None) -> OldIds:
        out = cls()
        if not data:
            return out
        buckets = data.get("buckets") or {}
        assert isinstance(buckets, dict)
        for b, raw in buckets.items():
            arr = array("q")
            arr.frombytes(raw)
            out.buckets[int(b)] = arr
            out.size += len(arr)
        floor = data.get("floor")
        out.floor = floor if isinstance(floor, int) else None
        return out


Reader = Callable[[int], list[bytes]]  # minute -> the stored chunks (sorted int64 hashes) of that minute


class StoredOldIds(_Bounded):
    """The long memory in the embedded state database; see the module docstring.

    The durability layer takes what to write with :meth:`take` (chunks since the last take,
    and the minutes to delete), commits it with the batch, then calls :meth:`committed`.
    Until then the chunks stay here, where lookups see them.
    """

    __slots__ = ("counts", "_read", "_unsaved", "_taken", "_drop_below", "_cache", "_restored")

    def __init__(self, read: Reader, counts: dict[int, int] | None = None, floor: int | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})  # minute -> ids stored (chunks may overlap a little)
        super().__init__(sum(self.counts.values()), floor)
        self._read = read
        self._unsaved: list[tuple[int, array[int]]] = []  # (minute, sorted hashes) not yet committed
        self._taken = 0  # the first this many of _unsaved are in a commit under way
        self._drop_below: int | None = None  # minutes below this are deleted at the next commit
        self._cache: OrderedDict[int, array[int]] = OrderedDict()  # minute -> its committed hashes, merged
        # Restored: the first add is the restore moving the journal's ids past the recent span, some of
        # which a commit before the restart stored already (it moved them then): those are not added twice.
        self._restored = False

    def add(self, entries: Iterable[tuple[int, int]]) -> None:
        if self._restored:
            self._restored = False
            entries = [e for e in sorted(entries) if e not in self]  # in time order: each minute is read once
        for b, arr in _group(entries).items():
            self._unsaved.append((b, arr))
            self.counts[b] = self.counts.get(b, 0) + len(arr)
            self.size += len(arr)

    def __contains__(self, item: tuple[int, int]) -> bool:
        t, h = item
        b = t // BUCKET_MS
        for k in range(b - _SLACK_BUCKETS, b + _SLACK_BUCKETS + 1):
            if k not in self.counts:
                continue
            if any(u == k and _holds(arr, h) for u, arr in self._unsaved):
                return True
            if _holds(self._stored(k), h):
                return True
        return False

    def _stored(self, b: int) -> array[int]:
        arr = self._cache.get(b)
        if arr is None:
            chunks = self._read(b)
            if len(chunks) == 1:
                arr = array("q")
                arr.frombytes(chunks[0])
            else:
                merged: set[int] = set()
                for raw in chunks:
                    part = array("q")
                    part.frombytes(raw)
                    merged.update(part)
                arr = array("q", sorted(merged))
            self._cache[b] = arr
            if len(self._cache) > _CACHED_BUCKETS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(b)
        return arr

    def expire(self, cutoff: int, max_ids: int) -> None:
        gone = self._expired(self.counts, self.counts.__getitem__, cutoff, max_ids)
        for b in gone:
            del self.counts[b]
            self._cache.pop(b, None)
        if gone:  # minutes go oldest first: those of an earlier expire were older
            self._drop_below = gone[-1] + 1

    def take(self) -> tuple[list[tuple[int, bytes]], int | None, int | None]:
        """For the next commit: the chunks not taken yet, as (minute, bytes), delete the minutes below this,
        and the floor when they include minutes forgotten early (the floor must survive with the deletion)."""
        drop, self._drop_below = self._drop_below, None
        start, self._taken = self._taken, len(self._unsaved)
        return [(b, arr.tobytes()) for b, arr in self._unsaved[start:]], drop, self.floor if drop is not None else None

    def committed(self) -> None:
        """What was taken is in the database: lookups read it from there."""
        for b, _ in self._unsaved[:self._taken]:
            self._cache.pop(b, None)
        del self._unsaved[:self._taken]
        self._taken = 0

    def dump(self) -> dict[str, object]:
        """The snapshot's part: the floor (the hashes are in the database already)."""
        return {"floor": self.floor, "stored": True}

    @classmethod
    def load(cls, read: Reader, counts: dict[int, int], data: dict[str, object] | None,
             floor: int | None = None) -> StoredOldIds:
        """The stored minutes (``counts``), the stored floor and the snapshot's part; a snapshot that still holds
        the hashes (:meth:`OldIds.dump`, before they moved to the database) hands them over for the next commit."""
        held = OldIds.load(data)
        floors = [f for f in (held.floor, floor) if f is not None]
        out = cls(read, counts, max(floors) if floors else None)
        out.add((b * BUCKET_MS, h) for b, arr in held.buckets.items() for h in arr)
        out._restored = True
        return out
