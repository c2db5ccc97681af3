"""The rule language's grammar (``grammar.lark``, LALR), loaded once, and its duration units."""

from __future__ import annotations

import functools

from lark import Lark

UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


@functools.lru_cache(maxsize=1)
def lark_parser() -> Lark:
    return Lark.open("grammar.lark", rel_to=__file__, parser="lalr", propagate_positions=True, maybe_placeholders=False)
