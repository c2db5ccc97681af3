"""Trigger records (rules engine -> triggers topic -> webhook dispatcher) and endpoints.

A trigger is written once per match to the ``triggers`` topic, keyed by the
correlation key. It names the person next to the key: ``userId`` and
``anonymousId`` (the latest the engine knows for the key, see
:mod:`tripwire.identity`) and ``identity``, how far that userId is to be
believed (``"trusted"``, ``"claimed"``, or null when no userId is known). Its ``id`` is derived from the rule, the key and the matched
events' messageIds, so replaying the same input yields the same id: the
dispatcher uses it as the Standard Webhooks ``webhook-id`` and as its dedup key.

Endpoints are declared in config, never in rule files::

    [endpoints.crm]
    url = "https://crm.example.com/hooks/tripwire"
    secret = "whsec_..."          # or TRIPWIRE_ENDPOINTS__CRM__SECRET
    headers = { "X-Team" = "growth" }
    concurrency = 4
    enabled = true
    events = "minimal"            # what of the matched events it receives: "none" | "minimal" | "full"
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
    user_id: str | None = None  # JSON "userId"
    anonymous_id: str | None = None  # JSON "anonymousId"
    identity: str | None = None  # "trusted" | "claimed" | None

    def to_json(self) -> bytes:
        doc = dict(self.__dict__)
        doc["userId"] = doc.pop("user_id")
        doc["anonymousId"] = doc.pop("anonymous_id")
        return orjson.dumps(doc)

    @classmethod
    def from_json(cls, data: bytes) -> Trigger:
        doc = orjson.loads(data)
        if not isinstance(doc, dict):
            raise TypeError("a trigger record is a JSON object")
        for name, json in _JSON_NAMES.items():
            if json in doc:
                doc[name] = doc.pop(json)
        return cls(**doc)


_JSON_NAMES = {"user_id": "userId", "anonymous_id": "anonymousId"}  # Segment's names, as in the envelope


@dataclass(frozen=True)
class EndpointConfig:
    url: str
    secret: str = ""  # whsec_<base64>; several space-separated while rotating
    headers: dict[str, str] = field(default_factory=dict)
    concurrency: int = 4
    enabled: bool = True
    # The matched events in deliveries: "minimal" (EVENT_FIELDS only: no context, IP, user agent or page
    # URL), "full" (the whole envelopes) or "none".
    events: str = "minimal"


EVENTS_MODES = ("none", "minimal", "full")
# What "minimal" keeps of each matched envelope.
EVENT_FIELDS = ("messageId", "type", "event", "timestamp", "userId", "anonymousId", "properties")


def endpoints(config: Config) -> dict[str, EndpointConfig]:
    """Every ``[endpoints.<name>]`` table, checked."""
    out = {}
    for name, table in config.table("endpoints").items():
        if not isinstance(table, dict):
            raise ConfigError(f"Config 'endpoints.{name}' must be a table.")
        if "url" not in table:
            raise ConfigError(f"Config 'endpoints.{name}.url' is required.")
        ep = build(EndpointConfig, table, f"endpoints.{name}")
        if ep.events not in EVENTS_MODES:
            raise ConfigError(f"Config 'endpoints.{name}.events' has value {ep.events!r}. "
                              f"Expected one of {', '.join(repr(m) for m in EVENTS_MODES)}.")
        out[name] = ep
    return out
