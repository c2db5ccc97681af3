"""Events to send and ways to read the lake back, shared by the sink tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
import pandas as pd
import pyarrow.parquet as pq

from tripwire.sinks.lake import Lake
from tripwire.sinks.state import load_state
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


def behind(lake: Lake, ends: dict[int, int], topic: str = "events") -> dict[int, int]:
    """Records each partition still has to make durable (0 when its files are written)."""
    out = {}
    for partition, end in ends.items():
        st = load_state(lake, topic, partition)
        resume = 0 if st is None else min([st.resume] + [c.first for c in st.pending])
        out[partition] = max(0, end - resume)
    return out


def caught_up(lake: Lake, ends: dict[int, int]) -> bool:
    return not any(behind(lake, ends).values())


async def wait_caught_up(lake: Lake, ends: dict[int, int], timeout_s: float = 20.0,
                         alive: Callable[[], str | None] | None = None, stall_s: float | None = None,
                         topic: str = "events") -> None:
    """Wait until the lake's state is past ``ends``.

    ``timeout_s`` bounds the wait while the sink makes no progress: with
    ``stall_s`` the deadline is instead pushed back whenever the records left
    shrink, so a slow (loaded) sink gets the time it needs while a stuck one
    fails after ``stall_s`` without progress (``timeout_s`` then caps the whole
    wait). ``alive`` returns why the sink is gone (it exited), or None.
    """
    start = time.monotonic()
    deadline = start + (timeout_s if stall_s is None else stall_s)
    best = None
    history: list[str] = []
    while True:
        left = await asyncio.to_thread(behind, lake, ends, topic)
        if not any(left.values()):
            return
        now = time.monotonic()
        total = sum(left.values())
        if best is None or total < best:
            best = total
            history.append(f"{now - start:.1f}s: {left}")
            if stall_s is not None:
                deadline = min(start + timeout_s, now + stall_s)
        gone = alive() if alive is not None else None
        if gone is not None:
            raise AssertionError(f"sink exited before catching up with {ends}: {gone}\nprogress: {history[-5:]}")
        if now > deadline:
            why = "made no progress for" if stall_s is not None and now - start < timeout_s else "did not finish within"
            limit = stall_s if why.startswith("made") else timeout_s
            raise TimeoutError(f"sink {why} {limit}s catching up with {ends}; records left {left}\n"
                               f"progress: {history[-5:]}")
        await asyncio.sleep(0.05)


def ids(df: pd.DataFrame) -> Sequence[str]:
    return sorted(df["message_id"].tolist())
