"""Warnings from the event catalog: unknown events, misspelt properties, comparisons types rule out.

With a catalog (``rules check --config``, and the engine's load path through
:func:`rules.compiler.compile_text`), each rule is checked against it:

* a step's event the catalog does not list (``"Prodcut Added"``, with did-you-mean);
  ``$page`` and the other calls are not in catalogs and are not checked;
* a ``properties.*`` path (or ``traits.*`` of ``$identify``) naming a key the event's
  schema does not list (``cart.properties.pricee``, with did-you-mean);
* a comparison that can never hold because of the types the schema gives
  (``properties.price >= "20"`` where price is a number): ``==``, ordering,
  ``in`` and the string operators; ``!=`` and ``not in`` are left alone (they hold).

All are warnings (``--strict`` makes them errors): a catalog may lag behind the events.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from . import ast
from .catalog import EventCatalog, json_types
from .predicates import Ctx

__all__ = ["check_catalog"]

_ORDERING = {"<", "<=", ">", ">="}
_ARTICLE = {"string": "a string", "number": "a number", "boolean": "a boolean", "array": "an array",
            "object": "an object", "null": "null"}
Side = tuple[frozenset[str], str]  # (JSON types, "X is a number")


def _close(word: str, choices: list[str]) -> str | None:
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.65)
    if not found:
        found = [c for c in choices if c.lower() == word.lower().replace("_", " ")]
    return found[0] if found else None


def _kind(value: Any) -> str:
    """The JSON type of a literal of the language."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, (int, float)) else "string"


def _is_null(operand: ast.Operand) -> bool:
    return isinstance(operand, ast.Literal) and operand.value is None


def _label(event: str) -> str:
    return event if event.startswith("$") else json.dumps(event, ensure_ascii=False)


def _kinds(types: frozenset[str]) -> str:
    return " or ".join(_ARTICLE[t] for t in sorted(types))


class _Checker:
    def __init__(self, rule: ast.Rule, catalog: EventCatalog, ctx: Ctx) -> None:
        self.rule, self.catalog, self.ctx = rule, catalog, ctx
        self.aliases = {s.alias: i for i, s in enumerate(rule.steps) if s.alias}
        self.said: set[tuple[int, int, str]] = set()

    def warn(self, node: ast.Node, message: str) -> None:
        if (node.line, node.column, message) not in self.said:
            self.said.add((node.line, node.column, message))
            self.ctx.error(node, message, "warning")

    def events(self) -> None:
        names = sorted(self.catalog.events)
        for step in self.rule.steps:
            if not step.event.startswith("$") and step.event not in self.catalog.events:
                close = _close(step.event, names)
                hint = f"; did you mean {_label(close)}?" if close else ""
                self.warn(step.event_pos or step, f"event {_label(step.event)} is not in the event catalog{hint}")

    def field(self, path: ast.Path, current: int) -> Side | None:
        """The types the catalog gives a path read at step ``current`` (warning on an unlisted key)."""
        if path.parts[0] in self.aliases:
            j, parts = self.aliases[path.parts[0]], path.parts[1:]
        else:
            j, parts = current, path.parts
        if not parts or not 0 <= j < len(self.rule.steps):
            return None
        event = self.rule.steps[j].event
        found = self.catalog.field(event, parts)
        if found is None:
            return None
        if found.unknown is not None:
            prefix, _, key = found.unknown.rpartition(".")
            close = _close(key, list(found.known))
            hint = f"; did you mean '{prefix + '.' if prefix else ''}{close}'?" if close else ""
            what = "trait" if parts[0] == "traits" else "property"
            self.warn(path, f"{_label(event)} has no {what} '{found.unknown}' in the event catalog{hint}")
            return None
        types = json_types(found.schema)
        return None if types is None else (types, f"{path} of {_label(event)} is {_kinds(types)}")

    def side(self, operand: ast.Operand, current: int) -> Side | None:
        if isinstance(operand, ast.Path):
            return self.field(operand, current)
        kind = _kind(operand.value)
        return frozenset([kind]), f"{json.dumps(operand.value, ensure_ascii=False)} is {_ARTICLE[kind]}"

    def never(self, node: ast.Node, field: Side, other: Side) -> None:
        self.warn(node, f"this comparison can never hold: the event catalog says {field[1]}, and {other[1]}")

    def test(self, node: ast.Expr, current: int) -> None:
        if isinstance(node, ast.Exists):
            if isinstance(node.operand, ast.Path):
                self.field(node.operand, current)
            return
        if isinstance(node, ast.InList):
            field = self.side(node.operand, current) if isinstance(node.operand, ast.Path) else None
            values = frozenset(_kind(v.value) for v in node.values if v.value is not None)
            if field is not None and not node.negated and values and not (field[0] - {"null"}) & values:
                listed = ", ".join(json.dumps(v.value, ensure_ascii=False) for v in node.values)
                self.never(node, field, (values, f"[{listed}] holds {_kinds(values)}"))
            return
        if not isinstance(node, (ast.Compare, ast.StringOp)):
            return
        left, right = self.side(node.left, current), self.side(node.right, current)
        if left is None or right is None or node.op == "!=" or _is_null(node.left) or _is_null(node.right):
            return  # unknown, always true when present, or a null literal (the compiler warns about it)
        field, other = (left, right) if isinstance(node.left, ast.Path) else (right, left)
        a, b = left[0] - {"null"}, right[0] - {"null"}  # a null value is missing: it never holds either
        if node.op in _ORDERING:
            holds = bool(a & b & {"number", "string"})
        elif node.op == "==":
            holds = bool(a & b)
        elif node.op == "contains":
            holds = "array" in a or ("string" in a and "string" in b)
        else:  # starts with, ends with
            holds = "string" in a and "string" in b
        if not holds:
            self.never(node, field, other)

    def conditions(self) -> None:
        for i, step in enumerate(self.rule.steps):
            todo: list[Any] = [step.where] if step.where is not None else []
            while todo:
                node = todo.pop()
                if isinstance(node, (ast.And, ast.Or)):
                    todo += [node.right, node.left]
                elif isinstance(node, ast.Not):
                    todo.append(node.operand)
                else:
                    self.test(node, i)

    def payload(self) -> None:
        post = next((c for c in self.rule.clauses if isinstance(c, ast.Post)), None)
        positives = [i for i, s in enumerate(self.rule.steps) if not s.absent]
        todo: list[Any] = [post.payload] if post is not None and post.payload is not None else []
        while todo:
            node = todo.pop()
            if isinstance(node, ast.TemplateObject):
                todo += [v for _, v in node.items]
            elif isinstance(node, ast.TemplateArray):
                todo += list(node.items)
            elif isinstance(node, ast.Path):
                self.field(node, positives[-1] if positives else 0)


def check_catalog(rule: ast.Rule, catalog: EventCatalog, ctx: Ctx) -> None:
    """Add the catalog's warnings about ``rule`` to ``ctx`` (never errors)."""
    checker = _Checker(rule, catalog, ctx)
    checker.events()
    checker.conditions()
    checker.payload()
