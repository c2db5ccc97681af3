"""What of the matched events an endpoint receives (``[endpoints.<name>] events``), on real receivers.

The default, ``minimal``, sends each matched event's messageId, type, event,
timestamp, userId, anonymousId and properties: no context, so no IP, user agent
or page URL reaches a third party unless its endpoint says ``full``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook

from tripwire.config import ConfigError, from_dict
from tripwire.triggers import Trigger, endpoints
from tripwire.webhooks.store import DELIVERED

from .helpers import dispatcher, endpoint, make_trigger, new_secret, publish, state_of
from .receiver import wait_until

BROWSER_EVENT: dict[str, Any] = {
    "type": "track", "event": "Product Added", "anonymousId": "anon-1", "userId": "u-1", "messageId": "m-1",
    "timestamp": "2026-11-29T12:00:00.000Z", "receivedAt": "2026-11-29T12:00:00.100Z", "source": "shop",
    "properties": {"sku": "shoe-42", "price": 49},
    "traits": {"email": "someone@example.com"},
    "context": {"ip": "203.0.113.0", "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/131",
                "page": {"url": "https://shop.example/cart?coupon=ANNA-SMITH", "path": "/cart"},
                "library": {"name": "tripwire.js", "version": "1"}},
    "keyedBy": {"key": "anon-1", "via": "anonymousId", "trust": "claimed"},
}


def identified(trigger: Trigger) -> Trigger:
    return replace(trigger, events=[BROWSER_EVENT], user_id="u-1", anonymous_id="anon-1", identity="claimed")


async def test_the_default_sends_no_ip_user_agent_or_url_and_full_sends_them(log, receivers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret = new_secret()
    default, full, none = receivers(), receivers(), receivers()
    d = dispatcher(log, tmp_path, {"crm": endpoint(default.url, secret),
                                   "warehouse": endpoint(full.url, secret, events="full"),
                                   "pager": endpoint(none.url, secret, events="none")})
    triggers = [identified(make_trigger(name, i)) for i, name in enumerate(("crm", "warehouse", "pager"))]
    await d.start()
    try:
        await publish(log, triggers)
        await wait_until(lambda: all(state_of(d, t.id) == DELIVERED for t in triggers))
    finally:
        await d.stop()
    bodies = {}
    for name, rx in (("crm", default), ("warehouse", full), ("pager", none)):
        (req,) = rx.requests
        Webhook(secret).verify(req.body, req.headers)
        bodies[name] = req.body
        data = orjson.loads(req.body)["data"]
        assert (data["userId"], data["anonymousId"], data["identity"]) == ("u-1", "anon-1", "claimed")
    minimal = orjson.loads(bodies["crm"])["data"]["events"]
    assert minimal == [{"messageId": "m-1", "type": "track", "event": "Product Added",
                        "timestamp": "2026-11-29T12:00:00.000Z", "userId": "u-1", "anonymousId": "anon-1",
                        "properties": {"sku": "shoe-42", "price": 49}}]
    for secretive in (b"203.0.113", b"Mozilla", b"ANNA-SMITH", b"someone@example.com"):
        assert secretive not in bodies["crm"] and secretive not in bodies["pager"]
        assert secretive in bodies["warehouse"]
    assert orjson.loads(bodies["warehouse"])["data"]["events"] == [BROWSER_EVENT]
    assert orjson.loads(bodies["pager"])["data"]["events"] == []


def test_a_trigger_record_without_identity_fields_still_reads() -> None:
    """Records written before triggers named the person (a replay, an old topic)."""
    old = orjson.loads(make_trigger("crm").to_json())
    for name in ("userId", "anonymousId", "identity"):
        del old[name]
    trigger = Trigger.from_json(orjson.dumps(old))
    assert (trigger.user_id, trigger.anonymous_id, trigger.identity) == (None, None, None)
    with pytest.raises(TypeError):
        Trigger.from_json(b'"userId"')


def test_an_unknown_events_setting_is_refused_naming_the_key() -> None:
    config = from_dict({"endpoints": {"crm": {"url": "https://crm.example/hook", "events": "everything"}}})
    with pytest.raises(ConfigError, match=r"'endpoints.crm.events' has value 'everything'.*'none', 'minimal', 'full'"):
        endpoints(config)
