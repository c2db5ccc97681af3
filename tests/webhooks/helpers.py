"""Builders shared by the webhook tests: triggers, secrets, a dispatcher on a real SQLite log."""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tripwire.webhooks import Dispatcher, WebhooksConfig
from tripwire.webhooks.ssrf import Resolver
from tripwire.log import TRIGGERS, EventLog
from tripwire.triggers import EndpointConfig, Trigger, trigger_id

FAST = {
    "retry_schedule_s": [0.0, 0.2, 0.2, 0.2, 0.2],
    "retry_jitter": 0.0,
    "attempt_timeout_s": 3.0,
    "scan_interval_s": 0.1,
    "allow_networks": ["127.0.0.1/32"],
    "stop_grace_s": 0.5,
}


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def make_trigger(endpoint: str, n: int = 0, rule: str = "abandoned_cart", **extra: Any) -> Trigger:
    key = f"anon-{n}"
    message_ids = [f"m-{n}-a", f"m-{n}-b"]
    events: list[dict[str, Any]] = [
        {"type": "track", "event": "AddToCart", "anonymousId": key, "messageId": message_ids[0],
         "timestamp": "2026-11-29T12:00:00.000Z", "properties": {"sku": "SKU-1", "price": 9.5}},
        {"type": "track", "event": "PageView", "anonymousId": key, "messageId": message_ids[1],
         "timestamp": "2026-11-29T12:00:10.000Z"},
    ]
    return Trigger(
        id=trigger_id(rule, key, message_ids),
        rule=rule,
        endpoint=endpoint,
        key=key,
        fired_at="2026-11-29T12:00:30.000Z",
        events=events,
        payload={"cart": "SKU-1", "n": n, **extra},
    )


async def publish(log: EventLog, triggers: Sequence[Trigger]) -> None:
    await log.append(TRIGGERS, [(t.key.encode(), t.to_json()) for t in triggers])


def settings(**overrides: Any) -> WebhooksConfig:
    return WebhooksConfig(**{**FAST, **overrides})


def endpoint(url: str, secret: str, **kw: Any) -> EndpointConfig:
    return EndpointConfig(url=url, secret=secret, **kw)


def dispatcher(
    log: EventLog,
    tmp_path: Path,
    endpoints: dict[str, EndpointConfig],
    resolver: Resolver | None = None,
    **overrides: Any,
) -> Dispatcher:
    return Dispatcher(log, tmp_path / "webhooks.db", settings(**overrides), endpoints, resolver=resolver)


def state_of(d: Dispatcher, delivery_id: str) -> str | None:
    row = d.store.get(delivery_id)
    return row.state if row is not None else None
