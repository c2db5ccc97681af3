"""Syntax tree -> evaluation plan (:mod:`rules.plan`), with the static checks.

Checks (each a ``file:line:col`` diagnostic):

* every step after ``when``, every absence and every count has a time bound
  (``within``), otherwise state would never expire;
* step references (``cart.properties.price``) name an earlier step's alias; a
  path that is neither an alias nor an envelope field is reported (typos);
* ``by`` only where the log partitioning allows it: events are partitioned by
  anonymousId-or-userId, so only ``by anonymousId`` is accepted;
* an absence is the last step; counts are within limits; one ``post``, at
  most one ``by`` and one ``at most``; rule names are unique;
* the ``post`` endpoint is configured (error when a config file is in use,
  warning otherwise: see LANGUAGE.md);
* with an event catalog, warnings about what it contradicts (:mod:`rules.catalog_checks`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import fields, is_dataclass
from typing import Any

from . import ast
from .catalog import EventCatalog
from .catalog_checks import check_catalog
from .errors import Diagnostic
from .grammar import RESERVED
from .parser import parse_text
from .plan import Plan, Predicate, RulePlan, StepPlan
from .predcode import compile_condition
from .predicates import ENVELOPE_FIELDS, Ctx, StepScope, compile_template, projector

__all__ = ["ENVELOPE_FIELDS", "build_plan", "compile_rule", "compile_text", "fingerprint"]

MAX_COUNT = 1000
MAX_WINDOW_MS = 90 * 86_400_000
COMPILER_VERSION = "1"


def _conjuncts(expr: ast.Expr | None) -> list[ast.Expr]:
    out: list[ast.Expr] = []
    todo: list[ast.Expr] = [expr] if expr is not None else []
    while todo:
        node = todo.pop()
        if isinstance(node, ast.And):
            todo += [node.right, node.left]
        else:
            out.append(node)
    return out


def _discriminator(step: ast.Step) -> tuple[tuple[tuple[str, ...], frozenset[str]], ast.Expr] | None:
    """A top-level `field == "x"` or `field in ["x", ...]` conjunct of the step's own event (index key).

    Returns ((path, values), the conjunct): the engine reaches the step through a table keyed by
    that field's string value, so the conjunct is known to hold there.
    """
    conjuncts = _conjuncts(step.where)

    def own(operand: ast.Operand) -> tuple[str, ...] | None:
        if not isinstance(operand, ast.Path):
            return None
        if step.alias is not None and operand.parts[0] == step.alias:
            return operand.parts[1:] or None
        return operand.parts if operand.parts[0] in ENVELOPE_FIELDS else None

    for node in conjuncts:
        if isinstance(node, ast.Compare) and node.op == "==":
            for a, b in ((node.left, node.right), (node.right, node.left)):
                path = own(a)
                if path is not None and isinstance(b, ast.Literal) and type(b.value) is str:
                    return (path, frozenset([b.value])), node
        if isinstance(node, ast.InList) and not node.negated and node.values:
            path = own(node.operand)
            if path is not None and all(type(v.value) is str for v in node.values):
                return (path, frozenset(v.value for v in node.values)), node
    return None


def _residual(step: ast.Step, known: ast.Expr, steps: Sequence[ast.Step], ctx: Ctx) -> Predicate | None:
    """The first step's predicate without the conjunct ``known`` (which the index lookup guarantees).

    In three-valued logic ``True and X`` is ``X``, so where the lookup found the rule this gives the
    same verdict as the whole predicate. None: nothing is left to test.
    """
    rest = [c for c in _conjuncts(step.where) if c is not known]
    if not rest:
        return None
    expr = rest[0]
    for c in rest[1:]:
        expr = ast.And(c.line, c.column, expr, c)
    scratch = Ctx(ctx.filename, ctx.lines)  # the full predicate's diagnostics were reported already
    scope = StepScope(steps, 0, [[] for _ in steps], scratch)
    return compile_condition(expr, scope)


# rules ---------------------------------------------------------------------------


def _strip_positions(node: Any) -> Any:
    if is_dataclass(node):
        return (type(node).__name__,) + tuple(
            _strip_positions(getattr(node, f.name)) for f in fields(node)
            if f.name not in ("line", "column", "source", "count_pos", "alias_pos", "event_pos")
        )
    if isinstance(node, tuple):
        return tuple(_strip_positions(x) for x in node)
    return node


def fingerprint(rule: ast.Rule) -> str:
    text = repr((COMPILER_VERSION, _strip_positions(rule)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_duration(ctx: Ctx, d: ast.Duration) -> None:
    if d.ms <= 0:
        ctx.error(d, "a duration must be more than zero")
    elif d.ms > MAX_WINDOW_MS:
        ctx.error(d, "durations are limited to 90d (state is kept that long)")


def compile_rule(rule: ast.Rule, ctx: Ctx, endpoints: set[str] | None, endpoint_severity: str,
                 catalog: EventCatalog | None = None) -> RulePlan | None:
    before = len([d for d in ctx.diagnostics if d.severity == "error"])
    steps = rule.steps
    if not rule.name.strip():
        ctx.error(rule, "a rule needs a non-empty name")
    aliases: dict[str, ast.Step] = {}
    for i, step in enumerate(steps):
        if step.alias:
            pos = step.alias_pos or step
            if step.alias in RESERVED:
                ctx.error(pos, f"'{step.alias}' is a reserved word of the rule language; pick another alias")
            elif step.alias in ENVELOPE_FIELDS:
                ctx.error(pos, f"alias '{step.alias}' would hide the event field of that name; pick another")
            elif step.alias in aliases:
                ctx.error(pos, f"alias '{step.alias}' is already used by an earlier step")
            aliases[step.alias] = step
        if step.count < 1 or step.count > MAX_COUNT:
            ctx.error(step.count_pos or step, f"a count must be between 1 and {MAX_COUNT}")
        if step.within is not None:
            _check_duration(ctx, step.within)
        if step.absent and i != len(steps) - 1:
            ctx.error(step, "an absence (`then no ...`) must be the last step of a rule")
        if i == 0:
            if step.count > 1 and step.within is None:
                ctx.error(step, f"`when {step.count} {step.event}` needs a time bound: add `within 10m` (or another duration)")
            elif step.count == 1 and step.within is not None:
                ctx.error(step.within, "`within` on a single-event `when` step has no meaning; use a count (`when 3 X within 10m`) or put it on a `then` step")
        elif step.within is None:
            what = f"then no {step.event}" if step.absent else f"then {step.event}"
            ctx.error(step, f"`{what}` needs a time bound: add `within 30s` (or another duration)")

    by = [c for c in rule.clauses if isinstance(c, ast.By)]
    caps = [c for c in rule.clauses if isinstance(c, ast.Cap)]
    posts = [c for c in rule.clauses if isinstance(c, ast.Post)]
    for extra, what in [(c, "by") for c in by[1:]] + [(c, "at most") for c in caps[1:]] + [(c, "post") for c in posts[1:]]:
        ctx.error(extra, f"`{what}` is given twice in the rule; keep one"
                  + (" (one rule posts to one endpoint: write a second rule for another)" if what == "post" else ""))
    by_anonymous = False
    if by:
        path = str(by[0].path)
        if path == "anonymousId":
            by_anonymous = True
        else:
            ctx.error(by[0].path, (
                f"cannot correlate `by {path}`: events are partitioned by anonymousId (or userId when there "
                "is none), so events with the same " + path + " may be read by different engine instances; "
                "only `by anonymousId` is allowed (or leave `by` out to use the log key)"
            ))
    cap_times = cap_per = None
    if caps:
        cap_times, cap_per = caps[0].times, caps[0].per.ms
        _check_duration(ctx, caps[0].per)
        if cap_times < 1:
            ctx.error(caps[0], "`at most 0 times` would never fire")
    if not posts:
        ctx.error(rule, "the rule has no action: add `post <endpoint>`")
        endpoint = ""
    else:
        endpoint = posts[0].endpoint
        if endpoints is not None and endpoint not in endpoints:
            known = ", ".join(sorted(endpoints)) or "none"
            ctx.error(posts[0], f"endpoint '{endpoint}' is not configured (add [endpoints.{endpoint}] to the config; configured: {known})", endpoint_severity)

    needs: list[list[tuple[str, ...]]] = [[] for _ in steps]
    preds: list[Predicate | None] = []
    for i, step in enumerate(steps):
        scope = StepScope(steps, i, needs, ctx)
        # compiling reports what is wrong and adds the fields of earlier steps it reads to their projections
        preds.append(compile_condition(step.where, scope) if step.where is not None else None)
    payload = None
    if posts and posts[0].payload is not None:
        positives = [i for i, s in enumerate(steps) if not s.absent]
        scope = StepScope(steps, -1, needs, ctx, payload_default=positives[-1] if positives else 0)
        payload = compile_template(posts[0].payload, scope)

    if len([d for d in ctx.diagnostics if d.severity == "error"]) > before:
        return None
    if catalog is not None:
        check_catalog(rule, catalog, ctx)
    disc = _discriminator(steps[0])
    step_plans = tuple(
        StepPlan(i, s.event, s.count, s.within.ms if s.within else None, s.absent, s.alias, preds[i], tuple(needs[i]),
                 disc[0] if i == 0 and disc is not None else None, projector(tuple(needs[i])),
                 _residual(s, disc[1], steps, ctx) if i == 0 and disc is not None else preds[i])
        for i, s in enumerate(steps)
    )
    horizon = sum(s.within_ms or 0 for s in step_plans)
    return RulePlan(
        name=rule.name, uid=fingerprint(rule), file=ctx.filename, line=rule.line, steps=step_plans,
        by_anonymous_id=by_anonymous, cap_times=cap_times, cap_per_ms=cap_per, endpoint=endpoint,
        payload=payload, horizon_ms=horizon, rule=rule,
    )


def compile_text(
    text: str, filename: str = "<rules>", *, endpoints: Iterable[str] | None = None, endpoint_severity: str = "error",
    catalog: EventCatalog | None = None,
) -> tuple[list[RulePlan], list[Diagnostic]]:
    """Parse and compile one file. ``endpoints=None`` skips the endpoint check; ``catalog`` adds its warnings."""
    tree, diagnostics = parse_text(text, filename)
    ctx = Ctx(filename, text.split("\n"))
    ctx.diagnostics.extend(diagnostics)
    eps = set(endpoints) if endpoints is not None else None
    plans = []
    names: dict[str, ast.Rule] = {}
    for rule in tree.rules:
        if rule.name in names:
            ctx.error(rule, f"rule \"{rule.name}\" is already defined at line {names[rule.name].line}")
            continue
        names[rule.name] = rule
        plan = compile_rule(rule, ctx, eps, endpoint_severity, catalog)
        if plan is not None:
            plans.append(plan)
    ctx.diagnostics.sort(key=lambda d: (d.line, d.column))
    return plans, ctx.diagnostics


def build_plan(files: Sequence[Sequence[RulePlan]]) -> tuple[Plan, list[Diagnostic]]:
    """One plan from several files' rules; a name used in two files is an error on the later one."""
    seen: dict[str, RulePlan] = {}
    diagnostics = []
    out = []
    for plans in files:
        for p in plans:
            if p.name in seen:
                first = seen[p.name]
                diagnostics.append(Diagnostic(p.file, p.line, p.rule.column, f"rule \"{p.name}\" is already defined in {first.file}:{first.line}"))
                continue
            seen[p.name] = p
            out.append(p)
    return Plan.build(tuple(out)), diagnostics
