"""Bad input at run time: nothing an event contains can crash the engine; missing fields never match."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tripwire.rules.engine import Engine

from .util import T0, ev, feed, plan_of

RULES = """
rule "seq" when AddToCart as cart where cart.properties.price >= 20 and cart.properties.sku starts with "S"
  then Checkout as c where c.properties.total > cart.properties.price within 1m
  post crm with { sku: cart.properties.sku, deep: [c.properties.x.y, { z: cart.context.page.path }] }
rule "count" when 2 PageView where properties.tags contains "a" or context.page.path ends with "/x" within 1m post crm
rule "absent" when AddToCart as a where a.properties.kind in ["x", "y"] then no Checkout within 10s by anonymousId post crm
rule "page" when $page where not (name exists) post crm
"""

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)
field = st.sampled_from(["properties", "context", "timestamp", "messageId", "anonymousId", "userId", "type", "event", "name"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["AddToCart", "Checkout", "PageView", "$page", "Other"]),
                          st.dictionaries(field, json_values, max_size=4)), max_size=25))
def test_random_envelopes_never_raise(events: list[tuple[str, dict[str, Any]]]) -> None:
    engine = Engine(plan_of(RULES), 1000)
    for i, (name, overrides) in enumerate(events):
        env = ev(name, i, key=f"k{i % 3}")
        env.update(overrides)  # any field may now be missing-ish, of the wrong type, or absurd
        for m in engine.process(i % 2, i, env):
            assert m.rule.name in {"seq", "count", "absent", "page"}
    engine.advance_wall(T0 + 10**9)
    assert engine.stats.events == len(events)


def test_missing_and_mistyped_fields_make_predicates_false() -> None:
    engine = Engine(plan_of(RULES), 0)
    events = [
        ev("AddToCart", 0, mid="a"),                          # no price, no sku
        ev("AddToCart", 1, price="30", sku="S1"),             # price is a string
        ev("AddToCart", 2, price=30, sku=5),                  # sku is not a string
        {**ev("AddToCart", 3, mid="ok", price=30, sku="S1"), "context": "not an object"},
        ev("Checkout", 4, mid="c", total=None),               # total null: not greater
        ev("Checkout", 5, mid="c2", total=31),
    ]
    got = feed(engine, events)
    assert [m.message_ids for m in got] == [["ok", "c2"]]
    assert got[0].payload == {"sku": "S1", "deep": [None, {"z": None}]}  # missing template fields are null


def test_events_without_time_key_or_id_are_counted_as_errors() -> None:
    engine = Engine(plan_of(RULES), 0)
    bad = [{"type": "track", "event": "AddToCart"}, {**ev("AddToCart", 0), "timestamp": "yesterday"},
           {**ev("AddToCart", 0), "timestamp": 12}, {**ev("AddToCart", 0), "messageId": 7}]
    for i, env in enumerate(bad):
        assert engine.process(0, i, env) == []
    no_key = ev("AddToCart", 0, price=30, sku="S")
    del no_key["anonymousId"]
    assert engine.process(0, 9, no_key) == []
    assert engine.stats.errors == 4 and engine.pending() == 0


def test_first_step_index_keeps_semantics() -> None:
    text = """
rule "eq" when A where properties.cat == "x" and properties.n > 1 post crm
rule "in" when A as a where a.properties.cat in ["x", "y"] post crm
rule "or" when A where properties.cat == "x" or properties.cat == "z" post crm
rule "num" when A where properties.cat == 1 post crm
"""
    engine = Engine(plan_of(text), 0)
    fired = lambda e: sorted(m.rule.name for m in engine.process(0, 0, e))  # noqa: E731
    assert fired(ev("A", 0, cat="x", n=2)) == ["eq", "in", "or"]
    assert fired(ev("A", 1, cat="x", n=0)) == ["in", "or"]
    assert fired(ev("A", 2, cat="y")) == ["in"]
    assert fired(ev("A", 3, cat="z")) == ["or"]
    assert fired(ev("A", 4, cat=1)) == ["num"]
    assert fired(ev("A", 5, cat=["x"])) == []
