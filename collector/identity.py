"""Keying by identity links: a server's userId-only events meet the browser's events.

While a request is prepared, every valid event that carries a userId is noted
(:class:`Noted`) with how far its source vouches for that userId
(:func:`trust_of`). Before the append, :func:`key_by_links` looks the request's
userIds up in the log once, then goes through those events in event-time order:

* an event with both ids (an identify, anything a browser sends after it) or an
  alias (previousId -> userId) records a link, unless it changes nothing the store
  knows (:func:`worth_writing`), and keeps its own key;
* an event with only a userId is keyed by the person's best link (the greatest
  trust, then the newest), or by its userId when none is known;
* an event from a browser whose pair (userId, anonymousId) was vouched for
  before (the backend's identify, a valid userHash) is trusted like it.

Each of them gets the envelope field ``keyedBy`` (:mod:`tripwire.identity`),
spliced into the serialised event, and the links go to the log in the same
append as the events.

Trust. A source without browser origins is server-side: its write key is a
secret, so it vouches for the userIds it sends (``trusted``). A browser source's
write key is public: its links are ``claimed``, unless the source has an
``identity_secret`` and the event carries ``context.userHash`` = hex
HMAC-SHA256(identity_secret, userId) (then ``trusted``); with an
``identity_secret``, an event without a valid hash records no link (counted in
``tripwire_collector_identity_unverified_total``) and is stored all the same.
``context.userHash`` is never stored: it works as a credential for that userId.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson
from prometheus_client import Counter

from tripwire.identity import (CLAIMED, KEYED_BY, TRUSTED, VIA_ANONYMOUS_ID, VIA_LINK, VIA_USER_ID, Link, best,
                               keyed_by)
from tripwire.log import EventLog

LINKS_WRITTEN = Counter("tripwire_collector_identity_links_total", "Identity links written to the log, by trust",
                        ["trust"])
KEYED_BY_LINK = Counter(
    "tripwire_collector_events_keyed_by_link_total",
    "Events with only a userId keyed by the person's anonymousId, by the link's trust", ["trust"],
)
UNVERIFIED = Counter(
    "tripwire_collector_identity_unverified_total",
    "Events with a userId from a source with identity_secret and no valid context.userHash: no link recorded",
    ["source"],
)

# A link already stored is written again only when it would change something: a better trust, the
# person's keying moving to this device, or its time older than this (keeps "the newest" meaningful).
REFRESH_MS = 3_600_000

_KEYED_BY_FIELD = b',"' + KEYED_BY.encode() + b'":'


class Noted(NamedTuple):
    """A valid event of the request that carries a userId."""

    pos: int  # index in Prepared.valid
    user_id: str
    anonymous_id: str | None
    previous_id: str | None  # an alias's
    trust: str
    may_link: bool  # False: the source wants a userHash and this event had no valid one


def user_hash(secret: bytes, user_id: str) -> str:
    """``context.userHash`` for ``user_id``: what the site's backend computes at login."""
    return hmac.new(secret, user_id.encode(), hashlib.sha256).hexdigest()


def trust_of(user_id: str, claimed_hash: Any, *, trusted_source: bool, secret: bytes | None) -> tuple[str, bool]:
    """(trust, may record a link) of an event's userId from its source (see the module doc)."""
    if trusted_source:
        return TRUSTED, True
    if secret is None:
        return CLAIMED, True
    if isinstance(claimed_hash, str) and hmac.compare_digest(user_hash(secret, user_id), claimed_hash.lower()):
        return TRUSTED, True
    return CLAIMED, False


def worth_writing(new: Link, links: Sequence[Link]) -> bool:
    """Whether storing ``new`` changes what the store knows of its user (``links``)."""
    old = next((x for x in links if x.anonymous_id == new.anonymous_id), None)
    if old is None:
        return True
    if new.rank[0] != old.rank[0]:
        return new.rank[0] > old.rank[0]  # a better trust; a claim never downgrades a trusted pair
    top = best(links)
    if top is not None and top is not old and top.rank[0] == new.rank[0]:
        return True  # the person's keying moves to this device (among equals the newest wins)
    return new.at_ms - old.at_ms >= REFRESH_MS


def _merge(links: list[Link], new: Link) -> list[Link]:
    return [x for x in links if x.anonymous_id != new.anonymous_id] + [new]


def splice(value: bytes, field: dict[str, str]) -> bytes:
    """``value`` (a serialised JSON object without ``keyedBy``) with ``keyedBy`` added as its last field."""
    return value[:-1] + _KEYED_BY_FIELD + orjson.dumps(field) + b"}"


async def key_by_links(log: EventLog, valid: list[tuple[bytes, bytes]], times: Sequence[int],
                       noted: Sequence[Noted], *, source: str, received_ms: int) -> list[Link]:
    """Key and mark the ``noted`` events of ``valid`` (in place); the links to append with them."""
    known = await log.links({n.user_id for n in noted})
    links: list[Link] = []
    unverified = 0
    for n in sorted(noted, key=lambda n: times[n.pos]):  # a link learned earlier in the request applies
        user, trust, may_link = n.user_id, n.trust, n.may_link
        if trust != TRUSTED and n.anonymous_id:
            stored = next((x for x in known.get(user, ()) if x.anonymous_id == n.anonymous_id), None)
            if stored is not None and stored.trust == TRUSTED:
                # This browser was vouched for as this user (the backend's identify, a valid userHash): the
                # events it sends afterwards, with the userId the snippet keeps, are that person's.
                trust, may_link = TRUSTED, True
        if may_link:
            for anon in dict.fromkeys((n.anonymous_id, n.previous_id)):
                if anon and anon != user:
                    new = Link(user, anon, trust, received_ms, source)
                    mine = known.get(user, [])
                    if worth_writing(new, mine):
                        links.append(new)
                        known[user] = _merge(mine, new)
        else:
            unverified += 1
        if n.anonymous_id:
            key, field = n.anonymous_id, keyed_by(n.anonymous_id, VIA_ANONYMOUS_ID, trust)
        elif n.previous_id and may_link and n.previous_id != user:
            key, field = n.previous_id, keyed_by(n.previous_id, VIA_LINK, trust)  # an alias: the id it links
        else:
            top = best(known.get(user, ()))
            if top is not None:
                key, field = top.anonymous_id, keyed_by(top.anonymous_id, VIA_LINK, top.trust)
                KEYED_BY_LINK.labels(top.trust).inc()
            else:
                key, field = user, keyed_by(user, VIA_USER_ID, trust)
        valid[n.pos] = (key.encode(), splice(valid[n.pos][1], field))
    for link in links:
        LINKS_WRITTEN.labels(link.trust).inc()
    if unverified:
        UNVERIFIED.labels(source).inc(unverified)
    return links
