"""``why_not``: where one key's events stopped matching a rule, and why, checked against the engine."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tripwire.rules.plan import RulePlan
from tripwire.rules.whynot import why_not

from .util import T0, ev, plan_of

RULES = """
rule "abandoned cart"
  when AddToCart as cart where cart.properties.price >= 20
  then no Checkout within 30s
  at most once per 24h
  post crm

rule "upsell"
  when AddToCart as cart
  then Checkout as c where c.properties.total > cart.properties.price within 1h
  post crm

rule "shoe fan" when 3 PageView where properties.category == "shoes" within 10m post crm

rule "chain" when A then B within 1m then no C within 30s post crm

rule "not vip" when Login where not properties.vip == true post crm

rule "two B" when A then 2 B where properties.price > 20 within 1m post crm

rule "C then A" when 2 C within 30s then A within 40s at most twice per 5m post crm
"""
PLAN = plan_of(RULES)


def rule(name: str) -> RulePlan:
    return next(r for r in PLAN.rules if r.name == name)


def at(s: float) -> int:
    return T0 + int(s * 1000)


def test_a_cart_under_the_price_names_the_condition_and_the_value() -> None:
    got = why_not(rule("abandoned cart"), [ev("AddToCart", 0, price=12, sku="s1")], now_ms=at(600))
    assert got.verdict == "never started"
    assert got.stopped_at == 0
    (cand,) = got.steps[0].candidates
    assert cand.verdict == "condition false"
    (check,) = cand.checks
    assert (check.text, check.result, check.values) == ("cart.properties.price >= 20", False, (("cart.properties.price", 12),))
    assert "cart.properties.price >= 20 is false (cart.properties.price is 12)" in got.summary


def test_an_absence_waits_until_its_window_ends_then_fires() -> None:
    events = [ev("AddToCart", 0, price=25)]
    waiting = why_not(rule("abandoned cart"), events, now_ms=at(10))
    assert waiting.verdict == "waiting" and waiting.stopped_at == 1
    assert waiting.attempts[0].due_ms == at(30)
    assert waiting.triggers == ()
    # the live engine decides once its grace (plus reorder buffer) has passed the deadline
    still = why_not(rule("abandoned cart"), events, now_ms=at(40), wait_ms=15_000)
    assert still.verdict == "waiting"
    fired = why_not(rule("abandoned cart"), events, now_ms=at(46), wait_ms=15_000)
    assert fired.verdict == "fired"
    assert fired.triggers == ((at(30), (events[0]["messageId"],)),)
    assert [s.state for s in fired.steps] == ["matched", "passed"]


def test_a_checkout_in_the_window_cancels_and_one_after_it_does_not() -> None:
    cart = ev("AddToCart", 0, price=25)
    cancelled = why_not(rule("abandoned cart"), [cart, ev("Checkout", 10)], now_ms=at(600))
    assert cancelled.verdict == "cancelled" and cancelled.stopped_at == 1
    assert "10 s after the step before" in cancelled.summary
    late = why_not(rule("abandoned cart"), [cart, ev("Checkout", 45)], now_ms=at(600))
    assert late.verdict == "fired"


def test_the_cooldown_is_named_with_the_earlier_trigger() -> None:
    events = [ev("AddToCart", 0, price=25), ev("AddToCart", 100, price=30)]
    got = why_not(rule("abandoned cart"), events, now_ms=at(600))
    assert [a.outcome for a in got.attempts] == ["suppressed", "fired"]
    assert "at most once per day" in got.summary
    assert len(got.triggers) == 1


def test_a_later_step_false_shows_both_events_values() -> None:
    events = [ev("AddToCart", 0, price=25), ev("Checkout", 10, total=20)]
    got = why_not(rule("upsell"), events, now_ms=at(7200))
    assert got.verdict == "stopped" and got.stopped_at == 1
    (check,) = got.steps[1].candidates[0].checks
    assert check.values == (("c.properties.total", 20), ("cart.properties.price", 25))
    assert check.result is False


def test_a_missing_field_is_unknown_and_an_event_outside_the_window_is_named() -> None:
    missing = why_not(rule("upsell"), [ev("AddToCart", 0, price=25), ev("Checkout", 10)], now_ms=at(7200))
    assert "is unknown (c.properties.total is missing" in missing.summary
    outside = why_not(rule("upsell"), [ev("AddToCart", 0, price=25), ev("Checkout", 4000, total=99)], now_ms=at(7200))
    assert outside.verdict == "stopped"
    assert "outside the window" in outside.summary
    nothing = why_not(rule("upsell"), [ev("AddToCart", 0, price=25)], now_ms=at(7200))
    assert "event missing: no Checkout event within 1 hour" in nothing.summary


def test_the_latest_start_replaces_an_older_one() -> None:
    events = [ev("AddToCart", 0, price=25), ev("AddToCart", 5, price=25), ev("Checkout", 10, total=30)]
    got = why_not(rule("upsell"), events, now_ms=at(7200))
    assert [a.outcome for a in got.attempts] == ["fired", "replaced"]


def test_a_count_step_says_how_many_it_saw() -> None:
    events = [ev("PageView", i * 60, category="shoes") for i in range(2)] + [ev("PageView", 130, category="hats")]
    got = why_not(rule("shoe fan"), events, now_ms=at(7200))
    assert got.verdict == "never started"
    assert "2 PageView events matched the condition, never 3 within 10 minutes" in got.summary


def test_a_not_names_the_test_that_held() -> None:
    got = why_not(rule("not vip"), [ev("Login", 0, vip=True)], now_ms=at(10))
    (check,) = got.steps[0].candidates[0].checks
    assert check.text == "not properties.vip == true" and check.result is True


def test_no_events_and_events_the_rule_cannot_use() -> None:
    assert why_not(rule("upsell"), []).verdict == "no events"
    broken = {"type": "track", "event": "AddToCart", "anonymousId": "u1", "timestamp": "not a time", "messageId": "x"}
    got = why_not(rule("upsell"), [broken])
    assert got.verdict == "no events" and got.ignored == {"no usable timestamp": 1}


# Every trigger the engine writes is explained by an attempt that fired, and every attempt the trace calls
# fired is one of them: the trace follows the engine's semantics on generated streams of one key.

SHAPES = ["abandoned cart", "upsell", "chain", "shoe fan", "two B", "C then A"]


def _stream(rng: random.Random) -> list[dict[str, Any]]:
    t, events = 0.0, []
    for _ in range(rng.randint(1, 14)):
        t += rng.choice([0, 1, 5, 20, 40, 90])
        name = rng.choice(["AddToCart", "Checkout", "A", "B", "C", "PageView"])
        events.append(ev(name, t, price=rng.choice([10, 25]), total=rng.choice([5, 30]), category=rng.choice(["shoes", "hats"])))
    return events


@pytest.mark.parametrize("seed", range(int(__import__("os").environ.get("WN_SEEDS", "150"))))
def test_fired_attempts_are_exactly_the_engines_triggers(seed: int) -> None:
    rng = random.Random(seed)
    events = _stream(rng)
    for name in SHAPES:
        got = why_not(rule(name), events, now_ms=at(10_000))
        fired = sorted(a.fired_at_ms for a in got.attempts if a.outcome == "fired")
        assert fired == sorted(f for f, _ in got.triggers), (name, [a.reason for a in got.attempts], events)
        # a complete attempt the engine did not fire would be a trace that disagrees with the engine
        assert "not fired" not in [a.outcome for a in got.attempts], (name, [(a.outcome, a.reason) for a in got.attempts])
