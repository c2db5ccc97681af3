"""Identity links at the collector: a server's userId-only events are keyed by the person's browser.

Through the HTTP API on a real SQLite log: what key each event gets, what
``keyedBy`` says, which links are recorded, and what a forged identify cannot do.
"""

from __future__ import annotations

from typing import Any

import pytest

from tripwire.collector.identity import REFRESH_MS, user_hash, worth_writing
from tripwire.config import ConfigError, from_dict
from tripwire.identity import CLAIMED, TRUSTED, Link

from .conftest import SERVER_KEY, SOURCES, WRITE_KEY, Collector, MakeCollector, basic

BROWSER = {**basic(WRITE_KEY), "Origin": "https://shop.example"}
SERVER = basic(SERVER_KEY)
SECRET = "s3cret-of-the-site"


async def post(c: Collector, path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    r = await c.client.post(path, json=body, headers=headers)
    assert r.status_code == 200, r.text


async def by_id(c: Collector) -> dict[str, tuple[bytes | None, dict[str, Any]]]:
    return {env["messageId"]: (key, env) for key, env in await c.keyed()}


async def test_a_server_event_with_only_the_user_id_is_keyed_by_the_browser_that_identified(collector: Collector) -> None:
    await post(collector, "/v1/track", {"event": "Product Added", "anonymousId": "anon-1", "messageId": "cart"}, BROWSER)
    await post(collector, "/v1/identify", {"userId": "u-1", "anonymousId": "anon-1", "messageId": "login"}, BROWSER)
    await post(collector, "/v1/track", {"event": "Order Completed", "userId": "u-1", "messageId": "order"}, SERVER)
    got = await by_id(collector)
    assert got["cart"][0] == b"anon-1" and "keyedBy" not in got["cart"][1]  # nothing to say about anonymous events
    assert got["login"][0] == b"anon-1"
    assert got["login"][1]["keyedBy"] == {"key": "anon-1", "via": "anonymousId", "trust": "claimed"}
    key, order = got["order"]
    assert key == b"anon-1"
    assert order["keyedBy"] == {"key": "anon-1", "via": "link", "trust": "claimed"}
    assert order["userId"] == "u-1" and "anonymousId" not in order  # the event's own ids are never changed
    (link,) = (await collector.log.links(["u-1"]))["u-1"]
    assert (link.anonymous_id, link.trust, link.source) == ("anon-1", CLAIMED, "web")


async def test_without_a_link_a_user_id_event_keeps_its_user_id_as_key(collector: Collector) -> None:
    await post(collector, "/v1/track", {"event": "Order Completed", "userId": "u-9", "messageId": "order"}, SERVER)
    ((key, env),) = await collector.keyed()
    assert key == b"u-9"
    assert env["keyedBy"] == {"key": "u-9", "via": "userId", "trust": "trusted"}  # the backend vouches for it


async def test_a_link_learned_earlier_in_the_same_batch_keys_the_later_events(collector: Collector) -> None:
    """A backend batch: identify (both ids) then the order (userId only), in event-time order."""
    batch = [
        {"type": "track", "event": "Order Completed", "userId": "u-2", "messageId": "order",
         "timestamp": "2030-01-01T00:00:02.000Z"},
        {"type": "identify", "userId": "u-2", "anonymousId": "anon-2", "messageId": "login",
         "timestamp": "2030-01-01T00:00:01.000Z"},
    ]
    await post(collector, "/v1/batch", {"batch": batch, "sentAt": "2030-01-01T00:00:03.000Z"}, SERVER)
    got = await by_id(collector)
    assert got["order"][0] == b"anon-2"
    assert got["order"][1]["keyedBy"] == {"key": "anon-2", "via": "link", "trust": "trusted"}


async def test_the_most_recent_device_wins_among_links_of_equal_trust(collector: Collector) -> None:
    for i, anon in enumerate(["phone", "laptop", "phone"]):
        await post(collector, "/v1/track", {"event": "Page", "userId": "u-3", "anonymousId": anon}, BROWSER)
        await post(collector, "/v1/track", {"event": "Order Completed", "userId": "u-3", "messageId": f"order-{i}"}, SERVER)
    got = await by_id(collector)
    assert [got[f"order-{i}"][0] for i in range(3)] == [b"phone", b"laptop", b"phone"]


async def test_a_forged_claim_cannot_override_a_trusted_link(collector: Collector) -> None:
    """The backend identified u-4 on its browser (trusted); someone with the public write key claims u-4."""
    await post(collector, "/v1/identify", {"userId": "u-4", "anonymousId": "victim-browser"}, SERVER)
    await post(collector, "/v1/identify", {"userId": "u-4", "anonymousId": "forger-browser", "messageId": "forged"}, BROWSER)
    await post(collector, "/v1/track", {"event": "Cart Viewed", "userId": "u-4", "anonymousId": "forger-browser",
                                        "messageId": "forger-event"}, BROWSER)
    await post(collector, "/v1/track", {"event": "Order Completed", "userId": "u-4", "messageId": "order"}, SERVER)
    got = await by_id(collector)
    assert got["order"][0] == b"victim-browser"
    assert got["order"][1]["keyedBy"]["trust"] == "trusted"
    # the forger's own events stay under its own key, marked as a claim
    assert got["forger-event"][0] == b"forger-browser"
    assert got["forger-event"][1]["keyedBy"] == {"key": "forger-browser", "via": "anonymousId", "trust": "claimed"}


async def test_a_browser_the_backend_identified_sends_trusted_events(collector: Collector) -> None:
    """The backend read the snippet's anonymousId (its tw_a cookie) at login and identified the pair."""
    await post(collector, "/v1/identify", {"userId": "u-10", "anonymousId": "anon-10"}, SERVER)
    await post(collector, "/v1/track", {"event": "Product Added", "userId": "u-10", "anonymousId": "anon-10",
                                        "messageId": "cart"}, BROWSER)
    await post(collector, "/v1/track", {"event": "Product Added", "userId": "u-10", "anonymousId": "elsewhere",
                                        "messageId": "other"}, BROWSER)
    got = await by_id(collector)
    assert got["cart"][1]["keyedBy"] == {"key": "anon-10", "via": "anonymousId", "trust": "trusted"}
    assert got["other"][1]["keyedBy"]["trust"] == "claimed"  # another browser claiming the same user


async def test_a_client_cannot_choose_its_key_or_trust(collector: Collector) -> None:
    forged = {"key": "victim-browser", "via": "link", "trust": "trusted"}
    await post(collector, "/v1/track", {"event": "E", "anonymousId": "a", "keyedBy": forged, "messageId": "x"}, BROWSER)
    await post(collector, "/v1/track", {"event": "E", "userId": "u-5", "keyedBy": forged, "messageId": "y"}, BROWSER)
    got = await by_id(collector)
    assert got["x"] == (b"a", got["x"][1]) and "keyedBy" not in got["x"][1]
    assert got["y"][0] == b"u-5" and got["y"][1]["keyedBy"] == {"key": "u-5", "via": "userId", "trust": "claimed"}


async def test_an_alias_links_its_previous_id(collector: Collector) -> None:
    await post(collector, "/v1/alias", {"previousId": "anon-6", "userId": "u-6", "messageId": "alias"}, SERVER)
    await post(collector, "/v1/track", {"event": "Order Completed", "userId": "u-6", "messageId": "order"}, SERVER)
    got = await by_id(collector)
    assert got["alias"][0] == b"anon-6"
    assert got["alias"][1]["keyedBy"] == {"key": "anon-6", "via": "link", "trust": "trusted"}
    assert got["order"][0] == b"anon-6"


async def test_an_alias_with_a_numeric_previous_id_links_it_as_a_string(collector: Collector) -> None:
    """An id is a string in the envelope (as userId is): schemathesis sent previousId 1751 and got a 500."""
    await post(collector, "/v1/alias", {"previousId": 1751, "userId": 42, "messageId": "alias"}, SERVER)
    ((key, env),) = await collector.keyed()
    assert key == b"1751" and env["previousId"] == "1751"
    assert set(await collector.log.links(["42"])) == {"42"}


@pytest.fixture
async def verified(make_collector: MakeCollector) -> Collector:
    """The browser source with an identity_secret."""
    return await make_collector({"sources": {**SOURCES, "web": {**SOURCES["web"], "identity_secret": SECRET}}})


async def test_with_identity_secret_an_identify_without_a_valid_user_hash_records_no_link(verified: Collector) -> None:
    from tripwire.collector.identity import UNVERIFIED

    before = UNVERIFIED.labels("web")._value.get()
    await post(verified, "/v1/identify", {"userId": "u-7", "anonymousId": "forger", "messageId": "nohash"}, BROWSER)
    await post(verified, "/v1/identify", {"userId": "u-7", "anonymousId": "forger", "messageId": "badhash",
                                          "context": {"userHash": user_hash(b"guess", "u-7")}}, BROWSER)
    await post(verified, "/v1/track", {"event": "Order Completed", "userId": "u-7", "messageId": "order"}, SERVER)
    got = await by_id(verified)
    assert {"nohash", "badhash"} <= set(got)  # still ingested
    assert got["order"][0] == b"u-7"  # no link was recorded
    assert await verified.log.links(["u-7"]) == {}
    assert UNVERIFIED.labels("web")._value.get() == before + 2
    assert "userHash" not in got["badhash"][1]["context"]  # a credential: never stored


async def test_with_identity_secret_a_valid_user_hash_makes_a_trusted_link(verified: Collector) -> None:
    from tripwire.collector.identity import UNVERIFIED

    good = user_hash(SECRET.encode(), "u-8")
    assert good == __import__("hmac").new(SECRET.encode(), b"u-8", "sha256").hexdigest()  # what a backend computes
    await post(verified, "/v1/identify", {"userId": "u-8", "anonymousId": "anon-8", "messageId": "login",
                                          "context": {"userHash": good.upper()}}, BROWSER)
    await post(verified, "/v1/track", {"event": "Order Completed", "userId": "u-8", "messageId": "order"}, SERVER)
    got = await by_id(verified)
    assert got["login"][1]["keyedBy"]["trust"] == "trusted"
    assert "userHash" not in got["login"][1]["context"]
    assert got["order"][0] == b"anon-8"
    assert got["order"][1]["keyedBy"] == {"key": "anon-8", "via": "link", "trust": "trusted"}
    # later events of the verified browser carry the userId but no hash (the snippet keeps the userId only)
    before = UNVERIFIED.labels("web")._value.get()
    await post(verified, "/v1/track", {"event": "Page", "userId": "u-8", "anonymousId": "anon-8", "messageId": "later"},
               BROWSER)
    assert (await by_id(verified))["later"][1]["keyedBy"]["trust"] == "trusted"
    assert UNVERIFIED.labels("web")._value.get() == before


async def test_links_are_durable_for_the_next_collector_on_the_same_log(make_collector: MakeCollector, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = await make_collector({"sources": SOURCES, "data_dir": str(tmp_path / "shared")})
    await post(first, "/v1/identify", {"userId": "u-9", "anonymousId": "anon-9"}, BROWSER)
    await first.log.stop()
    second = await make_collector({"sources": SOURCES, "data_dir": str(tmp_path / "shared")})
    await post(second, "/v1/track", {"event": "Order Completed", "userId": "u-9", "messageId": "order"}, SERVER)
    assert (await by_id(second))["order"][0] == b"anon-9"


def test_a_link_is_written_again_only_when_it_changes_something() -> None:
    phone, laptop = Link("u", "phone", CLAIMED, 1000), Link("u", "laptop", CLAIMED, 2000)
    assert worth_writing(Link("u", "tablet", CLAIMED, 3000), [phone, laptop])  # a new device
    assert not worth_writing(Link("u", "laptop", CLAIMED, 3000), [phone, laptop])  # the best already
    assert worth_writing(Link("u", "phone", CLAIMED, 3000), [phone, laptop])  # keying moves back to the phone
    assert worth_writing(Link("u", "laptop", CLAIMED, 2000 + REFRESH_MS), [phone, laptop])  # its time refreshed
    assert worth_writing(Link("u", "laptop", TRUSTED, 3000), [phone, laptop])  # a better trust
    trusted = Link("u", "phone", TRUSTED, 1000)
    assert not worth_writing(Link("u", "phone", CLAIMED, 9000), [trusted])  # a claim never downgrades
    assert not worth_writing(Link("u", "laptop", CLAIMED, 9000), [trusted, laptop])  # cannot become the best


def test_identity_secret_belongs_to_browser_sources() -> None:
    from tripwire.collector.config import load_sources

    config = from_dict({"sources": {"backend": {"write_key": "k", "identity_secret": "x"}}})
    with pytest.raises(ConfigError, match=r"'sources.backend.identity_secret' is set on a server-side source"):
        load_sources(config)
