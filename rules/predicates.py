"""What a rule's names mean, how values compare, and payload templates as closures.

Conditions (``where``) are compiled by :mod:`rules.predcode`, the one
evaluator of what a condition means; this module gives it its parts:

* :class:`StepScope` resolves a path as written in one step (an envelope
  field of the event at hand, a field an earlier step kept in its projection,
  or nothing) and reports what is wrong with it;
* :func:`compare_values` and its helpers: values of different types never
  compare equal or ordered; a number is an int or a float, never a bool;
* :func:`env_getter` / :func:`projector`: what pending state keeps of an event;
* :func:`compile_template`: a ``post ... with {...}`` payload as a closure.

A JSON null counts as missing in every comparison (``==``, ``!=``, ordering,
``in``, the string operators; a ``null`` literal included), as it does for
``exists``: two null fields are not equal. Nothing here raises at run time.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import ast
from .errors import Diagnostic
from .plan import MISSING, Renderer, get_path

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


def in_values(v: Any, values: tuple[Any, ...]) -> bool:
    """``in`` on a present value: equal (as ``==`` compares) to one of ``values``."""
    return any(_eq(v, x) for x in values)


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


Getter = Callable[[Any, Any], Any]  # (event, earlier steps of the run) -> value
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


@dataclass(frozen=True)
class EnvField:
    """A field of the event at hand."""

    parts: tuple[str, ...]


@dataclass(frozen=True)
class StepField:
    """Slot ``slot`` of the projection earlier step ``step`` kept (of its last event when ``count``)."""

    step: int
    slot: int
    count: bool


@dataclass(frozen=True)
class TriggerIdentity:
    """A payload's bare ``userId`` / ``anonymousId``: the trigger's person (item ``who`` of the identity)."""

    who: int


Ref = EnvField | StepField | TriggerIdentity | None
"""Where a path's value is read (None: nowhere, it is always missing)."""


def getter_of(ref: Ref) -> Getter:
    """A closure reading ``ref`` from (event, earlier steps of the run)."""
    if isinstance(ref, EnvField):
        return env_getter(ref.parts)
    if isinstance(ref, StepField):
        j, k = ref.step, ref.slot
        if ref.count:
            return lambda env, st: st[j][-1][4][k]
        return lambda env, st: st[j][4][k]
    if isinstance(ref, TriggerIdentity):
        who = ref.who
        return lambda env, st: st[-1][who]  # the renderer's last item: rules.identity
    return lambda env, st: MISSING


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

    def resolve(self, path: ast.Path) -> Ref:
        """Where ``path`` is read; what is wrong with it is reported to the context. A field of an earlier
        step is added to that step's projection (``needs``)."""
        head, rest = path.parts[0], path.parts[1:]
        if head in self.aliases:
            j = self.aliases[head]
            if rest and rest[0] not in ENVELOPE_FIELDS:  # cart.propertes.price: always missing
                close = difflib.get_close_matches(rest[0], sorted(ENVELOPE_FIELDS), n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                self.ctx.error(path, f"'{rest[0]}' is not an event field{hint} ({path} is always missing)", "warning")
            if j == self.current:
                return EnvField(rest) if rest else None
            if j > self.current and self.current >= 0:
                self.ctx.error(path, f"step '{head}' comes later in the rule; only earlier steps can be referenced")
                return None
            if self.steps[j].absent:
                self.ctx.error(path, f"step '{head}' is an absence (`then no`); it has no event to reference")
                return None
            if not rest:
                self.ctx.error(path, f"name a field of step '{head}', e.g. {head}.properties.price")
                return None
            return self._slot(j, rest)
        if head not in ENVELOPE_FIELDS:
            known = sorted(self.aliases)
            hint = f" (steps: {', '.join(known)})" if known else ""
            self.ctx.error(path, f"unknown step or field '{head}'{hint}; event fields start with properties., context., traits., userId, ...")
            return None
        if self.current >= 0:
            return EnvField(path.parts)
        assert self.payload_default is not None
        who = _TRIGGER_IDENTITY.get(path.parts)
        if who is not None:
            return TriggerIdentity(who)
        return self._slot(self.payload_default, path.parts)

    def getter(self, path: ast.Path) -> Getter:
        return getter_of(self.resolve(path))

    def _slot(self, j: int, parts: tuple[str, ...]) -> StepField:
        needs = self.needs[j]
        if parts not in needs:
            needs.append(parts)
        return StepField(j, needs.index(parts), self.steps[j].count > 1)


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
