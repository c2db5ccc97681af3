"""Collector test fixtures: the app in-process over httpx's ASGI transport, on a real SQLite log."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from tripwire.collector import create_app
from tripwire.config import from_dict
from tripwire.log import EVENTS, INVALID, EventLog
from tripwire.log.sqlite import SqliteLog

PEER = ("203.0.113.77", 50123)
WRITE_KEY = "wk_web"
SERVER_KEY = "wk_server"

SOURCES = {
    "web": {"write_key": WRITE_KEY, "origins": ["https://shop.example", "http://localhost:3000"]},
    "backend": {"write_key": SERVER_KEY},
}


@dataclass
class Collector:
    app: Starlette
    log: EventLog
    client: httpx.AsyncClient

    async def records(self, topic: str = EVENTS) -> list[dict[str, Any]]:
        out = []
        for p in await self.log.partitions(topic):
            out += [orjson.loads(r.value) for r in await self.log.read(topic, p, 0, 100_000)]
        return out

    async def invalid(self) -> list[dict[str, Any]]:
        return await self.records(INVALID)

    async def keyed(self, topic: str = EVENTS) -> list[tuple[bytes | None, dict[str, Any]]]:
        out = []
        for p in await self.log.partitions(topic):
            out += [(r.key, orjson.loads(r.value)) for r in await self.log.read(topic, p, 0, 100_000)]
        return out


MakeCollector = Callable[..., Awaitable[Collector]]


@pytest.fixture
async def make_collector(tmp_path: Path) -> AsyncIterator[MakeCollector]:
    """Build a collector from a config dict; each call gets its own SQLite log under tmp_path."""
    opened: list[tuple[EventLog, httpx.AsyncClient]] = []

    async def make(raw: dict[str, Any] | None = None, *, peer: tuple[str, int] = PEER, raise_errors: bool = True) -> Collector:
        raw = dict(raw or {})
        raw.setdefault("data_dir", str(tmp_path / f"data{len(opened)}"))
        config = from_dict(raw)
        log = SqliteLog(Path(raw["data_dir"]) / "log.db", 4)
        await log.start()
        app = create_app(config, log)
        transport = httpx.ASGITransport(app=app, client=peer, raise_app_exceptions=raise_errors)
        client = httpx.AsyncClient(transport=transport, base_url="http://collector.test")
        opened.append((log, client))
        return Collector(app, log, client)

    yield make
    for log, client in opened:
        await client.aclose()
        await log.stop()


@pytest.fixture
async def collector(make_collector: MakeCollector) -> Collector:
    """A collector with two sources (web with an origin list, backend without)."""
    return await make_collector({"sources": SOURCES})


@pytest.fixture
async def open_collector(make_collector: MakeCollector) -> Collector:
    """A collector with no sources configured (open mode)."""
    return await make_collector()


def basic(key: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


REPO_EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
