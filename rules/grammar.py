"""The rule language's grammar (``grammar.lark``, LALR), loaded once, and its durations."""

from __future__ import annotations

import functools
import re

from lark import Lark

UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d)")  # the DURATION terminal of grammar.lark


@functools.lru_cache(maxsize=1)
def lark_parser() -> Lark:
    return Lark.open("grammar.lark", rel_to=__file__, parser="lalr", propagate_positions=True, maybe_placeholders=False)
