"""The envelope fields a plan reads: what a replay must give each event, so it may read no more.

A field is a path into the envelope (``("properties", "price")``, ``("context", "page", "path")``).
The set holds every path a rule's conditions, ``by`` and payload read (a path through a step's
alias, ``cart.properties.sku``, reads ``("properties", "sku")`` of that step's event), plus what
the engine and the backtest read of every event in an in-order replay: its name, messageId,
keys, source and time. There, an event with only these fields matches, and renders, exactly as
the whole event does.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any

from . import ast
from .plan import Plan

__all__ = ["ENGINE_FIELDS", "fields_read"]

# event name, dedup (messageId per source and key), keys, event time. Not receivedAt: the engine reads
# it for events behind the watermark only, and a replay in time order has none.
ENGINE_FIELDS: frozenset[tuple[str, ...]] = frozenset({("type",), ("event",), ("messageId",), ("anonymousId",), ("userId",), ("source",),
                           ("timestamp",)})


def _paths(node: Any) -> list[ast.Path]:
    """Every :class:`ast.Path` under ``node`` (a rule's syntax tree)."""
    out: list[ast.Path] = []
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, ast.Path):
            out.append(n)
        elif is_dataclass(n):
            todo.extend(getattr(n, f.name) for f in fields(n))
        elif isinstance(n, tuple):
            todo.extend(n)
    return out


def fields_read(plan: Plan) -> frozenset[tuple[str, ...]]:
    """The envelope paths the rules of ``plan``, the engine and a backtest read."""
    out: set[tuple[str, ...]] = set(ENGINE_FIELDS)
    for rule in plan.rules:
        aliases = {s.alias for s in rule.rule.steps if s.alias}
        for path in _paths(rule.rule):
            parts = path.parts[1:] if path.parts[0] in aliases else path.parts
            if parts:  # a bare alias reads nothing (the compiler says so)
                out.add(parts)
    return frozenset(out)
