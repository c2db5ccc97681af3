"""One log partition's way into the lake: decode, drop repeats, route rows to the files being filled.

:class:`PartitionWriter` reads records in offset order, skips what a previous
run already wrote (the journaled cuts, see :mod:`sinks.state`), drops
duplicate message ids (:mod:`sinks.dedup`), routes each row to the bucket of its
event-time directory and cuts buckets (:mod:`sinks.rotation`). The flush
protocol that makes the cuts durable is :class:`sinks.writer.LakeWriter`'s.

**Open files are bounded.** At most ``max_open_files`` buckets are being
filled across the sink, checked as each row is routed (never exceeded, not
even within one batch). A row of a directory with no bucket when that many are
open goes:

* for today's directory: to a new bucket, after the largest other one is cut
  (today's data stays fresh);
* for any other directory (late events, a historical import): to the
  partition's **overflow**, one more bucket that holds rows of any number of
  directories. It is cut as a whole like a late file (``max_late_file_age_s``,
  or ``max_file_rows``/``max_file_bytes`` of rows, or memory pressure) and then
  written as one file per directory, holding every row that directory got
  meanwhile.

So a burst of events with many distinct past dates never cuts one-row files
batch after batch: each of those days gets one file per partition per
``max_late_file_age_s`` (more only when a size limit cuts first), and every row
is written. A directory is in at most one bucket at a time (an open one or the
overflow), so each cut still covers one directory's rows over an offset range.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

import orjson

from tripwire.identity import is_control
from tripwire.log import Record

from . import metrics
from .config import SinkConfig
from .dedup import Dedup
from .rotation import Bucket
from .state import Cut, PartitionState
from .tables import Rows

logger = logging.getLogger(__name__)


class Room(Protocol):
    """The sink-wide limit on open buckets, as a partition sees it."""

    def room(self) -> bool:
        """True when one more bucket may open."""

    def make_room(self) -> None:
        """Cut the largest open bucket (of any partition) that is not being replayed."""


class PartitionWriter:
    def __init__(self, state: PartitionState, cfg: SinkConfig, kind: Rows, dedup: Dedup, forced: list[Cut],
                 room: Room) -> None:
        self.state = state
        self.cfg = cfg
        self.kind = kind
        self.dedup = dedup
        self.forced = {(c.directory, c.first): c.end for c in forced}
        self._room = room
        self.open: dict[str, Bucket] = {}
        self.overflow: dict[str, Bucket] = {}  # rows beyond max_open_files, by directory; cut together
        self.sealed: list[tuple[Cut, Bucket]] = []
        self.written: list[Cut] = []  # pending cuts whose files are durable now
        # The lake's state lists as pending cuts whose files a previous run wrote (it was killed
        # before the next flush closed them): save it at the next flush even with nothing new,
        # or an idle sink would leave the state saying they are still to write.
        self.stale = False
        self._skip: dict[str, list[Cut]] = {}
        self._skip_until = 0  # no cut covers an offset at or past this
        for c in state.closed + state.pending:
            self._add_skip(c)
        self.replaying = bool(forced)
        self.position = min([state.resume] + [c.first for c in forced])
        self._span_ms = cfg.max_file_span_s * 1000
        self.saved_resume = state.resume
        self.overflow_rows = 0

    # routing -------------------------------------------------------------------

    def _in_a_file(self, offset: int) -> bool:
        """A previous run wrote the record at ``offset`` to a file."""
        return any(c.first <= offset < c.end for cuts in self._skip.values() for c in cuts)

    def add(self, records: Sequence[Record]) -> None:
        cfg = self.cfg
        today = self.kind.table.prefix + datetime.now(UTC).strftime("date=%Y-%m-%d")
        dups = 0
        if records and records[0].offset > self.position:
            # Offsets of a non-transactional topic are dense: a jump means records went by unread.
            logger.warning("%s-%d: records jump from offset %d to %d", records[0].topic, records[0].partition,
                           self.position, records[0].offset)
            forgotten = self.dedup.forget(self.position, records[0].offset, self._in_a_file)
            if forgotten:
                logger.warning("%s-%d: %d message ids seen past offset %d but never written are forgotten, so their "
                               "records are written when they come again", records[0].topic, records[0].partition,
                               forgotten, self.position)
        for r in records:
            o = r.offset
            if o < self.position:
                continue
            if self.replaying:
                self._seal_forced(o)
            self.position = o + 1
            try:
                env = orjson.loads(r.value)
                if not isinstance(env, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                metrics.INVALID.inc()
                logger.warning("skipping %s/%d@%d: not an envelope (%s)", r.topic, r.partition, o, exc)
                continue
            if is_control(env):
                continue  # an erasure order for the engine (tripwire.identity), not an event
            directory, ts_ms = self.kind.route(env, r)
            if o < self._skip_until:
                skip = self._skip.get(directory)
                if skip and any(c.first <= o < c.end for c in skip):
                    continue  # already in a file a previous run wrote
            mid = env.get("messageId")
            source = env.get("source")
            if isinstance(mid, str) and self.dedup.seen(source if isinstance(source, str) else "", r.key or b"", mid,
                                                        o, r.timestamp_ms):
                dups += 1
                continue
            bucket = self.open.get(directory) or self.overflow.get(directory)
            if bucket is not None and bucket.force_end is None and bucket.span_exceeded(ts_ms, self._span_ms):
                self.seal(bucket, o)
                bucket = None
            if bucket is None:
                bucket = self._open(directory, o, directory.startswith(today))
            bucket.add(env, ts_ms)
            if bucket.overflow:
                self.overflow_rows += 1
                if self.overflow_rows >= cfg.max_file_rows:
                    self.seal_overflow(o + 1)
            elif bucket.force_end is None and bucket.rows >= cfg.max_file_rows:
                self.seal(bucket, o + 1)
        for bucket in [*self.open.values(), *self.overflow.values()]:
            bucket.finish_batch()
        for bucket in list(self.open.values()):
            if bucket.force_end is None and bucket.nbytes >= cfg.max_file_bytes:
                self.seal(bucket, self.position)
        if self.overflow_bytes() >= cfg.max_file_bytes:
            self.seal_overflow(self.position)
        if self.replaying:
            self._seal_forced(self.position)
            self.replaying = bool(self.forced) or any(b.force_end is not None for b in self.open.values())
        self.dedup.expire()
        metrics.DUPLICATES.inc(dups)

    def _open(self, directory: str, first: int, today: bool) -> Bucket:
        """A new bucket for ``directory``: replayed, open, or in the overflow when no room is left."""
        force_end = self.forced.pop((directory, first), None)
        overflow = False
        if force_end is None and not self._room.room():
            if today:
                self._room.make_room()
            else:
                overflow = True
        bucket = Bucket(directory, first, self.kind, today=today, overflow=overflow)
        bucket.force_end = force_end
        (self.overflow if overflow else self.open)[directory] = bucket
        return bucket

    def overflow_bytes(self) -> int:
        return sum(b.nbytes for b in self.overflow.values())

    def seal_overflow(self, end: int) -> None:
        """Cut the overflow: one file per directory it holds."""
        for bucket in list(self.overflow.values()):
            self.seal(bucket, end)

    def _seal_forced(self, offset: int) -> None:
        """Cut replayed buckets whose journaled end is at or before ``offset``."""
        for bucket in list(self.open.values()):
            if bucket.force_end is not None and bucket.force_end <= offset:
                self.seal(bucket, bucket.force_end)

    def seal(self, bucket: Bucket, end: int) -> None:
        bucket.finish_batch()
        if bucket.overflow:
            del self.overflow[bucket.directory]
            if not self.overflow:
                self.overflow_rows = 0
        else:
            del self.open[bucket.directory]
        cut = Cut(bucket.directory, bucket.first, end)
        self.sealed.append((cut, bucket))
        self._add_skip(cut)

    def _add_skip(self, cut: Cut) -> None:
        self._skip.setdefault(cut.directory, []).append(cut)
        self._skip_until = max(self._skip_until, cut.end)

    def seal_all(self) -> None:
        """Cut every open bucket at the current position (before a stop or a revocation).

        A replayed bucket that has not reached its journaled end is dropped instead
        and its cut stays journaled: the next owner replays it whole.
        """
        self.seal_overflow(self.position)
        for bucket in list(self.open.values()):
            if bucket.force_end is None:
                self.seal(bucket, self.position)
            elif bucket.force_end <= self.position:
                self.seal(bucket, bucket.force_end)
            else:
                del self.open[bucket.directory]
                self.forced[(bucket.directory, bucket.first)] = bucket.force_end

    def resume_point(self) -> int:
        firsts = [b.first for b in [*self.open.values(), *self.overflow.values()]] + [c.first for c, _ in self.sealed]
        firsts += [first for (_, first) in self.forced]
        return min(firsts + [self.position])

    # state ---------------------------------------------------------------------

    def next_state(self) -> PartitionState:
        """The state to save before writing the sealed files."""
        st = self.state
        resume = min([b.first for b in [*self.open.values(), *self.overflow.values()] if b.force_end is None]
                     + [self.position])
        sealed = [c for c, _ in self.sealed]
        # Journaled cuts being replayed stay journaled until their file is written.
        replaying = [Cut(d, f, e) for (d, f), e in self.forced.items()]
        replaying += [Cut(b.directory, b.first, b.force_end) for b in self.open.values() if b.force_end is not None]
        pending = sealed + replaying
        effective = min([resume] + [c.first for c in pending])
        closed = [c for c in st.closed + self.written if c.end > effective]
        # Skip only what is (being) written; a replayed cut's records must still come in.
        self._skip, self._skip_until = {}, 0
        for c in closed + sealed:
            self._add_skip(c)
        return PartitionState(st.topic, st.partition, resume, closed, pending, list(st.dedup), st.seq)


