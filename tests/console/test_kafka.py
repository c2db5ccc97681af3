"""`tripwire console` alone on a Kafka log (the scale-out role), against a real tansu broker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import orjson

from tests.fixtures.servers import run_command
from tests.fixtures.tansu import TansuBroker, free_port, tansu  # noqa: F401  (fixture)
from tripwire.log import EVENTS
from tripwire.log.kafka import KafkaLog

from .helpers import RULES, envelope


async def test_the_console_role_reads_people_and_live_events_from_kafka(tansu: TansuBroker, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "shop.rules").write_text(RULES)
    (tmp_path / "tripwire.toml").write_text(
        f'data_dir = "data"\n[log]\npartitions = 2\n[rules]\ndir = "rules"\n'
        '[endpoints.crm]\nurl = "https://hooks.example.com/x"\nsecret = "whsec_Y4PBOb53VF7OoWLmD0wZfsT9u0Rr2vhV"\n')
    now = int(time.time() * 1000)
    port = free_port()
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", partitions=2) as log:
        await log.append(EVENTS, [(b"k-1", orjson.dumps(envelope("AddToCart", "k-1", now - 5000, "mk-1", price=12)))])
        with run_command(["--config", str(tmp_path / "tripwire.toml"), "console", "--log", f"kafka://{tansu.bootstrap}",
                          "--port", str(port)], cwd=tmp_path, ready_url=f"http://127.0.0.1:{port}/healthz",
                         timeout_s=60) as proc:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
                person = (await client.get("/person", params={"id": "k-1", "rule": "abandoned cart"})).text
                assert "cart.properties.price &gt;= 20</code> is <b>false</b>" in person, person[-3000:]
                got: list[str] = []
                subscribed = asyncio.Event()

                async def live() -> None:
                    async with client.stream("GET", "/live/stream?person=k-2") as response:
                        async for line in response.aiter_lines():
                            subscribed.set()  # the stream's first line: its subscription exists
                            if 'data-mid="mk-2"' in line:
                                got.append(line)
                                return

                reader = asyncio.create_task(live())
                await asyncio.wait_for(subscribed.wait(), 20)
                await log.append(EVENTS, [(b"k-2", orjson.dumps(envelope("Checkout", "k-2", now, "mk-2")))])
                await asyncio.wait_for(reader, 20)
                assert got
            assert proc.stop() == 0
