"""``tripwire collector --log kafka://...`` against a real tansu broker that is down at first:
the collector acknowledges from its spill buffer, /readyz and the spill gauge say so, and once
the broker is up every acknowledged event reaches Kafka."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import orjson

from tests.fixtures.servers import run_command
from tests.fixtures.tansu import TansuBroker
from tests.fixtures.waiting import wait_until
from tripwire.log import EVENTS
from tripwire.log.kafka import KafkaLog


def spill_depth(client: httpx.Client) -> float:
    m = re.search(r"^tripwire_log_spill_depth (\S+)$", client.get("/metrics").text, re.M)
    assert m is not None
    return float(m.group(1))


async def kafka_ids(bootstrap: str, spill: Path) -> set[str]:
    log = KafkaLog(bootstrap, spill_dir=spill, partitions=4)
    await log.start()
    try:
        ids: set[str] = set()
        for p in await log.partitions(EVENTS):
            offset = 0
            while batch := await log.read(EVENTS, p, offset, 1000):
                ids |= {orjson.loads(r.value)["messageId"] for r in batch}
                offset = batch[-1].offset + 1
        return ids
    finally:
        await log.stop()


def test_collector_spills_while_the_broker_is_down_then_forwards(tmp_path: Path) -> None:
    broker = TansuBroker(tmp_path / "tansu")  # not started yet: the port refuses connections
    env = {"TRIPWIRE_DATA_DIR": str(tmp_path / "data")}
    try:
        with run_command(["collector", "--port", "0", "--log", broker.url], env=env, cwd=tmp_path) as proc:
            with httpx.Client(base_url=proc.url, timeout=20) as client:
                sent = [f"k{i}" for i in range(30)]
                for i, mid in enumerate(sent):
                    r = client.post("/v1/track", json={"event": "Spilled", "anonymousId": f"a{i % 4}", "messageId": mid})
                    assert r.status_code == 200, r.text
                assert client.get("/readyz").status_code == 503  # spilling is not ready
                assert spill_depth(client) == len(sent)

                broker.start()
                wait_until(lambda: spill_depth(client) == 0 and client.get("/readyz").status_code == 200, 60,
                           "the spill to drain after the broker came up", interval_s=0.2,
                           detail=lambda: f"spill depth {spill_depth(client)}")
            assert proc.stop() == 0
        found: set[str] = set()

        def all_in_kafka() -> bool:
            found.update(asyncio.run(kafka_ids(broker.bootstrap, tmp_path / "reader-spill")))
            return found >= set(sent)
        wait_until(all_in_kafka, 30, "every acknowledged event in Kafka", interval_s=0.5,
                   detail=lambda: f"missing {sorted(set(sent) - found)[:5]}")
    finally:
        broker.close()
