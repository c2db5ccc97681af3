"""Late events: the live engine, fed events up to the grace late, fires what a backtest fires.

The live engine sees events in *arrival* order: each key's events keep their own order,
but every event is delayed by a random 0-30 s against the others and against the wall
clock, which moves the watermark when the engine is idle (as the service does once it
has read the whole log). The backtest reads the same events in event-time order. Both
must give the same triggers: rule, key, fired_at and the matched messageIds (so the same
trigger ids).
"""

from __future__ import annotations

import random
import zlib
from typing import Any

import pytest

from tripwire.rules.engine import Engine, Match

from tripwire.envelope import format_time_ms

from .util import T0, ev, feed, ids, plan_of

RULES = """
rule "each A" when A post crm
rule "A then B" when A then B within 30s post crm
rule "abandoned" when A as a then no B where properties.x == a.properties.x within 20s post crm
rule "three P" when 3 P within 1m post crm
rule "chain" when A then B within 1m then no C within 30s post crm
rule "capped" when A then no B within 10s at most once per 2m post crm
rule "x matches" when A as a then B where properties.x == a.properties.x within 1m post crm
rule "then two P" when A then 2 P within 1m post crm
rule "P then A" when 2 P within 30s then A within 40s post crm
"""
GRACE_MS = 30_000
LATENESS_MS = 5_000


def _history(rng: random.Random, keys: int, span_s: int) -> list[dict[str, Any]]:
    events = []
    for k in range(keys):
        t = rng.uniform(0, 60)
        while t < span_s:
            name = rng.choices("ABCPX", weights=[4, 3, 1, 4, 1])[0]
            events.append(ev(name, round(t, 3), key=f"k{k}", mid=f"k{k}-{len(events)}", x=rng.randrange(3)))
            t += rng.expovariate(1 / 12)
    return events


def _arrivals(rng: random.Random, events: list[dict[str, Any]], max_delay_s: float) -> list[tuple[float, dict[str, Any]]]:
    """Arrival time of each event: its time plus 0-max_delay, no earlier than its key's previous one."""
    last: dict[str, float] = {}
    out = []
    for env in sorted(events, key=lambda e: e["timestamp"]):
        t = _seconds(env)
        arrive = max(t + rng.uniform(0, max_delay_s), last.get(env["anonymousId"], 0.0))
        last[env["anonymousId"]] = arrive
        out.append((arrive, env))
    out.sort(key=lambda a: a[0])  # a stable sort: equal arrivals of one key keep their order
    return out


def _seconds(env: dict[str, Any]) -> float:
    from tripwire.rules.engine import parse_event_time

    t = parse_event_time(env)
    assert t is not None
    return (t - T0) / 1000


def _partition(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode()) % partitions


def _triggers(matches: list[Match]) -> list[tuple[str, str, int, tuple[str, ...]]]:
    return sorted((m.rule.name, m.key, m.fired_at_ms, tuple(m.message_ids)) for m in matches)


def _backtest(events: list[dict[str, Any]], end_ms: int) -> list[Match]:
    engine = Engine(plan_of(RULES), 0)
    got = feed(engine, sorted(events, key=lambda e: e["timestamp"]))
    return got + engine.advance_watermark(0, end_ms)


def _live(arrivals: list[tuple[float, dict[str, Any]]], partitions: int, end_ms: int,
          grace_ms: int = GRACE_MS) -> tuple[list[Match], Engine]:
    engine = Engine(plan_of(RULES), LATENESS_MS, grace_ms=grace_ms)
    got: list[Match] = []
    offsets = [0] * partitions
    for arrive, env in arrivals:
        now = T0 + int(arrive * 1000)
        got += engine.advance_wall(now, range(partitions))  # idle until this arrival: time passes
        p = _partition(env["anonymousId"], partitions)
        got += engine.process(p, offsets[p], env)
        offsets[p] += 1
    got += engine.advance_wall(end_ms + LATENESS_MS + grace_ms, range(partitions))
    return got, engine


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("partitions", [1, 3])
def test_events_up_to_the_grace_late_fire_what_a_backtest_fires(seed: int, partitions: int) -> None:
    rng = random.Random(seed)
    events = _history(rng, keys=40, span_s=600)
    end_ms = T0 + 700_000
    expected = _triggers(_backtest(events, end_ms))
    got, engine = _live(_arrivals(rng, events, max_delay_s=30), partitions, end_ms)
    assert len(expected) > 100 and {t[0] for t in expected} == {r.split('"')[1] for r in RULES.split("rule ")[1:]}
    assert engine.stats.late > 0  # the arrival order did put events behind the watermark
    assert _triggers(got) == expected


def test_without_the_grace_late_events_change_the_outcome() -> None:
    # The same stream with no grace: the comparison above can fail, so it tests something.
    rng = random.Random(1)
    events = _history(rng, keys=40, span_s=600)
    end_ms = T0 + 700_000
    got, _ = _live(_arrivals(rng, events, max_delay_s=30), 3, end_ms, grace_ms=0)
    assert _triggers(got) != _triggers(_backtest(events, end_ms))


def test_a_late_step_completes_and_a_late_cancel_cancels() -> None:
    # Issue 20, case 2 in the engine: a Buy 15 s late completes "Cart then Buy"; a Buy2 25 s late
    # still cancels "Cart2 then no Buy2 within 20s"; the wall clock moves meanwhile.
    text = ('rule "bought" when Cart then Buy within 1m post crm\n'
            'rule "abandoned" when Cart2 then no Buy2 within 20s post crm')
    engine = Engine(plan_of(text), LATENESS_MS, grace_ms=GRACE_MS)
    got = engine.process(0, 0, ev("Cart", 0, mid="c1")) + engine.process(0, 1, ev("Cart2", 0, mid="c2"))
    got += engine.advance_wall(T0 + 24_000)
    got += engine.process(0, 2, ev("Buy", 9, mid="b1"))  # arrives at 24 s: 15 s late
    got += engine.advance_wall(T0 + 35_000)
    got += engine.process(0, 3, ev("Buy2", 10, mid="b2"))  # arrives at 35 s: 25 s late
    got += engine.advance_wall(T0 + 600_000)
    assert ids(got) == [["c1", "b1"]] and engine.stats.late == 2


def test_a_cancel_after_its_absence_fired_is_counted() -> None:
    engine = Engine(plan_of('rule "abandoned" when Cart then no Buy within 20s post crm'), LATENESS_MS, grace_ms=GRACE_MS)
    got = engine.process(0, 0, ev("Cart", 0, mid="c1"))
    got += engine.advance_wall(T0 + 60_000)  # past the deadline, the grace and the lateness: it fires
    assert ids(got) == [["c1"]]
    assert engine.process(0, 1, ev("Buy", 15, mid="b1")) == []  # 45 s late: it would have cancelled
    assert engine.stats.late_cancels == 1 and engine.late_cancels_by_rule == {"abandoned": 1}
    assert engine.process(0, 2, ev("Buy", 21, mid="b2")) == [] and engine.stats.late_cancels == 1  # after the deadline


def test_a_late_start_waits_the_grace_after_it_was_read() -> None:
    # An offline device's queue: Cart at 0 s and its Buy at 10 s reach the engine 5 minutes later, in two
    # requests 20 s apart. The absence is not decided before the grace after the Cart was read.
    engine = Engine(plan_of('rule "abandoned" when Cart then no Buy within 30s post crm'), LATENESS_MS, grace_ms=GRACE_MS)
    assert engine.advance_wall(T0 + 300_000, [0]) == []  # the partition is idle, caught up
    assert engine.process(0, 0, ev("Cart", 0, mid="c1")) == []
    assert engine.advance_wall(T0 + 320_000) == []
    assert engine.process(0, 1, ev("Buy", 10, mid="b1")) == []
    assert engine.advance_wall(T0 + 900_000) == [] and engine.pending() == 0
    # without the Buy it fires, once the grace after reading the Cart has passed
    engine.process(0, 2, ev("Cart", 5, key="k2", mid="c2"))
    assert engine.advance_wall(T0 + 920_000) == []
    assert ids(engine.advance_wall(T0 + 936_000)) == [["c2"]]


def test_duplicates_are_per_source_and_key() -> None:
    engine = Engine(plan_of('rule "each" when A post crm'), 0)
    same = [ev("A", i, key=f"visitor{i % 3}", mid="same-mid-1") for i in range(6)]
    for i, env in enumerate(same):
        env["source"] = "web" if i < 3 else "server"
    got = feed(engine, same)
    assert len(got) == 6 and engine.stats.duplicates == 0  # six visitors or sources: six events
    retry = dict(same[4])
    assert feed(engine, [retry]) == [] and engine.stats.duplicates == 1  # a real retry is one


def test_a_retry_older_than_the_rules_horizon_is_still_a_duplicate() -> None:
    engine = Engine(plan_of('rule "each" when A post crm'), 0)
    first = ev("A", 0, mid="00000000-0000-4000-8000-0000000000aa")
    assert len(feed(engine, [first])) == 1
    engine.advance_watermark(0, T0 + 3_600_000)  # an hour later: the id left the recent span
    assert engine.partitions[0].seen == {} and len(engine.partitions[0].old) == 1
    assert feed(engine, [dict(first)]) == [] and engine.stats.duplicates == 1
    restored = Engine(plan_of('rule "each" when A post crm'), 0)
    restored.restore_partition(0, engine.snapshot_partition(0))
    assert feed(restored, [dict(first)]) == [] and restored.stats.duplicates == 1


def test_history_delivered_late_is_too_late_even_for_an_engine_that_follows_its_backlog() -> None:
    # A fresh engine reads a log whose first events are two days old. Events *delivered* two days late
    # (receivedAt now) are refused; a backlog the engine reads late (receivedAt at their time) is matched.
    now = T0 + 3 * 86_400_000
    engine = Engine(plan_of('rule "each" when A post crm'), LATENESS_MS, grace_ms=GRACE_MS, max_lateness_ms=86_400_000)
    engine.set_clock(now)
    imported, backlog = ev("A", 0, mid="imported"), ev("A", 1, key="k2", mid="backlog")
    imported.update(source="import", receivedAt=format_time_ms(now))
    backlog.update(source="web", receivedAt=format_time_ms(T0 + 1_500))
    assert ids(feed(engine, [imported, backlog])) == [["backlog"]]
    assert engine.too_late_by_source == {"import": 1} and engine.too_late_age["import"] == 3 * 86_400_000
