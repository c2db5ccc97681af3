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
could not tell a retry from a first delivery). Persistence: :meth:`dump` /
:meth:`load` (bucket -> bytes), taken with the partition's snapshot.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable

BUCKET_MS = 60_000
_SLACK_BUCKETS = 1  # a retry's corrected time may differ from the original's by its network delay
_MASK64 = (1 << 64) - 1


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


class OldIds:
    __slots__ = ("buckets", "size", "floor", "evicted")

    def __init__(self) -> None:
        self.buckets: dict[int, array[int]] = {}  # minute of event time -> sorted hashes
        self.size = 0
        self.floor: int | None = None  # ids older than this event time were forgotten early (max_ids)
        self.evicted = 0

    def __len__(self) -> int:
        return self.size

    def add(self, entries: Iterable[tuple[int, int]]) -> None:
        """Remember (event time, hash) pairs."""
        new: dict[int, list[int]] = {}
        for t, h in entries:
            new.setdefault(t // BUCKET_MS, []).append(h)
        for b, hashes in new.items():
            old = self.buckets.get(b)
            if old is not None:
                hashes.extend(old)
                self.size -= len(old)
            arr = array("q", sorted(set(hashes)))
            self.buckets[b] = arr
            self.size += len(arr)

    def __contains__(self, item: tuple[int, int]) -> bool:
        t, h = item
        b = t // BUCKET_MS
        for k in range(b - _SLACK_BUCKETS, b + _SLACK_BUCKETS + 1):
            arr = self.buckets.get(k)
            if arr is not None:
                i = bisect_left(arr, h)
                if i < len(arr) and arr[i] == h:
                    return True
        return False

    def expire(self, cutoff: int, max_ids: int) -> None:
        """Forget ids older than ``cutoff``, then the oldest beyond ``max_ids`` (raising :attr:`floor`)."""
        if not self.buckets:
            return
        for b in sorted(self.buckets):
            if (b + 1) * BUCKET_MS > cutoff and self.size <= max_ids:
                break
            arr = self.buckets.pop(b)
            self.size -= len(arr)
            if (b + 1) * BUCKET_MS > cutoff:  # still inside the window: forgotten early
                self.evicted += len(arr)
                end = (b + 1) * BUCKET_MS
                self.floor = end if self.floor is None else max(self.floor, end)

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
