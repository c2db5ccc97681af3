"""Signatures checked by an independent implementation: the `standardwebhooks` package."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tripwire.webhooks import WebhookConfigError, parse_secrets, sign
from tripwire.webhooks.attempt import Sender
from tripwire.webhooks.ssrf import Guard
from tripwire.webhooks.transport import EndpointPool
from tripwire.webhooks.store import DELIVERED

from .helpers import dispatcher, endpoint, make_trigger, new_secret, publish, state_of
from .receiver import wait_until


def test_matches_the_reference_implementation() -> None:
    secret = new_secret()
    body = b'{"type":"trigger.fired","data":{"x":"\xc3\xa9"}}'
    ts = int(time.time())
    ours = sign(parse_secrets(secret, "t"), "trg_1", ts, body)
    theirs = Webhook(secret).sign("trg_1", _dt(ts), body.decode())
    assert ours == theirs
    assert Webhook(secret).verify(body, dict(_sent(secret, body))) == {"type": "trigger.fired", "data": {"x": "é"}}


def _sent(secret: str, body: bytes, extra: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The headers the dispatcher's sender puts on a request with ``body`` (no request is made)."""
    pool = EndpointPool(Guard(), max_connections=1)
    sender = Sender(pool, "http://127.0.0.1:9/hook", parse_secrets(secret, "t"), extra or {}, timeout_s=1)
    return [(k.decode(), v.decode()) for k, v in sender.headers(b"trg_1", body)]


def _dt(ts: int):  # noqa: ANN202
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC)


def test_tampered_body_or_wrong_secret_fails() -> None:
    secret = new_secret()
    body = b'{"a":1}'
    headers = dict(_sent(secret, body))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_extra_headers_cannot_override_webhook_headers() -> None:
    secret = new_secret()
    sent = _sent(secret, b"{}", {"Webhook-Id": "forged", "webhook-signature": "v1,forged", "X-Team": "growth",
                                 "User-Agent": "mine"})
    values: dict[str, list[str]] = {}
    for name, value in sent:
        values.setdefault(name.lower(), []).append(value)
    assert values["webhook-id"] == ["trg_1"] and len(values["webhook-signature"]) == 1
    assert "forged" not in values["webhook-signature"][0]
    assert values["x-team"] == ["growth"] and values["user-agent"] == ["mine"]  # no default user agent beside it
    assert Webhook(secret).verify(b"{}", dict(sent)) == {}


@pytest.mark.parametrize("bad", ["", "   ", "whsec_!!notbase64!!", "whsec_"])
def test_bad_secrets_name_the_endpoint(bad: str) -> None:
    with pytest.raises(WebhookConfigError, match="endpoints.crm.secret"):
        parse_secrets(bad, "endpoints.crm.secret")


def test_secret_without_prefix_is_base64_like_the_reference() -> None:
    raw = base64.b64encode(b"k" * 32).decode()
    assert parse_secrets(raw, "t") == parse_secrets("whsec_" + raw, "t") == [b"k" * 32]


async def test_rotation_every_delivery_verifies_with_old_and_new_secret(log, receivers, tmp_path):
    old, new = new_secret(), new_secret()
    rx = receivers()
    d = dispatcher(log, tmp_path, {"crm": endpoint(rx.url, f"{new} {old}")})
    trigger = make_trigger("crm")
    await d.start()
    try:
        await publish(log, [trigger])
        await wait_until(lambda: state_of(d, trigger.id) == DELIVERED)
    finally:
        await d.stop()
    (req,) = rx.requests
    signatures = req.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert Webhook(old).verify(req.body, req.headers)["data"]["id"] == trigger.id
    assert Webhook(new).verify(req.body, req.headers)["data"]["id"] == trigger.id
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(req.body, req.headers)
