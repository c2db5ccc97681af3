"""Erasure in the event log: what ``tripwire lake forget --user`` does besides rewriting the lake.

A person's erasure follows their identity links (:mod:`tripwire.identity`):
every anonymousId linked to the userId is erased with it. In the log that means

* an erasure *control record* per key (the userId and each linked anonymousId),
  appended to the events topic under that key, so it reaches whichever engine
  owns the key's partition, in order after the key's events: the engine drops
  the key's rule states and what it remembers of the key; the sink skips it;
* then the links themselves are deleted (SQLite: the rows; Kafka: tombstones on
  the compacted identities topic).

The control records go first: should the deletion fail, running the command
again finds the links still there and repeats both.
"""

from __future__ import annotations

from collections.abc import Iterable

from tripwire.envelope import format_time_ms
from tripwire.identity import Link, forget_record
from tripwire.log import EVENTS, EventLog


async def linked_ids(log: EventLog, user_id: str) -> list[str]:
    """The anonymousIds the log links ``user_id`` to."""
    links = (await log.links([user_id])).get(user_id, [])
    return sorted({link.anonymous_id for link in links} - {user_id})


async def erase(log: EventLog, user_id: str, keys: Iterable[str], now_ms: int) -> list[Link]:
    """Tell the engine to forget ``keys`` (and ``user_id``), then delete ``user_id``'s links; the links deleted."""
    at = format_time_ms(now_ms)
    ordered = list(dict.fromkeys([user_id, *keys]))
    await log.append(EVENTS, [(key.encode(), forget_record(key, user_id, at)) for key in ordered])
    return await log.forget_links(user_id)
