"""CORS: preflights per the sources' origin lists; refused origins get 403, readable but saying no more than its code."""

from __future__ import annotations

import orjson
import pytest

from .conftest import SERVER_KEY, WRITE_KEY, Collector, MakeCollector, basic

SHOP = "https://shop.example"


async def test_preflight_for_an_allowed_origin(collector: Collector) -> None:
    r = await collector.client.options(
        "/v1/track",
        headers={"Origin": SHOP, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type, authorization"},
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == SHOP
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "content-type" in allowed and "authorization" in allowed
    assert int(r.headers["access-control-max-age"]) > 0
    assert "Origin" in r.headers["vary"]
    assert "access-control-allow-credentials" not in r.headers


async def test_preflight_for_a_disallowed_origin_is_refused(collector: Collector) -> None:
    r = await collector.client.options("/v1/batch", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403
    assert r.json()["error"] == "origin_not_allowed" and r.json()["field"] == "Origin"
    assert "access-control-allow-origin" not in r.headers


async def test_preflight_for_a_disallowed_method_or_without_headers(collector: Collector) -> None:
    r = await collector.client.options("/v1/track", headers={"Origin": SHOP, "Access-Control-Request-Method": "DELETE"})
    assert r.status_code == 403 and r.json()["field"] == "Access-Control-Request-Method"
    r = await collector.client.options("/v1/track")
    assert r.status_code == 400 and r.json()["error"] == "bad_preflight"


async def test_request_from_allowed_origin_gets_cors_headers(collector: Collector) -> None:
    r = await collector.client.post("/v1/track", json={"event": "A", "anonymousId": "a"}, headers={**basic(WRITE_KEY), "Origin": SHOP})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == SHOP
    # A refused request from that origin is readable by the page too (it can show the error).
    r = await collector.client.post("/v1/track", content=b"{", headers={**basic(WRITE_KEY), "Origin": SHOP})
    assert r.status_code == 400 and r.headers["access-control-allow-origin"] == SHOP


async def test_request_from_disallowed_origin_is_refused_and_not_stored(collector: Collector) -> None:
    r = await collector.client.post(
        "/v1/track", json={"event": "A", "anonymousId": "a"}, headers={**basic(WRITE_KEY), "Origin": "https://evil.example"}
    )
    assert r.status_code == 403
    assert await collector.records() == []
    # The page may read the refusal (else the browser reports a network error and a tracker
    # retries for ever), but learns only the code: not its origin echoed, not the source.
    assert r.headers["access-control-allow-origin"] == "*" and "Origin" in r.headers["vary"]
    assert r.json() == {"success": False, "error": "origin_not_allowed", "field": "Origin",
                        "message": "the page's origin is not allowed for this write key"}


async def test_origin_allowed_for_one_source_is_refused_for_another(collector: Collector) -> None:
    # The backend source has no origins: a browser may not use its key.
    r = await collector.client.post("/v1/track", json={"event": "A", "anonymousId": "a"}, headers={**basic(SERVER_KEY), "Origin": SHOP})
    assert r.status_code == 403 and r.json()["error"] == "origin_not_allowed"
    assert "backend" not in r.text, "the source's name is not for the browser"
    # An unknown write key: readable by a page on any origin, as it was by a server-side caller.
    for headers, readable in (({"Origin": "https://evil.example"}, "*"), ({}, None)):
        r = await collector.client.post("/v1/track", json={"event": "A", "anonymousId": "a", "writeKey": "nope"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "unknown_write_key"
        assert r.headers.get("access-control-allow-origin") == readable
        assert "nope" not in r.text


async def test_other_refusals_stay_hidden_from_a_disallowed_origin(collector: Collector) -> None:
    r = await collector.client.post("/v1/track", content=b"{", headers={**basic(WRITE_KEY), "Origin": "https://evil.example"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


async def test_server_side_request_without_origin_is_never_refused_for_cors(collector: Collector) -> None:
    r = await collector.client.post("/v1/track", json={"event": "A", "anonymousId": "a"}, headers=basic(WRITE_KEY))
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers


async def test_beacon_text_plain_cross_origin_with_body_write_key(collector: Collector) -> None:
    # navigator.sendBeacon: text/plain, no preflight, write key in the body.
    body = orjson.dumps({"batch": [{"type": "track", "event": "Left", "anonymousId": "a"}], "writeKey": WRITE_KEY})
    r = await collector.client.post("/v1/batch", content=body, headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": SHOP + "/"})
    assert r.status_code == 200
    (env,) = await collector.records()
    assert env["event"] == "Left" and env["source"] == "web"


async def test_configured_origins_are_normalised_like_the_browsers_origin_header(make_collector: MakeCollector) -> None:
    # Browsers send the scheme and host in lower case and no path; a config written as
    # "https://Shop.Example" or "https://shop.example/" must still match.
    c = await make_collector({"sources": {"web": {"write_key": "k", "origins": ["HTTPS://Shop.Example/"]},
                                          "app": {"write_key": "k2", "origins": ["https://app.example:443",
                                                                                 "http://localhost:8000"]}}})
    r = await c.client.post("/v1/track", json={"event": "E", "userId": "u", "writeKey": "k2"},
                            headers={"Origin": "https://app.example"})
    assert r.status_code == 200, r.text  # the default port is never in an Origin header
    r = await c.client.post("/v1/track", json={"event": "E", "userId": "u", "writeKey": "k"},
                            headers={"Origin": "https://shop.example"})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == "https://shop.example"


def test_an_origin_with_a_path_is_a_config_error() -> None:
    from tripwire.collector.config import load_sources
    from tripwire.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match=r"'sources.web.origins\[0\]' has value 'https://shop.example/checkout'"):
        load_sources(from_dict({"sources": {"web": {"write_key": "k", "origins": ["https://shop.example/checkout"]}}}))
