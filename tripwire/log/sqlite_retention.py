"""Retention of the embedded log: expired record batches leave in small steps while it runs.

A record batch expires once its append time (``ts``) is older than the
retention (``log.retention``). The log's writer thread calls
:meth:`Retention.step` between group commits; a step is one short write
transaction that deletes at most :data:`STEP_BATCHES` of the oldest batches
(and about :data:`STEP_BYTES` of them, since huge appends make 1 MB batches), so
an append queued meanwhile waits for one step at most, never for a whole
backlog. Oldest means lowest rowid: rowids grow in commit order, and so do a
partition's offsets, so a step deletes a prefix of every partition and a read
never finds a hole (a batch that has not expired stops the step, even if one
behind it has).

Each step raises the partitions' offset floors in ``meta``
(``next:<topic>:<partition>`` = the offset after the last deleted record), so
an offset is never given twice, even after retention emptied a partition.

Deleted pages go to SQLite's freelist and later commits reuse them, so once
the retention window is full the file stops growing.
"""

from __future__ import annotations

import logging
import sqlite3
import time

logger = logging.getLogger(__name__)

STEP_BATCHES = 256  # the most record batches one step deletes (a few ms of write lock)
STEP_BYTES = 8 * 1024 * 1024  # ... and it stops once it has this many stored bytes
_IDLE_CHECK_S = 60.0  # the longest wait between two looks at the oldest batch
_RETRY_S = 1.0  # after a failed step (another process held the lock too long, a disk error)


def _now_ms() -> int:
    return int(time.time() * 1000)


def expire_batches(conn: sqlite3.Connection, cutoff_ms: int, limit: int = STEP_BATCHES) -> tuple[int, int]:
    """Delete the oldest batches appended before ``cutoff_ms``, at most ``limit`` (and about
    :data:`STEP_BYTES`); (batches, records) deleted.

    Run inside a write transaction. Stops at the first batch (by rowid) that has not expired.
    """
    rows = conn.execute(
        "SELECT rowid, topic, partition, last_offset, count, ts, length(data) FROM record_batches "
        "ORDER BY rowid LIMIT ?",
        (limit,),
    ).fetchall()
    last_rowid: int | None = None
    floors: dict[tuple[str, int], int] = {}
    batches = records = size = 0
    for rowid, topic, partition, last_offset, count, ts, stored in rows:
        if ts >= cutoff_ms or (batches and size + stored > STEP_BYTES):
            break
        size += stored
        last_rowid = rowid
        floors[(topic, partition)] = last_offset + 1
        batches += 1
        records += count
    if last_rowid is None:
        return 0, 0
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
        "value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
        [(f"next:{topic}:{partition}", str(floor)) for (topic, partition), floor in floors.items()],
    )
    conn.execute("DELETE FROM record_batches WHERE rowid <= ?", (last_rowid,))
    return batches, records


class Retention:
    """When to run the next step, and the step itself (called by the writer thread only)."""

    def __init__(self, retention_ms: int) -> None:
        self.retention_ms = retention_ms
        self.expired_records = 0  # deleted by this process, for tests and diagnostics
        self.steps = 0
        self._next_ms = 0  # a first look right at start

    def due_in_s(self) -> float | None:
        """Seconds until the next step is due (0 or less: now); None when retention is off."""
        if self.retention_ms <= 0:
            return None
        return (self._next_ms - _now_ms()) / 1000

    def step(self, conn: sqlite3.Connection) -> None:
        """Delete one bounded step of expired batches, or find out when the oldest expires."""
        now = _now_ms()
        cutoff = now - self.retention_ms
        try:
            oldest = conn.execute("SELECT ts FROM record_batches ORDER BY rowid LIMIT 1").fetchone()
            if oldest is None or oldest[0] >= cutoff:  # nothing expired: look again when the oldest does
                expires = now + self.retention_ms if oldest is None else oldest[0] + self.retention_ms
                self._next_ms = min(expires, now + int(_IDLE_CHECK_S * 1000))
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                batches, records = expire_batches(conn, cutoff)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            logger.warning("event log retention step failed (trying again in %.0f s): %s", _RETRY_S, exc)
            self._next_ms = now + int(_RETRY_S * 1000)
            return
        self.steps += 1
        self.expired_records += records
        # More may be waiting: the next step comes after the appends queued meanwhile.
        self._next_ms = now if batches else now + int(_RETRY_S * 1000)
