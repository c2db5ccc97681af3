"""The nesting limit of an event's values (``collector.max_nesting_depth``).

orjson parses JSON nested up to 1023 levels but writes at most 254, and what the
collector stores is embedded a few levels deeper downstream (a trigger record, a
webhook body), so an event must be refused at the door, with a 400 naming the
field, not fail later with a 500 or a dead trigger.

Depth counts containers: ``"properties": {}`` is 1 level, ``{"a": {"b": 1}}`` is 2.

Walking every value of every event in Python would cost the batch path about a
sixth of its time, so the walk runs only for an event whose serialised form has
more opening brackets than the limit allows (nesting N levels takes N of them):
a C-speed count over bytes the collector writes anyway.
"""

from __future__ import annotations

from typing import Any

DEFAULT_MAX_DEPTH = 64
# The envelope is one level, the triggers topic and the webhook body put it three more
# levels down, and orjson writes at most 254: 200 leaves room for what may wrap it later.
MAX_MAX_DEPTH = 200


_NOT_OPENING = bytes(b for b in range(256) if b not in b"[{")


def may_be_too_deep(serialised: bytes, limit: int) -> bool:
    """False when the serialised envelope cannot hold a field nested more than ``limit`` levels."""
    return len(serialised.translate(None, _NOT_OPENING)) > limit + 1  # + 1: the envelope's own brace


def too_deep_field(env: dict[str, Any], limit: int) -> str | None:
    """The first top-level field of ``env`` nesting more than ``limit`` levels, else ``None``."""
    for name, value in env.items():
        t = type(value)
        if (t is dict or t is list) and _deeper(value, limit):
            return name
    return None


def _deeper(container: dict[str, Any] | list[Any], budget: int) -> bool:
    """Whether ``container`` (one level) and what it holds nest more than ``budget`` levels."""
    if budget <= 0:
        return True
    for value in container.values() if type(container) is dict else container:
        t = type(value)
        if (t is dict or t is list) and _deeper(value, budget - 1):
            return True
    return False
