"""The rule language's grammar (``grammar.lark``, LALR), loaded once, and its durations."""

from __future__ import annotations

import functools
import re

from lark import Lark

from tripwire.config import DURATION_UNITS_MS as UNITS_MS
DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d)")  # the DURATION terminal of grammar.lark


@functools.lru_cache(maxsize=1)
def lark_parser() -> Lark:
    return Lark.open("grammar.lark", rel_to=__file__, parser="lalr", propagate_positions=True, maybe_placeholders=False)
