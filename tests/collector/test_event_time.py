"""Event time at the door: the age bound, historical sources, the delay histogram, time order per key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
from prometheus_client import REGISTRY

from tripwire.envelope import format_time_ms

from .conftest import SERVER_KEY, WRITE_KEY, MakeCollector, basic

REPO = Path(__file__).resolve().parents[2]
DAY_MS = 86_400_000


def ago(ms: int) -> str:
    return format_time_ms(int(time.time() * 1000) - ms)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_an_event_older_than_max_age_days_is_acknowledged_into_the_invalid_topic(make_collector: MakeCollector, tmp_path: Path) -> None:
    c = await make_collector({"data_dir": str(tmp_path / "data"), "sources": {"backend": {"write_key": SERVER_KEY}}})
    before = sample("tripwire_collector_events_invalid_total", reason="timestamp_too_old")
    batch = {"batch": [
        {"type": "track", "event": "Fresh", "userId": "u", "messageId": "fresh", "timestamp": ago(29 * DAY_MS)},
        {"type": "track", "event": "Old", "userId": "u", "messageId": "old", "timestamp": ago(31 * DAY_MS)},
        {"type": "track", "event": "Ancient", "userId": "u", "messageId": "ancient", "timestamp": "0001-01-01T00:00:00Z"},
        # A device whose clock is 40 days behind: sentAt corrects its time to about now.
        {"type": "track", "event": "Skewed", "userId": "u", "messageId": "skewed", "timestamp": ago(40 * DAY_MS),
         "sentAt": ago(40 * DAY_MS)},
    ]}
    r = await c.client.post("/v1/batch", json=batch, headers=basic(SERVER_KEY))
    assert r.status_code == 200 and r.json() == {"success": True}  # acknowledged: the SDK must not retry it
    assert sorted(e["messageId"] for e in await c.records()) == ["fresh", "skewed"]
    invalid = {rec["messageId"]: rec for rec in await c.invalid()}
    assert set(invalid) == {"old", "ancient"}
    old = invalid["old"]
    assert (old["reason"], old["field"], old["source"]) == ("timestamp_too_old", "timestamp", "backend")
    assert "collector.max_age_days=30" in old["message"] and "historical = true" in old["message"], old
    assert old["event"]["timestamp"] in old["message"] and old["event"]["event"] == "Old"
    assert sample("tripwire_collector_events_invalid_total", reason="timestamp_too_old") == before + 2

    # What an operator sees with `tripwire events tail --topic invalid`.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    env.update({"PYTHONPATH": str(REPO), "TRIPWIRE_DATA_DIR": str(tmp_path / "data")})
    done = subprocess.run([sys.executable, "-m", "tripwire", "events", "tail", "--topic", "invalid"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shown = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert sorted((s["messageId"], s["reason"]) for s in shown) == [("ancient", "timestamp_too_old"), ("old", "timestamp_too_old")]


async def test_a_historical_source_imports_history(make_collector: MakeCollector) -> None:
    c = await make_collector({"sources": {"web": {"write_key": WRITE_KEY},
                                          "import": {"write_key": SERVER_KEY, "historical": True}}})
    event = {"event": "Old", "userId": "u", "timestamp": "2019-06-01T10:00:00Z"}
    assert (await c.client.post("/v1/track", json={**event, "messageId": "imported"}, headers=basic(SERVER_KEY))).status_code == 200
    assert (await c.client.post("/v1/track", json={**event, "messageId": "live"}, headers=basic(WRITE_KEY))).status_code == 200
    assert [e["messageId"] for e in await c.records()] == ["imported"]
    assert [e["messageId"] for e in await c.invalid()] == ["live"]


async def test_max_age_days_is_configurable_and_0_lifts_the_bound(make_collector: MakeCollector) -> None:
    event = {"event": "E", "userId": "u", "timestamp": ago(2 * DAY_MS)}
    one_day = await make_collector({"collector": {"max_age_days": 1}})
    assert (await one_day.client.post("/v1/track", json=event)).status_code == 200
    assert [e["reason"] for e in await one_day.invalid()] == ["timestamp_too_old"]
    unbounded = await make_collector({"collector": {"max_age_days": 0}})
    assert (await unbounded.client.post("/v1/track", json={**event, "timestamp": "0001-01-01T00:00:00Z"})).status_code == 200
    assert len(await unbounded.records()) == 1 and await unbounded.invalid() == []


async def test_pii_is_hashed_in_a_too_old_event_too(make_collector: MakeCollector, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text('{"events": {"Signup": {"pii": ["email"]}}}')
    c = await make_collector({"collector": {"catalog": str(catalog), "pii_salt": "s"}})
    event = {"event": "Signup", "userId": "u", "timestamp": ago(60 * DAY_MS), "properties": {"email": "ann@example.com"}}
    assert (await c.client.post("/v1/track", json=event)).status_code == 200
    (record,) = await c.invalid()
    assert record["reason"] == "timestamp_too_old"
    assert record["event"]["properties"]["email"] != "ann@example.com" and len(record["event"]["properties"]["email"]) == 64


async def test_each_events_delivery_delay_is_observed_per_source(make_collector: MakeCollector) -> None:
    source = "delay-probe"  # a name no other test uses: the registry is process-wide
    c = await make_collector({"sources": {source: {"write_key": SERVER_KEY}}})
    name = "tripwire_collector_event_delay_seconds"

    def bucket(le: str) -> float:
        return sample(f"{name}_bucket", source=source, le=le)

    now = int(time.time() * 1000)
    batch = {"batch": [
        {"type": "track", "event": "E", "userId": "u", "timestamp": format_time_ms(now - 15_000)},  # an SDK's 10-30 s flush
        {"type": "track", "event": "E", "userId": "u", "timestamp": format_time_ms(now - 9000_000)},  # offline for 2.5 h
        {"type": "track", "event": "E", "userId": "u", "timestamp": format_time_ms(now - 40 * DAY_MS)},  # too old: still delayed
        {"type": "track", "event": "E", "userId": "u"},  # no timestamp: its time is receivedAt
        {"type": "track", "event": "E", "userId": "u", "timestamp": format_time_ms(now + 5_000)},  # clock ahead: 0, not negative
    ]}
    assert (await c.client.post("/v1/batch", json=batch, headers=basic(SERVER_KEY))).status_code == 200
    assert sample(f"{name}_count", source=source) == 5
    assert bucket("0.1") == 2  # the event without a timestamp, and the one from a clock ahead (0, not negative)
    assert bucket("10.0") == 2 and bucket("20.0") == 3  # the 15 s one, in (10, 20]
    assert bucket("3600.0") == 3 and bucket("10800.0") == 4  # 2.5 h: in (1 h, 3 h]
    assert bucket("86400.0") == 4 and bucket("+Inf") == 5
    total = sample(f"{name}_sum", source=source)
    assert 40 * 86400 + 9000 + 15 <= total < 40 * 86400 + 9000 + 15 + 60, total
    # A refused request observes nothing.
    assert (await c.client.post("/v1/batch", json={"batch": [{"type": "track", "userId": "u"}]},
                                headers=basic(SERVER_KEY))).status_code == 400
    assert sample(f"{name}_count", source=source) == 5


async def test_a_batch_whose_delays_share_a_bucket_is_counted_like_any_other(make_collector: MakeCollector) -> None:
    # The histogram takes a shortcut when a request's smallest and largest delay fall in one bucket.
    source = "delay-one-bucket"  # a name no other test uses: the registry is process-wide
    c = await make_collector({"sources": {source: {"write_key": SERVER_KEY}}})
    name = "tripwire_collector_event_delay_seconds"
    now = int(time.time() * 1000)

    def batch(*offsets_ms: int) -> dict[str, object]:
        return {"batch": [{"type": "track", "event": "E", "userId": "u", "timestamp": format_time_ms(now + off)}
                          for off in offsets_ms]}

    # An SDK's flush: every delay in (10 s, 20 s].
    assert (await c.client.post("/v1/batch", json=batch(-12_000, -15_000, -19_000), headers=basic(SERVER_KEY))).status_code == 200
    assert sample(f"{name}_count", source=source) == 3
    assert sample(f"{name}_bucket", source=source, le="10.0") == 0
    assert sample(f"{name}_bucket", source=source, le="20.0") == 3
    assert 46 <= sample(f"{name}_sum", source=source) < 46 + 30
    # A clock ahead: negative delays, all in the first bucket, and they add 0 (not a negative) to the sum.
    before = sample(f"{name}_sum", source=source)
    assert (await c.client.post("/v1/batch", json=batch(3_000, 4_000), headers=basic(SERVER_KEY))).status_code == 200
    assert sample(f"{name}_count", source=source) == 5
    assert sample(f"{name}_bucket", source=source, le="0.1") == 2
    assert sample(f"{name}_sum", source=source) == before


async def test_a_requests_events_are_appended_in_event_time_order_per_key(make_collector: MakeCollector) -> None:
    # An offline device's queue (or an SDK's batch) need not be in time order; the engine reads the log in order.
    c = await make_collector({})
    now = int(time.time() * 1000)

    def ev(mid: str, key: str, offset_s: int) -> dict[str, object]:
        return {"type": "track", "event": mid.rstrip("0123456789"), "anonymousId": key, "messageId": mid,
                "timestamp": format_time_ms(now - 600_000 + offset_s * 1000)}

    batch = {"batch": [
        ev("Checkout1", "device", 30), ev("AddToCart1", "device", 10), ev("View1", "other", 20),
        ev("Tie1", "device", 20), ev("Tie2", "device", 20), ev("View2", "other", 5), ev("Late1", "device", 0),
    ]}
    assert (await c.client.post("/v1/batch", json=batch)).status_code == 200
    by_key: dict[bytes | None, list[str]] = {}
    for key, env in await c.keyed():  # records of one key share a partition, in log order
        by_key.setdefault(key, []).append(env["messageId"])
    assert by_key[b"device"] == ["Late1", "AddToCart1", "Tie1", "Tie2", "Checkout1"]  # equal times keep their order
    assert by_key[b"other"] == ["View2", "View1"]


async def test_a_clock_off_by_millennia_is_judged_not_refusing_the_batch(make_collector: MakeCollector) -> None:
    # Each time is valid; their difference puts the corrected time outside years 1..9999. That refused
    # the whole batch (400), so an SDK dropped its other events; now the time rules judge it.
    c = await make_collector({})
    batch = {"batch": [
        {"type": "track", "event": "E", "userId": "u", "messageId": "ok"},
        {"type": "track", "event": "E", "userId": "u", "messageId": "behind", "timestamp": "0001-01-01T00:00:00Z",
         "sentAt": "9999-12-31T23:59:59Z"},
        {"type": "track", "event": "E", "userId": "u", "messageId": "ahead", "timestamp": "9999-12-31T23:59:59Z",
         "sentAt": "0001-01-01T00:00:00Z"},
    ]}
    assert (await c.client.post("/v1/batch", json=batch)).status_code == 200
    stored = {e["messageId"]: e for e in await c.records()}
    assert set(stored) == {"ok", "ahead"}
    assert stored["ahead"]["timestamp"] == stored["ahead"]["receivedAt"]  # a future time becomes receivedAt
    assert [(r["messageId"], r["reason"]) for r in await c.invalid()] == [("behind", "timestamp_too_old")]
