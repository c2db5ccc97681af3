"""The GET pixel: a 1x1 GIF, the event in the query string, errors as 4xx JSON."""

from __future__ import annotations

import base64
from urllib.parse import quote

import orjson

from tripwire.collector.pixel import GIF

from .conftest import SERVER_KEY, Collector, MakeCollector


async def test_pixel_with_plain_parameters(collector: Collector) -> None:
    r = await collector.client.get(
        f"/v1/pixel?writeKey={SERVER_KEY}&event=Email%20Opened&userId=42&properties.campaign=spring&context.campaign_id=c9"
    )
    assert r.status_code == 200
    assert r.content == GIF
    assert r.headers["content-type"] == "image/gif"
    assert "no-store" in r.headers["cache-control"]
    (env,) = await collector.records()
    assert env["type"] == "track" and env["event"] == "Email Opened" and env["userId"] == "42"
    assert env["properties"] == {"campaign": "spring"}
    assert env["context"]["campaign_id"] == "c9"
    assert env["context"]["library"]["name"] == "pixel"
    assert env["source"] == "backend"
    assert "writeKey" not in env


async def test_pixel_with_segment_style_base64_data_and_type_in_path(collector: Collector) -> None:
    event = {"userId": "u7", "name": "Newsletter", "properties": {"issue": 12}, "writeKey": SERVER_KEY}
    data = base64.urlsafe_b64encode(orjson.dumps(event)).decode().rstrip("=")
    r = await collector.client.get(f"/v1/pixel/page?data={data}")
    assert r.status_code == 200 and r.content == GIF
    (env,) = await collector.records()
    assert env["type"] == "page" and env["name"] == "Newsletter" and env["properties"] == {"issue": 12}


async def test_pixel_data_in_standard_base64(collector: Collector) -> None:
    data = base64.b64encode(orjson.dumps({"event": "Opened", "anonymousId": "a", "writeKey": SERVER_KEY})).decode()
    r = await collector.client.get(f"/v1/pixel/track?data={quote(data)}")
    assert r.status_code == 200


def _b64(doc: object) -> str:
    return quote(base64.b64encode(orjson.dumps(doc)).decode())


def _nested(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


async def test_pixel_bad_input(collector: Collector) -> None:
    cases = [
        (f"/v1/pixel?writeKey={SERVER_KEY}&userId=1", 400, "invalid_event", "event"),
        (f"/v1/pixel?writeKey={SERVER_KEY}&data=%%%%", 400, "invalid_json", "data"),
        (f"/v1/pixel?writeKey={SERVER_KEY}&data=" + base64.b64encode(b"[1]").decode(), 400, "invalid_event", "data"),
        (f"/v1/pixel?writeKey={SERVER_KEY}&event=%FF&userId=1", 400, "invalid_query", "query"),
        ("/v1/pixel?event=A&userId=1", 401, "missing_write_key", "writeKey"),
        ("/v1/pixel?event=A&userId=1&writeKey=nope", 401, "unknown_write_key", "writeKey"),
        (f"/v1/pixel?writeKey={SERVER_KEY}&event=A&userId=1&type=bogus", 404, "unknown_type", "type"),
        # A `data` event's type may be any JSON value; only the six type names are types.
        (f"/v1/pixel?writeKey={SERVER_KEY}&data=" + _b64({"type": ["track"], "event": "A", "userId": "1"}), 404, "unknown_type", "type"),
        (f"/v1/pixel?writeKey={SERVER_KEY}&data=" + _b64({"type": {"a": 1}, "event": "A", "userId": "1"}), 404, "unknown_type", "type"),
        # An object both given whole and filled key by key, in either order.
        (f"/v1/pixel?writeKey={SERVER_KEY}&event=A&userId=1&properties=foo&properties.x=1", 400, "invalid_query", "properties"),
        (f"/v1/pixel?writeKey={SERVER_KEY}&event=A&userId=1&context.x=1&context=foo", 400, "invalid_query", "context"),
        (f"/v1/pixel/identify?writeKey={SERVER_KEY}&userId=1&traits=&traits.plan=pro", 400, "invalid_query", "traits"),
        (f"/v1/pixel?writeKey={SERVER_KEY}&data=" + _b64({"event": "A", "userId": "1", "properties": _nested(241)}),
         400, "invalid_event", "properties"),
    ]
    for url, status, error, field in cases:
        r = await collector.client.get(url)
        assert r.status_code == status, (url, r.text)
        assert r.json()["error"] == error and r.json()["field"] == field, (url, r.text)
    assert await collector.records() == []


async def test_pixel_query_limit(make_collector: MakeCollector) -> None:
    c = await make_collector({"collector": {"max_event_bytes": 300}})
    r = await c.client.get("/v1/pixel?event=A&userId=1&properties.x=" + "y" * 400)
    assert r.status_code == 414
    assert r.json()["limit"] == "max_event_bytes"


async def test_pixel_path_is_configurable(make_collector: MakeCollector) -> None:
    c = await make_collector({"collector": {"pixel_path": "/o.gif"}})
    assert (await c.client.get("/o.gif?event=Open&userId=1")).content == GIF
    assert (await c.client.get("/v1/pixel?event=Open&userId=1")).status_code == 404
