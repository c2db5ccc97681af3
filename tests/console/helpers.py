"""Console test helpers: the console served by its own service (real uvicorn) on a real SQLite log and store."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from tripwire.config import Config, from_dict
from tripwire.console import ConsoleService
from tripwire.envelope import format_time_ms
from tripwire.log import EVENTS, INVALID, TRIGGERS, EventLog
from tripwire.log.sqlite import SqliteLog
from tripwire.webhooks import Store
from tripwire.webhooks.store import DEAD, NewDelivery

SECRET = "whsec_Y4PBOb53VF7OoWLmD0wZfsT9u0Rr2vhV"
HOOK = "https://hooks.example.com/T000/B000/secret-token-123"  # its path is the credential
RULES = """
rule "abandoned cart"
  when AddToCart as cart where cart.properties.price >= 20
  then no Checkout within 30s
  post crm with { sku: cart.properties.sku }
"""


def config_for(tmp: Path, **console: Any) -> Config:
    rules = tmp / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "shop.rules").write_text(RULES)
    return from_dict({
        "data_dir": str(tmp / "data"),
        "rules": {"dir": str(rules)},
        "endpoints": {"crm": {"url": HOOK, "secret": SECRET}},
        "console": {"port": 0, **console},
    })


def envelope(name: str, anonymous_id: str, at_ms: int, mid: str, **props: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "anonymousId": anonymous_id, "messageId": mid, "source": "web",
            "timestamp": format_time_ms(at_ms), "receivedAt": format_time_ms(at_ms), "properties": props,
            "context": {"ip": "203.0.113.77", "page": {"url": "https://shop.example/cart?reset=tok-999", "path": "/cart"}}}


@dataclass
class Running:
    config: Config
    log: EventLog
    service: ConsoleService
    client: httpx.AsyncClient

    @property
    def store_path(self) -> Path:
        return self.config.data_dir / "webhooks.db"

    async def append(self, *envs: dict[str, Any], topic: str = EVENTS) -> None:
        await self.log.append(topic, [(str(e.get("anonymousId") or e.get("key")).encode(), orjson.dumps(e)) for e in envs])

    async def append_invalid(self, env: dict[str, Any], reason: str, message: str) -> None:
        record = {"reason": reason, "field": "properties.price", "message": message, "messageId": env["messageId"],
                  "source": "web", "receivedAt": env["receivedAt"], "event": env}
        await self.log.append(INVALID, [(env["anonymousId"].encode(), orjson.dumps(record))])

    async def append_trigger(self, trigger: dict[str, Any]) -> None:
        await self.log.append(TRIGGERS, [(trigger["key"].encode(), orjson.dumps(trigger))])

    def dead_letter(self, trigger_id: str, key: str) -> None:
        store = Store(self.store_path)
        body = orjson.dumps({"type": "trigger.fired", "data": {"id": trigger_id, "rule": "abandoned cart", "key": key}})
        store.write(Store.op_add([NewDelivery(trigger_id, "crm", body, 0, state=DEAD, error=f"POST {HOOK} failed")], 0))
        store.close()

    async def csrf(self, path: str = "/deliveries") -> str:
        page = (await self.client.get(path)).text
        m = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
        assert m, f"no CSRF token in {path}"
        return m.group(1)


class running:
    """``async with running(config) as r``: a started SQLite log and console service, and a client for it."""

    def __init__(self, config: Config) -> None:
        self.config = config

    async def __aenter__(self) -> Running:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = SqliteLog(self.config.data_dir / "log.db", 4)
        await self.log.start()
        self.service = ConsoleService(self.config, self.log)
        await self.service.start()
        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.service.port}", timeout=10)
        return Running(self.config, self.log, self.service, self.client)

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self.service.stop()
        await self.log.stop()
