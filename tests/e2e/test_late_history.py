"""Issue 20 case 3: history sent through the live path gives the backtest's webhooks, minus what is too old.

A generated clickstream (tests/e2e/clickstream.py: about 31,000 events, 600 visitors) of
the last 20 hours, plus 4 hours of it older than [rules] max_lateness (24 h), is sent to
`tripwire run` (default [rules]) in time order, in batches of 500, each as soon as the
previous one is acknowledged. The webhooks must be exactly `tripwire rules backtest --out`
on the events younger than max lateness: same ids, rules, keys, fired_at, matched events
and payloads. The older part is refused from matching, visibly: counted per source on
/metrics and in `tripwire rules status`, and logged.

The history ends with visits at least 3 h ago and one page view an hour ago, after every
rule's window and cooldown (1 h at most) has closed: the backtest has nothing pending at
its end, so its triggers are all the triggers there are.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.clickstream import clickstream, iso
from tests.e2e.late import SOURCE, WRITE_KEY, counter, late_stack

H = 3_600_000

RULES = """# Shapes of rules/LANGUAGE.md, on the clickstream's events.
rule "big order"
  when "Order Completed" where properties.total >= 100
  post crm with { total: properties.total, order: properties.order_id }

rule "abandoned cart"
  when "Product Added" as cart where cart.properties.price >= 20
  then no "Checkout Started" within 30m
  at most once per 1h
  post crm with { sku: cart.properties.sku, value: cart.properties.price }

rule "viewed then added"
  when "Product Viewed" as v where v.properties.price >= 99
  then "Product Added" where properties.sku == v.properties.sku within 10m
  post crm with { sku: v.properties.sku }

rule "browsing"
  when 7 "Product Viewed" within 5m
  at most once per 1h
  post crm

rule "checkout without order"
  when "Checkout Started" as c
  then no "Order Completed" within 15m
  post crm with { total: c.properties.total }
"""


def _history(now_ms: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(older than max lateness, younger), each in time order."""
    rng = random.Random(31106)
    users = [f"visitor-{i:03d}" for i in range(600)]
    old = clickstream(rng, users, now_ms - 30 * H, now_ms - 26 * H, 370)
    young = clickstream(rng, users, now_ms - 20 * H, now_ms - 3 * H, 3330)
    young.append({"type": "page", "name": "/", "anonymousId": "monitor", "messageId": "monitor-1",
                  "timestamp": iso(now_ms - H), "properties": {"path": "/"}})
    return old, young


def _record(t: dict[str, Any]) -> tuple[str, str, str, tuple[str, ...], str]:
    """What a trigger says: a webhook's data carries the matched envelopes, backtest --out their messageIds."""
    ids = tuple(e["messageId"] if isinstance(e, dict) else e for e in t["events"])
    return t["rule"], t["key"], t["fired_at"], ids, json.dumps(t["payload"], sort_keys=True)


def test_history_sent_live_gives_the_backtests_webhooks_and_refuses_what_is_too_old_visibly(tmp_path: Path) -> None:
    """It failed before (the issue: 1,025 webhooks where the backtest gave 1,399, and nothing said so;
    this test on the main before late events were matched: 0 of 2,023, all 31,130 events counted late
    and none refused visibly): once the engine had read the log, it did not match events older than
    the wall clock minus 5 s, so history sent live was ignored, older than a day or not."""
    started = time.monotonic()
    with late_stack(tmp_path, RULES) as stack:
        old, young = _history(int(time.time() * 1000))
        events = old + young
        visitors = {e["anonymousId"] for e in events} - {"monitor"}
        assert 30_000 <= len(events) <= 32_000 and len(visitors) > 550, (len(events), len(visitors))

        def backtest(name: str, part: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, tuple[Any, ...]]]:
            src, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}-triggers.jsonl"
            src.write_text("".join(json.dumps({**e, "source": SOURCE}) + "\n" for e in part))
            report = json.loads(stack.cli("rules", "backtest", str(stack.config.parent / "rules"), "--events", str(src),
                                          "--out", str(out), "--json", "--no-progress"))
            return report, {t["id"]: _record(t) for t in map(json.loads, out.read_text().splitlines())}

        report, expected = backtest("young", young)
        assert report["pending_at_end"] == 0  # every trigger of this history has fired by its end
        by_rule = {name: r["triggers"] for name, r in report["rules"].items()}
        assert all(by_rule.values()), by_rule

        send_start = time.monotonic()
        with httpx.Client(base_url=stack.url, auth=(WRITE_KEY, ""), timeout=60) as client:
            for i in range(0, len(events), 500):
                stack.post(events[i:i + 500], client)
        send_s = time.monotonic() - send_start

        got = stack.wait_delivered(len(expected), 300)
        status = stack.settled(len(events), by_rule, 120)
        got = stack.wait_delivered(len(expected), 30)
        live = {d["webhook_id"]: _record(d["body"]["data"]) for d in got}
        assert len(got) == len(live)  # none twice
        assert live == expected

        # The older part is refused, and says so: per source on /metrics, in `rules status`, in the log.
        assert counter(stack.metrics(), "tripwire_rules_too_late_events_total", source=SOURCE) == len(old)
        assert status["too_late"][SOURCE]["events"] == len(old)
        assert status["too_late"][SOURCE]["oldest_ms"] >= 29 * H
        assert status["events"]["too_late"] == len(old) and status["events"]["read"] == len(events)
        assert status["events"]["late"] == len(young)  # all behind the watermark, all matched
        text = stack.cli("rules", "status", "--collector", stack.url)
        assert f"{len(old):,} older than max lateness (not matched)" in text
        assert any(line.startswith(SOURCE) and f"{len(old):,}" in line for line in text.splitlines()), text
        # logged once per source and hour, with the count so far
        assert re.search(rf"source {SOURCE}: \d+ event\(s\) delivered later than \[rules\] max_lateness", stack.run.output())

        # What was refused is exactly what the old part would have fired.
        _, everything = backtest("all", events)
        refused = {i: t for i, t in everything.items() if i not in live}
        old_ids = {e["messageId"] for e in old}
        assert refused and set(live) <= set(everything)
        assert all(set(t[3]) <= old_ids for t in refused.values())
    print(f"history case: {len(events):,} events ({len(old):,} older than max lateness), sent in {send_s:.1f} s "
          f"({len(events) / send_s:,.0f} events/s); {len(live):,} webhooks = backtest {by_rule}; "
          f"{len(refused):,} triggers of the old part refused; wall time {time.monotonic() - started:.1f} s")
