"""tripwire.envelope: Segment envelope checks, server fields, clock-skew correction, log key."""

from __future__ import annotations

import re

import pytest

from tripwire.envelope import (
    EnvelopeError,
    format_time_ms,
    log_key,
    normalize,
    normalize_timed,
    parse_time_ms,
)

RECEIVED = parse_time_ms("2026-11-29T12:00:00.000Z", "t")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def norm(raw: object, default_type: str | None = "track") -> dict:
    return normalize(raw, received_at_ms=RECEIVED, source="web", default_type=default_type)


def test_server_fields_are_added() -> None:
    env = norm({"event": "Signed Up", "anonymousId": "a1", "properties": {"plan": "pro"}})
    assert env["type"] == "track"
    assert env["receivedAt"] == "2026-11-29T12:00:00.000Z"
    assert env["timestamp"] == env["receivedAt"]  # no client time: the server's
    assert env["source"] == "web"
    assert UUID4.match(env["messageId"])
    assert env["properties"] == {"plan": "pro"}
    assert "originalTimestamp" not in env


def test_message_ids_are_kept_or_unique() -> None:
    assert norm({"event": "E", "userId": "u", "messageId": "client-42"})["messageId"] == "client-42"
    ids = {norm({"event": "E", "userId": "u"})["messageId"] for _ in range(2000)}
    assert len(ids) == 2000
    assert all(UUID4.match(i) for i in ids)


def test_clock_skew_is_corrected_with_sent_at() -> None:
    # the device clock is 1 h behind; the event happened 5 s before the request was sent
    env, event_ms = normalize_timed(
        {
            "event": "E", "anonymousId": "a",
            "timestamp": "2026-11-29T10:59:55.000Z", "sentAt": "2026-11-29T11:00:00.000Z",
        },
        received_at_ms=RECEIVED, source="web", default_type="track",
    )
    assert env["timestamp"] == "2026-11-29T11:59:55.000Z"
    assert env["originalTimestamp"] == "2026-11-29T10:59:55.000Z"
    assert event_ms == parse_time_ms(env["timestamp"], "timestamp") == RECEIVED - 5000


def test_timestamp_without_sent_at_is_trusted_and_offsets_are_honoured() -> None:
    env = norm({"event": "E", "anonymousId": "a", "timestamp": "2026-11-29T13:30:00.250+02:00"})
    assert env["timestamp"] == "2026-11-29T11:30:00.250Z"
    naive = norm({"event": "E", "anonymousId": "a", "timestamp": "2026-11-29T11:30:00"})
    assert naive["timestamp"] == "2026-11-29T11:30:00.000Z"  # naive means UTC


def test_sent_at_alone_does_not_move_the_event_time() -> None:
    env = norm({"event": "E", "anonymousId": "a", "sentAt": "2020-01-01T00:00:00Z"})
    assert env["timestamp"] == env["receivedAt"]


def test_log_key_prefers_the_anonymous_id() -> None:
    assert log_key(norm({"event": "E", "anonymousId": "anon", "userId": "user"})) == "anon"
    assert log_key(norm({"event": "E", "userId": "user"})) == "user"
    numeric = norm({"event": "E", "userId": 12345})
    assert numeric["userId"] == "12345"  # numbers become strings (a stable key)
    assert log_key(numeric) == "12345"
    assert log_key(norm({"event": "E", "anonymousId": "", "userId": "u"})) == "u"


@pytest.mark.parametrize(
    ("raw", "default_type", "field"),
    [
        ([], "track", "event"),
        ({"event": "E"}, "track", "anonymousId"),
        ({"anonymousId": "a"}, "track", "event"),
        ({"anonymousId": "a", "event": "   "}, "track", "event"),
        ({"anonymousId": "a", "event": "x" * 300}, "track", "event"),
        ({"anonymousId": "a"}, None, "type"),
        ({"anonymousId": "a", "type": "purchase"}, None, "type"),
        ({"anonymousId": "a", "type": ["track"]}, None, "type"),
        ({"anonymousId": "a", "event": "E", "properties": [1, 2]}, "track", "properties"),
        ({"anonymousId": "a", "traits": "vip"}, "identify", "traits"),
        ({"anonymousId": "a", "event": "E", "context": 3}, "track", "context"),
        ({"anonymousId": True, "event": "E"}, "track", "anonymousId"),
        ({"anonymousId": {"id": 1}, "event": "E"}, "track", "anonymousId"),
        ({"anonymousId": "a" * 300, "event": "E"}, "track", "anonymousId"),
        ({"userId": "u", "event": "E", "messageId": ["m"]}, "track", "messageId"),
        ({"userId": "u", "event": "E", "timestamp": "yesterday"}, "track", "timestamp"),
        ({"userId": "u", "event": "E", "timestamp": 1700000000}, "track", "timestamp"),
        ({"userId": "u", "event": "E", "timestamp": "2026-01-01T00:00:00Z", "sentAt": "soon"}, "track", "sentAt"),
        ({"userId": "u", "name": 5}, "page", "name"),
        ({"userId": "u"}, "alias", "previousId"),
        ({"userId": "u"}, "group", "groupId"),
    ],
)
def test_bad_events_name_the_field(raw: object, default_type: str | None, field: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        norm(raw, default_type)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_absurd_skew_is_clamped_into_the_years_an_iso_string_holds() -> None:
    # Both times are valid; only their difference is absurd. Refusing it refused the whole batch.
    env = norm({"userId": "u", "event": "E", "timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T23:59:59Z"})
    assert env["timestamp"] == "0001-01-01T00:00:00.000Z" and env["originalTimestamp"] == "0001-01-01T00:00:00Z"
    env = norm({"userId": "u", "event": "E", "timestamp": "9999-12-31T23:59:59Z", "sentAt": "0001-01-01T00:00:00Z"})
    assert env["timestamp"] == "9999-12-31T23:59:59.999Z"


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("track", {"event": "Added To Cart"}),
        ("page", {"name": "Home"}),
        ("page", {}),
        ("screen", {"name": "Settings"}),
        ("identify", {"traits": {"email_hash": "x"}}),
        ("alias", {"previousId": "old-id"}),
        ("group", {"groupId": "acme", "traits": {"plan": "team"}}),
    ],
)
def test_every_segment_type_is_accepted(kind: str, extra: dict) -> None:
    env = norm({"type": kind, "userId": "u1", **extra}, None)
    assert env["type"] == kind
    for key, value in extra.items():
        assert env[key] == value


def test_batch_events_name_their_own_type_over_the_route_default() -> None:
    assert norm({"type": "identify", "userId": "u"}, "track")["type"] == "identify"


def test_null_objects_are_dropped_and_input_is_not_mutated() -> None:
    raw = {"event": "E", "anonymousId": "a", "properties": None, "context": {"ip": "203.0.113.9"}}
    env = norm(raw)
    assert "properties" not in env
    assert env["context"] == {"ip": "203.0.113.9"}
    assert raw == {"event": "E", "anonymousId": "a", "properties": None, "context": {"ip": "203.0.113.9"}}


@pytest.mark.parametrize(
    "ms", [0, 1, 999, 1000, RECEIVED, RECEIVED + 123, 253402300799999, -62135596800000]
)
def test_time_formatting_round_trips(ms: int) -> None:
    text = format_time_ms(ms)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", text)
    assert parse_time_ms(text, "t") == ms


@pytest.mark.parametrize(
    "raw",
    [
        {"event": "E", "anonymousId": "a", "properties": None, "timestamp": "2026-11-29T11:59:59.500Z",
         "sentAt": "2026-11-29T12:00:01.000Z", "messageId": "m-1"},
        {"type": "identify", "userId": 42, "anonymousId": "", "traits": {"plan": "pro"}, "messageId": 7},
        {"type": "page", "anonymousId": "a", "userId": None, "name": "Home", "context": {"ip": "203.0.113.9"}},
        {"event": "E", "userId": "u", "messageId": "", "writeKey": "kept: only the collector strips it"},
    ],
)
def test_in_place_with_a_preformatted_receive_time_gives_the_same_envelope(raw: dict) -> None:
    # the collector's hot path: the request's own dicts, receivedAt formatted once per request
    copied = norm(dict(raw))
    mine = dict(raw)
    env = normalize(mine, received_at_ms=RECEIVED, source="web", default_type="track",
                    received_at=format_time_ms(RECEIVED), in_place=True)
    assert env is mine
    if "messageId" not in raw or raw["messageId"] in ("", None):  # a fresh random id each time
        assert UUID4.match(env.pop("messageId")) and UUID4.match(copied.pop("messageId"))
    assert env == copied


def test_time_formatting_before_the_epoch() -> None:
    assert format_time_ms(-1) == "1969-12-31T23:59:59.999Z"
    assert format_time_ms(-1001) == "1969-12-31T23:59:58.999Z"


def test_an_integral_number_is_an_integer_id() -> None:
    # JSON has one number type: 1613.0 is 1613 (JSON Schema's "integer" says so too); 1.5 is not an id.
    env = norm({"userId": 1613.0, "anonymousId": 7, "messageId": -2.0, "event": "E"})
    assert (env["userId"], env["anonymousId"], env["messageId"]) == ("1613", "7", "-2")
    for bad in (1.5, 2.0**64, float("inf")):
        with pytest.raises(EnvelopeError, match="userId: must be a string"):
            norm({"userId": bad, "event": "E"})
