"""From log records to durable Parquet files: the partitions a sink owns and the flush protocol.

:class:`LakeWriter` owns the log partitions this sink is assigned (each a
:class:`sinks.partition.PartitionWriter`: dedup, routing, cuts), keeps the
sink-wide limits (open buckets, buffered bytes) and runs the flush protocol
(see :mod:`sinks.state` for the state contract):

0. publish the typed columns decided since the last flush (:mod:`sinks.registry`),
1. save the partition state with the new cuts as ``pending`` (and the message
   ids seen since the last flush as a new segment),
2. write each cut's file atomically (tmp + ``os.replace``, or one S3 PUT),
3. only then report the resume offset for the log commit.

It is synchronous (the service runs it in a worker thread) and single-threaded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from tripwire.log import EVENTS, INVALID, Record

from . import metrics
from .columns import Columns
from .config import SinkConfig
from .dedup import FORMAT as DEDUP_FORMAT
from .dedup import Dedup
from .invalid import InvalidRows
from .lake import Lake
from .partition import PartitionWriter
from .registry import open_columns, publish
from .rotation import Bucket, aged, over_budget
from .schema import encode_parquet
from .tables import EventRows, Rows
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


class LakeWriter:
    """Every partition of one topic this sink owns (one table of the lake), and the flush protocol.

    ``topic`` ``events`` fills the events table, ``invalid`` the invalid table.
    Writers of one sink share its limits (``max_open_files``,
    ``max_buffer_bytes``) through ``group`` (by default a writer is alone).
    """

    def __init__(self, lake: Lake, cfg: SinkConfig, topic: str = EVENTS) -> None:
        self.lake = lake
        self.cfg = cfg
        self.topic = topic
        self.columns: Columns | None = None
        self.kind: Rows
        if topic == INVALID:
            self.kind = InvalidRows()
        else:
            self.columns = open_columns(lake, cfg)
            self.kind = EventRows(self.columns, cfg.partitioning)
        self.parts: dict[int, PartitionWriter] = {}
        self.group: list[LakeWriter] = [self]
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
        for seq, _, fmt in state.dedup:
            data = lake.read(dedup_path(topic, partition, seq))
            if data is not None:
                segments.append((fmt, data))
        dedup.load(segments)
        pw = PartitionWriter(state, self.cfg, self.kind, dedup, forced, self)
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

    def _all_parts(self) -> list[PartitionWriter]:
        return [pw for w in self.group for pw in w.parts.values()]

    def _bound_memory(self) -> None:
        """Cut the largest buckets (an overflow counts as one) until the rest fits ``max_buffer_bytes``."""
        units: list[tuple[int, tuple[PartitionWriter, Bucket | None]]] = []
        for pw in self._all_parts():
            units += [(b.nbytes, (pw, b)) for b in pw.open.values() if b.force_end is None]
            if pw.overflow:
                units.append((pw.overflow_bytes(), (pw, None)))
        total = sum(w.buffered_bytes() for w in self.group)
        for pw, bucket in over_budget(units, total, self.cfg.max_buffer_bytes):
            if bucket is None:
                pw.seal_overflow(pw.position)
            else:
                pw.seal(bucket, pw.position)

    # Room: the open-bucket limit the partitions share
    def room(self) -> bool:
        return sum(len(pw.open) for pw in self._all_parts()) < self.cfg.max_open_files

    def make_room(self) -> None:
        open_ = [(pw, b) for pw in self._all_parts() for b in pw.open.values() if b.force_end is None]
        if open_:  # rows as well: the rows of the batch being routed are not counted in bytes yet
            pw, bucket = max(open_, key=lambda t: (t[1].nbytes, t[1].rows))
            pw.seal(bucket, pw.position)

    def seal_aged(self, now: float | None = None) -> None:
        for pw in self.parts.values():
            for b in aged(list(pw.open.values()), self.cfg, now):
                pw.seal(b, pw.position)
            if pw.overflow and aged([min(pw.overflow.values(), key=lambda b: b.opened)], self.cfg, now):
                pw.seal_overflow(pw.position)

    def seal_all(self) -> None:
        for pw in self.parts.values():
            pw.seal_all()

    def open_files(self) -> int:
        """Buckets being filled; an overflow counts as one."""
        return sum(len(pw.open) + bool(pw.overflow) for pw in self.parts.values())

    def buffered_bytes(self) -> int:
        return sum(b.nbytes for pw in self.parts.values() for b in [*pw.open.values(), *pw.overflow.values()])

    # flushing ------------------------------------------------------------------

    def flush(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """Write sealed files of ``partitions`` (default all); returns their resume offsets."""
        if self.columns is not None and self.columns.changed:
            publish(self.lake, self.columns, self.cfg)  # 0. the lake's columns, before any file has them
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
            segments = [(DEDUP_FORMAT, segment or b"")]
            if pw.dedup.rewrite or len(state.dedup) >= _MAX_DEDUP_SEGMENTS:
                segments = pw.dedup.snapshot()
                expired = [s for s, _, _ in state.dedup]
                state.dedup = []
            for fmt, data in segments:
                state.seq += 1
                lake.write(dedup_path(self.topic, state.partition, state.seq), data)
                state.dedup.append((state.seq, pw.dedup.newest_ms, fmt))
        limit = pw.dedup.newest_ms - cfg.dedup_window_s * 1000 - 7_200_000
        expired += [s for s, t, _ in state.dedup if t < limit]
        state.dedup = [d for d in state.dedup if d[1] >= limit]
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

