"""Predicates and payload templates -> closures over (event, earlier steps of the run).

Three-valued logic: a comparison with a missing field is unknown (None), which
``not`` keeps unknown and which never satisfies a ``where``. A JSON null counts
as missing in every comparison (``==``, ``!=``, ordering, ``in``, the string
operators; a ``null`` literal included), as it does for ``exists``: two null
fields are not equal. Values of different types never compare equal or ordered.
Nothing here raises at run time.
"""

from __future__ import annotations

import difflib
import json
import operator
import sys
from collections.abc import Sequence
from typing import Any

from . import ast
from .errors import Diagnostic
from .plan import MISSING, Predicate, Renderer, get_path

ENVELOPE_FIELDS = frozenset({
    "type", "event", "name", "category", "messageId", "anonymousId", "userId", "timestamp",
    "originalTimestamp", "sentAt", "receivedAt", "properties", "traits", "context", "integrations",
    "source", "groupId", "previousId", "channel", "version",
})


class Ctx:
    """Where diagnostics of one file are collected."""

    def __init__(self, filename: str, lines: list[str]) -> None:
        self.filename = filename
        self.lines = lines
        self.diagnostics: list[Diagnostic] = []

    def error(self, node: ast.Node | None, message: str, severity: str = "error") -> None:
        line, col = (node.line, node.column) if node is not None else (1, 1)
        source = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        self.diagnostics.append(Diagnostic(self.filename, line, col, message, severity, source))


def _is_num(v: Any) -> bool:
    return (type(v) is int or type(v) is float)


def _eq(a: Any, b: Any) -> bool:
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if _is_num(a) and _is_num(b):
        return bool(a == b)
    return type(a) is type(b) and a == b


def compare_values(op: str, a: Any, b: Any) -> bool:
    """A comparison or string operator on two present values (neither MISSING nor None)."""
    if op == "==":
        return _eq(a, b)
    if op == "!=":
        return not _eq(a, b)
    if op == "contains":
        if type(a) is str and type(b) is str:
            return b in a
        if type(a) is list:
            return any(_eq(x, b) for x in a)
        return False
    if op == "starts with":
        return type(a) is str and type(b) is str and a.startswith(b)
    if op == "ends with":
        return type(a) is str and type(b) is str and a.endswith(b)
    return _order(op, a, b)


def _order(op: str, a: Any, b: Any) -> bool:
    if not ((_is_num(a) and _is_num(b)) or (type(a) is str and type(b) is str)):
        return False
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


Getter = Any  # Callable[[env, steps], value]
_intern = sys.intern


def env_getter(parts: tuple[str, ...]) -> Getter:
    """``get_path(env, parts)`` as a closure; unrolled for the usual 1-3 part paths (hot path)."""
    if len(parts) == 1:
        (a,) = parts

        def get1(env: Any, st: Any) -> Any:
            return env.get(a, MISSING) if type(env) is dict else MISSING
        return get1
    if len(parts) == 2:
        a, b = parts

        def get2(env: Any, st: Any) -> Any:
            if type(env) is not dict:
                return MISSING
            o = env.get(a)
            return o.get(b, MISSING) if type(o) is dict else MISSING
        return get2
    if len(parts) == 3:
        a, b, c = parts

        def get3(env: Any, st: Any) -> Any:
            if type(env) is not dict:
                return MISSING
            o = env.get(a)
            if type(o) is not dict:
                return MISSING
            o = o.get(b)
            return o.get(c, MISSING) if type(o) is dict else MISSING
        return get3
    return lambda env, st: get_path(env, parts)


def _shared(v: Any) -> Any:
    """A kept string value shared with every equal one kept (``sys.intern``): projected fields
    (sku, category, plan...) repeat across keys, and each copy would cost ~50+ bytes per pending
    state. Interned strings are freed with their last reference."""
    return _intern(v) if type(v) is str else v


def projector(needs: tuple[tuple[str, ...], ...]) -> Any:
    """env -> the values of ``needs`` a step keeps in pending state (None: it keeps nothing)."""
    if not needs:
        return None
    getters = [env_getter(p) for p in needs]
    if len(getters) == 1:
        g = getters[0]

        def project1(env: Any) -> tuple[Any, ...]:
            v = g(env, None)
            return (_intern(v),) if type(v) is str else (v,)
        return project1
    return lambda env: tuple(_shared(g(env, None)) for g in getters)


# Bare paths of a payload that name the trigger's person, not the last matched event's fields.
_TRIGGER_IDENTITY: dict[tuple[str, ...], int] = {("userId",): 0, ("anonymousId",): 1}


class StepScope:
    """What names mean inside one step's predicate (or the payload)."""

    def __init__(self, rule_steps: Sequence[ast.Step], current: int, plans_needs: list[list[tuple[str, ...]]],
                 ctx: Ctx, payload_default: int | None = None) -> None:
        self.steps = rule_steps
        self.current = current  # index of the step whose event is at hand (-1: none, payload)
        self.needs = plans_needs
        self.ctx = ctx
        self.payload_default = payload_default  # payload: unaliased paths read this step
        self.aliases = {s.alias: i for i, s in enumerate(rule_steps) if s.alias}

    def getter(self, path: ast.Path) -> Getter:
        head, rest = path.parts[0], path.parts[1:]
        if head in self.aliases:
            j = self.aliases[head]
            if rest and rest[0] not in ENVELOPE_FIELDS:  # cart.propertes.price: always missing
                close = difflib.get_close_matches(rest[0], sorted(ENVELOPE_FIELDS), n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                self.ctx.error(path, f"'{rest[0]}' is not an event field{hint} ({path} is always missing)", "warning")
            if j == self.current:
                return env_getter(rest) if rest else (lambda env, st: MISSING)
            if j > self.current and self.current >= 0:
                self.ctx.error(path, f"step '{head}' comes later in the rule; only earlier steps can be referenced")
                return lambda env, st: MISSING
            if self.steps[j].absent:
                self.ctx.error(path, f"step '{head}' is an absence (`then no`); it has no event to reference")
                return lambda env, st: MISSING
            if not rest:
                self.ctx.error(path, f"name a field of step '{head}', e.g. {head}.properties.price")
                return lambda env, st: MISSING
            return self._slot(j, rest)
        if head not in ENVELOPE_FIELDS:
            known = sorted(self.aliases)
            hint = f" (steps: {', '.join(known)})" if known else ""
            self.ctx.error(path, f"unknown step or field '{head}'{hint}; event fields start with properties., context., traits., userId, ...")
            return lambda env, st: MISSING
        if self.current >= 0:
            return env_getter(path.parts)
        assert self.payload_default is not None
        who = _TRIGGER_IDENTITY.get(path.parts)
        if who is not None:
            # The trigger's own userId / anonymousId (rules.identity): the renderer's last item.
            return lambda env, st: st[-1][who]
        return self._slot(self.payload_default, path.parts)

    def _slot(self, j: int, parts: tuple[str, ...]) -> Getter:
        needs = self.needs[j]
        if parts not in needs:
            needs.append(parts)
        k = needs.index(parts)
        if self.steps[j].count > 1:
            return lambda env, st: st[j][-1][4][k]
        return lambda env, st: st[j][4][k]


def _operand(node: ast.Operand, scope: StepScope) -> tuple[Getter, Any]:
    """(getter, constant) - exactly one is used: constant when the operand is a literal."""
    if isinstance(node, ast.Literal):
        return None, node.value
    return scope.getter(node), None


def compile_expr(node: ast.Expr, scope: StepScope) -> Predicate:
    if isinstance(node, ast.And):
        left, right = compile_expr(node.left, scope), compile_expr(node.right, scope)

        def and_(env: Any, st: Any) -> bool | None:
            a = left(env, st)
            if a is False:
                return False
            b = right(env, st)
            if b is False:
                return False
            return None if a is None or b is None else True
        return and_
    if isinstance(node, ast.Or):
        left, right = compile_expr(node.left, scope), compile_expr(node.right, scope)

        def or_(env: Any, st: Any) -> bool | None:
            a = left(env, st)
            if a is True:
                return True
            b = right(env, st)
            if b is True:
                return True
            return None if a is None or b is None else False
        return or_
    if isinstance(node, ast.Not):
        inner = compile_expr(node.operand, scope)

        def not_(env: Any, st: Any) -> bool | None:
            v = inner(env, st)
            return None if v is None else not v
        return not_
    if isinstance(node, ast.Exists):
        get, const = _operand(node.operand, scope)
        if get is None:
            scope.ctx.error(node, "`exists` applies to a field, not a constant")
            return lambda env, st: False
        negated = node.negated
        return lambda env, st: (get(env, st) in (MISSING, None)) if negated else (get(env, st) not in (MISSING, None))
    if isinstance(node, ast.InList):
        get, const = _operand(node.operand, scope)
        values = tuple(v.value for v in node.values)
        negated = node.negated
        if get is None:
            scope.ctx.error(node, "`in` applies to a field, not a constant")
            return lambda env, st: False
        for v in node.values:
            if v.value is None:
                scope.ctx.error(v, "null in a list never matches (null counts as missing)", "warning")

        def in_(env: Any, st: Any) -> bool | None:
            v = get(env, st)
            if v is MISSING or v is None:
                return None
            found = any(_eq(v, x) for x in values)
            return not found if negated else found
        return in_
    if isinstance(node, (ast.Compare, ast.StringOp)):
        lget, lconst = _operand(node.left, scope)
        rget, rconst = _operand(node.right, scope)
        if lget is None and rget is None:
            scope.ctx.error(node, "this compares two constants; one side should be a field")
        op = node.op
        if (lget is None and lconst is None) or (rget is None and rconst is None):
            _null_warning(node, scope.ctx)
            return lambda env, st: None  # a `null` literal: unknown, whatever the field holds
        fast = _const_compare(op, lget, rconst) if lget is not None and rget is None else None
        if fast is not None:
            return fast

        def test(a: Any, b: Any) -> bool:
            return compare_values(op, a, b)

        def cmp(env: Any, st: Any) -> bool | None:
            a = lconst if lget is None else lget(env, st)
            b = rconst if rget is None else rget(env, st)
            if a is MISSING or b is MISSING or a is None or b is None:
                return None
            return test(a, b)
        return cmp
    raise TypeError(f"unknown expression node {node!r}")  # pragma: no cover


def _written(x: ast.Operand) -> str:
    return str(x) if isinstance(x, ast.Path) else json.dumps(x.value, ensure_ascii=False)


def _null_warning(node: ast.Compare | ast.StringOp, ctx: Ctx) -> None:
    field = next((x for x in (node.left, node.right) if isinstance(x, ast.Path)), None)
    written = f"{_written(node.left)} {node.op} {_written(node.right)}"
    fix = f"; write `{field} {'exists' if node.op == '!=' else 'does not exist'}`" if field and node.op in ("==", "!=") else ""
    ctx.error(node, f"`{written}` is never true: null counts as missing{fix}", "warning")


_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _const_compare(op: str, get: Getter, c: Any) -> Predicate | None:
    """`field <op> constant` without the generic dispatch (same results as ``cmp`` below), or None."""
    if op in ("==", "!=") and type(c) is str:
        neg = op == "!="

        def eq_str(env: Any, st: Any) -> bool | None:
            a = get(env, st)
            if a is MISSING or a is None:
                return None
            return (type(a) is not str or a != c) if neg else (type(a) is str and a == c)
        return eq_str
    if op in ("starts with", "ends with") and type(c) is str:
        method = str.startswith if op == "starts with" else str.endswith

        def affix(env: Any, st: Any) -> bool | None:
            a = get(env, st)
            if a is MISSING or a is None:
                return None
            return type(a) is str and method(a, c)
        return affix
    if op in _ORDER and (type(c) is int or type(c) is float):
        f = _ORDER[op]

        def order_num(env: Any, st: Any) -> bool | None:
            a = get(env, st)
            if a is MISSING or a is None:
                return None
            t = type(a)
            return bool(f(a, c)) if (t is int or t is float) else False
        return order_num
    return None


def compile_template(node: ast.Template, scope: StepScope) -> Renderer:
    if isinstance(node, ast.Literal):
        value = node.value
        return lambda st: value
    if isinstance(node, ast.Path):
        get = scope.getter(node)
        return lambda st: (lambda v: None if v is MISSING else v)(get(None, st))
    if isinstance(node, ast.TemplateArray):
        items = [compile_template(i, scope) for i in node.items]
        return lambda st: [f(st) for f in items]
    seen: set[str] = set()
    pairs = []
    for key, value in node.items:
        if key in seen:
            scope.ctx.error(node, f"payload field '{key}' is given twice")
        seen.add(key)
        pairs.append((key, compile_template(value, scope)))
    return lambda st: {k: f(st) for k, f in pairs}
