"""Each rule in plain English, including how it matches (``tripwire rules explain``)."""

from __future__ import annotations

import re

from . import ast
from .plan import RulePlan

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z").match

_OPS = {"==": "is", "!=": "is not", "<": "is less than", "<=": "is at most", ">": "is more than", ">=": "is at least"}
_UNITS = [(86_400_000, "day"), (3_600_000, "hour"), (60_000, "minute"), (1000, "second"), (1, "millisecond")]


def duration(ms: int) -> str:
    for size, name in _UNITS:
        if ms % size == 0:
            n = ms // size
            return f"{n} {name}{'s' if n != 1 else ''}"
    return f"{ms} milliseconds"


def _value(v: object) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def _operand(node: ast.Operand) -> str:
    return str(node) if isinstance(node, ast.Path) else _value(node.value)


def expr(node: ast.Expr) -> str:
    if isinstance(node, ast.And):
        return f"{expr(node.left)} and {expr(node.right)}"
    if isinstance(node, ast.Or):
        return f"({expr(node.left)} or {expr(node.right)})"
    if isinstance(node, ast.Not):
        return f"it is not true that {expr(node.operand)}"
    if isinstance(node, ast.Compare):
        text = f"{_operand(node.left)} {_OPS[node.op]} {_operand(node.right)}"
        if any(isinstance(x, ast.Literal) and x.value is None for x in (node.left, node.right)):
            text += " (never true: null counts as missing; test it with `exists` / `does not exist`)"
        return text
    if isinstance(node, ast.InList):
        values = ", ".join(_value(v.value) for v in node.values)
        return f"{_operand(node.operand)} is {'not ' if node.negated else ''}one of [{values}]"
    if isinstance(node, ast.StringOp):
        return f"{_operand(node.left)} {node.op.replace('starts with', 'starts with').replace('ends with', 'ends with')} {_operand(node.right)}"
    if isinstance(node, ast.Exists):
        return f"{_operand(node.operand)} is {'missing (or null)' if node.negated else 'present (not null)'}"
    raise TypeError(node)  # pragma: no cover


def _name(name: str) -> str:
    """An event name as a reader can tell where it ends: quoted unless it is one plain word."""
    return name if _WORD(name) else f'"{name}"'


def _tests(node: ast.Expr) -> list[ast.Expr]:
    """The comparisons, `in` and `exists` tests of a condition, and its `not`s."""
    out: list[ast.Expr] = []
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, (ast.And, ast.Or)):
            todo += [n.left, n.right]
        elif isinstance(n, ast.Not):
            out.append(n)
            todo.append(n.operand)
        else:
            out.append(n)
    return out


def _missing_note(steps: tuple[ast.Step, ...]) -> str | None:
    """How missing and null fields behave, for a rule whose conditions compare fields."""
    tests = [t for s in steps if s.where is not None for t in _tests(s.where)]
    if not any(isinstance(t, (ast.Compare, ast.InList, ast.StringOp)) for t in tests):
        return None
    # whether a reader could think a missing field makes something true (three-valued logic says no)
    negates = any(isinstance(t, ast.Not) or (isinstance(t, ast.Compare) and t.op == "!=")
                  or (isinstance(t, ast.InList) and t.negated) for t in tests)
    two_fields = any(isinstance(t, ast.Compare) and isinstance(t.left, ast.Path) and isinstance(t.right, ast.Path)
                     for t in tests)
    note = "A comparison with a missing or null field is never true"
    if negates:
        note += ", not even under `not`, `!=` or `not in`"
    if two_fields:
        note += "; two null fields are not equal"
    return note + "."


def _event(name: str) -> str:
    if name.startswith("$"):
        return f"a {name[1:]} call"
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {_name(name)} event"


def _paths(node: ast.Template) -> list[ast.Path]:
    if isinstance(node, ast.TemplateObject):
        return [p for _, v in node.items for p in _paths(v)]
    if isinstance(node, ast.TemplateArray):
        return [p for v in node.items for p in _paths(v)]
    return [node] if isinstance(node, ast.Path) else []


def template(node: ast.Template) -> str:
    """A payload template as written (keys quoted only where they must be)."""
    if isinstance(node, ast.TemplateObject):
        return "{ " + ", ".join(f"{k if _WORD(k) else _value(k)}: {template(v)}" for k, v in node.items) + " }"
    if isinstance(node, ast.TemplateArray):
        return "[" + ", ".join(template(v) for v in node.items) + "]"
    return _operand(node)


def explain(plan: RulePlan) -> str:
    rule = plan.rule
    lines = [f'Rule "{plan.name}" ({plan.file}:{plan.line})']
    key = "anonymousId (events without one are ignored)" if plan.by_anonymous_id else "visitor (anonymousId, or userId when there is none)"
    steps = rule.steps
    for i, step in enumerate(steps):
        what = _event(step.event) if step.count == 1 else f"at least {step.count} {_name(step.event)} events"
        cond = f" where {expr(step.where)}" if step.where is not None else ""
        named = f' (called "{step.alias}")' if step.alias else ""
        if i == 0:
            window = f" within any {duration(step.within.ms)}" if step.within else ""
            lines.append(f"  1. Starts with {what}{window}{cond}{named}.")
        elif step.absent:
            lines.append(f"  {i + 1}. Then fires if NO {_name(step.event)} event{cond} arrives within {duration(step.within.ms)} "
                         f"after step {i}." if step.within else "")
        else:
            assert step.within is not None  # the compiler requires a time bound on every later step
            lines.append(f"  {i + 1}. Then {what}{cond}{named} within {duration(step.within.ms)} after step {i}"
                         " (other events may come between).")
    lines.append(f"  Per {key}, using event time.")
    semantics = []
    if len(steps) > 1:
        semantics.append(
            f"Only the latest {_name(steps[0].event) if steps[0].count == 1 else 'group'} waits at each step: a newer one replaces "
            f"the older one" + (" and restarts the timer" if steps[-1].absent else "") + "."
        )
    if steps[-1].absent:
        semantics.append("It fires once the deadline has passed in event time (the watermark), "
                         "even if the visitor sends nothing more.")
    if steps[0].count > 1:
        semantics.append("Events counted for one trigger are not counted again (windows do not overlap).")
    if any(not s.absent and s.event == steps[0].event for s in steps[1:]):
        # `when Search then Search within 1m`: S1 S2 S3 fires for S1 S2 and for S2 S3
        semantics.append(f"A matched event is not matched again by this rule, except that the {_name(steps[0].event)} "
                         "completing a match also starts the next one; a repeated messageId is ignored.")
    else:
        semantics.append("Each matched event is used by at most one trigger of this rule; a repeated messageId is ignored.")
    note = _missing_note(steps)
    if note is not None:
        semantics.append(note)
    for s in semantics:
        lines.append(f"  {s}")
    if plan.cap_times is not None and plan.cap_per_ms is not None:
        times = {1: "once", 2: "twice"}.get(plan.cap_times, f"{plan.cap_times} times")
        per = duration(plan.cap_per_ms)
        per = per[2:] if per.startswith("1 ") else per
        lines.append(f"  Fires at most {times} per {per} for the same key; "
                     "complete matches beyond that are dropped (not delayed).")
    post = next(c for c in rule.clauses if isinstance(c, ast.Post))
    if post.payload is None:
        lines.append(f'  Then posts to endpoint "{plan.endpoint}" (the matched events, no payload).')
    else:
        aliases = {s.alias for s in steps if s.alias}
        paths = _paths(post.payload)
        person = {("userId",), ("anonymousId",)}
        bare = any(p.parts[0] not in aliases and p.parts not in person for p in paths)
        last = max(i for i, s in enumerate(steps) if not s.absent)
        where = f" (paths without a step name read step {last + 1}'s event)" if bare and len(steps) > 1 else ""
        if any(p.parts in person for p in paths):
            where += " (bare userId and anonymousId: the person the trigger is for)"
        lines.append(f'  Then posts to endpoint "{plan.endpoint}" with payload {template(post.payload)}{where}; '
                     "a missing field is null.")
    return "\n".join(x for x in lines if x)
