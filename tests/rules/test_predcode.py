"""Compiled conditions (rules.predcode) against a reference reading of the language's three-valued logic.

The reference below evaluates a condition's syntax tree directly on the envelopes (an earlier
step's fields read from that step's own event, not from the projection the engine keeps), as
rules/LANGUAGE.md states the semantics: a comparison with a missing or null field is unknown,
``not`` keeps unknown, a ``where`` holds only when it is true. The engine's predicate must hold
exactly where the reference is true, and the tests "why not" reports must have the reference's
result and the values it read.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tripwire.rules import ast
from tripwire.rules.parser import parse_text
from tripwire.rules.plan import MISSING
from tripwire.rules.predcode import compile_condition, compile_tests
from tripwire.rules.predicates import Ctx, StepScope, projector

from .util import ev, run

RULES = [
    'rule "a" when X where properties.category == "shoes" and properties.price >= 20 post crm',
    'rule "b" when X where not (properties.category != "shoes") or properties.price < 2.5 post crm',
    'rule "c" when X where context.page.path starts with "/c" and not (context.page.path ends with "x") post crm',
    'rule "d" when X where properties.tags contains "a" or properties.name contains "b" post crm',
    'rule "e" when X where properties.kind in ["x", 1, true] and properties.other not in ["y", null] post crm',
    'rule "f" when X where userId exists and not (properties.gone exists) or properties.maybe does not exist post crm',
    'rule "g" when X where properties.flag == true or properties.n == 1 or properties.z == null post crm',
    'rule "h" when X where not (properties.price > properties.total) and properties.a <= properties.b post crm',
    'rule "i" when X as x where not (not (x.properties.price > 3 or x.properties.price == "3")) post crm',
    'rule "j" when X as a then Y as b where b.properties.total > a.properties.price and not (b.properties.sku != a.properties.sku) within 1m post crm',
    'rule "k" when 2 X as a within 1m then Y where properties.n >= a.properties.n or a.context.page.path starts with "/" within 1m post crm',
    'rule "l" when X then no Y where properties.q contains properties.r within 1m post crm',
    'rule "m" when X where not (properties.category == "shoes" and properties.price >= 20) post crm',
    'rule "n" when X where not (properties.kind in ["x", 1] or properties.flag == true) post crm',
    'rule "o" when X where properties.other not in ["y", null] post crm',
    'rule "p" when X where not (properties.other not in ["y", 2]) and not (properties.n in [1, 2]) post crm',
    'rule "q" when X where not (properties.name starts with "a" or properties.name ends with "b") post crm',
    'rule "r" when X where not (properties.tags contains "x" and userId exists) post crm',
    'rule "s" when X where not (properties.a == properties.b) or properties.z != null or not (properties.z == null) post crm',
    'rule "t" when X where not (properties.n < properties.total) and not (properties.name contains properties.q) post crm',
    'rule "u" when X as a then Y where not (properties.sku != a.properties.sku) and properties.n != 3 within 1m post crm',
    'rule "v" when X as a where a == 3 or a.properties.n <= 2.5 and 1 < properties.n post crm',
]

values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 30) | st.floats(allow_nan=True) | st.sampled_from(["shoes", "x", "y", "a", "/c/x", "3", "", "b"]),
    lambda children: st.lists(children, max_size=3),
    max_leaves=5,
)
names = st.sampled_from(["category", "price", "total", "tags", "name", "kind", "other", "gone", "maybe", "flag", "n",
                         "z", "a", "b", "sku", "q", "r"])
props = st.dictionaries(names, values, max_size=8) | values
envelope = st.fixed_dictionaries({}, optional={
    "properties": props, "userId": values,
    "context": st.fixed_dictionaries({}, optional={"page": st.fixed_dictionaries({}, optional={"path": values}) | values}) | values,
})


# the reference ------------------------------------------------------------------------------


def _num(v: Any) -> bool:
    return type(v) in (int, float)


def _same(a: Any, b: Any) -> bool:
    """``==``: numbers by value (a bool is not a number), anything else of one type by value."""
    if _num(a) and _num(b):
        return bool(a == b)
    return type(a) is type(b) and a == b


def _compare(op: str, a: Any, b: Any) -> bool:
    if op in ("==", "!="):
        return _same(a, b) == (op == "==")
    if op == "contains":
        return (type(a) is str and type(b) is str and b in a) or (type(a) is list and any(_same(x, b) for x in a))
    if op in ("starts with", "ends with"):
        return type(a) is str and type(b) is str and (a.startswith(b) if op == "starts with" else a.endswith(b))
    if not ((_num(a) and _num(b)) or (type(a) is str and type(b) is str)):
        return False
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


class Reference:
    def __init__(self, rule: ast.Rule, current: int, env: dict[str, Any], earlier: dict[str, Any]) -> None:
        self.aliases = {s.alias: i for i, s in enumerate(rule.steps) if s.alias}
        self.current, self.env, self.earlier = current, env, earlier

    def read(self, path: ast.Path) -> Any:
        head, parts, source = path.parts[0], path.parts, self.env
        if head in self.aliases:
            parts = parts[1:]
            if self.aliases[head] != self.current:
                source = self.earlier
            if not parts:
                return MISSING
        for part in parts:
            if type(source) is not dict or part not in source:
                return MISSING
            source = source[part]
        return source

    def operand(self, x: ast.Operand) -> Any:
        return x.value if isinstance(x, ast.Literal) else self.read(x)

    def eval(self, node: ast.Expr) -> bool | None:
        if isinstance(node, ast.And):
            a, b = self.eval(node.left), self.eval(node.right)
            return False if False in (a, b) else None if None in (a, b) else True
        if isinstance(node, ast.Or):
            a, b = self.eval(node.left), self.eval(node.right)
            return True if True in (a, b) else None if None in (a, b) else False
        if isinstance(node, ast.Not):
            v = self.eval(node.operand)
            return None if v is None else not v
        return self.test(node)

    def test(self, node: ast.Expr) -> bool | None:
        if isinstance(node, ast.Exists):
            there = self.operand(node.operand) not in (MISSING, None)
            return there != node.negated
        if isinstance(node, ast.InList):
            v = self.operand(node.operand)
            if v is MISSING or v is None:
                return None
            return any(_same(v, x.value) for x in node.values) != node.negated
        assert isinstance(node, (ast.Compare, ast.StringOp))
        a, b = self.operand(node.left), self.operand(node.right)
        if a is MISSING or b is MISSING or a is None or b is None:
            return None
        return _compare(node.op, a, b)


# the compiled forms ---------------------------------------------------------------------------


def compiled(text: str) -> list[tuple[ast.Rule, int, Any, Any, list[list[tuple[str, ...]]]]]:
    """(rule, step index, predicate, tests, projection needs) per `where`."""
    tree, diagnostics = parse_text(text, "t.rules")
    assert not diagnostics
    rule = tree.rules[0]
    needs: list[list[tuple[str, ...]]] = [[] for _ in rule.steps]
    out = []
    for i, step in enumerate(rule.steps):
        if step.where is None:
            continue
        scope = StepScope(rule.steps, i, needs, Ctx("t.rules", text.split("\n")))
        pred = compile_condition(step.where, scope)
        out.append((rule, i, pred, compile_tests(step.where, scope), needs))
    return out


CONDITIONS = [c for text in RULES for c in compiled(text)]


def slim(env: dict[str, Any], needs: list[tuple[str, ...]]) -> tuple[Any, ...]:
    proj = projector(tuple(needs))
    return ("m", 0, 0, 0, proj(env) if proj is not None else ())


def leaves(node: ast.Expr) -> list[ast.Expr]:
    if isinstance(node, (ast.And, ast.Or)):
        return leaves(node.left) + leaves(node.right)
    if isinstance(node, ast.Not):
        return leaves(node.operand)
    return [node]


@settings(max_examples=400, deadline=None)
@given(envelope, envelope, envelope)
def test_compiled_conditions_agree_with_the_reference(env: dict[str, Any], first: dict[str, Any],
                                                      other: dict[str, Any]) -> None:
    for rule, i, pred, tests, needs in CONDITIONS:
        # earlier steps as the engine holds them: a Slim, or a tuple of Slims for a count step (its last: first)
        steps: tuple[Any, ...] = ()
        if i > 0:
            steps = ((slim(other, needs[0]), slim(first, needs[0])),) if rule.steps[0].count > 1 else (slim(first, needs[0]),)
        ref = Reference(rule, i, env, first)
        where = rule.steps[i].where
        assert where is not None
        assert pred(env, steps) is (ref.eval(where) is True), (pred.source, env, steps)
        results = tests.run(env, steps)
        assert [t.node for t in tests.tests] == leaves(where)
        for test, (result, read) in zip(tests.tests, results):
            assert result is ref.test(test.node), (test.node, tests.run.source, env, steps)
            assert all(a is b or a == b for a, b in zip(read, map(ref.read, test.paths), strict=True)), (test.node, read)


def test_the_largest_condition_the_parser_allows_compiles_and_runs() -> None:
    # 92 and/or/not (the parser allows 100) nested 32 parentheses deep (its limit): one function.
    inner = " or ".join(f"properties.n == {k}" for k in range(30))
    condition = "(" * 31 + inner + "".join(f" and not (properties.m == {k}))" for k in range(31)) + " and properties.n > 1"
    text = f'rule "big" when A where {condition} post crm'
    events = [ev("A", 0, mid="yes", n=29, m=40), ev("A", 1, mid="m is 3", n=29, m=3), ev("A", 2, mid="n is 30", n=30, m=40),
              ev("A", 3, mid="no n", m=40)]
    assert [m.message_ids for m in run(text, events)] == [["yes"]]
