"""Benchmark: events/s through the Parquet sink versus the raw path, in the same run.

* raw path: decode the same JSON events, build the Arrow table (the sink's own
  envelope-to-columns code), write one zstd Parquet file; no log, no state;
* sink core: ``LakeWriter`` fed the log records from memory (routing, dedup,
  journaled cuts, state and id segments, atomic writes);
* sink service: the whole ``SinkService`` reading the embedded SQLite log from
  offset 0 until every record is in a durable file.

Prints events/s, the ratio sink/raw (target >= 0.7) and Parquet bytes per
event against JSON bytes per event. Usage: ``python bench/sink.py [N]``.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402

from tripwire.sinks.config import SinkConfig  # noqa: E402
from tripwire.sinks.lake import LocalLake  # noqa: E402
from tripwire.sinks.schema import BatchBuilder, encode_parquet  # noqa: E402
from tripwire.sinks.service import SinkService  # noqa: E402
from tripwire.sinks.state import load_state  # noqa: E402
from tripwire.sinks.tables import directory_for  # noqa: E402
from tripwire.sinks.writer import LakeWriter  # noqa: E402
from tripwire.envelope import format_time_ms, log_key, normalize  # noqa: E402
from tripwire.log import Record  # noqa: E402
from tripwire.log.partition import partition_for  # noqa: E402
from tripwire.log.sqlite import SqliteLog  # noqa: E402

PARTITIONS = 4
ROUNDS = 3
PROMOTE = {"price": "number", "quantity": "integer", "sku": "string", "currency": "string"}


def make_events(n: int) -> list[bytes]:
    rng = random.Random(1)
    now = int(time.time() * 1000)
    names = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed"]
    out = []
    for i in range(n):
        at = now - rng.randint(0, 3_600_000) - (86_400_000 * rng.randint(1, 3) if rng.random() < 0.02 else 0)
        kind = "page" if rng.random() < 0.3 else "track"
        raw = {
            "type": kind, "anonymousId": f"a-{rng.randint(0, 20_000):08x}", "messageId": f"{i:012d}-{rng.getrandbits(64):016x}",
            "timestamp": format_time_ms(at), "sentAt": format_time_ms(at + 40),
            "context": {"page": {"url": f"https://shop.example.com/p/{rng.randint(1, 900)}?ref=nav",
                                 "path": f"/p/{rng.randint(1, 900)}", "referrer": "https://www.google.com/",
                                 "title": "Blue running shoes | Shop"},
                        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
                        "ip": "203.0.113.0", "locale": "en-GB", "library": {"name": "tripwire.js", "version": "1.0.0"},
                        "screen": {"width": 1440, "height": 900}, "timezone": "Europe/London",
                        **({"campaign": {"name": "winter", "source": "newsletter", "medium": "email"}} if rng.random() < 0.3 else {})},
        }
        if kind == "track":
            raw["event"] = rng.choice(names)
            raw["properties"] = {"sku": f"SKU-{rng.randint(1, 5000)}", "price": round(rng.uniform(1, 300), 2),
                                 "quantity": rng.randint(1, 4), "currency": "EUR", "category": "shoes"}
        else:
            raw["name"] = "Product"
            raw["properties"] = {"url": raw["context"]["page"]["url"]}  # type: ignore[index]
        if rng.random() < 0.1:
            raw["userId"] = f"user-{rng.randint(1, 5000)}"
        env = normalize(raw, received_at_ms=at + 60, source="web")
        out.append(orjson.dumps(env))
    return out


def raw_path(values: list[bytes], cfg: SinkConfig, out: Path) -> tuple[float, int]:
    from tripwire.lake_layout import ColumnRegistry
    from tripwire.sinks.columns import Columns
    from tripwire.sinks.registry import declared_columns

    # The same envelope-to-columns code as the sink, typed columns inferred alike.
    columns = Columns(ColumnRegistry("date", 0, declared_columns(cfg)), infer=cfg.infer_columns,
                      max_columns=cfg.max_typed_columns)
    t = time.perf_counter()
    builder = BatchBuilder(columns, None)
    for v in values:
        env = orjson.loads(v)
        builder.add(env, directory_for(env["timestamp"], "date")[1])  # type: ignore[index]
    import pyarrow as pa

    table = pa.Table.from_batches([builder.build()])
    data = encode_parquet(table, row_group_rows=cfg.row_group_rows)
    out.write_bytes(data)
    return time.perf_counter() - t, len(data)


def core_path(values: list[bytes], cfg: SinkConfig, lake_dir: Path) -> tuple[float, int]:
    records: dict[int, list[Record]] = {p: [] for p in range(PARTITIONS)}
    for v in values:
        env = orjson.loads(v)
        p = partition_for(log_key(env).encode(), PARTITIONS)
        records[p].append(Record("events", p, len(records[p]), None, v, 0))
    lake = LocalLake(lake_dir)
    t = time.perf_counter()
    writer = LakeWriter(lake, cfg)
    for p in range(PARTITIONS):
        writer.assign(p)
    chunks = [records[p][i : i + cfg.poll_max_records] for p in range(PARTITIONS) for i in range(0, len(records[p]), cfg.poll_max_records)]
    for chunk in chunks:
        writer.process(chunk)
    writer.close()
    elapsed = time.perf_counter() - t
    size = sum(lake.sizes("", ".parquet").values())
    return elapsed, size


async def service_path(values: list[bytes], cfg: SinkConfig, tmp: Path) -> float:
    tmp.mkdir()
    log = SqliteLog(tmp / "log.db", PARTITIONS)
    await log.start()
    entries = [(log_key(orjson.loads(v)).encode(), v) for v in values]
    for i in range(0, len(entries), 5000):
        await log.append("events", entries[i : i + 5000])
    ends = await log.end_offsets("events")
    lake = LocalLake(tmp / "lake-service")
    t = time.perf_counter()
    service = SinkService(cfg, log, lake)
    await service.start()
    try:
        while True:
            positions = {p: pw.position for p, pw in service.writer.parts.items()} if service.writer else {}
            if all(positions.get(p, 0) >= ends[p] for p in ends):
                break
            await asyncio.sleep(0.01)
        await service.stop()  # writes what is still open, like the end of an age interval
        elapsed = time.perf_counter() - t
        states = [load_state(lake, "events", p) for p in range(PARTITIONS)]
        assert all(s is not None and s.resume == ends[s.partition] for s in states)
    finally:
        await service.stop()
        await log.stop()
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    values = make_events(n)
    json_bytes = sum(len(v) for v in values)
    raw, core, service = [], [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = SinkConfig(lake_url=str(tmp / "lake"), promote=PROMOTE, max_file_age_s=3600)
        raw_path(values[:2000], cfg, tmp / "warm.parquet")  # imports and first-call costs out of the way
        for i in range(ROUNDS):  # interleaved, best of each: the machine is shared and noisy
            raw.append(raw_path(values, cfg, tmp / f"raw{i}.parquet"))
            core.append(core_path(values, cfg, tmp / f"lake-core-{i}"))
            service.append(asyncio.run(service_path(values, cfg, tmp / f"svc{i}")))
    raw_s, raw_bytes = min(raw)
    core_s, core_bytes = min(core)
    service_s = min(service)
    print(f"events: {n}, JSON {json_bytes / n:.0f} bytes/event")
    print(f"raw path (decode + Arrow + Parquet):   {n / raw_s:>10,.0f} events/s")
    print(f"sink core (LakeWriter, local lake):     {n / core_s:>10,.0f} events/s   ratio {raw_s / core_s:.2f}")
    print(f"sink service (SQLite log -> lake):      {n / service_s:>10,.0f} events/s   ratio {raw_s / service_s:.2f}  (target >= 0.7)")
    print(f"Parquet: raw {raw_bytes / n:.1f} bytes/event, sink {core_bytes / n:.1f} bytes/event "
          f"({json_bytes / core_bytes:.1f}x smaller than JSON)")


if __name__ == "__main__":
    main()
