"""Compiled predicates (rules.predcode) hold exactly where the closure trees return True."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tripwire.rules.parser import parse_text
from tripwire.rules.predcode import fast_predicate
from tripwire.rules.predicates import Ctx, StepScope, compile_expr, projector

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


def compiled(text: str) -> list[tuple[Any, Any, int, list[list[tuple[str, ...]]], bool]]:
    """(closure, compiled, step index, projection needs, first step is a count) per `where`."""
    tree, diagnostics = parse_text(text, "t.rules")
    assert not diagnostics
    rule = tree.rules[0]
    needs: list[list[tuple[str, ...]]] = [[] for _ in rule.steps]
    out = []
    for i, step in enumerate(rule.steps):
        if step.where is None:
            continue
        scope = StepScope(rule.steps, i, needs, Ctx("t.rules", text.split("\n")))
        closure = compile_expr(step.where, scope)
        fast = fast_predicate(step.where, scope, closure)
        assert fast is not closure, text  # every operator above compiles
        out.append((closure, fast, i, needs, rule.steps[0].count > 1))
    return out


PREDICATES = [p for text in RULES for p in compiled(text)]


def slim(env: dict[str, Any], needs: list[tuple[str, ...]]) -> tuple[Any, ...]:
    proj = projector(tuple(needs))
    return ("m", 0, 0, 0, proj(env) if proj is not None else ())


@settings(max_examples=400, deadline=None)
@given(envelope, envelope, envelope)
def test_compiled_predicates_agree_with_the_closures(env: dict[str, Any], first: dict[str, Any], other: dict[str, Any]) -> None:
    for closure, fast, i, needs, count in PREDICATES:
        # earlier steps as the engine holds them: a Slim, or a tuple of Slims for a count step
        steps: tuple[Any, ...] = ()
        if i > 0:
            steps = ((slim(other, needs[0]), slim(first, needs[0])),) if count else (slim(first, needs[0]),)
        want = closure(env, steps) is True
        assert fast(env, steps) is want, (getattr(fast, "source", ""), env, steps)
