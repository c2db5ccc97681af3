"""What leaves the delivery store, and when: bounded steps the dispatcher runs while it delivers.

* A delivered row keeps its body and its attempts for ``history_ms`` (replay,
  ``webhooks status``, the console), then leaves ``deliveries``; its id stays in
  ``seen`` until ``dedup_ms`` after the delivery, so a trigger record read again
  within that window is still recognised and not sent twice.
* A dead letter is kept ``dead_ms`` (for ``webhooks failed`` and replay).
* Pending rows never leave: they are retried until delivered or dead.

Each step handles at most ``limit`` rows of each kind in one short transaction,
so the file stops growing once the windows are full (SQLite reuses the freed
pages) without ever holding the write lock for long.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Windows:
    history_ms: int  # a delivered row whole
    dedup_ms: int  # a delivered id (at least history_ms)
    dead_ms: int  # a dead letter


def op_prune_step(at_ms: int, windows: Windows, limit: int = 2000) -> Callable[[sqlite3.Connection], int]:
    """One bounded step; returns the rows it handled (``limit`` or more: call again soon)."""

    def op(conn: sqlite3.Connection) -> int:
        handled = 0
        done = conn.execute(
            "SELECT id, updated_ms FROM deliveries WHERE state = 'delivered' AND updated_ms < ? "
            "ORDER BY updated_ms LIMIT ?",
            (at_ms - min(windows.history_ms, windows.dedup_ms), limit),
        ).fetchall()
        if done and windows.dedup_ms > windows.history_ms:
            conn.executemany("INSERT OR IGNORE INTO seen (id, delivered_ms) VALUES (?, ?)", done)
        dead = conn.execute(
            "SELECT id FROM deliveries WHERE state = 'dead' AND updated_ms < ? ORDER BY updated_ms LIMIT ?",
            (at_ms - windows.dead_ms, limit),
        ).fetchall()
        gone = [(row[0],) for row in done + dead]
        if gone:
            conn.executemany("DELETE FROM attempts WHERE id = ?", gone)
            conn.executemany("DELETE FROM deliveries WHERE id = ? AND state != 'pending'", gone)
            handled += len(gone)
        handled += conn.execute(
            "DELETE FROM seen WHERE id IN (SELECT id FROM seen WHERE delivered_ms < ? ORDER BY delivered_ms LIMIT ?)",
            (at_ms - windows.dedup_ms, limit),
        ).rowcount
        return handled

    return op
