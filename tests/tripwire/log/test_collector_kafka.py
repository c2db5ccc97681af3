"""The collector over HTTP on the Kafka log while the broker is killed and restarted.

Every messageId the collector answered 2xx must be in Kafka afterwards, in the
order the collector acknowledged it per visitor (the log key).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson

from tripwire.collector.service import CollectorService
from tests.fixtures.tansu import TansuBroker
from tripwire.config import from_dict
from tripwire.log import EVENTS, open_log
from tripwire.log.kafka import KafkaLog

from .helpers import read_all, wait_for

VISITORS = 12


async def test_collector_acknowledges_from_the_spill_while_the_broker_restarts(
    tansu_durable: TansuBroker, tmp_path: Path
) -> None:
    broker = tansu_durable
    config = from_dict(
        {
            "data_dir": str(tmp_path / "data"),
            "server": {"host": "127.0.0.1", "port": 0},
            "log": {"backend": "kafka", "kafka_bootstrap": broker.bootstrap, "kafka_request_timeout_ms": 2000},
            "sources": {"web": {"write_key": "wk_test"}},
        }
    )
    log = open_log(config)
    assert isinstance(log, KafkaLog)
    await log.start()
    service = CollectorService(config, log)
    await service.start()
    acked: dict[str, list[str]] = {}
    statuses: dict[int, int] = {}
    stop = asyncio.Event()

    async def visitor(client: httpx.AsyncClient, v: int) -> None:
        anon = f"visitor-{v}"
        seq = 0
        while not stop.is_set():
            if seq % 4 == 3:
                ids = [f"{anon}-{seq + j}" for j in range(3)]
                body = {"batch": [{"type": "track", "event": "Viewed", "anonymousId": anon, "messageId": m} for m in ids]}
                path = "/v1/batch"
            else:
                ids = [f"{anon}-{seq}"]
                body = {"event": "Viewed", "anonymousId": anon, "messageId": ids[0], "properties": {"seq": seq}}
                path = "/v1/track"
            seq += len(ids)
            r = await client.post(path, content=orjson.dumps(body), headers={"Content-Type": "application/json"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if 200 <= r.status_code < 300:
                acked.setdefault(anon, []).extend(ids)

    def total() -> int:
        return sum(len(v) for v in acked.values())

    async def readyz(client: httpx.AsyncClient) -> int:
        return (await client.get("/readyz")).status_code

    async def ready_ok(client: httpx.AsyncClient) -> bool:
        return await readyz(client) == 200

    url = f"http://127.0.0.1:{service.port}"
    try:
        async with httpx.AsyncClient(base_url=url, auth=("wk_test", ""), timeout=30) as client:
            assert await readyz(client) == 200
            tasks = [asyncio.create_task(visitor(client, v)) for v in range(VISITORS)]
            try:
                await wait_for(lambda: total() >= 300, 60, "acknowledgements before the kill")
                await asyncio.to_thread(broker.kill)
                at_kill = total()
                await wait_for(lambda: log.spill_depth() > 0, 30, "the collector spilling")
                await wait_for(lambda: total() >= at_kill + 300, 60, "acknowledgements from the spill")
                assert await readyz(client) == 503
                await asyncio.to_thread(broker.restart)
                await wait_for(lambda: log.spill_depth() == 0, 60, "the spill forwarded")
                await wait_for(lambda: ready_ok(client), 30, "/readyz answering 200 again")
                after = total()
                await wait_for(lambda: total() >= after + 100, 60, "direct acknowledgements after recovery")
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            await wait_for(lambda: log.spill_depth() == 0, 60, "the spill empty")
            assert await readyz(client) == 200
    finally:
        await service.stop()
    try:
        records = await read_all(log, EVENTS)
    finally:
        await log.stop()

    assert set(statuses) == {200}, statuses
    found: dict[str, list[str]] = {}
    seen: set[str] = set()
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = orjson.loads(r.value)
        assert r.key == event["anonymousId"].encode()
        if event["messageId"] not in seen:  # a replay may repeat a record; its first copy holds the order
            seen.add(event["messageId"])
            found.setdefault(event["anonymousId"], []).append(event["messageId"])
    for anon, ids in acked.items():
        assert found.get(anon, [])[: len(ids)] == ids, f"{anon}: acknowledged events missing or out of order"
    assert len(seen) == total()


async def test_collector_answers_503_with_retry_after_when_the_spill_is_full(tmp_path: Path) -> None:
    broker = TansuBroker(tmp_path / "tansu")  # never started: the broker is down the whole time
    config = from_dict(
        {
            "data_dir": str(tmp_path / "data"),
            "server": {"host": "127.0.0.1", "port": 0},
            "log": {
                "backend": "kafka", "kafka_bootstrap": broker.bootstrap, "kafka_request_timeout_ms": 1000,
                "spill_max_bytes": 20_000, "spill_retry_after_s": 11,
            },
            "sources": {"web": {"write_key": "wk_test"}},
        }
    )
    log = open_log(config)
    await log.start()
    service = CollectorService(config, log)
    await service.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}", auth=("wk_test", "")) as client:
            accepted = 0
            for i in range(500):
                r = await client.post("/v1/track", json={"event": "Viewed", "anonymousId": "v", "messageId": f"m{i}"})
                if r.status_code != 200:
                    break
                accepted += 1
            assert r.status_code == 503
            assert r.headers["Retry-After"] == "11"
            assert r.json()["success"] is False
            assert 0 < accepted == log.spill_depth()
            assert (await client.get("/readyz")).status_code == 503
    finally:
        await service.stop()
        await log.stop()
