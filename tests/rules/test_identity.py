"""The engine and identity: the key the collector gave (keyedBy), what triggers say of the person, erasure.

Events are built as the collector writes them: a browser event with its
anonymousId, an identify with both ids and ``keyedBy``, a server event with only
the userId and ``keyedBy`` naming the linked anonymousId.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tripwire.identity import forget_record
from tripwire.rules import identity as engine_identity
from tripwire.rules.engine import Engine

from .util import ev, feed, plan_of

CART = """
rule "abandoned cart"
  when "Product Added" as cart
  then no "Order Completed" within 30s
  post crm with { sku: cart.properties.sku, user: userId, visitor: anonymousId, key_user: cart.userId }
"""


def identify(at_s: float, anon: str, user: str, trust: str = "claimed") -> dict[str, Any]:
    env = ev("$identify", at_s, key=anon)
    env.update(userId=user, keyedBy={"key": anon, "via": "anonymousId", "trust": trust})
    return env


def server(name: str, at_s: float, user: str, linked: str | None, trust: str = "trusted", **props: Any) -> dict[str, Any]:
    env = ev(name, at_s, **props)
    del env["anonymousId"]
    env["userId"] = user
    env["keyedBy"] = ({"key": linked, "via": "link", "trust": trust} if linked
                      else {"key": user, "via": "userId", "trust": trust})
    return env


def test_a_linked_server_order_cancels_the_browsers_abandoned_cart() -> None:
    engine = Engine(plan_of(CART))
    events = [ev("Product Added", 0, key="anon-1", sku="shoe-42"), identify(5, "anon-1", "u-1"),
              server("Order Completed", 10, "u-1", "anon-1", trust="claimed")]
    assert feed(engine, events, until_s=100) == []
    assert engine.pending() == 0


def test_without_the_order_the_trigger_names_the_user_and_the_anonymous_id() -> None:
    engine = Engine(plan_of(CART))
    (m,) = feed(engine, [ev("Product Added", 0, key="anon-1", sku="shoe-42"), identify(5, "anon-1", "u-1")],
                until_s=100)
    assert m.key == "anon-1"
    assert m.identity == ("u-1", "anon-1", "claimed")
    # bare userId / anonymousId in a payload are the trigger's; cart.userId is still the cart event's (none)
    assert m.payload == {"sku": "shoe-42", "user": "u-1", "visitor": "anon-1", "key_user": None}


def test_an_anonymous_visitors_trigger_has_no_user_and_a_user_keyed_one_has_no_anonymous_id() -> None:
    engine = Engine(plan_of(CART))
    got = feed(engine, [ev("Product Added", 0, key="anon-2"),
                        server("Product Added", 0, "u-3", None)], until_s=100)
    assert {m.key: m.identity for m in got} == {"anon-2": (None, "anon-2", None), "u-3": ("u-3", None, "trusted")}


def test_the_latest_identify_of_a_key_is_what_its_triggers_say() -> None:
    engine = Engine(plan_of(CART))
    (m,) = feed(engine, [identify(0, "anon-1", "u-1"), ev("Product Added", 1, key="anon-1"),
                         identify(2, "anon-1", "u-2", "trusted")], until_s=100)
    assert m.identity == ("u-2", "anon-1", "trusted")


def test_by_anonymous_id_rules_take_events_keyed_through_a_link() -> None:
    text = CART.replace("within 30s", "within 30s\n  by anonymousId")
    engine = Engine(plan_of(text))
    events = [ev("Product Added", 0, key="anon-1"), identify(1, "anon-1", "u-1"),
              server("Order Completed", 2, "u-1", "anon-1")]
    assert feed(engine, events, until_s=100) == []


def test_an_erasure_record_drops_the_keys_state_and_what_the_engine_knows_of_it() -> None:
    engine = Engine(plan_of(CART), track_dirty=True)
    feed(engine, [ev("Product Added", 0, key="anon-1"), identify(1, "anon-1", "u-1"),
                  ev("Product Added", 0, key="anon-2")])
    assert engine.pending() == 2
    engine.take_changes(0)
    control = orjson.loads(forget_record("anon-1", "u-1", "2030-01-01T00:00:00.000Z"))
    assert engine.process(0, 3, control) == []
    assert engine.pending() == 1 and engine.stats.forgotten == 1 and engine.stats.errors == 0
    assert "anon-1" not in engine.partition(0).identity
    states, _, _ = engine.take_changes(0)
    assert [(key, data) for _, key, data in states] == [("anon-1", None)]  # forgotten durably too
    (m,) = feed(engine, [], until_s=100)
    assert m.key == "anon-2"


def test_the_identity_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_identity, "KEYS_PER_PARTITION", 3)
    engine = Engine(plan_of(CART))
    feed(engine, [identify(i, f"anon-{i}", f"u-{i}") for i in range(5)] + [identify(6, "anon-2", "u-2")])
    assert list(engine.partition(0).identity) == ["anon-3", "anon-4", "anon-2"]  # the least recently told left


def test_a_client_keyed_by_nothing_it_may_not_say_is_ignored() -> None:
    """keyedBy is the collector's; a malformed one (an old record, a bug) changes nothing and raises nothing."""
    engine = Engine(plan_of(CART))
    odd = ev("Product Added", 0, key="anon-9")
    odd.update(userId="u-9", keyedBy={"key": 5, "via": "link", "trust": "trusted"})
    also = ev("Product Added", 0, key="anon-8")
    also.update(userId="u-8", keyedBy="anon-1")
    got = feed(engine, [odd, also], until_s=100)
    assert sorted(m.key for m in got) == ["anon-8", "anon-9"]
    assert engine.stats.errors == 0
    assert all(m.identity[0] is None for m in got)
