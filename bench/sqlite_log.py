"""The embedded log on disk: bytes per event, and how fast the engine and the sink can read it.

    python bench/sqlite_log.py [--events 20000] [--retention-s 0]

1. Size. Realistic shop events (product views, cart adds, checkouts, orders from 2,000 visitors
   with a handful of browsers, as tripwire.js sends them) go through the real collector app
   (in-process, over httpx's ASGI transport) into a fresh SQLite log, in two shapes:
   ``single`` (one event per request, one request at a time: every event its own group commit)
   and ``batch`` (20 events per request, 8 requests in flight, as the snippet and server SDKs
   send them under load). Prints the file size (database and WAL, after a checkpoint) divided by
   the events, the same for the second half of the events alone (the steady state: the first
   records of a topic are compressed before its dictionary is trained, and every table holds at
   least one 64 KB page), and the mean event as appended (key and value) for comparison.
2. Read speed: every record of each log read back partition by partition with ``read_sync``
   (what the engine and the sink's consumer do), in records per CPU second.
3. With ``--retention-s N``: appends ``batch`` events for ``--minutes`` at ``--rate`` events/s
   and prints the file size every 10 s (it should level off once N seconds have passed).

Asserts nothing; machines here are noisy. Run it under ``nice``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import orjson  # noqa: E402

from tripwire.collector import create_app  # noqa: E402
from tripwire.config import from_dict  # noqa: E402
from tripwire.log import EVENTS  # noqa: E402
from tripwire.log.sqlite import SqliteLog  # noqa: E402

BROWSERS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.2 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
]
NAMES = ["Product Viewed"] * 6 + ["Product Added", "Checkout Started", "Order Completed", "Page Viewed"]
WRITE_KEY = "bench-key"


class Shop:
    """A seeded stream of tripwire.js-shaped events."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.visitors = [str(uuid.UUID(int=self.rng.getrandbits(128))) for _ in range(2000)]

    def event(self) -> dict[str, Any]:
        rng = self.rng
        visitor = rng.choice(self.visitors)
        n = int(visitor[:8], 16)
        name = rng.choice(NAMES)
        sku = rng.randrange(100_000)
        props: dict[str, Any] = {"sku": f"SKU-{sku}", "price": round(rng.uniform(5, 200), 2),
                                 "quantity": rng.randint(1, 3), "currency": "EUR"}
        if name == "Order Completed":
            props = {"order_id": f"o-{rng.randrange(10**9)}", "total": round(rng.uniform(20, 500), 2), "currency": "EUR"}
        now = time.time()
        return {
            "type": "track", "event": name, "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
            "anonymousId": visitor,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{rng.randrange(1000):03d}Z",
            "properties": props,
            "context": {
                "library": {"name": "tripwire.js", "version": "0.1.0"},
                "page": {"path": f"/p/{sku}", "referrer": rng.choice(["https://www.google.com/", "", "https://shop.example/"]),
                         "search": "", "title": f"Product {sku}", "url": f"https://shop.example/p/{sku}"},
                "locale": "en-US", "userAgent": BROWSERS[n % len(BROWSERS)], "screen": {"width": 1920, "height": 1080},
                "timezone": "Europe/Berlin", "sessionId": 1767225600000 + n % 100_000,
            },
        }


async def collector(data_dir: Path, **log_args: Any) -> tuple[SqliteLog, httpx.AsyncClient]:
    config = from_dict({"data_dir": str(data_dir), "sources": {"web": {"write_key": WRITE_KEY, "origins": ["https://shop.example"]}}})
    log = SqliteLog(data_dir / "log.db", 4, **log_args)
    await log.start()
    app = create_app(config, log)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("203.0.113.7", 5000)), base_url="http://c")
    return log, client


async def post(client: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
    if len(events) == 1:
        body, path = {**events[0], "writeKey": WRITE_KEY}, "/v1/track"
    else:
        body, path = {"batch": events, "sentAt": events[-1]["timestamp"], "writeKey": WRITE_KEY}, "/v1/batch"
    r = await client.post(path, content=orjson.dumps(body),
                          headers={"content-type": "application/json", "origin": "https://shop.example"})
    assert r.status_code == 200, r.text


def disk_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


async def fill(data_dir: Path, events: int, per_request: int, in_flight: int) -> tuple[Path, int]:
    """The log's path, and its size on disk after the first half of the events."""
    shop = Shop()
    log, client = await collector(data_dir, retention_s=0)
    path = data_dir / "log.db"
    try:
        async def worker(n: int) -> None:
            for _ in range(n):
                await post(client, [shop.event() for _ in range(per_request)])
        requests = events // per_request // 2
        await asyncio.gather(*(worker(requests // in_flight) for _ in range(in_flight)))
        half = disk_bytes(path)
        await asyncio.gather(*(worker(requests // in_flight) for _ in range(in_flight)))
    finally:
        await client.aclose()
        await log.stop()
    return path, half


def stored_sizes(path: Path) -> tuple[int, float]:
    """Records in the log and the mean size of key plus value as appended."""
    async def run() -> tuple[int, float]:
        async with SqliteLog(path, 4, retention_s=0) as log:
            n = size = 0
            for p in range(4):
                offset = 0
                while got := log.read_sync(EVENTS, p, offset, 5000):
                    n += len(got)
                    size += sum(len(r.value) + len(r.key or b"") for r in got)
                    offset = got[-1].offset + 1
            return n, size / max(n, 1)
    return asyncio.run(run())


def read_speed(path: Path, rounds: int = 3) -> float:
    """Records per CPU second through read_sync, every partition from offset 0, best of ``rounds``.

    CPU time, not wall time: on a shared machine the wall clock mostly measures the neighbours.
    """
    async def run() -> float:
        async with SqliteLog(path, 4, retention_s=0) as log:
            best = 0.0
            for _ in range(rounds):
                t = time.process_time()
                total = 0
                for p in range(4):
                    offset = 0
                    while got := log.read_sync(EVENTS, p, offset, 1000):
                        total += len(got)
                        offset = got[-1].offset + 1
                best = max(best, total / (time.process_time() - t))
        return best
    return asyncio.run(run())


async def plateau(data_dir: Path, retention_s: float, minutes: float, rate: int) -> None:
    shop = Shop(2)
    log, client = await collector(data_dir, retention_s=retention_s)
    path = data_dir / "log.db"
    try:
        began = time.monotonic()
        sent = 0
        next_print = began
        while time.monotonic() - began < minutes * 60:
            due = int((time.monotonic() - began) * rate)
            while sent < due:
                await asyncio.gather(*(post(client, [shop.event() for _ in range(20)]) for _ in range(4)))
                sent += 80
            if time.monotonic() >= next_print:
                size = sum(p.stat().st_size for p in data_dir.glob("log.db*") if p.is_file())
                with sqlite3.connect(path) as conn:
                    pages, free = (conn.execute(f"PRAGMA {x}").fetchone()[0] for x in ("page_count", "freelist_count"))
                print(f"  t={time.monotonic() - began:5.0f}s events={sent:8d} db+wal={size / 2**20:7.1f} MiB "
                      f"pages={pages} free={free} expired={log.retention.expired_records}", flush=True)
                next_print += 10
            await asyncio.sleep(0.01)
    finally:
        await client.aclose()
        await log.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--retention-s", type=float, default=0)
    parser.add_argument("--minutes", type=float, default=3)
    parser.add_argument("--rate", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.retention_s:
            print(f"file size under retention {args.retention_s:.0f} s at {args.rate} events/s:")
            asyncio.run(plateau(Path(tmp) / "plateau", args.retention_s, args.minutes, args.rate))
            return 0
        print("embedded log, realistic events through the collector:")
        for shape, per_request, in_flight, events in (("single", 1, 1, min(args.events, 10_000)),
                                                      ("batch", 20, 8, args.events)):
            path, half = asyncio.run(fill(Path(tmp) / shape, events, per_request, in_flight))
            n, mean = stored_sizes(path)
            size = disk_bytes(path)
            print(f"  {shape:6s}: {size / n:4.0f} bytes per event on disk, {(size - half) / (n - n // 2):4.0f} in the "
                  f"second half ({n} events of {mean:.0f} bytes as appended); "
                  f"read_sync {read_speed(path):,.0f} records per CPU second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
