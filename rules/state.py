"""Durable engine state: the embedded SQLite store and the Kafka-mode checkpoint store.

Embedded mode (:class:`SqliteStateStore`, ``<data_dir>/rules-state.db``). One
transaction (at once for a batch that produced triggers, else at least every
``commit_interval_ms``) holds, together:

* the next offset to read per partition, and the partition's watermark;
* one *journal* row per partition: every (rule, key) state changed by the batch
  (its new bytes, or None when it became empty) and the messageIds first seen in
  the batch (duplicate detection after a restart), with the duplicate memory's
  new cutoff;
* the triggers the batch produced, in an *outbox*;
* the ids the batch moved past the recent span into the long memory, as sorted
  64-bit hashes per minute of event time (``old_ids``, :class:`rules.dedup.StoredOldIds`),
  and the deletion of the minutes that left the dedup window. They are not in the
  snapshots: a day of them would make every snapshot gigabytes.

A batch of 5,000 events changes some 15,000 states and remembers 5,000 ids: one
row per partition instead of a row each is what lets the embedded engine keep
up with the collector (a row each cost ~17 µs per event, and more as the tables
grew). When a partition's journal has outgrown its last snapshot (and is at
least ``_SNAPSHOT_MIN_BYTES``), the commit writes a full snapshot of the
partition (the engine's, as in Kafka mode) instead and drops the journal
before it, so loading reads one snapshot plus a bounded journal. (A snapshot
encodes every state and remembered id: taken when the journal is
``_JOURNAL_FACTOR`` times the last one, its cost per journal byte stays small.)

So after a kill -9 the engine resumes exactly at a batch boundary: the events
after the stored offsets are replayed through the restored state and produce
the same matches with the same trigger ids. The outbox is forwarded to the
``triggers`` topic after the commit; ``trigger_marks`` records how far the
triggers topic had got when an engine's outbox was last emptied (``outbox_marks``,
per owner: engines sharing the file each forward their own partitions' rows), so on start the
forwarder skips outbox rows whose id already reached the topic (a crash
between the append and the outbox delete never duplicates a trigger).

Kafka mode (:class:`CheckpointStore`): per (topic, partition) one file
``<url>/<group>/<topic>-<partition>.ckpt`` holding the offset and a full engine
snapshot of that partition, written atomically (local: write + rename; S3: a
single PUT) every ``checkpoint_interval_ms`` and when the partition is revoked,
and read when the partition is assigned. Triggers are produced before the
checkpoint that covers them; the checkpoint also records how far the triggers
topic's partition of the same number had got (triggers are keyed like the
events, so with equal partition counts events partition *p* writes to triggers
partition *p*). The next owner reads the triggers written after that mark and
does not produce those ids again while it replays, so a crash neither loses nor
duplicates a trigger. (With unequal partition counts a replay may re-produce a
trigger, with the same id, which the webhook dispatcher dedupes.)
"""

from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import struct
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .codec import loads_state, seen_entries
from .errors import StateError

logger = logging.getLogger(__name__)

_SNAPSHOT_MIN_BYTES = 4 << 20
_JOURNAL_FACTOR = 4  # a snapshot when the journal is this many times the last one: ~1/4 of a snapshot per journal byte

_SCHEMA = """
CREATE TABLE IF NOT EXISTS partitions (
    grp TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    max_t INTEGER NOT NULL, watermark INTEGER NOT NULL, PRIMARY KEY (grp, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, grp TEXT NOT NULL, id TEXT NOT NULL, key BLOB, value BLOB NOT NULL,
    owner INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    grp TEXT NOT NULL, partition INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (grp, partition)
);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, grp TEXT NOT NULL, partition INTEGER NOT NULL, data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_by_partition ON journal (grp, partition, seq);
CREATE TABLE IF NOT EXISTS old_ids (
    grp TEXT NOT NULL, partition INTEGER NOT NULL, bucket INTEGER NOT NULL, data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS old_ids_by_bucket ON old_ids (grp, partition, bucket);
CREATE TABLE IF NOT EXISTS old_floor (
    grp TEXT NOT NULL, partition INTEGER NOT NULL, floor INTEGER NOT NULL, PRIMARY KEY (grp, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox_marks (
    grp TEXT NOT NULL, owner INTEGER NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    PRIMARY KEY (grp, owner, partition)
) WITHOUT ROWID;
"""


@dataclass
class PartitionDelta:
    """What one batch changed in one partition."""

    partition: int
    offset: int  # next offset to read
    max_t: int
    watermark: int
    states: list[tuple[str, str, bytes | None]] = field(default_factory=list)  # (rule uid, key, data|None=delete)
    seen: list[tuple[str, int, int]] = field(default_factory=list)  # (messageId, event time, fingerprint)
    seen_cutoff: int | None = None  # the recent span's floor moved here (older ids: the engine's long memory)
    snapshot: bytes | None = None  # the whole partition (Engine.snapshot_partition): replaces its journal
    old: list[tuple[int, bytes]] = field(default_factory=list)  # long-memory chunks: (minute, sorted int64 hashes)
    old_below: int | None = None  # long-memory minutes below this leave the database
    old_floor: int | None = None  # ids before this time were forgotten early (at dedup_max_ids): too late from now on


@dataclass
class LoadedPartition:
    offset: int | None
    max_t: int
    watermark: int
    seen: list[tuple[str, int, int]]  # (messageId, event time, fingerprint): the engine sorts recent from old
    states: list[tuple[tuple[str, str], bytes]]
    old: dict[str, Any] | None = None  # the snapshot's long memory (rules.dedup.OldIds.dump)
    old_counts: dict[int, int] = field(default_factory=dict)  # minute -> ids in old_ids (StoredOldIds)
    old_floor: int | None = None


class SqliteStateStore:
    def __init__(self, path: str | Path, group: str) -> None:
        self.path = Path(path)
        self.group = group
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None  # long-memory lookups, beside the writer (WAL)
        self._read_lock = threading.Lock()
        self._sizes: dict[int, list[int]] = {}  # partition -> [last snapshot's bytes, journal bytes since]

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA journal_size_limit={64 << 20}")  # a big snapshot's WAL does not stay that big
            conn.executescript(_SCHEMA)
            reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        except sqlite3.Error as exc:
            raise StateError(f"rules state database {self.path} cannot be opened: {exc}") from exc
        self._conn, self._reader = conn, reader

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        with self._read_lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()

    def old_ids(self, partition: int, bucket: int) -> list[bytes]:
        """The long-memory chunks of one minute of a partition (committed ones: the reader sees the last commit)."""
        with self._read_lock:
            if self._reader is None:
                raise StateError(f"rules state database {self.path} is not open")
            try:
                return [row[0] for row in self._reader.execute(
                    "SELECT data FROM old_ids WHERE grp = ? AND partition = ? AND bucket = ?", (self.group, partition, bucket))]
            except sqlite3.Error as exc:
                raise StateError(f"rules state database {self.path}: reading remembered ids failed: {exc}") from exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(f"rules state database {self.path} is not open")
        return self._conn

    def load(self, partition: int) -> LoadedPartition:
        """The partition as of the last commit: its snapshot (if any), then its journal."""
        g = self.group
        with self._lock:
            db = self._db()
            row = db.execute(
                "SELECT offset, max_t, watermark FROM partitions WHERE grp = ? AND partition = ?", (g, partition)
            ).fetchone()
            snap = db.execute("SELECT data FROM snapshots WHERE grp = ? AND partition = ?", (g, partition)).fetchone()
            old = None
            entries: list[tuple[str, int, int]] = []
            states: dict[tuple[str, str], bytes] = {}
            if snap is not None:
                base = loads_state(snap[0])
                entries = seen_entries(base["seen"])
                states = base["states"]
                old = base.get("old")
            seen = {(m, fp): t for m, t, fp in entries}
            journal = 0
            for (data,) in db.execute("SELECT data FROM journal WHERE grp = ? AND partition = ? ORDER BY seq", (g, partition)):
                journal += len(data)
                changed, new_seen, _cutoff = loads_state(data)
                for uid, key, state in changed:
                    if state is None:
                        states.pop((uid, key), None)
                    else:
                        states[(uid, key)] = state
                # Every id is kept: the engine moves those older than its recent span to its long memory.
                for m, t, fp in seen_entries(new_seen):
                    seen[(m, fp)] = t
            self._sizes[partition] = [len(snap[0]) if snap is not None else 0, journal]
            counts = {b: n // 8 for b, n in db.execute(
                "SELECT bucket, SUM(length(data)) FROM old_ids WHERE grp = ? AND partition = ? GROUP BY bucket", (g, partition))}
            floor = db.execute("SELECT floor FROM old_floor WHERE grp = ? AND partition = ?", (g, partition)).fetchone()
        ids = [(m, t, fp) for (m, fp), t in seen.items()]
        if row is None:
            return LoadedPartition(None, -(2**62), -(2**62), ids, list(states.items()), old, counts, floor and floor[0])
        return LoadedPartition(row[0], row[1], row[2], ids, list(states.items()), old, counts, floor and floor[0])

    def wants_snapshot(self, partition: int) -> bool:
        """The partition's journal outgrew its last snapshot: the next commit should carry a snapshot."""
        base, journal = self._sizes.get(partition, (0, 0))
        return journal >= max(_JOURNAL_FACTOR * base, _SNAPSHOT_MIN_BYTES)

    def commit(self, deltas: Sequence[PartitionDelta], triggers: Sequence[tuple[str, bytes | None, bytes, int]]) -> None:
        """One transaction: offsets, watermarks, each partition's journal row (or snapshot), outbox triggers."""
        g = self.group
        rows = [(d, None if d.snapshot is not None or not (d.states or d.seen or d.seen_cutoff is not None)
                 else pickle.dumps((d.states, d.seen, d.seen_cutoff), protocol=5)) for d in deltas]
        with self._lock:
            db = self._db()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for d, data in rows:
                        p = d.partition
                        db.execute(
                            "INSERT INTO partitions VALUES (?, ?, ?, ?, ?) ON CONFLICT(grp, partition) DO UPDATE SET "
                            "offset = excluded.offset, max_t = excluded.max_t, watermark = excluded.watermark",
                            (g, p, d.offset, d.max_t, d.watermark),
                        )
                        if d.snapshot is not None:
                            db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?)", (g, p, d.snapshot))
                            db.execute("DELETE FROM journal WHERE grp = ? AND partition = ?", (g, p))
                        elif data is not None:
                            db.execute("INSERT INTO journal (grp, partition, data) VALUES (?, ?, ?)", (g, p, data))
                        if d.old:
                            db.executemany("INSERT INTO old_ids VALUES (?, ?, ?, ?)", [(g, p, b, raw) for b, raw in d.old])
                        if d.old_below is not None:  # after the inserts: a chunk of a minute that left goes too
                            db.execute("DELETE FROM old_ids WHERE grp = ? AND partition = ? AND bucket < ?", (g, p, d.old_below))
                        if d.old_floor is not None:
                            db.execute("INSERT OR REPLACE INTO old_floor VALUES (?, ?, ?)", (g, p, d.old_floor))
                    if triggers:
                        db.executemany("INSERT INTO outbox (grp, id, key, value, owner) VALUES (?, ?, ?, ?, ?)",
                                       [(g, i, k, v, owner) for i, k, v, owner in triggers])
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StateError(f"rules state database {self.path}: commit failed: {exc}") from exc
            for d, data in rows:
                sizes = self._sizes.setdefault(d.partition, [0, 0])
                if d.snapshot is not None:
                    sizes[:] = [len(d.snapshot), 0]
                elif data is not None:
                    sizes[1] += len(data)

    def outbox(self, owners: Collection[int], limit: int = 10_000) -> list[tuple[int, str, bytes | None, bytes]]:
        """Triggers of the events partitions ``owners`` committed but not yet forwarded."""
        wanted = sorted(set(owners))
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        with self._lock:
            return list(self._db().execute(
                f"SELECT seq, id, key, value FROM outbox WHERE grp = ? AND owner IN ({marks}) ORDER BY seq LIMIT ?",  # noqa: S608
                (self.group, *wanted, limit)))

    def forwarded(self, seqs: Sequence[int], marks: Mapping[int, Mapping[int, int]]) -> None:
        """Outbox rows ``seqs`` reached the triggers topic; ``marks``: per owner whose outbox is now empty,
        the topic's end offsets (where a recovery of that owner's rows starts looking)."""
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
                db.executemany(
                    "INSERT INTO outbox_marks VALUES (?, ?, ?, ?) ON CONFLICT(grp, owner, partition) "
                    "DO UPDATE SET offset = excluded.offset",
                    [(self.group, owner, p, o) for owner, ends in marks.items() for p, o in ends.items()],
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def marks(self, owner: int) -> dict[int, int]:
        """Per triggers partition, an offset before which none of ``owner``'s unforwarded triggers can be."""
        with self._lock:
            return dict(self._db().execute("SELECT partition, offset FROM outbox_marks WHERE grp = ? AND owner = ?",
                                           (self.group, owner)))


_MAGIC = b"TWCK2"  # + offset (int64) + triggers-topic mark (int64) + snapshot


class CheckpointStore:
    """Per-partition snapshots in a local directory or on S3 (any fsspec URL)."""

    def __init__(self, url: str, group: str, storage_options: Mapping[str, Any] | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.group = group
        self._fs, self._root = fsspec.core.url_to_fs(self.url, **dict(storage_options or {}))
        self._local = "file" in (self._fs.protocol if isinstance(self._fs.protocol, tuple) else (self._fs.protocol,))

    def _path(self, topic: str, partition: int) -> str:
        return f"{self._root}/{self.group}/{topic}-{partition}.ckpt"

    def status_path(self, instance: str) -> tuple[Any, str]:
        """(filesystem, path) of one engine instance's status document (``tripwire rules status``)."""
        return self._fs, f"{self._root}/{self.group}/status/{instance}.json"

    def status_paths(self) -> list[str]:
        try:
            return sorted(self._fs.glob(f"{self._root}/{self.group}/status/*.json"))
        except FileNotFoundError:
            return []

    def save(self, topic: str, partition: int, offset: int, snapshot: bytes, mark: int = -1) -> None:
        """Store ``snapshot`` taken after reading up to ``offset``; ``mark``: triggers-topic end offset then."""
        data = _MAGIC + struct.pack(">qq", offset, mark) + snapshot
        path = self._path(topic, partition)
        try:
            if self._local:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                tmp = f"{path}.tmp-{os.getpid()}"
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            else:
                self._fs.pipe_file(path, data)  # one PUT: atomic on S3
        except Exception as exc:
            raise StateError(f"checkpoint {self.url}/{self.group}/{topic}-{partition} cannot be written: {exc}") from exc

    def load(self, topic: str, partition: int) -> tuple[int, bytes] | None:
        got = self.load_marked(topic, partition)
        return None if got is None else (got[0], got[2])

    def load_marked(self, topic: str, partition: int) -> tuple[int, int | None, bytes] | None:
        """(offset, triggers-topic mark or None, snapshot), or None when there is no checkpoint."""
        path = self._path(topic, partition)
        try:
            if self._local:
                try:
                    data = Path(path).read_bytes()
                except FileNotFoundError:
                    return None
            else:
                try:
                    data = self._fs.cat_file(path)
                except FileNotFoundError:
                    return None
        except Exception as exc:
            raise StateError(f"checkpoint {self.url}/{self.group}/{topic}-{partition} cannot be read: {exc}") from exc
        n = len(_MAGIC)
        if data.startswith(_MAGIC) and len(data) >= n + 16:
            offset, mark = struct.unpack(">qq", data[n : n + 16])
            return offset, (mark if mark >= 0 else None), data[n + 16 :]
        raise StateError(f"checkpoint {self.url}/{self.group}/{topic}-{partition} is not a tripwire checkpoint")
