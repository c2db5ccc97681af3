"""Durable engine state: the embedded SQLite store and the Kafka-mode checkpoint store.

Embedded mode (:class:`SqliteStateStore`, ``<data_dir>/rules-state.db``). One
transaction (at once for a batch that produced triggers, else at least every
``commit_interval_ms``) holds, together:

* the next offset to read per partition, and the partition's watermark;
* every (rule, key) state changed by the batch (upserted, or deleted when empty);
* the messageIds first seen in the batch (duplicate detection after a restart);
* the triggers the batch produced, in an *outbox*.

So after a kill -9 the engine resumes exactly at a batch boundary: the events
after the stored offsets are replayed through the restored state and produce
the same matches with the same trigger ids. The outbox is forwarded to the
``triggers`` topic after the commit; ``trigger_marks`` records how far the
triggers topic had got when the outbox was last emptied, so on start the
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
import sqlite3
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import StateError

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS partitions (
    grp TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
    max_t INTEGER NOT NULL, watermark INTEGER NOT NULL, PRIMARY KEY (grp, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS states (
    grp TEXT NOT NULL, partition INTEGER NOT NULL, rule TEXT NOT NULL, key TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (grp, partition, rule, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (
    grp TEXT NOT NULL, partition INTEGER NOT NULL, mid TEXT NOT NULL, t INTEGER NOT NULL,
    PRIMARY KEY (grp, partition, mid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_time ON seen (grp, partition, t);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, grp TEXT NOT NULL, id TEXT NOT NULL, key BLOB, value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS trigger_marks (
    grp TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL, PRIMARY KEY (grp, partition)
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
    seen: list[tuple[str, int]] = field(default_factory=list)
    seen_cutoff: int | None = None  # forget messageIds older than this event time


@dataclass
class LoadedPartition:
    offset: int | None
    max_t: int
    watermark: int
    seen: dict[str, int]
    states: list[tuple[tuple[str, str], bytes]]


class SqliteStateStore:
    def __init__(self, path: str | Path, group: str) -> None:
        self.path = Path(path)
        self.group = group
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"rules state database {self.path} cannot be opened: {exc}") from exc
        self._conn = conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(f"rules state database {self.path} is not open")
        return self._conn

    def load(self, partition: int) -> LoadedPartition:
        with self._lock:
            db = self._db()
            row = db.execute(
                "SELECT offset, max_t, watermark FROM partitions WHERE grp = ? AND partition = ?", (self.group, partition)
            ).fetchone()
            seen = dict(db.execute("SELECT mid, t FROM seen WHERE grp = ? AND partition = ?", (self.group, partition)))
            states = [((r, k), d) for r, k, d in db.execute(
                "SELECT rule, key, data FROM states WHERE grp = ? AND partition = ?", (self.group, partition))]
        if row is None:
            return LoadedPartition(None, -(2**62), -(2**62), seen, states)
        return LoadedPartition(row[0], row[1], row[2], seen, states)

    def commit(self, deltas: Sequence[PartitionDelta], triggers: Sequence[tuple[str, bytes | None, bytes]]) -> None:
        """One transaction: offsets, watermarks, changed states, new messageIds, outbox triggers."""
        g = self.group
        with self._lock:
            db = self._db()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for d in deltas:
                        db.execute(
                            "INSERT INTO partitions VALUES (?, ?, ?, ?, ?) ON CONFLICT(grp, partition) DO UPDATE SET "
                            "offset = excluded.offset, max_t = excluded.max_t, watermark = excluded.watermark",
                            (g, d.partition, d.offset, d.max_t, d.watermark),
                        )
                        ups = [(g, d.partition, r, k, data) for r, k, data in d.states if data is not None]
                        dels = [(g, d.partition, r, k) for r, k, data in d.states if data is None]
                        if ups:
                            db.executemany("INSERT OR REPLACE INTO states VALUES (?, ?, ?, ?, ?)", ups)
                        if dels:
                            db.executemany("DELETE FROM states WHERE grp = ? AND partition = ? AND rule = ? AND key = ?", dels)
                        if d.seen:
                            db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?, ?, ?)", [(g, d.partition, m, t) for m, t in d.seen])
                        if d.seen_cutoff is not None:
                            db.execute("DELETE FROM seen WHERE grp = ? AND partition = ? AND t < ?", (g, d.partition, d.seen_cutoff))
                    if triggers:
                        db.executemany("INSERT INTO outbox (grp, id, key, value) VALUES (?, ?, ?, ?)",
                                       [(g, i, k, v) for i, k, v in triggers])
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StateError(f"rules state database {self.path}: commit failed: {exc}") from exc

    def outbox(self, limit: int = 10_000) -> list[tuple[int, str, bytes | None, bytes]]:
        with self._lock:
            return list(self._db().execute(
                "SELECT seq, id, key, value FROM outbox WHERE grp = ? ORDER BY seq LIMIT ?", (self.group, limit)))

    def forwarded(self, seqs: Sequence[int], marks: Mapping[int, int]) -> None:
        """Outbox rows ``seqs`` reached the triggers topic, whose end offsets are now ``marks``."""
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
                db.executemany(
                    "INSERT INTO trigger_marks VALUES (?, ?, ?) ON CONFLICT(grp, partition) DO UPDATE SET offset = excluded.offset",
                    [(self.group, p, o) for p, o in marks.items()],
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def marks(self) -> dict[int, int]:
        with self._lock:
            return dict(self._db().execute("SELECT partition, offset FROM trigger_marks WHERE grp = ?", (self.group,)))


_MAGIC = b"TWCK2"  # + offset (int64) + triggers-topic mark (int64) + snapshot
_MAGIC_V1 = b"TWCK1"  # + offset + snapshot


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
        if data.startswith(_MAGIC_V1) and len(data) >= n + 8:
            (offset,) = struct.unpack(">q", data[n : n + 8])
            return offset, None, data[n + 8 :]
        raise StateError(f"checkpoint {self.url}/{self.group}/{topic}-{partition} is not a tripwire checkpoint")


def iter_states(loaded: LoadedPartition) -> Iterator[tuple[tuple[str, str], bytes]]:
    yield from loaded.states
