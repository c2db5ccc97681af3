"""Trigger records (rules engine -> triggers topic -> webhook dispatcher) and endpoints.

A trigger is written once per match to the ``triggers`` topic, keyed by the
correlation key. Its ``id`` is derived from the rule, the key and the matched
events' messageIds, so replaying the same input yields the same id: the
dispatcher uses it as the Standard Webhooks ``webhook-id`` and as its dedup key.

Endpoints are declared in config, never in rule files::

    [endpoints.crm]
    url = "https://crm.example.com/hooks/tripwire"
    secret = "whsec_..."          # or TRIPWIRE_ENDPOINTS__CRM__SECRET
    headers = { "X-Team" = "growth" }
    concurrency = 4
    enabled = true
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tripwire.config import Config, ConfigError, build


def trigger_id(rule: str, key: str, message_ids: Sequence[str]) -> str:
    digest = hashlib.sha256("\x1f".join([rule, key, *message_ids]).encode()).hexdigest()
    return f"trg_{digest[:32]}"


@dataclass(frozen=True)
class Trigger:
    id: str
    rule: str  # rule name as written in the rule file
    endpoint: str  # name of an [endpoints.<name>] table
    key: str  # correlation key value
    fired_at: str  # event time (ISO 8601 UTC) at which the rule matched
    events: list[dict[str, Any]]  # matched envelopes, in match order
    payload: dict[str, Any] | None = None  # the rule's payload template output

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def from_json(cls, data: bytes) -> Trigger:
        return cls(**orjson.loads(data))


@dataclass(frozen=True)
class EndpointConfig:
    url: str
    secret: str = ""  # whsec_<base64>; several space-separated while rotating
    headers: dict[str, str] = field(default_factory=dict)
    concurrency: int = 4
    enabled: bool = True


def endpoints(config: Config) -> dict[str, EndpointConfig]:
    """Every ``[endpoints.<name>]`` table, checked."""
    out = {}
    for name, table in config.table("endpoints").items():
        if not isinstance(table, dict):
            raise ConfigError(f"Config 'endpoints.{name}' must be a table.")
        if "url" not in table:
            raise ConfigError(f"Config 'endpoints.{name}.url' is required.")
        out[name] = build(EndpointConfig, table, f"endpoints.{name}")
    return out
