"""Readiness reflects each backend: under `tripwire run` the collector's /readyz turns 503 when the
log is down or when a service sharing the process (engine, dispatcher, sink) has died."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tripwire.collector.service import CollectorService
from tripwire.config import from_dict
from tripwire.log.sqlite import SqliteLog
from tripwire.service import run_services

from tests.fixtures.waiting import until


class Sink:
    """A service that is up but not ready (a consumer whose broker went away), and ready again.

    Not ``failed``: run_services stops the whole process on a failed service, whenever its watcher
    looks; what /readyz says about a failed one is tested where that cannot race
    (tests/tripwire/test_metrics.py)."""

    name = "sink"

    def __init__(self) -> None:
        self.failed = False
        self.up = True

    async def ready(self) -> bool:
        return self.up

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


async def test_collector_readyz_follows_the_log_and_every_service_of_the_process(tmp_path: Path) -> None:
    config = from_dict({"data_dir": str(tmp_path), "server": {"port": 0}})
    log = SqliteLog(tmp_path / "log.db", 4)
    await log.start()
    collector = CollectorService(config, log)
    sink = Sink()
    stop = asyncio.Event()
    task = asyncio.create_task(run_services([sink, collector], stop))
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            async def ready() -> bool:  # every service started (until then /readyz says "starting")
                if not (collector.port and collector._server is not None and collector._server.started):
                    return False
                return (await client.get(f"http://127.0.0.1:{collector.port}/readyz")).status_code == 200
            await until(ready, 10, "/readyz to answer 200 once every service has started")
            url = f"http://127.0.0.1:{collector.port}/readyz"
            sink.up = False
            r = await client.get(url)
            assert r.status_code == 503 and "service:sink" in r.json()["message"]
            sink.up = True
            assert (await client.get(url)).status_code == 200
            await log.stop()
            assert (await client.get(url)).status_code == 503
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await log.stop()
