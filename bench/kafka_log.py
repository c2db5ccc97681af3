"""The Kafka event log against a bare aiokafka producer, same broker, same load.

    python bench/kafka_log.py [--appends 20000] [--concurrency 200] [--linger-ms 0]

Starts a tansu broker (in memory) and measures, with ``--concurrency`` tasks each
appending one 300-byte record at a time and waiting for it to be durable:

  * baseline: ``AIOKafkaProducer.send_and_wait`` (acks=all, explicit partition, same linger);
  * KafkaLog.append, broker up: group-committed produce;
  * KafkaLog.append, broker down: every append goes to the fsync'd spill;
  * the drain: how fast the spill is forwarded once the broker is back.

Prints records/s and the ratios; asserts nothing (machines here are noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaProducer  # noqa: E402

from tests.fixtures.tansu import TansuBroker  # noqa: E402
from tripwire.log.kafka import KafkaLog  # noqa: E402
from tripwire.log.partition import partition_for  # noqa: E402

VALUE = b"x" * 300


async def drive(appends: int, concurrency: int, one: object) -> float:
    per_task = appends // concurrency

    async def task(t: int) -> None:
        for i in range(per_task):
            await one(b"user-%d" % ((t * per_task + i) % 5000))  # type: ignore[operator]

    started = time.perf_counter()
    await asyncio.gather(*(task(t) for t in range(concurrency)))
    return per_task * concurrency / (time.perf_counter() - started)


async def main(appends: int, concurrency: int, linger_ms: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, TansuBroker(Path(tmp) / "tansu") as broker:
        log = KafkaLog(broker.bootstrap, spill_dir=Path(tmp) / "spill", request_timeout_ms=2000, linger_ms=linger_ms)
        async with log:
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=linger_ms)
            await producer.start()
            try:
                topic = log.topic("events")

                async def raw(key: bytes) -> None:
                    await producer.send_and_wait(topic, VALUE, key=key, partition=partition_for(key, 4))

                baseline = await drive(appends, concurrency, raw)
            finally:
                await producer.stop()

            async def append(key: bytes) -> None:
                await log.append("events", [(key, VALUE)])

            direct = await drive(appends, concurrency, append)
            batches = log.produce_batches
            broker.kill()
            await log.append("events", [(b"first", VALUE)])  # waits out the failed produce once
            spilled = await drive(appends, concurrency, append)
            depth = log.spill_depth()
            broker.start()
            started = time.perf_counter()
            while log.spill_depth():
                await asyncio.sleep(0.01)
            drain = depth / (time.perf_counter() - started)

    print(f"aiokafka send_and_wait (baseline): {baseline:10,.0f} records/s")
    print(f"KafkaLog.append, broker up:        {direct:10,.0f} records/s  ratio {direct / baseline:.2f}"
          f"  ({appends / max(1, batches):.0f} appends per produce round trip)")
    print(f"KafkaLog.append, spilling:         {spilled:10,.0f} records/s  ratio {spilled / baseline:.2f}")
    print(f"spill drain after the broker is back: {drain:,.0f} records/s ({depth} records)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--linger-ms", type=int, default=0, help="KafkaLog's linger (log.kafka_linger_ms)")
    args = parser.parse_args()
    asyncio.run(main(args.appends, args.concurrency, args.linger_ms))
