"""Every class of bad input gets a 4xx JSON naming the problem; nothing bad is stored."""

from __future__ import annotations

import gzip

import orjson
import pytest

from .conftest import SERVER_KEY, Collector, MakeCollector, basic

AUTH = basic(SERVER_KEY)
JSON = {"Content-Type": "application/json", **AUTH}


def assert_error(r, status: int, error: str, field: str | None = None, limit: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["success"] is False
    assert doc["error"] == error, doc
    assert doc["message"]
    if field is not None:
        assert doc["field"] == field, doc
    if limit is not None:
        assert doc["limit"] == limit and limit in doc["message"], doc
    return doc


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        (b"{not json", "invalid_json", "body"),
        (b'{"event": "A", "userId": "u"', "invalid_json", "body"),
        (b"", "invalid_json", "body"),
        (b"[1, 2]", "invalid_event", "body"),
        (b'"text"', "invalid_event", "body"),
        (b'{"event": "A", "userId": "u", "x": NaN}', "invalid_json", "body"),
        (b'{"event": "caf\xe9", "userId": "u"}', "invalid_utf8", "body"),
        (b'\xff\xfe{"event": "A"}', "invalid_utf8", "body"),
    ],
)
async def test_unparseable_bodies(collector: Collector, body: bytes, error: str, field: str) -> None:
    r = await collector.client.post("/v1/track", content=body, headers=JSON)
    assert_error(r, 400, error, field)
    assert await collector.records() == []


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"userId": "u"}, "event"),  # missing event name
        ({"event": "", "userId": "u"}, "event"),
        ({"event": "   ", "userId": "u"}, "event"),
        ({"event": 12, "userId": "u"}, "event"),
        ({"event": "A"}, "anonymousId"),  # no identity
        ({"event": "A", "userId": {"id": 1}}, "userId"),
        ({"event": "A", "anonymousId": True}, "anonymousId"),
        ({"event": "A", "userId": "u", "properties": [1]}, "properties"),
        ({"event": "A", "userId": "u", "context": "web"}, "context"),
        ({"event": "A", "userId": "u", "timestamp": "yesterday"}, "timestamp"),
        ({"event": "A", "userId": "u", "timestamp": 1700000000}, "timestamp"),
        ({"event": "A", "userId": "u", "sentAt": "2024-13-45"}, "sentAt"),
        ({"event": "A", "userId": "u", "messageId": 1.5}, "messageId"),
        ({"event": "A" * 300, "userId": "u"}, "event"),
        ({"event": "A", "userId": "u" * 300}, "userId"),
    ],
)
async def test_wrong_types_and_missing_fields(collector: Collector, event: dict, field: str) -> None:
    r = await collector.client.post("/v1/track", json=event, headers=AUTH)
    assert_error(r, 400, "invalid_event", field)
    assert await collector.records() == []


@pytest.mark.parametrize(
    ("path", "event", "field"),
    [
        ("/v1/alias", {"userId": "u"}, "previousId"),
        ("/v1/group", {"userId": "u"}, "groupId"),
        ("/v1/page", {"userId": "u", "name": 5}, "name"),
    ],
)
async def test_type_specific_required_fields(collector: Collector, path: str, event: dict, field: str) -> None:
    assert_error(await collector.client.post(path, json=event, headers=AUTH), 400, "invalid_event", field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"batch": "nope"}, "batch"),
        ({"batch": []}, "batch"),
        ({"events": [{"type": "track", "event": "A", "userId": "u"}]}, "batch"),
        ({"batch": [{"type": "track", "event": "A", "userId": "u"}, 7]}, "batch[1]"),
        ({"batch": [{"type": "track", "event": "A", "userId": "u"}, {"type": "track", "userId": "u"}]}, "batch[1].event"),
        ({"batch": [{"type": "bogus", "userId": "u"}]}, "batch[0].type"),
        ({"batch": [{"type": ["track"], "userId": "u"}]}, "batch[0].type"),
        ({"batch": [{"event": "no type", "userId": "u"}]}, "batch[0].type"),
        ({"batch": [{"type": "track", "event": "A", "userId": "u"}], "context": 3}, "context"),
    ],
)
async def test_bad_batches_are_refused_whole(collector: Collector, body: dict, field: str) -> None:
    r = await collector.client.post("/v1/batch", json=body, headers=AUTH)
    code = "invalid_batch" if field == "batch" else "invalid_event"
    assert_error(r, 400, code, field)
    assert await collector.records() == []  # all or nothing


def nested(levels: int, *, container: str = "object") -> object:
    """A value nesting exactly ``levels`` containers."""
    value: object = {} if container == "object" else []
    for i in range(levels - 1):
        value = {"k": value} if (container == "object" or (container == "mixed" and i % 2)) else [value]
    return value


def nested_text(levels: int, *, mixed: bool = False) -> str:
    """JSON text nesting exactly ``levels`` containers (written by hand: no encoder writes 1000 levels)."""
    opens = ['{"k":' if not mixed or i % 2 else "[" for i in range(levels - 1)]
    closes = ["}" if o.startswith("{") else "]" for o in reversed(opens)]
    return "".join(opens) + "{}" + "".join(closes)


@pytest.mark.parametrize("field", ["properties", "traits", "context", "integrations", "custom"])
@pytest.mark.parametrize("levels", [241, 253, 254, 300, 1000])  # 254-1023 levels were a 500: orjson reads them, cannot write them
async def test_values_nested_past_the_limit_are_a_400_naming_field_and_limit(collector: Collector, field: str, levels: int) -> None:
    value = nested_text(levels, mixed=field == "custom")  # any other field of the event too, arrays included
    body = '{"event": "A", "userId": "u", "%s": %s}' % (field, value if field != "custom" else f"[{value}]")
    r = await collector.client.post("/v1/track", content=body, headers=JSON)
    doc = assert_error(r, 400, "invalid_event", field, limit="max_nesting_depth")
    assert doc["message"] == f"{field} nests deeper than max_nesting_depth=240 levels", doc
    assert await collector.records() == []


async def test_the_nesting_limit_is_inclusive(collector: Collector) -> None:
    ok = {"event": "A", "userId": "u", "properties": nested(240), "context": {"x": nested(239, container="list")}}
    assert (await collector.client.post("/v1/track", json=ok, headers=AUTH)).status_code == 200
    (stored,) = await collector.records()
    assert stored["properties"] == ok["properties"] and stored["context"]["x"] == ok["context"]["x"]
    batch = {"batch": [{"type": "track", "event": "A", "userId": "u", "properties": nested(240)},
                       {"type": "identify", "userId": "u", "traits": {"a": nested(240, container="mixed")}}]}
    r = await collector.client.post("/v1/batch", json=batch, headers=AUTH)
    assert_error(r, 400, "invalid_event", "batch[1].traits", limit="max_nesting_depth")
    # A batch-level context is every event's context.
    batch = {"batch": [{"type": "track", "event": "A", "userId": "u"}], "context": {"a": nested(240)}}
    r = await collector.client.post("/v1/batch", json=batch, headers=AUTH)
    assert_error(r, 400, "invalid_event", "batch[0].context", limit="max_nesting_depth")
    assert len(await collector.records()) == 1


def test_the_limit_leaves_room_for_what_embeds_events() -> None:
    # Trigger records and webhook bodies put a stored event 2-3 levels deeper; orjson writes 254.
    from tripwire.collector.nesting import MAX_DEPTH, WRITABLE_DEPTH, Serialiser

    assert WRITABLE_DEPTH == 254, "orjson's depth limit moved: re-check MAX_DEPTH and the Serialiser's cost"
    assert MAX_DEPTH + 1 + 3 < WRITABLE_DEPTH
    env = {"type": "track", "properties": nested(MAX_DEPTH)}
    value = Serialiser()(env)
    assert value == orjson.dumps(env)
    webhook = {"data": {"events": [orjson.loads(value)]}}
    assert orjson.loads(orjson.dumps(webhook))["data"]["events"][0] == env
    assert Serialiser()({"properties": nested(MAX_DEPTH + 1)}) is None


async def test_single_event_over_32kb_names_the_limit(collector: Collector) -> None:
    event = {"event": "Big", "userId": "u", "properties": {"blob": "x" * 33_000}}
    r = await collector.client.post("/v1/track", json=event, headers=AUTH)
    assert_error(r, 413, "payload_too_large", limit="max_event_bytes")


async def test_batch_over_500kb_names_the_limit(collector: Collector) -> None:
    events = [{"type": "track", "event": "E", "userId": "u", "properties": {"b": "x" * 20_000}} for _ in range(30)]
    r = await collector.client.post("/v1/batch", json={"batch": events}, headers=AUTH)
    assert_error(r, 413, "payload_too_large", limit="max_batch_bytes")


async def test_event_over_32kb_inside_a_batch_names_the_event(collector: Collector) -> None:
    events = [{"type": "track", "event": "ok", "userId": "u"}, {"type": "track", "event": "E", "userId": "u", "properties": {"b": "x" * 40_000}}]
    r = await collector.client.post("/v1/batch", json={"batch": events}, headers=AUTH)
    doc = assert_error(r, 413, "payload_too_large", limit="max_event_bytes")
    assert "batch[1]" in doc["message"]
    assert await collector.records() == []


async def test_limits_are_configurable(make_collector: MakeCollector) -> None:
    c = await make_collector({"collector": {"max_event_bytes": 200, "max_batch_bytes": 1000}})
    assert (await c.client.post("/v1/track", json={"event": "A", "userId": "u"})).status_code == 200
    r = await c.client.post("/v1/track", json={"event": "A", "userId": "u", "properties": {"p": "y" * 300}})
    assert_error(r, 413, "payload_too_large", limit="max_event_bytes")
    assert "200" in r.json()["message"]


async def test_body_longer_than_declared_limit_is_refused_from_content_length(collector: Collector) -> None:
    # Content-Length alone decides: the collector does not read a body it will refuse.
    r = await collector.client.post("/v1/batch", content=b" " * 600_000, headers=JSON)
    assert_error(r, 413, "payload_too_large", limit="max_batch_bytes")


async def test_chunked_body_without_length_is_capped_while_reading(collector: Collector) -> None:
    async def chunks():
        for _ in range(100):
            yield b" " * 10_000

    r = await collector.client.post("/v1/batch", content=chunks(), headers=JSON)
    assert_error(r, 413, "payload_too_large", limit="max_batch_bytes")


async def test_gzip_bomb_is_refused_without_inflating_it(collector: Collector) -> None:
    # 200 MB of spaces in ~200 KB of gzip: under the wire limit, far over the inflated one.
    bomb = gzip.compress(b" " * (200 * 1024 * 1024), 9)
    assert len(bomb) < 500 * 1024
    r = await collector.client.post("/v1/batch", content=bomb, headers={**JSON, "Content-Encoding": "gzip"})
    doc = assert_error(r, 413, "payload_too_large", limit="max_batch_bytes")
    assert "inflated" in doc["message"]


async def test_gzip_cap_is_its_own_limit_when_smaller(make_collector: MakeCollector) -> None:
    c = await make_collector({"collector": {"max_decompressed_bytes": 1000}})
    body = gzip.compress(orjson.dumps({"batch": [{"type": "track", "event": "E", "userId": "u", "properties": {"p": "z" * 2000}}]}))
    r = await c.client.post("/v1/batch", content=body, headers={"Content-Encoding": "gzip"})
    assert_error(r, 413, "payload_too_large", limit="max_decompressed_bytes")


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"plain text, not gzip", "not valid gzip"), (gzip.compress(b'{"event": "A", "userId": "u"}', mtime=0)[:-12], "truncated")],
)
async def test_corrupt_gzip(collector: Collector, body: bytes, message: str) -> None:
    r = await collector.client.post("/v1/track", content=body, headers={**JSON, "Content-Encoding": "gzip"})
    doc = assert_error(r, 400, "invalid_gzip", "Content-Encoding")
    assert message in doc["message"]


async def test_every_gzip_member_of_a_body_is_read(collector: Collector) -> None:
    # RFC 1952 2.2: a gzip file is a series of members (`cat a.gz b.gz`); the events of each count.
    batch = {"batch": [{"type": "track", "event": "A", "userId": "u", "messageId": f"m{i}"} for i in range(3)]}
    text = orjson.dumps(batch)
    cut = text.index(b'{"type"', len(b'{"batch":[{') + 1)  # split inside the JSON, between two events
    body = gzip.compress(text[:cut]) + gzip.compress(text[cut:])
    r = await collector.client.post("/v1/batch", content=body, headers={**JSON, "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert sorted(e["messageId"] for e in await collector.records()) == ["m0", "m1", "m2"]


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (b"trailing garbage", "16 byte(s) after the end of the gzip data are not another gzip member"),
        (b"\n", "1 byte(s) after the end of the gzip data"),
        (gzip.compress(b'{"more": 1}', mtime=0)[:-5], "gzip member 2 of the body is truncated"),
        (b"\x1f\x8b not a member", "gzip member 2 of the body is not valid gzip"),
    ],
)
async def test_gzip_followed_by_anything_but_whole_members_is_refused(collector: Collector, tail: bytes, message: str) -> None:
    body = gzip.compress(orjson.dumps({"event": "A", "userId": "u"})) + tail
    r = await collector.client.post("/v1/track", content=body, headers={**JSON, "Content-Encoding": "gzip"})
    doc = assert_error(r, 400, "invalid_gzip", "Content-Encoding")
    assert message in doc["message"], doc
    assert await collector.records() == []


async def test_the_inflation_cap_counts_every_member(make_collector: MakeCollector) -> None:
    c = await make_collector({"collector": {"max_decompressed_bytes": 1000}})
    text = orjson.dumps({"batch": [{"type": "track", "event": "E", "userId": "u", "properties": {"p": "z" * 1500}}]})
    body = gzip.compress(text[:800]) + gzip.compress(text[800:])  # each member under the cap, the whole over it
    r = await c.client.post("/v1/batch", content=body, headers={"Content-Encoding": "gzip"})
    assert_error(r, 413, "payload_too_large", limit="max_decompressed_bytes")


async def test_unsupported_encoding_and_content_type(collector: Collector) -> None:
    r = await collector.client.post("/v1/track", content=b"{}", headers={**JSON, "Content-Encoding": "br"})
    assert_error(r, 415, "unsupported_encoding", "Content-Encoding")
    r = await collector.client.post("/v1/track", content=b"event=A", headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert_error(r, 415, "unsupported_media_type", "Content-Type")


async def test_bad_content_length(collector: Collector) -> None:
    # httpx computes Content-Length itself; an ASGI scope with a bogus one is built by hand.
    from tripwire.collector.body import read_body
    from tripwire.collector.errors import CollectorError

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    with pytest.raises(CollectorError) as info:
        await read_body(receive, b"ten", 100, "max_event_bytes")
    assert info.value.status == 400 and info.value.field == "Content-Length"


async def test_unknown_and_missing_write_keys(collector: Collector) -> None:
    event = {"event": "A", "userId": "u"}
    assert_error(await collector.client.post("/v1/track", json=event), 401, "missing_write_key", "writeKey")
    assert_error(await collector.client.post("/v1/track", json=event, headers=basic("nope")), 401, "unknown_write_key", "writeKey")
    assert_error(await collector.client.post("/v1/track", json={**event, "writeKey": "nope"}), 401, "unknown_write_key")
    assert_error(await collector.client.post("/v1/track", json={**event, "writeKey": 5}), 401, "unknown_write_key")
    r = await collector.client.post("/v1/track", json=event, headers={"Authorization": "Bearer abc"})
    assert_error(r, 401, "invalid_authorization", "Authorization")
    r = await collector.client.post("/v1/track", json=event, headers={"Authorization": "Basic %%%"})
    assert_error(r, 401, "invalid_authorization", "Authorization")
    r = await collector.client.post("/v1/batch", json={"batch": [{"type": "track", **event}]}, headers=basic("nope"))
    assert_error(r, 401, "unknown_write_key")
    assert await collector.records() == []


async def test_wrong_methods_and_paths(collector: Collector) -> None:
    r = await collector.client.get("/v1/track")
    doc = assert_error(r, 405, "method_not_allowed")
    assert "GET /v1/track" in doc["message"] and "POST" in r.headers["allow"]
    assert_error(await collector.client.put("/v1/batch", content=b"{}"), 405, "method_not_allowed")
    assert_error(await collector.client.delete("/healthz"), 405, "method_not_allowed")
    assert_error(await collector.client.post("/v1/pixel"), 405, "method_not_allowed")
    assert_error(await collector.client.post("/v2/track", json={}), 404, "not_found")
    assert_error(await collector.client.get("/v1/pixel/bogus"), 404, "unknown_type", "type")
