"""Matching semantics, operator by operator (the cases LANGUAGE.md promises)."""

from __future__ import annotations

from tripwire.rules.engine import Engine

from .util import T0, ev, feed, ids, plan_of, run

ABANDONED = """
rule "abandoned cart"
  when AddToCart as cart
  then no Checkout within 30s
  post crm with { sku: cart.properties.sku }
"""


# sequences -------------------------------------------------------------------

def test_sequence_fires_on_second_step_with_other_events_between() -> None:
    text = 'rule "s" when A then B within 10s post crm'
    got = run(text, [ev("A", 0, mid="a"), ev("X", 1), ev("B", 5, mid="b")])
    assert ids(got) == [["a", "b"]]
    assert got[0].fired_at_ms == T0 + 5000


def test_sequence_outside_its_window_does_not_fire() -> None:
    text = 'rule "s" when A then B within 10s post crm'
    assert run(text, [ev("A", 0), ev("B", 10.001)]) == []
    assert len(run(text, [ev("A", 0), ev("B", 10)])) == 1  # the bound is inclusive


def test_chain_of_three_steps_each_bounded_from_the_previous() -> None:
    text = 'rule "s" when A then B within 10s then C within 10s post crm'
    assert ids(run(text, [ev("A", 0, mid="a"), ev("B", 8, mid="b"), ev("C", 17, mid="c")])) == [["a", "b", "c"]]
    assert run(text, [ev("A", 0), ev("C", 5), ev("B", 8)]) == []  # order matters


def test_latest_start_wins_and_a_match_is_consumed() -> None:
    text = 'rule "s" when A then B within 10s post crm'
    got = run(text, [ev("A", 0, mid="a1"), ev("A", 1, mid="a2"), ev("B", 2, mid="b1"), ev("B", 3, mid="b2")])
    assert ids(got) == [["a2", "b1"]]


def test_step_reference_to_an_earlier_event() -> None:
    text = """rule "s" when AddToCart as cart then Checkout as c
      where c.properties.total > cart.properties.price within 1h post crm"""
    got = run(text, [ev("AddToCart", 0, mid="a", price=20), ev("Checkout", 1, total=10), ev("Checkout", 2, mid="c", total=25)])
    assert ids(got) == [["a", "c"]]


def test_same_event_name_in_two_steps() -> None:
    text = 'rule "twice" when Search then Search within 1m post crm'
    got = run(text, [ev("Search", 0, mid="s1"), ev("Search", 1, mid="s2"), ev("Search", 2, mid="s3")])
    # s2 completes (s1, s2) and also starts a new run, which s3 completes.
    assert ids(got) == [["s1", "s2"], ["s2", "s3"]]


# absence ---------------------------------------------------------------------

def test_absence_fires_when_the_watermark_passes_the_deadline() -> None:
    engine = Engine(plan_of(ABANDONED), 0)
    assert feed(engine, [ev("AddToCart", 0, mid="a", sku="X1")]) == []
    assert engine.advance_watermark(0, T0 + 30_000) == []  # at the deadline a Checkout could still come
    got = engine.advance_watermark(0, T0 + 30_001)
    assert ids(got) == [["a"]]
    assert got[0].fired_at_ms == T0 + 30_000
    assert got[0].payload == {"sku": "X1"}
    assert engine.pending() == 0


def test_absence_cancelled_by_the_event() -> None:
    assert run(ABANDONED, [ev("AddToCart", 0), ev("Checkout", 29)], until_s=100) == []


def test_three_add_to_carts_then_silence_fire_once_timer_restarts_at_the_latest() -> None:
    got = run(ABANDONED, [ev("AddToCart", 0, mid="a1"), ev("AddToCart", 10, mid="a2"), ev("AddToCart", 20, mid="a3")], until_s=49)
    assert got == []  # 30 s after the first and second AddToCart: nothing yet
    got = run(ABANDONED, [ev("AddToCart", 0, mid="a1"), ev("AddToCart", 10, mid="a2"), ev("AddToCart", 20, mid="a3")], until_s=51)
    assert ids(got) == [["a3"]]
    assert got[0].fired_at_ms == T0 + 50_000


def test_checkout_between_two_add_to_carts() -> None:
    events = [ev("AddToCart", 0, mid="a1"), ev("Checkout", 5), ev("AddToCart", 10, mid="a2")]
    got = run(ABANDONED, events, until_s=60)
    assert ids(got) == [["a2"]]  # the first cart was checked out; the second was abandoned


def test_absence_fires_through_a_later_event_of_the_same_key() -> None:
    # The deadline passes in event time because a later event moved the watermark.
    got = run(ABANDONED, [ev("AddToCart", 0, mid="a1"), ev("AddToCart", 40, mid="a2")])
    assert ids(got) == [["a1"]]


def test_absence_with_a_condition_referencing_the_cart() -> None:
    text = """rule "r" when AddToCart as cart then no Checkout where properties.cart == cart.properties.cart within 30s post crm"""
    events = [ev("AddToCart", 0, mid="a", cart="c1"), ev("Checkout", 5, cart="other")]
    assert ids(run(text, events, until_s=40)) == [["a"]]
    events = [ev("AddToCart", 0, mid="a", cart="c1"), ev("Checkout", 5, cart="c1")]
    assert run(text, events, until_s=40) == []


def test_sequence_then_absence() -> None:
    text = 'rule "r" when A then B within 10s then no C within 10s post crm'
    assert ids(run(text, [ev("A", 0, mid="a"), ev("B", 5, mid="b")], until_s=16)) == [["a", "b"]]
    assert run(text, [ev("A", 0), ev("B", 5), ev("C", 14)], until_s=30) == []


# counts ----------------------------------------------------------------------

SHOES = 'rule "shoe fan" when 3 PageView where properties.category == "shoes" within 10m post crm'


def test_count_at_least_n_in_a_sliding_window() -> None:
    events = [ev("PageView", 0, category="shoes"), ev("PageView", 300, category="shoes"),
              ev("PageView", 301, category="hats"), ev("PageView", 599, category="shoes", mid="p3")]
    got = run(SHOES, events)
    assert len(got) == 1 and got[0].message_ids[-1] == "p3"
    assert got[0].fired_at_ms == T0 + 599_000


def test_count_window_slides() -> None:
    events = [ev("PageView", 0, category="shoes", mid="p1"), ev("PageView", 500, category="shoes", mid="p2"),
              ev("PageView", 700, category="shoes", mid="p3"), ev("PageView", 800, category="shoes", mid="p4")]
    assert ids(run(SHOES, events)) == [["p2", "p3", "p4"]]  # p1 fell out of the 10 minutes


def test_overlapping_count_windows_do_not_reuse_events() -> None:
    events = [ev("PageView", i, category="shoes", mid=f"p{i}") for i in range(7)]
    assert ids(run(SHOES, events)) == [["p0", "p1", "p2"], ["p3", "p4", "p5"]]


def test_count_in_a_then_step() -> None:
    text = 'rule "r" when Signup then 2 Login within 1d post crm'
    got = run(text, [ev("Login", 0), ev("Signup", 1, mid="s"), ev("Login", 2, mid="l1"), ev("Login", 3, mid="l2")])
    assert ids(got) == [["s", "l1", "l2"]]


# cooldown --------------------------------------------------------------------

def test_cooldown_suppresses_complete_matches_within_the_period() -> None:
    text = 'rule "r" when A at most once per 1h post crm'
    engine = Engine(plan_of(text), 0)
    got = feed(engine, [ev("A", 0, mid="a1"), ev("A", 60, mid="a2"), ev("A", 3600, mid="a3")])
    assert ids(got) == [["a1"], ["a3"]]
    assert engine.stats.suppressed == 1


def test_a_cooldown_period_excludes_its_end() -> None:
    # `at most once per 5m`: any 5 minutes hold one trigger, counted as [t, t + 5m); so a match
    # exactly 5 minutes after a trigger fires, one a millisecond earlier is suppressed.
    text = 'rule "r" when A at most once per 5m post crm'
    got = run(text, [ev("A", 0, mid="a1"), ev("A", 299.999, mid="a2"), ev("A", 300, mid="a3"), ev("A", 600, mid="a4")])
    assert ids(got) == [["a1"], ["a3"], ["a4"]]
    absence = ABANDONED.replace("post crm", "at most once per 5m\n  post crm")
    events = [ev("AddToCart", 0, mid="c1"), ev("AddToCart", 40, mid="c2"), ev("AddToCart", 300, mid="c3")]
    engine = Engine(plan_of(absence), 0)
    got = feed(engine, events, until_s=1000)  # absences fire at 30s, 70s (suppressed) and 330s: 300s after
    assert ids(got) == [["c1"], ["c3"]] and engine.stats.suppressed == 1


def test_cooldown_n_times() -> None:
    text = 'rule "r" when A at most 2 times per 1h post crm'
    got = run(text, [ev("A", i) for i in range(5)])
    assert len(got) == 2


def test_cooldown_applies_per_key() -> None:
    text = 'rule "r" when A at most once per 1h post crm'
    got = run(text, [ev("A", 0, key="k1"), ev("A", 1, key="k2"), ev("A", 2, key="k1")])
    assert sorted(m.key for m in got) == ["k1", "k2"]


def test_cooldown_consumes_a_suppressed_absence_match() -> None:
    text = ABANDONED.replace("post crm", "at most once per 1d\n  post crm")
    events = [ev("AddToCart", 0, mid="a1"), ev("AddToCart", 100, mid="a2"), ev("AddToCart", 200, mid="a3")]
    engine = Engine(plan_of(text), 0)
    got = feed(engine, events, until_s=1000)
    assert ids(got) == [["a1"]]
    assert engine.stats.suppressed == 2
    assert engine.pending() == 1  # only the cooldown memory remains
    assert engine.advance_watermark(0, T0 + 86_400_000 + 30_001) == []
    assert engine.pending() == 0


# keys, predicates, time -------------------------------------------------------

def test_keys_are_independent() -> None:
    text = 'rule "s" when A then B within 10s post crm'
    assert run(text, [ev("A", 0, key="k1"), ev("B", 1, key="k2")]) == []


def test_predicates() -> None:
    cases = [
        ('properties.plan in ["pro", "team"]', {"plan": "pro"}, True),
        ('properties.plan not in ["pro", "team"]', {"plan": "free"}, True),
        ('properties.url contains "/shoes/"', {"url": "/c/shoes/42"}, True),
        ('properties.url starts with "/c"', {"url": "/c/shoes/42"}, True),
        ('properties.url ends with "42"', {"url": "/c/shoes/42"}, True),
        ('properties.tags contains "vip"', {"tags": ["a", "vip"]}, True),
        ('properties.coupon exists', {"coupon": "X"}, True),
        ('properties.coupon does not exist', {}, True),
        ('properties.a > 1 and (properties.b == "x" or not properties.c == 1)', {"a": 2, "b": "y", "c": 2}, True),
        ('properties.n == 1', {"n": True}, False),  # booleans are not numbers
        ('properties.n < "5"', {"n": 3}, False),  # mixed types never order
        ('properties.n >= 2.5', {"n": 3}, True),
        ('properties.missing == 1', {}, False),
        ('properties.missing != 1', {}, False),
        ('not properties.missing == 1', {}, False),  # unknown stays unknown under not
        ('properties.missing == 1 or properties.a == 1', {"a": 1}, True),
        ('properties.deep.er.path == 1', {"deep": 5}, False),
        ('userId == "u"', {}, False),
    ]
    for cond, props, expected in cases:
        text = f'rule "p" when A where {cond} post crm'
        assert (len(run(text, [ev("A", 0, **props)])) == 1) is expected, cond


def test_null_counts_as_missing_in_every_comparison() -> None:
    # Two events with `sku: null` were "equal", and `!=`, `not in` and `not` held for a null field,
    # while `exists` treats null as absent and LANGUAGE.md says missing fields never match.
    cases = [
        ('properties.n == null', {"n": None}, False),
        ('properties.n != null', {"n": 1}, False),  # a comparison with null is never true
        ('properties.n != "a"', {"n": None}, False),
        ('properties.n != 1', {"n": None}, False),
        ('not properties.n == "a"', {"n": None}, False),
        ('not properties.n < 5', {"n": None}, False),
        ('not (properties.n contains "a")', {"n": None}, False),
        ('not (properties.n starts with "a")', {"n": None}, False),
        ('properties.n not in ["a", 1]', {"n": None}, False),
        ('properties.n in ["a", null]', {"n": None}, False),
        ('not (properties.n in ["a"])', {"n": None}, False),
        ('properties.n not in ["a", null]', {"n": "b"}, True),  # a null in the list is never equal
        ('properties.tags contains "a"', {"tags": [None, "a"]}, True),  # null elements of a list are values
        ('properties.n == null or properties.a == 1', {"n": None, "a": 1}, True),
        ('properties.n does not exist', {"n": None}, True),
        ('properties.a == properties.n', {"a": None, "n": None}, False),
        ('not (properties.a != properties.n)', {"a": None, "n": None}, False),
    ]
    for cond, props, expected in cases:
        text = f'rule "p" when A where {cond} post crm'
        assert (len(run(text, [ev("A", 0, **props)])) == 1) is expected, cond
    text = """rule "same sku" when AddToCart as cart
      then Checkout where properties.sku == cart.properties.sku within 1m post crm"""
    assert run(text, [ev("AddToCart", 0, sku=None), ev("Checkout", 1, sku=None)]) == []
    assert run(text, [ev("AddToCart", 0), ev("Checkout", 1)]) == []
    assert len(run(text, [ev("AddToCart", 0, sku="s1"), ev("Checkout", 1, sku="s1")])) == 1


def test_explain_says_null_counts_as_missing() -> None:
    from tripwire.rules.explain import explain

    text = """rule "same sku" when AddToCart as cart
      then Checkout where properties.sku == cart.properties.sku within 1m post crm"""
    said = explain(plan_of(text).rules[0])
    assert "A comparison with a missing or null field is never true" in said
    assert "two null fields are not equal" in said
    assert "null" not in explain(plan_of('rule "r" when A post crm').rules[0])


def test_nested_context_and_top_level_fields() -> None:
    text = 'rule "p" when $page where context.page.path starts with "/cart" and userId == "u1" post crm'
    env = ev("$page", 0)
    env["context"] = {"page": {"path": "/cart/3"}}
    env["userId"] = "u1"
    assert len(run(text, [env])) == 1


def test_by_anonymous_id_skips_events_without_one() -> None:
    text = 'rule "p" when A by anonymousId post crm'
    env = ev("A", 0)
    del env["anonymousId"]
    env["userId"] = "u"
    assert run(text, [env]) == []


def test_late_events_are_counted_and_still_matched() -> None:
    engine = Engine(plan_of('rule "s" when A then B within 1h post crm'), 5000)
    got = feed(engine, [ev("A", 100, mid="a"), ev("X", 200), ev("B", 150, mid="b")])  # B is 50 s behind the watermark
    assert ids(got) == [["a", "b"]] and engine.stats.late == 1
    got = feed(engine, [ev("A", 300), ev("B", 296)])  # 4 s out of order: within lateness, but before A
    assert got == [] and engine.stats.late == 1


def test_events_older_than_max_lateness_are_refused_and_counted_per_source() -> None:
    engine = Engine(plan_of('rule "r" when A post crm'), 5000, max_lateness_ms=3_600_000)
    old = ev("A", 0)
    old["source"] = "backend"
    got = feed(engine, [ev("X", 7200), old, ev("A", 3600)])  # 2 h and 1 h behind the newest event
    assert len(got) == 1 and engine.stats.too_late == 1
    assert engine.too_late_by_source == {"backend": 1} and engine.too_late_age["backend"] == 7_200_000


def test_out_of_order_within_lateness_still_matches() -> None:
    engine = Engine(plan_of('rule "s" when A then B within 1h post crm'), 5000)
    got = feed(engine, [ev("A", 100, mid="a"), ev("X", 104), ev("B", 101, mid="b")])
    assert ids(got) == [["a", "b"]]


def test_duplicate_message_id_never_makes_a_second_trigger() -> None:
    engine = Engine(plan_of('rule "r" when A post crm'), 0)
    got = feed(engine, [ev("A", 0, mid="same"), ev("A", 1, mid="same")])
    assert len(got) == 1 and engine.stats.duplicates == 1
    engine = Engine(plan_of(SHOES), 0)
    got = feed(engine, [ev("PageView", i, category="shoes", mid="same" if i < 3 else None) for i in range(4)])
    assert got == []  # three copies of one page view are one page view


def test_state_expires_with_the_window() -> None:
    engine = Engine(plan_of('rule "s" when A then B within 10s post crm'), 0)
    feed(engine, [ev("A", i / 100, key=f"k{i}") for i in range(100)])
    assert engine.pending() == 100
    engine.advance_watermark(0, T0 + 200_000)
    assert engine.pending() == 0
    engine.advance_watermark(0, T0 + 1_000_000)  # past the recent span (at least 5 min): ids move to the long memory
    assert engine.partitions[0].seen == {} and len(engine.partitions[0].old) == 100


def test_an_at_most_cap_does_not_keep_ids_exactly() -> None:
    # Exact ids (about a hundred bytes each) are kept only while a partial match may read them: the
    # rule's windows. A cap remembers fire times, not events, so "at most once per 1h" must not
    # hold an hour of traffic's ids in memory (the long memory keeps their 8-byte hashes).
    engine = Engine(plan_of('rule "s" when A then no B within 10s at most once per 1h post crm'), 0)
    got = feed(engine, [ev("A", i / 100, key=f"k{i}") for i in range(100)], until_s=30)
    assert len(got) == 100
    engine.advance_watermark(0, T0 + 1_000_000)  # past the windows and the recent span's 5-minute floor
    assert engine.partitions[0].seen == {} and len(engine.partitions[0].old) == 100
    late = feed(engine, [ev("A", 40, key="k1"), ev("A", 40.5, key="k2")], until_s=2000)
    assert late == [] and engine.stats.suppressed == 2  # still capped: the cap reads fire times


def test_count_state_out_of_order_capped_and_expired() -> None:
    # A one-step count keeps its counted events (a list) until it fires under a cap; an event
    # counted out of order (within the lateness) still counts, and everything expires with the window.
    text = 'rule "fan" when 3 P within 10s at most once per 1m post crm'
    engine = Engine(plan_of(text), 5000, track_dirty=True)
    got = feed(engine, [ev("P", 10, mid="p10"), ev("P", 12, mid="p12"), ev("P", 9, mid="p9"),  # p9: out of order
                        ev("P", 13, mid="p13"), ev("P", 14, mid="p14"), ev("P", 15, mid="p15")])
    assert ids(got) == [["p9", "p10", "p12"]] and engine.stats.suppressed == 1  # p13-p15: within the cap
    restored = Engine(plan_of(text), 5000)
    restored.restore_partition(0, engine.snapshot_partition(0))
    for e in (engine, restored):
        assert e.pending() == 1
        got = feed(e, [ev("P", 70, mid="q1"), ev("P", 71, mid="q2"), ev("P", 72, mid="q3")])
        assert ids(got) == [["q1", "q2", "q3"]]
        e.advance_watermark(0, T0 + 200_000)
        assert e.pending() == 0 and e.next_wake_ms() is None
    uncapped = Engine(plan_of('rule "fan" when 2 P within 10s post crm'), 0)
    got = feed(uncapped, [ev("P", 0, mid="a"), ev("P", 20, mid="b"), ev("P", 25, mid="c"), ev("P", 26, mid="d")])
    assert ids(got) == [["b", "c"]] and uncapped.pending() == 1  # "a" left the window, "d" waits
    assert uncapped.next_wake_ms() == T0 + 36_001  # d leaves the window (b's registration moved there)
    uncapped.advance_watermark(0, T0 + 36_001)
    assert uncapped.pending() == 0 and uncapped.next_wake_ms() is None


def test_at_max_pending_new_partial_matches_do_not_start_and_are_counted() -> None:
    engine = Engine(plan_of('rule "cart" when A then B within 1d post crm'), 0, max_pending=3)
    starts = [ev("A", 60 * i, key=f"k{i}") for i in range(6)]
    assert feed(engine, starts) == []
    assert engine.stats.refused == 3 and engine.refused_by_rule == {"cart": 3}
    done = feed(engine, [ev("B", 600, key="k0"), ev("B", 601, key="k5")])
    assert [m.key for m in done] == ["k0"]  # a held state completes; a refused one never started
    # Room again once a state is gone (looked at on the partition's next sweep): the next start is held
    assert feed(engine, [ev("A", 6 * 3600, key="k6"), ev("B", 6 * 3600 + 60, key="k6")])[0].key == "k6"
