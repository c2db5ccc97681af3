"""Who a key is, as far as the engine has read: the ``userId``, ``anonymousId`` and ``identity`` of triggers.

The collector marks every event that carries a userId with ``keyedBy``
(:mod:`tripwire.identity`): the key it was given, how (``via``) and how far its
userId is to be believed (``trust``). The engine remembers, per partition and
key, the latest of these it read (:func:`learn`), in a bounded dict (the
least recently told keys go first, :data:`KEYS_PER_PARTITION`), and a trigger
for a key carries what is remembered (:func:`identity_of`): ``userId``, the
``anonymousId`` (the key, unless the key is a userId), and ``identity`` =
``trusted`` | ``claimed`` | None (no userId known).

The memory is not part of the saved state: after a restart it fills again from
the events read from then on, so a trigger whose matched events came before
the resume point and whose identify too may carry no userId.
"""

from __future__ import annotations

from typing import Any

KEYS_PER_PARTITION = 50_000

Identity = tuple["str | None", "str | None", "str | None"]  # (userId, anonymousId, identity)


def learn(memory: dict[str, Identity], kb: Any, env: dict[str, Any]) -> str | None:
    """Remember what the event's ``keyedBy`` (``kb``) says; the anonymousId it was keyed by through a link."""
    if type(kb) is not dict:
        return None
    key, via, trust = kb.get("key"), kb.get("via"), kb.get("trust")
    if type(key) is not str or not key or trust not in ("trusted", "claimed"):
        return None
    user = env.get("userId")
    if type(user) is not str:
        return None
    if key in memory:
        del memory[key]  # re-inserted last: the dict's order is the order keys were last told
    elif len(memory) >= KEYS_PER_PARTITION:
        del memory[next(iter(memory))]
    if via == "userId":
        memory[key] = (user, None, trust)
        return None
    memory[key] = (user, key, trust)
    return key if via == "link" else None


def identity_of(memory: dict[str, Identity], key: str) -> Identity:
    """(userId, anonymousId, identity) for a trigger of ``key``; an unknown key is an anonymous visitor's."""
    known = memory.get(key)
    return known if known is not None else (None, key, None)
