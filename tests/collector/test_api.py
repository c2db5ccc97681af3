"""The Segment HTTP Tracking API in-process: what official SDKs send, and what lands in the log."""

from __future__ import annotations

import base64
import gzip
import time

import orjson
import pytest

from tripwire.envelope import format_time_ms, parse_time_ms

from .conftest import SERVER_KEY, SOURCES, WRITE_KEY, Collector, MakeCollector, basic

SUCCESS = {"success": True}


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("track", {"event": "Order Completed", "properties": {"total": 12.5}}),
        ("page", {"name": "Home", "properties": {"path": "/"}}),
        ("screen", {"name": "Dashboard"}),
        ("identify", {"traits": {"plan": "pro"}}),
        ("alias", {"previousId": "anon-1"}),
        ("group", {"groupId": "acme", "traits": {"size": 10}}),
    ],
)
async def test_each_call_type_is_accepted_and_stored(collector: Collector, kind: str, body: dict) -> None:
    r = await collector.client.post(f"/v1/{kind}", json={**body, "userId": "u1"}, headers=basic(SERVER_KEY))
    assert r.status_code == 200
    assert r.json() == SUCCESS
    assert r.headers["content-type"] == "application/json"
    (stored,) = await collector.records()
    assert stored["type"] == kind
    assert stored["userId"] == "u1"
    assert stored["source"] == "backend"
    for name, value in body.items():
        assert stored[name] == value


async def test_normalised_envelope_has_server_fields(collector: Collector) -> None:
    r = await collector.client.post(
        "/v1/track",
        json={"event": "Signed Up", "anonymousId": "a-1", "context": {"library": {"name": "analytics-python", "version": "2.3"}}},
        headers={**basic(SERVER_KEY), "User-Agent": "sdk-test/1"},
    )
    assert r.status_code == 200
    ((key, env),) = await collector.keyed()
    assert key == b"a-1"  # log key = anonymousId
    assert len(env["messageId"]) == 36  # server-made UUID
    assert env["receivedAt"].endswith("Z") and env["timestamp"] == env["receivedAt"]
    assert env["context"]["library"] == {"name": "analytics-python", "version": "2.3"}
    assert env["context"]["userAgent"] == "sdk-test/1"
    assert env["context"]["ip"] == "203.0.113.0"


async def test_client_message_id_is_kept_and_user_id_keys_when_no_anonymous_id(collector: Collector) -> None:
    r = await collector.client.post(
        "/v1/track", json={"event": "E", "userId": 42, "messageId": "m-1"}, headers=basic(SERVER_KEY)
    )
    assert r.status_code == 200
    ((key, env),) = await collector.keyed()
    assert key == b"42" and env["userId"] == "42" and env["messageId"] == "m-1"


async def test_clock_skew_is_corrected_from_sent_at(collector: Collector) -> None:
    # The client clock is 1 hour fast; the event happened 2 s before it was sent.
    r = await collector.client.post(
        "/v1/track",
        json={"event": "E", "userId": "u", "timestamp": "2030-01-01T01:00:00.000Z", "sentAt": "2030-01-01T01:00:02.000Z"},
        headers=basic(SERVER_KEY),
    )
    assert r.status_code == 200
    (env,) = await collector.records()
    received = parse_time_ms(env["receivedAt"], "receivedAt")
    assert parse_time_ms(env["timestamp"], "timestamp") == received - 2000
    assert env["originalTimestamp"] == "2030-01-01T01:00:00.000Z"


async def test_timestamp_without_sent_at_is_trusted(collector: Collector) -> None:
    two_days_ago = format_time_ms(int(time.time() * 1000) - 2 * 86_400_000)
    r = await collector.client.post(
        "/v1/track", json={"event": "E", "userId": "u", "timestamp": two_days_ago}, headers=basic(SERVER_KEY)
    )
    assert r.status_code == 200
    (env,) = await collector.records()
    assert env["timestamp"] == two_days_ago


async def test_an_event_time_in_the_future_becomes_the_receive_time(make_collector: MakeCollector) -> None:
    # A clock far ahead (or a local time sent without its offset) would put the event in a future
    # day of the lake and move the rules' watermark past every other visitor's events.
    from prometheus_client import REGISTRY

    def clamped() -> float:
        return REGISTRY.get_sample_value("tripwire_collector_future_timestamps_total") or 0.0

    before = clamped()
    c = await make_collector({"sources": SOURCES})
    near = format_time_ms(int(time.time() * 1000) + 5_000)  # within collector.max_future_s (10 s)
    body = {"batch": [
        {"type": "track", "event": "A", "userId": "u", "messageId": "far", "timestamp": "2099-01-01T00:00:00Z"},
        {"type": "track", "event": "A", "userId": "u", "messageId": "after-sent", "timestamp": "2030-01-01T02:00:00Z",
         "sentAt": "2030-01-01T01:00:00Z"},
        {"type": "track", "event": "A", "userId": "u", "messageId": "near", "timestamp": near},
    ], "writeKey": SERVER_KEY}
    assert (await c.client.post("/v1/batch", json=body)).status_code == 200
    envs = {e["messageId"]: e for e in await c.records()}
    assert envs["far"]["timestamp"] == envs["far"]["receivedAt"]
    assert envs["far"]["originalTimestamp"] == "2099-01-01T00:00:00Z"  # what the client sent is kept
    assert envs["after-sent"]["timestamp"] == envs["after-sent"]["receivedAt"]
    assert envs["near"]["timestamp"] == near
    assert clamped() - before == 2  # operators see which share of clients has a clock ahead
    c0 = await make_collector({"sources": SOURCES, "collector": {"max_future_s": 0}})
    assert (await c0.client.post("/v1/track", json={"event": "A", "userId": "u", "timestamp": near},
                                 headers=basic(SERVER_KEY))).status_code == 200
    (env,) = await c0.records()
    assert env["timestamp"] == env["receivedAt"]


async def test_a_body_with_a_utf8_byte_order_mark_is_read(collector: Collector) -> None:
    # .NET's and PowerShell's UTF-8 encoders write a BOM first; orjson refuses it.
    body = b"\xef\xbb\xbf" + orjson.dumps({"event": "E", "userId": "u", "messageId": "bom-1"})
    r = await collector.client.post("/v1/track", content=body, headers={**basic(SERVER_KEY), "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert [e["messageId"] for e in await collector.records()] == ["bom-1"]
    r = await collector.client.post("/v1/track", content=b"\xef\xbb\xbf", headers={**basic(SERVER_KEY), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"


async def test_batch_applies_batch_sent_at_and_context(collector: Collector) -> None:
    body = {
        "batch": [
            {"type": "track", "event": "A", "anonymousId": "x", "timestamp": "2030-01-01T00:00:00Z", "messageId": "1"},
            {"type": "identify", "userId": "u", "traits": {"k": 1}, "context": {"locale": "de-DE"}, "messageId": "2"},
            {"type": "page", "anonymousId": "x", "name": "Home", "messageId": "3"},
        ],
        "sentAt": "2030-01-01T00:00:10Z",
        "context": {"library": {"name": "analytics-node", "version": "9"}, "locale": "en-US"},
        "writeKey": SERVER_KEY,
    }
    r = await collector.client.post("/v1/batch", json=body)
    assert r.status_code == 200 and r.json() == SUCCESS
    envs = {e["messageId"]: e for e in await collector.records()}
    assert set(envs) == {"1", "2", "3"}
    received = parse_time_ms(envs["1"]["receivedAt"], "receivedAt")
    assert parse_time_ms(envs["1"]["timestamp"], "timestamp") == received - 10_000
    assert envs["2"]["context"]["locale"] == "de-DE"  # the event's own context wins
    assert envs["3"]["context"]["library"]["name"] == "analytics-node"
    assert all("writeKey" not in e for e in envs.values())


async def test_basic_auth_and_body_write_key_pick_the_source(collector: Collector) -> None:
    r1 = await collector.client.post("/v1/track", json={"event": "A", "userId": "u"}, headers=basic(WRITE_KEY))
    r2 = await collector.client.post("/v1/track", json={"event": "B", "userId": "u", "writeKey": SERVER_KEY})
    assert r1.status_code == r2.status_code == 200
    by_event = {e["event"]: e for e in await collector.records()}
    assert by_event["A"]["source"] == "web"
    assert by_event["B"]["source"] == "backend"
    assert "writeKey" not in by_event["B"]  # the secret is not stored


async def test_basic_auth_with_password_part_is_accepted(collector: Collector) -> None:
    token = base64.b64encode(f"{SERVER_KEY}:ignored".encode()).decode()
    r = await collector.client.post("/v1/track", json={"event": "A", "userId": "u"}, headers={"Authorization": f"Basic {token}"})
    assert r.status_code == 200


async def test_text_plain_beacon_is_accepted(collector: Collector) -> None:
    body = orjson.dumps({"event": "Beacon", "anonymousId": "b", "writeKey": SERVER_KEY})
    r = await collector.client.post("/v1/track", content=body, headers={"Content-Type": "text/plain;charset=UTF-8"})
    assert r.status_code == 200
    (env,) = await collector.records()
    assert env["event"] == "Beacon"


async def test_gzip_body_is_accepted(collector: Collector) -> None:
    body = {"batch": [{"type": "track", "event": f"E{i}", "userId": "u"} for i in range(50)], "writeKey": SERVER_KEY}
    r = await collector.client.post(
        "/v1/batch", content=gzip.compress(orjson.dumps(body)),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert r.status_code == 200
    assert len(await collector.records()) == 50


async def test_route_decides_the_type(collector: Collector) -> None:
    r = await collector.client.post("/v1/track", json={"type": "identify", "event": "E", "userId": "u"}, headers=basic(SERVER_KEY))
    assert r.status_code == 200
    (env,) = await collector.records()
    assert env["type"] == "track"


async def test_open_mode_accepts_any_or_no_write_key_as_dev(open_collector: Collector) -> None:
    r1 = await open_collector.client.post("/v1/track", json={"event": "A", "userId": "u"})
    r2 = await open_collector.client.post("/v1/track", json={"event": "B", "userId": "u"}, headers=basic("anything"))
    r3 = await open_collector.client.post(
        "/v1/track", json={"event": "C", "userId": "u"}, headers={"Origin": "https://anywhere.example"}
    )
    assert [r1.status_code, r2.status_code, r3.status_code] == [200, 200, 200]
    assert r3.headers["access-control-allow-origin"] == "https://anywhere.example"
    assert {e["source"] for e in await open_collector.records()} == {"dev"}


async def test_stopped_log_answers_503_with_retry_after(make_collector: MakeCollector) -> None:
    c = await make_collector()
    await c.log.stop()  # a real backend that can no longer promise durability
    r = await c.client.post("/v1/track", json={"event": "A", "userId": "u"})
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) > 0
    assert r.json()["error"] == "log_unavailable"
    p = await c.client.get("/v1/pixel?event=A&userId=u")
    assert p.status_code == 503 and "retry-after" in p.headers


async def test_analytics_js_short_paths(collector: Collector) -> None:
    # analytics.js (Segment's browser SDK) posts text/plain to /v1/t, /v1/p, ... and batches to /v1/b.
    for path, body in [
        ("/v1/t", {"event": "Short", "anonymousId": "a"}),
        ("/v1/p", {"name": "Home", "anonymousId": "a"}),
        ("/v1/i", {"userId": "u", "traits": {}}),
        ("/v1/b", {"batch": [{"type": "track", "event": "InBatch", "anonymousId": "a"}]}),
    ]:
        r = await collector.client.post(path, content=orjson.dumps({**body, "writeKey": SERVER_KEY}), headers={"Content-Type": "text/plain"})
        assert r.status_code == 200, (path, r.text)
    assert sorted(e["type"] for e in await collector.records()) == ["identify", "page", "track", "track"]


async def test_event_times_before_year_1000_stay_parseable(make_collector: MakeCollector) -> None:
    from tripwire.envelope import parse_time_ms

    c = await make_collector({"sources": {"import": {"write_key": SERVER_KEY, "historical": True}}})
    r = await c.client.post("/v1/track", json={"event": "Old", "userId": "u", "timestamp": "0999-01-01T00:00:00Z"}, headers=basic(SERVER_KEY))
    assert r.status_code == 200
    (env,) = await c.records()
    assert env["timestamp"] == "0999-01-01T00:00:00.000Z"
    assert parse_time_ms(env["timestamp"], "timestamp") < 0


async def test_a_bug_behind_the_fast_path_answers_a_json_500(make_collector: MakeCollector, caplog: pytest.LogCaptureFixture) -> None:
    # The tracking routes skip Starlette's error middleware, so they must answer a bug themselves.
    c = await make_collector({"sources": SOURCES}, raise_errors=False)

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the log")

    c.log.append = broken  # type: ignore[method-assign]
    headers = {**basic(WRITE_KEY), "Origin": "https://shop.example"}
    for path, body in [("/v1/track", {"event": "A", "userId": "u"}), ("/v1/batch", {"batch": [{"type": "track", "event": "A", "userId": "u"}]})]:
        r = await c.client.post(path, json=body, headers=headers)
        assert r.status_code == 500, path
        assert r.json() == {"success": False, "error": "internal_error", "message": "internal error"}
        assert r.headers["access-control-allow-origin"] == "https://shop.example"  # the browser can read it
    assert "unhandled error on POST" in caplog.text and "a bug in the log" in caplog.text
