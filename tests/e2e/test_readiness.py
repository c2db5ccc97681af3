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
    name = "sink"

    def __init__(self) -> None:
        self.failed = False

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
            await until(lambda: collector.port and collector._server is not None and collector._server.started, 10,
                        "the collector's server to start")
            url = f"http://127.0.0.1:{collector.port}/readyz"
            assert (await client.get(url)).status_code == 200
            sink.failed = True  # its background task died
            r = await client.get(url)
            assert r.status_code == 503 and "service:sink" in r.json()["message"]
            sink.failed = False
            assert (await client.get(url)).status_code == 200
            await log.stop()
            assert (await client.get(url)).status_code == 503
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await log.stop()
