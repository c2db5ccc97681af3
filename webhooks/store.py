"""The durable delivery store: one SQLite file (WAL) in the data dir.

State contract:

* A delivery row is written, and fsynced, before the triggers-topic offset
  past its record is committed, so a trigger is never lost; its primary key is
  the trigger id, and inserting an id already present is a no-op, so a replayed
  or re-read trigger record never causes a second delivery. Once delivered, a
  row keeps its body and attempts for ``delivered_history_s``, then only its id
  is kept (table ``seen``) until ``dedup_window_s`` after the delivery: within
  that window a re-read trigger is still not sent again; after it, it would be.
  Dead letters are kept ``retention_days``. See :mod:`tripwire.webhooks.retention`.
* ``state`` is ``pending``, ``delivered`` or ``dead``. A pending row is due at
  ``next_attempt_ms``. Claiming a row for an attempt counts the attempt and
  moves ``next_attempt_ms`` past the attempt's lease in the same transaction:
  if the process dies mid-attempt the row becomes due again when the lease
  ends and is retried with the same id (the one in-flight attempt may thus
  reach the receiver twice; nothing else can). Two processes sharing the file
  never claim the same row twice, and re-enabling an endpoint never makes a
  leased row due early. A claim given back unused (:meth:`Store.op_unclaim`)
  uncounts its attempt.
* Claims and attempt outcomes are committed without waiting for the disk
  (``synchronous=NORMAL``, ``durable=False``): a committed transaction survives
  the process being killed; only a power cut or an OS crash can undo the last
  ones, and what it undoes is an outcome or a lease, so the worst case is a
  delivery sent again (delivery is at least once), never one lost. New rows,
  endpoint state and the operator's commands wait for the disk (``FULL``).
* Endpoint state (disabled with a reason, failing since) lives next to it, so
  the CLI in another process can read status, replay dead letters and
  re-enable endpoints; a running dispatcher picks such changes up on its next
  scan.

:class:`Store` is synchronous (the CLI uses it directly); the dispatcher wraps
it in :class:`~tripwire.webhooks.group_commit.AsyncStore`, which group-commits
concurrent writes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .rows import (
    DEAD,
    DELIVERED,
    PENDING,
    AttemptStats,
    Claimed,
    DeliveryRow,
    EndpointState,
    NewDelivery,
    Outcome,
    now_ms,
)

T = TypeVar("T")

__all__ = [  # the store's vocabulary is re-exported from .rows
    "DEAD", "DELIVERED", "PENDING", "AttemptStats", "Claimed", "DeliveryRow", "EndpointState", "NewDelivery", "Outcome",
    "Store", "now_ms",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    lease_until_ms INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (endpoint, state, next_attempt_ms);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state, updated_ms);
CREATE TABLE IF NOT EXISTS attempts (
    id TEXT NOT NULL, n INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    status INTEGER, outcome TEXT NOT NULL, error TEXT, duration_ms INTEGER NOT NULL,
    PRIMARY KEY (id, n)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (
    id TEXT PRIMARY KEY,
    delivered_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_age ON seen (delivered_ms);
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY,
    disabled_reason TEXT,
    disabled_ms INTEGER,
    failing_since_ms INTEGER,
    last_success_ms INTEGER
);
"""

_ROW_COLUMNS = "id, endpoint, state, attempts, next_attempt_ms, created_ms, updated_ms, last_status, last_error"


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._durable = True
        self.transactions = 0  # committed write transactions, for tests and benchmarks

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # transactions -----------------------------------------------------------

    def transaction(self, ops: Sequence[Callable[[sqlite3.Connection], Any]], durable: bool = True) -> list[Any]:
        """Run ``ops`` in one write transaction; returns their results.

        ``durable``: the commit returns once it is on disk (an fsync); otherwise once
        it is in the OS (see the module doc for what may use that).
        """
        with self._lock:
            if durable != self._durable:
                self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                results = [op(self._conn) for op in ops]
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self.transactions += 1
            return results

    def write(self, op: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        result: T = self.transaction([op], durable)[0]
        return result

    def read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # writes (as ops, so the dispatcher can group them) -----------------------

    @staticmethod
    def op_add(items: Sequence[NewDelivery], at_ms: int) -> Callable[[sqlite3.Connection], int]:
        def op(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO deliveries (id, endpoint, body, state, next_attempt_ms, created_ms, updated_ms, last_error) "
                "SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM seen WHERE id = ?)",
                [(d.id, d.endpoint, d.body, d.state, d.due_ms, at_ms, at_ms, d.error, d.id) for d in items],
            )
            return conn.total_changes - before

        return op

    @staticmethod
    def op_claim(
        endpoint: str, limit: int, at_ms: int, lease_ms: int, exclude: Collection[str] = ()
    ) -> Callable[[sqlite3.Connection], list[Claimed]]:
        """Up to ``limit`` due rows of ``endpoint``, counted and leased; never one in ``exclude``."""

        def op(conn: sqlite3.Connection) -> list[Claimed]:
            rows = conn.execute(
                "SELECT id, body, attempts FROM deliveries WHERE endpoint = ? AND state = 'pending' "
                "AND next_attempt_ms <= ? ORDER BY next_attempt_ms LIMIT ?",
                (endpoint, at_ms, limit + len(exclude)),
            ).fetchall()
            rows = [r for r in rows if r[0] not in exclude][:limit]
            until = at_ms + lease_ms
            conn.executemany(
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_ms = ?, lease_until_ms = ?, "
                "updated_ms = ? WHERE id = ?",
                [(until, until, at_ms, r[0]) for r in rows],
            )
            return [Claimed(r[0], endpoint, r[1], r[2] + 1) for r in rows]

        return op

    @staticmethod
    def op_outcomes(outcomes: Sequence[Outcome]) -> Callable[[sqlite3.Connection], dict[str, int | None]]:
        """Record attempts; per endpoint among them, its failing-since time (None once it succeeded).

        An outcome whose row was claimed again meanwhile (its lease ended) is ignored.
        """

        def op(conn: sqlite3.Connection) -> dict[str, int | None]:
            conn.executemany(
                "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(o.claimed.id, o.claimed.attempt, o.at_ms, o.status, o.outcome, o.error, o.duration_ms) for o in outcomes],
            )
            conn.executemany(
                "UPDATE deliveries SET state = ?, next_attempt_ms = ?, lease_until_ms = 0, updated_ms = ?, "
                "last_status = ?, last_error = ? WHERE id = ? AND state = 'pending' AND attempts = ?",
                [(o.state, o.next_attempt_ms, o.at_ms, o.status, o.error, o.claimed.id, o.claimed.attempt)
                 for o in outcomes],
            )
            # Applied in order, a batch leaves per endpoint: its last success, and its first failure after it.
            latest: dict[str, tuple[int | None, int | None]] = {}
            for o in outcomes:
                success, failure = latest.get(o.claimed.endpoint, (None, None))
                if o.state == DELIVERED:
                    latest[o.claimed.endpoint] = (o.at_ms, None)
                else:
                    latest[o.claimed.endpoint] = (success, o.at_ms if failure is None else failure)
            out: dict[str, int | None] = {}
            for endpoint, (success, failure) in latest.items():
                conn.execute("INSERT OR IGNORE INTO endpoints (name) VALUES (?)", (endpoint,))
                if success is not None:
                    conn.execute("UPDATE endpoints SET failing_since_ms = ?, last_success_ms = ? WHERE name = ?",
                                 (failure, success, endpoint))
                    out[endpoint] = failure
                    continue
                conn.execute("UPDATE endpoints SET failing_since_ms = coalesce(failing_since_ms, ?) WHERE name = ?",
                             (failure, endpoint))
                (since,) = conn.execute("SELECT failing_since_ms FROM endpoints WHERE name = ?", (endpoint,)).fetchone()
                out[endpoint] = int(since)
            return out

        return op

    @staticmethod
    def op_unclaim(claims: Sequence[Claimed], at_ms: int) -> Callable[[sqlite3.Connection], None]:
        """Claims given back before their attempt began: due again now, the attempt not counted."""

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE deliveries SET attempts = attempts - 1, next_attempt_ms = ?, lease_until_ms = 0 "
                "WHERE id = ? AND state = 'pending' AND attempts = ?",
                [(at_ms, c.id, c.attempt) for c in claims],
            )

        return op

    @staticmethod
    def op_next_due(endpoint: str) -> Callable[[sqlite3.Connection], int | None]:
        """When the earliest pending delivery of ``endpoint`` is due (leased ones: when the lease ends)."""

        def op(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT min(next_attempt_ms) FROM deliveries WHERE endpoint = ? AND state = 'pending'", (endpoint,)
            ).fetchone()
            return int(row[0]) if row and row[0] is not None else None

        return op

    @staticmethod
    def op_release(claims: Sequence[Claimed], at_ms: int) -> Callable[[sqlite3.Connection], None]:
        """Attempts abandoned at shutdown: due again now (their attempt stays counted)."""

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE deliveries SET next_attempt_ms = ?, lease_until_ms = 0 "
                "WHERE id = ? AND state = 'pending' AND attempts = ?",
                [(at_ms, c.id, c.attempt) for c in claims],
            )

        return op

    @staticmethod
    def op_disable(name: str, reason: str, at_ms: int) -> Callable[[sqlite3.Connection], None]:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO endpoints (name, disabled_reason, disabled_ms) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET disabled_reason = excluded.disabled_reason, disabled_ms = excluded.disabled_ms "
                "WHERE endpoints.disabled_reason IS NULL",
                (name, reason, at_ms),
            )

        return op

    def enable(self, name: str) -> bool:
        """Re-enable ``name``: its pending deliveries become due now. False if it was not disabled."""

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE endpoints SET disabled_reason = NULL, disabled_ms = NULL, failing_since_ms = NULL "
                "WHERE name = ? AND disabled_reason IS NOT NULL",
                (name,),
            )
            at = now_ms()
            conn.execute(
                "UPDATE deliveries SET next_attempt_ms = ? WHERE endpoint = ? AND state = 'pending' "
                "AND lease_until_ms <= ? AND next_attempt_ms > ?",
                (at, name, at, at),
            )
            return cur.rowcount > 0

        return self.write(op)

    def replay(self, delivery_id: str) -> bool:
        """Deliver ``delivery_id`` again from the first attempt (same webhook-id)."""

        def op(conn: sqlite3.Connection) -> bool:
            at = now_ms()
            cur = conn.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_ms = ?, updated_ms = ? "
                "WHERE id = ? AND state != 'pending'",
                (at, at, delivery_id),
            )
            return cur.rowcount > 0

        return self.write(op)

    def replay_dead(self, endpoint: str | None = None) -> int:
        def op(conn: sqlite3.Connection) -> int:
            at = now_ms()
            cur = conn.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_ms = ?, updated_ms = ? "
                "WHERE state = 'dead' AND (? IS NULL OR endpoint = ?)",
                (at, at, endpoint, endpoint),
            )
            return cur.rowcount

        return self.write(op)

    # reads -------------------------------------------------------------------

    def endpoint_states(self) -> dict[str, EndpointState]:
        with self._lock:
            return self.endpoint_states_in(self._conn)

    @staticmethod
    def endpoint_states_in(conn: sqlite3.Connection) -> dict[str, EndpointState]:
        rows = conn.execute("SELECT name, disabled_reason, disabled_ms, failing_since_ms, last_success_ms FROM endpoints")
        return {r[0]: EndpointState(*r) for r in rows}

    def counts(self) -> dict[str, dict[str, int]]:
        """Per endpoint: delivered, pending, failing (pending after a failed attempt), dead."""
        out: dict[str, dict[str, int]] = {}
        for endpoint, state, failing, n in self.read(
            "SELECT endpoint, state, attempts > 0, count(*) FROM deliveries GROUP BY endpoint, state, attempts > 0"
        ):
            c = out.setdefault(endpoint, {DELIVERED: 0, PENDING: 0, "failing": 0, DEAD: 0})
            c[state] = c.get(state, 0) + n
            if state == PENDING and failing:
                c["failing"] += n
        return out

    def backlog(self) -> dict[str, dict[str, int]]:
        """Per endpoint: pending and dead counts only (cheap: reads the state index, not history)."""
        out: dict[str, dict[str, int]] = {}
        for endpoint, state, n in self.read(
            "SELECT endpoint, state, count(*) FROM deliveries WHERE state IN ('pending', 'dead') GROUP BY endpoint, state"
        ):
            out.setdefault(endpoint, {PENDING: 0, DEAD: 0})[state] = n
        return out

    def get(self, delivery_id: str) -> DeliveryRow | None:
        rows = self.read(f"SELECT {_ROW_COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,))
        return DeliveryRow(*rows[0]) if rows else None

    def delivered_ms(self, delivery_id: str) -> int | None:
        """When ``delivery_id`` was delivered, if only its id is kept now (its row left with its history)."""
        rows = self.read("SELECT delivered_ms FROM seen WHERE id = ?", (delivery_id,))
        return int(rows[0][0]) if rows else None

    def body(self, delivery_id: str) -> bytes | None:
        rows = self.read("SELECT body FROM deliveries WHERE id = ?", (delivery_id,))
        return bytes(rows[0][0]) if rows else None

    def rows(self, state: str, endpoint: str | None = None, limit: int = 100) -> list[DeliveryRow]:
        rows = self.read(
            f"SELECT {_ROW_COLUMNS} FROM deliveries WHERE state = ? AND (? IS NULL OR endpoint = ?) "
            "ORDER BY updated_ms DESC LIMIT ?",
            (state, endpoint, endpoint, limit),
        )
        return [DeliveryRow(*r) for r in rows]

    def attempts(self, delivery_id: str) -> list[tuple[int, int, int | None, str, str | None, int]]:
        """(n, at_ms, status, outcome, error, duration_ms) per attempt, oldest first."""
        return self.read(
            "SELECT n, at_ms, status, outcome, error, duration_ms FROM attempts WHERE id = ? ORDER BY n", (delivery_id,)
        )

    def attempt_stats(self, since_ms: int) -> dict[str, AttemptStats]:
        """Per endpoint, the attempts made at or after ``since_ms`` (success rate, latency percentiles)."""
        rows = self.read(
            "SELECT d.endpoint, a.outcome, a.duration_ms FROM attempts a JOIN deliveries d ON d.id = a.id "
            "WHERE a.at_ms >= ? ORDER BY d.endpoint, a.duration_ms",
            (since_ms,),
        )
        grouped: dict[str, list[tuple[str, int]]] = {}
        for endpoint, outcome, duration_ms in rows:
            grouped.setdefault(endpoint, []).append((outcome, duration_ms))
        out = {}
        for endpoint, items in grouped.items():
            durations = [d for _, d in items]  # sorted by the query
            out[endpoint] = AttemptStats(
                len(items), sum(1 for o, _ in items if o == "success"),
                durations[(len(durations) - 1) // 2], durations[min(len(durations) - 1, (len(durations) * 95) // 100)],
            )
        return out
