"""The tests of a rule step's condition, one by one, with the values they read (for ``why_not``).

A step's ``where`` is split into its tests (comparisons, ``in``, string
operators, ``exists``), each under the ``not``s above it, and each test is
compiled by the engine's compiler (:func:`rules.predicates.compile_expr`) in
the step's scope, so it reads the same fields, and the same projection slots of
earlier steps, with the same three-valued logic as the rule itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import ast
from .plan import MISSING, RulePlan
from .predicates import Ctx, StepScope, compile_expr

__all__ = ["Check", "Leaf", "checks", "leaves", "step_texts"]

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z").match

@dataclass(frozen=True)
class Check:
    """One test of a step's condition on one event: as written, its result, and the values it read."""

    text: str  # `cart.properties.price >= 20`
    result: bool | None  # None: unknown (a field it reads is missing or null)
    values: tuple[tuple[str, Any], ...]  # (path as written, value; MISSING when absent)

    def shown(self) -> tuple[tuple[str, str], ...]:
        """(path, its value as JSON, or ``missing``) per field read."""
        return tuple((p, _shown(v)) for p, v in self.values)

    def words(self) -> str:
        """``cart.properties.price >= 20 is false: cart.properties.price is 12``."""
        state = {True: "true", False: "false", None: "unknown"}[self.result]
        read = ", ".join(f"{p} is {_shown(v)}" for p, v in self.values)
        return f"{self.text} is {state}" + (f" ({read})" if read else "")


def _shown(value: Any) -> str:
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    return json.dumps(value, ensure_ascii=False, default=str)


def _written(node: ast.Operand) -> str:
    return str(node) if isinstance(node, ast.Path) else json.dumps(node.value, ensure_ascii=False)


def _leaf_text(node: ast.Expr) -> str:
    if isinstance(node, (ast.Compare, ast.StringOp)):
        return f"{_written(node.left)} {node.op} {_written(node.right)}"
    if isinstance(node, ast.InList):
        values = ", ".join(_written(v) for v in node.values)
        return f"{_written(node.operand)} {'not in' if node.negated else 'in'} [{values}]"
    if isinstance(node, ast.Exists):
        return f"{_written(node.operand)} {'does not exist' if node.negated else 'exists'}"
    raise TypeError(node)  # pragma: no cover


def _operands(node: ast.Expr) -> list[ast.Path]:
    if isinstance(node, (ast.Compare, ast.StringOp)):
        items: list[Any] = [node.left, node.right]
    elif isinstance(node, ast.InList | ast.Exists):
        items = [node.operand]
    else:
        items = []
    return [x for x in items if isinstance(x, ast.Path)]


Pred = Callable[[Any, Any], "bool | None"]


@dataclass(frozen=True)
class Leaf:
    text: str
    negated: bool  # under an odd number of `not`s
    test: Pred
    reads: tuple[tuple[str, Pred], ...]  # (path as written, getter)


def leaves(rule: RulePlan, index: int) -> list[Leaf]:
    """The tests of step ``index``'s condition, compiled as the engine compiles them. Paths into earlier
    steps read the same projection slots as the rule's own predicates (the rule's ``needs`` lists are
    extended only with what they already hold)."""
    step = rule.rule.steps[index]
    if step.where is None:
        return []
    needs = [list(s.needs) for s in rule.steps]
    scope = StepScope(rule.rule.steps, index, needs, Ctx(rule.file, []))
    out: list[Leaf] = []
    todo: list[tuple[ast.Expr, bool]] = [(step.where, False)]
    while todo:
        node, negated = todo.pop()
        if isinstance(node, ast.And | ast.Or):
            todo += [(node.right, negated), (node.left, negated)]
        elif isinstance(node, ast.Not):
            todo.append((node.operand, not negated))
        else:
            reads = tuple((str(p), scope.getter(p)) for p in _operands(node))
            out.append(Leaf(_leaf_text(node), negated, compile_expr(node, scope), reads))
    return out


def _expr_text(node: ast.Expr, top: bool = True) -> str:
    if isinstance(node, ast.And):
        return f"{_expr_text(node.left, False)} and {_expr_text(node.right, False)}"
    if isinstance(node, ast.Or):
        text = f"{_expr_text(node.left, False)} or {_expr_text(node.right, False)}"
        return text if top else f"({text})"
    if isinstance(node, ast.Not):
        return f"not {_expr_text(node.operand, False)}"
    return _leaf_text(node)


def step_texts(rule: ast.Rule) -> list[str]:
    """Each step as rule text (`when AddToCart as cart where cart.properties.price >= 20`)."""
    out = []
    for step in rule.steps:
        name = step.event if _WORD(step.event) else json.dumps(step.event, ensure_ascii=False)
        parts = [step.keyword, *(["no"] if step.absent else []), *([str(step.count)] if step.count > 1 else []), name]
        if step.alias:
            parts += ["as", step.alias]
        if step.where is not None:
            parts += ["where", _expr_text(step.where)]
        if step.within is not None:
            parts += ["within", step.within.text]
        out.append(" ".join(parts))
    return out


def checks(tests: list[Leaf], env: dict[str, Any], st: tuple[Any, ...]) -> tuple[Check, ...]:
    """The tests that are not as the condition needs them (false, unknown, or true under a `not`)."""
    out = []
    for leaf in tests:
        result = leaf.test(env, st)
        if result is None or result is leaf.negated:
            values = tuple((path, get(env, st)) for path, get in leaf.reads)
            out.append(Check(("not " if leaf.negated else "") + leaf.text, result, values))
    return tuple(out)
