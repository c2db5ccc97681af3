"""From log records to durable Parquet files: routing, dedup, cuts, the flush protocol.

:class:`PartitionWriter` owns one log partition: it decodes records in offset
order, skips what a previous run already wrote, drops duplicate message ids,
routes each row to the bucket of its event-time directory and cuts buckets
(see :mod:`sinks.rotation`). :class:`LakeWriter` owns the partitions this sink
is assigned and runs the flush protocol (see :mod:`sinks.state` for the state
contract):

1. save the partition state with the new cuts as ``pending`` (and the message
   ids seen since the last flush as a new segment),
2. write each cut's file atomically (tmp + ``os.replace``, or one S3 PUT),
3. only then report the resume offset for the log commit.

It is synchronous (the service runs it in a worker thread) and single-threaded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import orjson
import pyarrow as pa

from tripwire.envelope import format_time_ms
from tripwire.identity import is_control
from tripwire.log import Record

from . import metrics
from .catalog import Promoted
from .config import SinkConfig
from .dedup import Dedup
from .lake import Lake
from .registry import load_promoted
from .rotation import Bucket, aged, over_limits
from .schema import BatchBuilder, arrow_schema, encode_parquet, parse_ms
from .state import (
    Cut,
    PartitionState,
    dedup_path,
    file_prefix,
    load_state,
    removed_names,
    save_state,
)

logger = logging.getLogger(__name__)

_MAX_DEDUP_SEGMENTS = 32
_WRITERS = 4  # files of one flush written in parallel


def directory_for(ts: object, partitioning: str) -> tuple[str, int] | None:
    """The lake directory and event time (ms) of a normalised ``timestamp``."""
    if isinstance(ts, str) and len(ts) == 24 and ts[10] == "T" and ts[-1] == "Z":
        ms = parse_ms(ts)
        text = ts
    else:
        ms = parse_ms(ts)
        if ms is None:
            return None
        text = format_time_ms(ms)
    if ms is None:
        return None
    if partitioning == "date":
        return f"date={text[:10]}", ms
    return f"date={text[:10]}/hour={int(text[11:13])}", ms  # unpadded: DuckDB types it BIGINT


class PartitionWriter:
    def __init__(self, state: PartitionState, cfg: SinkConfig, schema: pa.Schema, promoted: list[Promoted],
                 dedup: Dedup, forced: list[Cut]) -> None:
        self.state = state
        self.cfg = cfg
        self._schema = schema
        self._promoted = promoted
        self.dedup = dedup
        self.forced = {(c.directory, c.first): c.end for c in forced}
        self.open: dict[str, Bucket] = {}
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

    # routing -------------------------------------------------------------------

    def _in_a_file(self, offset: int) -> bool:
        """A previous run wrote the record at ``offset`` to a file."""
        return any(c.first <= offset < c.end for cuts in self._skip.values() for c in cuts)

    def add(self, records: Sequence[Record]) -> None:
        cfg = self.cfg
        today = datetime.now(UTC).strftime("date=%Y-%m-%d")
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
            where = directory_for(env.get("timestamp"), cfg.partitioning) or directory_for(
                env.get("receivedAt"), cfg.partitioning) or directory_for(format_time_ms(r.timestamp_ms), cfg.partitioning)
            assert where is not None
            directory, ts_ms = where
            if o < self._skip_until:
                skip = self._skip.get(directory)
                if skip and any(c.first <= o < c.end for c in skip):
                    continue  # already in a file a previous run wrote
            mid = env.get("messageId")
            if isinstance(mid, str) and self.dedup.seen(mid, o, r.timestamp_ms):
                dups += 1
                continue
            bucket = self.open.get(directory)
            if bucket is not None and bucket.force_end is None and bucket.span_exceeded(ts_ms, self._span_ms):
                self.seal(bucket, o)
                bucket = None
            if bucket is None:
                bucket = Bucket(directory, o, BatchBuilder(self._schema, self._promoted),
                                today=directory.startswith(today))
                bucket.force_end = self.forced.pop((directory, o), None)
                self.open[directory] = bucket
            bucket.add(env, ts_ms)
            if bucket.force_end is None and bucket.rows >= cfg.max_file_rows:
                self.seal(bucket, o + 1)
        for bucket in list(self.open.values()):
            bucket.finish_batch()
            if bucket.force_end is None and bucket.nbytes >= cfg.max_file_bytes:
                self.seal(bucket, self.position)
        if self.replaying:
            self._seal_forced(self.position)
            self.replaying = bool(self.forced) or any(b.force_end is not None for b in self.open.values())
        self.dedup.expire()
        metrics.DUPLICATES.inc(dups)

    def _seal_forced(self, offset: int) -> None:
        """Cut replayed buckets whose journaled end is at or before ``offset``."""
        for bucket in list(self.open.values()):
            if bucket.force_end is not None and bucket.force_end <= offset:
                self.seal(bucket, bucket.force_end)

    def seal(self, bucket: Bucket, end: int) -> None:
        bucket.finish_batch()
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
        for bucket in list(self.open.values()):
            if bucket.force_end is None:
                self.seal(bucket, self.position)
            elif bucket.force_end <= self.position:
                self.seal(bucket, bucket.force_end)
            else:
                del self.open[bucket.directory]
                self.forced[(bucket.directory, bucket.first)] = bucket.force_end

    def resume_point(self) -> int:
        firsts = [b.first for b in self.open.values()] + [c.first for c, _ in self.sealed]
        firsts += [first for (_, first) in self.forced]
        return min(firsts + [self.position])

    # state ---------------------------------------------------------------------

    def next_state(self) -> PartitionState:
        """The state to save before writing the sealed files."""
        st = self.state
        resume = min([b.first for b in self.open.values() if b.force_end is None] + [self.position])
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


class LakeWriter:
    """Every partition this sink owns, and the flush protocol."""

    def __init__(self, lake: Lake, cfg: SinkConfig, topic: str = "events") -> None:
        self.lake = lake
        self.cfg = cfg
        self.topic = topic
        self.promoted = load_promoted(lake, cfg)
        self.schema = arrow_schema(self.promoted)
        self.parts: dict[int, PartitionWriter] = {}
        self._pool: ThreadPoolExecutor | None = None

    # assignment ----------------------------------------------------------------

    def assign(self, partition: int) -> int:
        """Load the partition's state from the lake; returns the offset to read from."""
        lake, topic = self.lake, self.topic
        lake.cleanup(file_prefix(topic, partition))
        state = load_state(lake, topic, partition) or PartitionState(topic, partition)
        forced, done = [], []
        removed: dict[str, set[str]] = {}
        for cut in state.pending:
            path = state.path_of(cut)
            if cut.directory not in removed:
                removed[cut.directory] = removed_names(lake, cut.directory)
            if lake.exists(path) or path.rsplit("/", 1)[1] in removed[cut.directory]:
                done.append(cut)
            else:
                forced.append(cut)
        state.closed += done
        state.pending = []
        dedup = Dedup(self.cfg.dedup_window_s * 1000, self.cfg.dedup_max_ids)
        segments = []
        for seq, _ in state.dedup:
            data = lake.read(dedup_path(topic, partition, seq))
            if data is not None:
                segments.append(data)
        dedup.load(segments)
        pw = PartitionWriter(state, self.cfg, self.schema, self.promoted, dedup, forced)
        pw.stale = bool(done)
        self.parts[partition] = pw
        if forced:
            logger.info("%s-%d: replaying %d journaled cut(s) from offset %d", topic, partition, len(forced), pw.position)
        return pw.position

    def revoke(self, partition: int) -> int | None:
        """Write everything buffered for ``partition`` and let it go; returns its resume offset."""
        pw = self.parts.get(partition)
        if pw is None:
            return None
        pw.seal_all()
        self.flush([partition])
        self.flush([partition])  # close the cuts just written: the state left behind is exact
        del self.parts[partition]
        return pw.resume_point()

    # processing ----------------------------------------------------------------

    def process(self, records: Iterable[Record]) -> None:
        by_partition: dict[int, list[Record]] = {}
        for r in records:
            by_partition.setdefault(r.partition, []).append(r)
        for partition, recs in by_partition.items():
            pw = self.parts.get(partition)
            if pw is not None:
                pw.add(recs)
        self._bound_memory()

    def _bound_memory(self) -> None:
        buckets = [(pw, b) for pw in self.parts.values() for b in pw.open.values()]
        chosen = set(map(id, over_limits([b for _, b in buckets], self.cfg)))
        for pw, b in buckets:
            if id(b) in chosen:
                pw.seal(b, pw.position)

    def seal_aged(self, now: float | None = None) -> None:
        for pw in self.parts.values():
            for b in aged(list(pw.open.values()), self.cfg, now):
                pw.seal(b, pw.position)

    def seal_all(self) -> None:
        for pw in self.parts.values():
            pw.seal_all()

    def open_files(self) -> int:
        return sum(len(pw.open) for pw in self.parts.values())

    def buffered_bytes(self) -> int:
        return sum(b.nbytes for pw in self.parts.values() for b in pw.open.values())

    # flushing ------------------------------------------------------------------

    def flush(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """Write sealed files of ``partitions`` (default all); returns their resume offsets."""
        out = {}
        for partition in list(self.parts if partitions is None else partitions):
            pw = self.parts[partition]
            moved = pw.resume_point() != pw.saved_resume
            if not pw.sealed and not pw.written and not moved and not pw.stale:
                continue
            self._flush_partition(pw)
            out[partition] = pw.resume_point()
        return out

    def _flush_partition(self, pw: PartitionWriter) -> None:
        lake, cfg = self.lake, self.cfg
        state = pw.next_state()
        expired: list[int] = []
        segment = pw.dedup.take_segment()
        if segment is not None or pw.dedup.rewrite:
            state.seq += 1
            if pw.dedup.rewrite or len(state.dedup) >= _MAX_DEDUP_SEGMENTS:
                segment = pw.dedup.snapshot()
                expired = [s for s, _ in state.dedup]
                state.dedup = []
            lake.write(dedup_path(self.topic, state.partition, state.seq), segment)
            state.dedup.append((state.seq, pw.dedup.newest_ms))
        limit = pw.dedup.newest_ms - cfg.dedup_window_s * 1000 - 7_200_000
        expired += [s for s, t in state.dedup if t < limit]
        state.dedup = [(s, t) for s, t in state.dedup if t >= limit]
        save_state(lake, state)  # 1. journal the cuts
        pw.state = state
        pw.stale = False
        sealed, pw.sealed = pw.sealed, []
        if len(sealed) == 1:  # 2. write the files
            self._write_file(state, *sealed[0])
        elif sealed:  # several at once: S3 PUTs are latency-bound, Parquet encoding releases the GIL
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=_WRITERS, thread_name_prefix="tripwire-sink-write")
            for _ in self._pool.map(lambda item: self._write_file(state, *item), sealed):
                pass
        pw.written = [c for c, _ in sealed]
        pw.saved_resume = pw.resume_point()
        if expired:
            lake.delete([dedup_path(self.topic, state.partition, s) for s in expired])

    def _write_file(self, state: PartitionState, cut: Cut, bucket: Bucket) -> None:
        cfg, lake = self.cfg, self.lake
        table = bucket.table()
        data = encode_parquet(
            table, compression=cfg.compression, compression_level=cfg.compression_level,
            row_group_rows=cfg.row_group_rows,
            metadata={"tripwire.source": f"{self.topic}/{state.partition}", "tripwire.offsets": f"{cut.first}-{cut.end}"},
        )
        path = state.path_of(cut)
        with lake.lock(cut.directory, exclusive=False):
            lake.write(path, data)
        metrics.ROWS.inc(table.num_rows)
        metrics.BYTES.inc(len(data))
        metrics.FILES.inc()
        logger.debug("wrote %s (%d rows, %d bytes)", path, table.num_rows, len(data))

    def close(self) -> dict[int, int]:
        self.seal_all()
        try:
            out = self.flush()
            out.update(self.flush())  # close the cuts just written: the state left behind is exact
            return out
        finally:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

