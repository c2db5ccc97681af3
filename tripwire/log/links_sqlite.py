"""Identity links in a SQLite table: the embedded log's store, and the Kafka log's local copy.

One row per (userId, anonymousId) pair. An upsert keeps the version with the
greater (trust, time) (:func:`tripwire.identity.wins`, in SQL), so applying
versions in any order, or twice, gives the same table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable

from tripwire.identity import CLAIMED, TRUSTED, Link

SCHEMA = """
CREATE TABLE IF NOT EXISTS identity_links (
    user_id TEXT NOT NULL, anonymous_id TEXT NOT NULL, trust INTEGER NOT NULL, at INTEGER NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (user_id, anonymous_id)
) WITHOUT ROWID;
"""

_TRUST_CODE = {CLAIMED: 0, TRUSTED: 1}  # the rank of tripwire.identity, so SQL compares as it does
_TRUST_NAME = {v: k for k, v in _TRUST_CODE.items()}
_UPSERT = (
    "INSERT INTO identity_links VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, anonymous_id) DO UPDATE "
    "SET trust = excluded.trust, at = excluded.at, source = excluded.source "
    "WHERE (excluded.trust, excluded.at) > (identity_links.trust, identity_links.at)"
)
_CHUNK = 500  # ids per SELECT (well under SQLite's bound on parameters)


def upsert(conn: sqlite3.Connection, links: Iterable[Link]) -> None:
    conn.executemany(_UPSERT, [(x.user_id, x.anonymous_id, _TRUST_CODE[x.trust], x.at_ms, x.source) for x in links])


def delete_pairs(conn: sqlite3.Connection, pairs: Iterable[tuple[str, str]]) -> None:
    conn.executemany("DELETE FROM identity_links WHERE user_id = ? AND anonymous_id = ?", list(pairs))


def select(conn: sqlite3.Connection, user_ids: Collection[str]) -> dict[str, list[Link]]:
    out: dict[str, list[Link]] = {}
    ids = list(dict.fromkeys(user_ids))
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        rows = conn.execute(
            f"SELECT user_id, anonymous_id, trust, at, source FROM identity_links "
            f"WHERE user_id IN ({', '.join('?' * len(chunk))})",
            chunk,
        ).fetchall()
        for user, anon, trust, at, source in rows:
            out.setdefault(user, []).append(Link(user, anon, _TRUST_NAME.get(trust, CLAIMED), at, source))
    return out


def delete_user(conn: sqlite3.Connection, user_id: str) -> list[Link]:
    """Delete ``user_id``'s rows (inside the caller's transaction); the links they held."""
    links = select(conn, [user_id]).get(user_id, [])
    conn.execute("DELETE FROM identity_links WHERE user_id = ?", (user_id,))
    return links
