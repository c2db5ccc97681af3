"""Endpoints as the dispatcher uses them (checked config + runtime state) and the payload shape."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from tripwire.triggers import EVENT_FIELDS, EndpointConfig, Trigger

from .errors import WebhookConfigError
from .signing import parse_secrets


def build_body(trigger: Trigger, event_type: str, events: str = "minimal") -> bytes:
    """The Standard Webhooks payload ``{type, timestamp, data}``; signed and sent byte for byte.

    ``events`` is the endpoint's ``events`` setting: the matched envelopes whole
    (``full``), reduced to :data:`~tripwire.triggers.EVENT_FIELDS` (``minimal``: no
    context, so no IP, user agent or page URL), or an empty list (``none``).
    """
    data = {
        "id": trigger.id,
        "rule": trigger.rule,
        "key": trigger.key,
        "userId": trigger.user_id,
        "anonymousId": trigger.anonymous_id,
        "identity": trigger.identity,
        "fired_at": trigger.fired_at,
        "events": _events(trigger.events, events),
        "payload": trigger.payload,
    }
    return orjson.dumps({"type": event_type, "timestamp": trigger.fired_at, "data": data})


def _events(envelopes: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    if mode == "full":
        return envelopes
    if mode == "none":
        return []
    return [{f: env[f] for f in EVENT_FIELDS if f in env} for env in envelopes if isinstance(env, dict)]


@dataclass
class Endpoint:
    name: str
    url: str
    keys: list[bytes]
    headers: dict[str, str]
    concurrency: int
    configured_on: bool
    events: str = "minimal"  # what of the matched events deliveries carry (build_body)
    disabled_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.configured_on and self.disabled_reason is None


def check_endpoints(endpoints: Mapping[str, EndpointConfig]) -> dict[str, Endpoint]:
    out = {}
    for name, ep in endpoints.items():
        where = f"endpoints.{name}"
        try:
            url = httpx.URL(ep.url)
        except httpx.InvalidURL as exc:
            raise WebhookConfigError(f"Config '{where}.url' is not a URL: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise WebhookConfigError(f"Config '{where}.url' must be an http:// or https:// URL with a host.")
        if ep.concurrency < 1:
            raise WebhookConfigError(f"Config '{where}.concurrency' has value {ep.concurrency!r}. Must be >= 1.")
        keys = parse_secrets(ep.secret, f"{where}.secret")
        out[name] = Endpoint(name, ep.url, keys, dict(ep.headers), ep.concurrency, ep.enabled, ep.events)
    return out
