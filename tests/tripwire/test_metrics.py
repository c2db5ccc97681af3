"""The metrics/probe server of the standalone services, and readiness following the log and the services."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tripwire.config import from_dict
from tripwire.log import open_log
from tripwire.metrics import Readiness, MetricsServer
from tripwire.service import run_services

from tests.fixtures.waiting import until


class Flaky:
    name = "flaky"

    def __init__(self) -> None:
        self.failed = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


async def test_readyz_reflects_the_log_and_each_service(tmp_path: Path) -> None:
    readiness = Readiness()
    readiness.bind_loop(asyncio.get_running_loop())
    server = MetricsServer("127.0.0.1", 0, readiness).start()
    log = open_log(from_dict({"data_dir": str(tmp_path)}))
    readiness.add("log:sqlite", log)
    service = Flaky()
    readiness.add_check("service:flaky", lambda: _not_failed(service))

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(f"http://127.0.0.1:{server.port}{path}", timeout=10)

    try:
        r = await get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["log:sqlite"] is False  # not started
        await log.start()
        r = await get("/readyz")
        assert r.status_code == 200 and r.json() == {"status": "ready", "checks": {"log:sqlite": True, "service:flaky": True}}
        service.failed = True
        assert (await get("/readyz")).json()["checks"]["service:flaky"] is False
        await log.stop()
        assert (await get("/readyz")).status_code == 503
        metrics = await get("/metrics")
        assert metrics.status_code == 200 and "python_info" in metrics.text
        assert (await get("/healthz")).status_code == 200
    finally:
        server.stop()


async def _not_failed(service: Flaky) -> bool:
    return not service.failed


async def test_run_services_registers_each_service() -> None:
    from tripwire.metrics import READINESS

    stop = asyncio.Event()
    service = Flaky()
    task = asyncio.create_task(run_services([service], stop))
    await until(lambda: "service:flaky" in READINESS.names(), 10, "the service's readiness check to be registered",
                detail=READINESS.names)
    assert (await READINESS.check())["service:flaky"] is True
    service.failed = True
    assert (await READINESS.check())["service:flaky"] is False
    stop.set()
    await asyncio.wait_for(task, 10)
    assert "service:flaky" not in READINESS.names()


def test_metrics_page_has_no_created_series() -> None:
    # prometheus_client adds a '<name>_created' gauge next to every counter and histogram (one more
    # series per label set, each a timestamp nobody graphs); Tripwire's /metrics leaves them out.
    import tripwire.collector.metrics  # noqa: F401 (registers the collector's counters)
    import tripwire.sinks.metrics  # noqa: F401
    from prometheus_client import REGISTRY, generate_latest

    page = generate_latest(REGISTRY).decode()
    assert "tripwire_collector_events_accepted_total" in page
    assert "tripwire_sink_rows_written_total" in page
    assert "_created" not in page


async def test_merged_page_keeps_this_process_samples_next_to_each_childs(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # tripwire run's /metrics: its own samples (the collector's counters, the dispatcher's backlog) as
    # they are, every child's labelled with its process. The first family read is this process's own.
    import tripwire.children
    import tripwire.metrics
    from prometheus_client import CollectorRegistry, Counter

    own = CollectorRegistry()
    Counter("tripwire_demo_events", "demo", ["source"], registry=own).labels("web").inc(3)
    child = '# HELP tripwire_demo_events_total demo\n# TYPE tripwire_demo_events_total counter\n' \
            'tripwire_demo_events_total{source="web"} 5.0\n'

    async def scrape() -> list[tuple[str, str]]:
        return [("engine-0", child)]

    monkeypatch.setattr(tripwire.children, "scrape", scrape)
    monkeypatch.setattr(tripwire.metrics, "REGISTRY", own)
    page = (await tripwire.metrics.exposition()).decode()
    assert 'tripwire_demo_events_total{source="web"} 3.0' in page, page
    assert 'tripwire_demo_events_total{process="engine-0",source="web"} 5.0' in page, page
