"""Identity links: which browser (anonymousId) a person (userId) is known by, and how far to believe it.

The collector learns a *link* ``userId -> anonymousId`` from every accepted event
that carries both ids (an ``identify``, any call a browser makes after it) and
from every ``alias`` (``previousId -> userId``). An event that carries only a
userId (an order sent by the shop's backend) is then keyed by that person's
anonymousId, so it meets the browser's events in one partition and one rule
state. The event log stores the links (:meth:`tripwire.log.EventLog.append`,
:meth:`~tripwire.log.EventLog.links`, :meth:`~tripwire.log.EventLog.forget_links`).

Trust. A link is ``trusted`` when its source vouches for the userId (a
server-side source, whose write key is a secret; a browser source with an
``identity_secret`` and a valid ``context.userHash``), else ``claimed`` (anyone
holding a public write key can send an identify). The store keeps one link per
(userId, anonymousId) pair; of two versions of a pair the one with the greater
``(trust, at_ms)`` wins, so a claim never downgrades a trusted pair, and the
result does not depend on the order versions are applied in (Kafka: collectors
read each other's links in any order). A person may have several anonymousIds
(devices); the one used for keying (:func:`best`) is again the greatest
``(trust, at_ms)``: a claim never replaces a trusted link, among equals the
newest wins.

The envelope says how an event was keyed, in the server-owned field
:data:`KEYED_BY` (a client's value is dropped), set on every event that carries
a userId::

    "keyedBy": {"key": "<log key>", "via": "anonymousId" | "userId" | "link", "trust": "trusted" | "claimed"}

``via``: ``anonymousId`` (its own; ``trust`` is that of the userId it carries),
``userId`` (no link known; ``trust``: the source's) or ``link`` (only a userId,
keyed by the person's anonymousId; ``trust``: the link's). The event's own
``userId``/``anonymousId`` are never changed.

Erasure (``tripwire lake forget --user``) appends a *control record* per key to
the events topic (:func:`forget_record`): a type the collector never accepts
from clients, which the rules engine acts on (it drops the key's state and its
identity memory) and the sink skips (:func:`is_control`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

TRUSTED = "trusted"
CLAIMED = "claimed"
_RANK = {CLAIMED: 0, TRUSTED: 1}

KEYED_BY = "keyedBy"
VIA_ANONYMOUS_ID = "anonymousId"
VIA_USER_ID = "userId"
VIA_LINK = "link"

FORGET = "tripwire.forget"  # the type of an erasure control record (never a Segment type)


@dataclass(frozen=True, slots=True)
class Link:
    """``user_id`` is known by ``anonymous_id``; learned at ``at_ms`` (the collector's clock) from ``source``."""

    user_id: str
    anonymous_id: str
    trust: str
    at_ms: int
    source: str = ""

    @property
    def rank(self) -> tuple[int, int]:
        """What decides between two versions of a pair, and between a person's links: trust, then time."""
        return _RANK[self.trust], self.at_ms

    def to_json(self) -> bytes:
        return orjson.dumps({"userId": self.user_id, "anonymousId": self.anonymous_id, "trust": self.trust,
                             "at": self.at_ms, "source": self.source})

    @classmethod
    def from_json(cls, data: bytes) -> Link:
        """A link record as :meth:`to_json` wrote it; ``ValueError`` for anything else."""
        doc = orjson.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("a link record is a JSON object")
        user, anon, trust, at = doc.get("userId"), doc.get("anonymousId"), doc.get("trust"), doc.get("at")
        if not (isinstance(user, str) and isinstance(anon, str) and trust in _RANK and type(at) is int):
            raise ValueError(f"not a link record: {sorted(doc)}")
        source = doc.get("source")
        return cls(user, anon, trust, at, source if isinstance(source, str) else "")

    def pair_key(self) -> bytes:
        """The record key of this pair (Kafka's compacted identities topic): ``["userId", "anonymousId"]``."""
        return pair_key(self.user_id, self.anonymous_id)


def pair_key(user_id: str, anonymous_id: str) -> bytes:
    return orjson.dumps([user_id, anonymous_id])


def wins(new: Link, old: Link | None) -> bool:
    """Whether ``new`` replaces ``old``, the stored version of the same pair."""
    return old is None or new.rank > old.rank


def best(links: Iterable[Link]) -> Link | None:
    """The link an event with only this userId is keyed by: the greatest (trust, time)."""
    top: Link | None = None
    for link in links:
        if top is None or link.rank > top.rank:
            top = link
    return top


def keyed_by(key: str, via: str, trust: str) -> dict[str, str]:
    return {"key": key, "via": via, "trust": trust}


# Erasure control records ---------------------------------------------------------


def forget_record(key: str, user_id: str, at: str) -> bytes:
    """The control record that tells the engine to forget ``key`` (a key of ``user_id``'s events)."""
    return orjson.dumps({"type": FORGET, "key": key, "userId": user_id, "receivedAt": at})


def is_control(env: Mapping[str, Any]) -> bool:
    """A record of the events topic that is no event (an erasure order): readers other than the engine skip it."""
    return env.get("type") == FORGET
