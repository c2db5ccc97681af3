"""The rule language's grammar (``grammar.lark``, LALR), loaded once, its durations and keywords."""

from __future__ import annotations

import functools
import re

from lark import Lark

from tripwire.config import DURATION_UNITS_MS as UNITS_MS

__all__ = ["DURATION", "RESERVED", "UNITS_MS", "lark_parser"]

DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d)")  # the DURATION terminal of grammar.lark
# The language's keywords (LANGUAGE.md). The parser reads most of them as a name where only a name
# fits, so `as post` parsed, but `as true` could never be referenced and `as rule` splits the file.
RESERVED = frozenset(
    "rule when then no as where within by at most once twice times per post with and or not in contains "
    "starts ends exists does exist true false null".split()
)


@functools.lru_cache(maxsize=1)
def lark_parser() -> Lark:
    return Lark.open("grammar.lark", rel_to=__file__, parser="lalr", propagate_positions=True, maybe_placeholders=False)
