"""The tests of a rule step's condition, one by one, with the values they read (for ``why_not``).

A step's ``where`` is split into its tests (comparisons, ``in``, string
operators, ``exists``), each under the ``not``s above it, compiled by the
compiler of the rule's own predicate (:func:`rules.predcode.compile_tests`) in
the step's scope, so each test reads the same fields, and the same projection
slots of earlier steps, with the same three-valued logic as the rule itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from . import ast
from .plan import MISSING, RulePlan
from .predcode import Tests, compile_tests
from .predicates import Ctx, StepScope

__all__ = ["Check", "checks", "leaves", "step_texts"]

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


def leaves(rule: RulePlan, index: int) -> Tests | None:
    """The tests of step ``index``'s condition (None: it has none), compiled once per rule. Paths into
    earlier steps read the same projection slots as the rule's own predicates (the rule's ``needs``
    lists are extended only with what they already hold)."""
    per_step = _COMPILED.get(rule)
    if per_step is None:
        needs = [list(s.needs) for s in rule.steps]
        per_step = _COMPILED[rule] = tuple(
            None if step.where is None else compile_tests(step.where, StepScope(rule.rule.steps, i, needs, Ctx(rule.file, [])))
            for i, step in enumerate(rule.rule.steps))
    return per_step[index]


# A console page explains every rule for a person: each rule's tests are compiled once, and go with it.
_COMPILED: WeakKeyDictionary[RulePlan, tuple[Tests | None, ...]] = WeakKeyDictionary()


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


def checks(tests: Tests | None, env: dict[str, Any], st: tuple[Any, ...]) -> tuple[Check, ...]:
    """The tests that are not as the condition needs them (false, unknown, or true under a `not`)."""
    if tests is None:
        return ()
    out = []
    for test, (result, values) in zip(tests.tests, tests.run(env, st)):
        if result is None or result is test.negated:
            out.append(Check(("not " if test.negated else "") + _leaf_text(test.node), result,
                             tuple(zip(map(str, test.paths), values))))
    return tuple(out)
