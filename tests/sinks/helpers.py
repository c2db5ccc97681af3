"""Events to send and ways to read the lake back, shared by the sink tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import pandas as pd
import pyarrow.parquet as pq

from sinks.lake import Lake
from sinks.state import load_state
from tripwire.envelope import log_key, normalize
from tripwire.log import EventLog

DAY_MS = 86_400_000
BASE_MS = int(time.time() * 1000) // DAY_MS * DAY_MS + 3_600_000  # today 01:00 UTC: "today's" partition


def event(i: int, *, at_ms: int | None = None, user: str | None = None, props: dict[str, Any] | None = None,
          message_id: str | None = None, name: str = "Product Added") -> dict[str, Any]:
    """A normalised track event; ``i`` makes it unique."""
    at = BASE_MS + i * 1000 if at_ms is None else at_ms
    raw = {
        "type": "track", "event": name, "anonymousId": user or f"anon-{i % 7}", "messageId": message_id or f"m-{i}",
        "properties": props if props is not None else {"sku": f"sku-{i}", "price": i / 4, "qty": i % 5},
        "context": {"page": {"url": f"https://shop.example/p/{i}", "path": f"/p/{i}", "title": "P"},
                    "userAgent": "UA/1.0", "ip": "203.0.113.0", "locale": "en-GB",
                    "campaign": {"name": "winter", "source": "news"}, "library": {"name": "t.js", "version": "1"},
                    "screen": {"width": 1024}},
        "timestamp": _iso(at),
    }
    return normalize(raw, received_at_ms=at + 50, source="web")


def _iso(ms: int) -> str:
    from tripwire.envelope import format_time_ms

    return format_time_ms(ms)


async def send(log: EventLog, events: Iterable[dict[str, Any]]) -> None:
    entries = [(log_key(e).encode(), orjson.dumps(e)) for e in events]
    for i in range(0, len(entries), 500):
        await log.append("events", entries[i : i + 500])


def lake_table(lake: Lake) -> pd.DataFrame:
    """Every data file of the lake, read one by one with pyarrow (also checks each is whole)."""
    frames = []
    for path in lake.list("", ".parquet"):
        data = lake.read(path)
        assert data is not None
        table = pq.read_table(__import__("pyarrow").BufferReader(data))
        df = table.to_pandas()
        df["_file"] = path
        frames.append(df)
    if not frames:
        return pd.DataFrame({"message_id": []})
    return pd.concat(frames, ignore_index=True)


def caught_up(lake: Lake, ends: dict[int, int]) -> bool:
    for partition, end in ends.items():
        st = load_state(lake, "events", partition)
        resume = 0 if st is None else min([st.resume] + [c.first for c in st.pending])
        if resume < end and end > 0:
            return False
    return True


async def wait_caught_up(lake: Lake, ends: dict[int, int], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(caught_up, lake, ends):
        if time.monotonic() > deadline:
            raise TimeoutError(f"sink did not catch up with {ends} within {timeout_s}s")
        await asyncio.sleep(0.05)


def ids(df: pd.DataFrame) -> Sequence[str]:
    return sorted(df["message_id"].tolist())
