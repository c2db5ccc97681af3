"""The collector behind a real uvicorn on loopback: the app, the Service, and the CLI commands."""

from __future__ import annotations

import asyncio
import gzip
import socket
from pathlib import Path

import httpx
import orjson
import pytest

from tripwire.collector import create_app
from tripwire.collector.errors import CollectorError
from tripwire.collector.service import create_service
from tests.fixtures.servers import run_command, run_server
from tripwire.config import from_dict
from tripwire.log import EVENTS
from tripwire.log.sqlite import SqliteLog

from tests.fixtures.waiting import until

from .conftest import SOURCES, WRITE_KEY, basic


async def stored(db: Path) -> list[dict]:
    log = SqliteLog(db, 4)
    await log.start()
    try:
        out = []
        for p in await log.partitions(EVENTS):
            out += [orjson.loads(r.value) for r in await log.read(EVENTS, p, 0, 100_000)]
        return out
    finally:
        await log.stop()


async def test_app_under_uvicorn_in_a_thread(tmp_path: Path) -> None:
    config = from_dict({"data_dir": str(tmp_path), "sources": SOURCES})
    app = create_app(config, SqliteLog(tmp_path / "log.db", 4), own_log=True)
    with run_server(app) as server:
        async with httpx.AsyncClient(base_url=server.url, headers=basic(WRITE_KEY), timeout=10) as client:
            r = await client.post("/v1/track", json={"event": "Real", "anonymousId": "a", "messageId": "m0"})
            assert r.status_code == 200 and r.text == '{"success": true}'
            batch = {"batch": [{"type": "track", "event": "B", "anonymousId": "a", "messageId": f"b{i}"} for i in range(20)]}
            r = await client.post("/v1/batch", content=gzip.compress(orjson.dumps(batch)), headers={"Content-Encoding": "gzip"})
            assert r.status_code == 200
            r = await client.post("/v1/track", content=b"{broken")
            assert r.status_code == 400 and r.json()["error"] == "invalid_json"
            r = await client.post("/v1/batch", content=b"x" * 600_000)
            assert r.status_code == 413 and r.json()["limit"] == "max_batch_bytes"
            results = await asyncio.gather(*[
                client.post("/v1/track", json={"event": "C", "anonymousId": f"k{i}", "messageId": f"c{i}"}) for i in range(50)
            ])
            assert {r.status_code for r in results} == {200}
            assert (await client.get("/readyz")).status_code == 200
            # the context IP is the real loopback peer, truncated
    ids = {e["messageId"]: e for e in await stored(tmp_path / "log.db")}
    assert {"m0", *(f"b{i}" for i in range(20)), *(f"c{i}" for i in range(50))} == set(ids)
    assert ids["m0"]["context"]["ip"] == "127.0.0.0"


async def test_service_drains_in_flight_requests_on_stop(tmp_path: Path) -> None:
    config = from_dict({"data_dir": str(tmp_path), "server": {"port": 0}})
    log = SqliteLog(tmp_path / "log.db", 4)
    await log.start()
    service = create_service(config, log)
    await service.start()
    assert service.port > 0
    acked: list[str] = []

    async def send(client: httpx.AsyncClient, i: int) -> None:
        try:
            r = await client.post("/v1/track", json={"event": "D", "anonymousId": f"a{i % 7}", "messageId": f"d{i}"})
        except httpx.HTTPError:
            return  # refused once the listener closed: never acknowledged
        if r.status_code == 200:
            acked.append(f"d{i}")

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}", timeout=20) as client:
        tasks = [asyncio.create_task(send(client, i)) for i in range(300)]
        await until(lambda: len(acked) >= 20, 20, "20 acknowledged requests before the stop", interval_s=0.001,
                    detail=lambda: f"{len(acked)} acknowledged")
        await service.stop()
        await service.stop()  # safe twice
        await asyncio.gather(*tasks)
    await log.stop()
    assert len(acked) < 300, "the stop came while requests were still arriving"
    assert set(acked) <= {e["messageId"] for e in await stored(tmp_path / "log.db")}


async def test_service_reports_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = from_dict({"data_dir": str(tmp_path), "server": {"port": port}})
        log = SqliteLog(tmp_path / "log.db", 4)
        await log.start()
        with pytest.raises(CollectorError, match=f"cannot listen on 127.0.0.1:{port}"):
            await create_service(config, log).start()
        await log.stop()


def test_tripwire_run_works_with_no_config_file(tmp_path: Path) -> None:
    with run_command(["run", "--port", "0"], cwd=tmp_path) as proc:
        r = httpx.post(f"{proc.url}/v1/track", json={"event": "Hello", "userId": "newcomer"}, timeout=10)
        assert r.status_code == 200, r.text
        assert "accepting every write key" in proc.output()  # open mode says so
        assert proc.stop() == 0
    assert (tmp_path / "data" / "log.db").exists()


def test_collector_command_with_two_workers(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "tripwire.toml"
    config.write_text(f'data_dir = "data"\n[sources.web]\nwrite_key = "{WRITE_KEY}"\n')
    with run_command(
        ["--config", str(config), "collector", "--port", str(port), "--workers", "2", "--log", "sqlite"],
        ready_url=f"http://127.0.0.1:{port}/healthz",
    ) as proc:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for i in range(40):
                r = client.post("/v1/track", json={"event": "W", "userId": f"u{i}", "messageId": f"w{i}"}, headers=basic(WRITE_KEY))
                assert r.status_code == 200, r.text
            assert client.post("/v1/track", json={"event": "W", "userId": "u"}, headers=basic("nope")).status_code == 401
        assert proc.stop() == 0
    ids = {e["messageId"] for e in asyncio.run(stored(tmp_path / "data" / "log.db"))}
    assert ids == {f"w{i}" for i in range(40)}


def test_collector_workers_log_like_the_parent(tmp_path: Path) -> None:
    # Worker processes had no logging set up: their warnings came out bare (no level, no time,
    # no masking) whatever --log-format said, and nothing said where the collector listened.
    with run_command(["--log-format", "json", "collector", "--port", "0", "--workers", "2"], cwd=tmp_path) as proc:
        r = httpx.get(f"{proc.url}/healthz", timeout=10)
        assert r.status_code == 200
        assert proc.stop() == 0
        lines = [line for line in proc.output().splitlines() if line.strip()]
    docs = [orjson.loads(line) for line in lines]  # every line is JSON
    assert any("listening on" in d["msg"] and "2 workers" in d["msg"] for d in docs)
    warnings = [d for d in docs if "accepting every write key" in d["msg"]]
    assert len(warnings) == 2 and all(d["level"] == "warning" and d["service"] == "collector" for d in warnings)


def test_the_listening_line_is_a_url_also_for_ipv6() -> None:
    from tripwire.collector.service import listen_url

    assert listen_url("::1", 8080) == "http://[::1]:8080"  # was http://::1:8080, which no client parses
    assert listen_url("127.0.0.1", 8080) == "http://127.0.0.1:8080"
