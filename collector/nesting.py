"""The nesting limit of an event's values, and the serialiser that enforces it.

orjson parses JSON nested up to 1023 levels but writes at most 254, and what the
collector stores is embedded a few levels deeper downstream (a trigger record, a
webhook body), so an event must be refused at the door with a 400 naming the
field, not fail later with a 500 or a dead trigger. The limit, :data:`MAX_DEPTH`
(240), leaves that room. Depth counts containers: ``"properties": {}`` is 1
level, ``{"a": {"b": 1}}`` is 2.

Checking costs nothing extra: :class:`Serialiser` writes the envelope inside a
few one-element lists, so that orjson's own depth limit falls exactly on
``MAX_DEPTH`` for the envelope's values, and strips them from the bytes. Walking
every value in Python, or counting brackets in the output, cost the batch path
a tenth to a fifth of its time; only a refused event is walked, to name its field.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_DEPTH = 240


def _writable_depth() -> int:
    """How many nested containers orjson writes (254 in orjson 3)."""
    low, high = 1, 4096  # orjson writes `low` levels and refuses `high`
    while high - low > 1:
        mid = (low + high) // 2
        value: list[Any] = []
        for _ in range(mid - 1):
            value = [value]
        try:
            orjson.dumps(value)
            low = mid
        except orjson.JSONEncodeError:
            high = mid
    return low


WRITABLE_DEPTH = _writable_depth()


class Serialiser:
    """``orjson.dumps`` of an envelope that refuses values nested deeper than :data:`MAX_DEPTH`.

    ``outer`` is ``wrap`` nested one-element lists whose innermost, ``inner``, gets
    the envelope; the JSON of ``outer`` minus ``wrap`` bytes at each end is the
    envelope's. The intake's loop does this inline (a call costs more than the
    rest); :meth:`__call__` is the same for everyone else. Not thread-safe (the
    lists are reused): one per event loop, as the collector's Intake has.
    """

    def __init__(self) -> None:
        # The envelope is 1 level and its values up to MAX_DEPTH more: wrap it so the total is orjson's
        # limit. (An orjson writing fewer levels would refuse some allowed events: the test pins it.)
        self.wrap = max(WRITABLE_DEPTH - (MAX_DEPTH + 1), 1)
        self.outer: list[Any] = [None]
        self.inner = self.outer
        for _ in range(self.wrap - 1):
            deeper: list[Any] = [None]
            self.inner[0] = deeper
            self.inner = deeper

    def __call__(self, env: dict[str, Any]) -> bytes | None:
        """The envelope's JSON, or ``None`` when a value nests too deep (see :func:`too_deep_field`)."""
        self.inner[0] = env
        try:
            return orjson.dumps(self.outer)[self.wrap : -self.wrap]
        except orjson.JSONEncodeError:
            return None
        finally:
            self.inner[0] = None  # keep no request's event alive


def too_deep_field(env: dict[str, Any], limit: int = MAX_DEPTH) -> str | None:
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
    for value in container.values() if isinstance(container, dict) else container:
        t = type(value)
        if (t is dict or t is list) and _deeper(value, budget - 1):
            return True
    return False
