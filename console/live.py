"""The live view: the events and invalid topics followed from their end, shared by every open live page.

One :class:`Tailer` per console reads new records about ten times a second
(:meth:`EventLog.read` from the end offsets at start: it joins no consumer group
and commits nothing) and hands them to each :class:`Subscription` (one per open
page) that its filters (source, event name, person) accept.

It stays cheap however fast events arrive:

* **Sampled rows.** A page gets at most ``live_rows_per_s`` rows per second; the rest are
  counted, and the page says how many it was shown of how many matched.
* **Sampled decoding.** At most about :data:`DECODE_PER_CYCLE` records are decoded per read
  cycle for the unfiltered view and the per-minute chart (counts are weighted by the sampling
  step, so the chart is an estimate above that rate). A page filtered by person or event name
  looks at every record, but decodes only those whose raw bytes hold the name it wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from tripwire.log import EVENTS, INVALID, EventLog, LogError, Record

from .logread import newest

logger = logging.getLogger(__name__)

DECODE_PER_CYCLE = 200
IDLE_S = 0.1
CHART_MINUTES = 60
BACKFILL_PER_PARTITION = 20_000
QUEUE_MAX = 1000
RECENT = 100


@dataclass(frozen=True)
class Filters:
    source: str = ""
    event: str = ""
    person: str = ""

    @property
    def narrow(self) -> bool:
        return bool(self.event or self.person)

    def raw_may_match(self, record: Record) -> bool:
        """A cheap test on the raw record (no decoding): False only when it cannot match."""
        if self.person and self.person.encode() != record.key and orjson.dumps(self.person) not in record.value:
            return False
        return not (self.event and orjson.dumps(self.event)[1:-1] not in record.value)

    def accepts(self, row: dict[str, Any]) -> bool:
        return ((not self.source or row["source"] == self.source) and (not self.event or row["name"] == self.event)
                and (not self.person or self.person in (row["anonymousId"], row["userId"])))


def name_of(env: dict[str, Any]) -> str:
    kind = env.get("type")
    if kind == "track":
        return str(env.get("event") or "")
    return f"${kind}" if isinstance(kind, str) else ""


def _brief(props: Any, limit: int = 140) -> str:
    if not isinstance(props, dict) or not props:
        return ""
    text = orjson.dumps(props).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def event_row(env: dict[str, Any]) -> dict[str, Any]:
    """What the live table shows of an event (never its context: no IP, user agent or page URL)."""
    return {
        "kind": "event", "time": str(env.get("timestamp") or ""), "received": str(env.get("receivedAt") or ""),
        "source": str(env.get("source") or ""), "name": name_of(env), "messageId": str(env.get("messageId") or ""),
        "anonymousId": str(env.get("anonymousId") or ""), "userId": str(env.get("userId") or ""),
        "detail": _brief(env.get("properties") if env.get("type") != "identify" else env.get("traits")),
    }


def invalid_row(rec: dict[str, Any]) -> dict[str, Any]:
    raw = rec.get("event")
    env: dict[str, Any] = raw if isinstance(raw, dict) else {}
    row = event_row({**env, "source": rec.get("source"), "receivedAt": rec.get("receivedAt")})
    row.update(kind="invalid", reason=str(rec.get("reason") or ""), message=str(rec.get("message") or ""),
               field=str(rec.get("field") or ""))
    return row


@dataclass(eq=False)
class Subscription:
    filters: Filters
    rows_per_s: int
    queue: asyncio.Queue[tuple[str, Any]] = field(default_factory=lambda: asyncio.Queue(QUEUE_MAX))
    matched: int = 0  # this second
    shown: int = 0

    def offer(self, kind: str, row: dict[str, Any]) -> None:
        if not self.filters.accepts(row):
            return
        self.matched += 1
        if self.shown < self.rows_per_s and self.queue.qsize() < QUEUE_MAX - 10:
            self.shown += 1
            self.queue.put_nowait((kind, row))

    def tick(self, arrived: int, invalid: int, sampled: bool) -> None:
        stats = {"arrived": arrived, "invalid": invalid, "matched": self.matched, "shown": self.shown,
                 "sampled": sampled or self.matched > self.shown}
        self.matched = self.shown = 0
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(("tick", stats))


class Tailer:
    """Follows the events and invalid topics; ``start()`` returns at once, ``stop()`` is safe twice."""

    def __init__(self, log: EventLog, rows_per_s: int = 20) -> None:
        self.log = log
        self.rows_per_s = rows_per_s
        self.subscriptions: set[Subscription] = set()
        # minute (epoch s of its start) -> source -> events (estimated when decoding was sampled)
        self.minutes: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.estimated = False
        self.recent: deque[tuple[str, dict[str, Any]]] = deque(maxlen=RECENT)  # newest last: what a new page starts with
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._arrived = self._invalid = 0
        self._sampled = False

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="console-live")

    async def stop(self) -> None:
        self._stopping = True
        for sub in list(self.subscriptions):
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(("end", None))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    def subscribe(self, filters: Filters) -> Subscription:
        sub = Subscription(filters, self.rows_per_s)
        self.subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscriptions.discard(sub)

    def newest(self, filters: Filters, kind: str, n: int) -> list[dict[str, Any]]:
        """The newest rows of ``kind`` this tailer saw that ``filters`` accepts, newest first."""
        return [row for k, row in reversed(self.recent) if k == kind and filters.accepts(row)][:n]

    def chart(self) -> tuple[list[int], dict[str, list[float]]]:
        """The last :data:`CHART_MINUTES` minutes (epoch s) and, per source, events in each."""
        now = int(time.time()) // 60 * 60
        minutes = [now - 60 * i for i in range(CHART_MINUTES - 1, -1, -1)]
        sources = sorted({s for m in minutes for s in self.minutes.get(m, {})})
        return minutes, {s: [self.minutes.get(m, {}).get(s, 0.0) for m in minutes] for s in sources}

    # the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            positions = {t: await self.log.end_offsets(t) for t in (EVENTS, INVALID)}
            await self._backfill()
        except LogError as exc:
            logger.warning("console live view: the event log cannot be read (%s)", exc)
            return
        next_tick = time.monotonic() + 1
        while not self._stopping:
            got: list[Record] = []
            bad: list[Record] = []
            try:
                for topic, out in ((EVENTS, got), (INVALID, bad)):
                    for p, pos in positions[topic].items():
                        records = await self.log.read(topic, p, pos, 5000)
                        if records:
                            positions[topic][p] = records[-1].offset + 1
                            out.extend(records)
            except LogError as exc:
                logger.warning("console live view: reading the event log failed (%s); retrying", exc)
                await asyncio.sleep(1)
                continue
            self._take(got, bad)
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + 1
                self._tick()
            if not got and not bad:
                await asyncio.sleep(IDLE_S)

    async def _backfill(self) -> None:
        """The chart's last hour from what the log still holds (newest records first, bounded)."""
        since_ms = (int(time.time()) // 60 - CHART_MINUTES + 1) * 60_000
        scan = await newest(self.log, EVENTS, since_ms, BACKFILL_PER_PARTITION)
        if not scan.complete:
            self.estimated = True  # the hour held more than was read back
        sample = self._count(scan.records)
        sample.sort(key=lambda x: (x[0].timestamp_ms, x[0].partition, x[0].offset))
        self.recent.extend(("event", event_row(env)) for _, env in sample[-RECENT:])

    def _count(self, records: list[Record]) -> list[tuple[Record, dict[str, Any]]]:
        """Decode a sample of ``records`` (every step-th) and count it, weighted, per minute and source."""
        step = max(1, len(records) // DECODE_PER_CYCLE)
        if step > 1:
            self.estimated = self._sampled = True
        out = []
        for r in records[::step]:
            env = _decode(r.value)
            if env is None:
                continue
            minute = r.timestamp_ms // 60_000 * 60
            self.minutes[minute][str(env.get("source") or "(none)")] += step
            out.append((r, env))
        cutoff = (int(time.time()) // 60 - CHART_MINUTES) * 60
        for m in [m for m in self.minutes if m <= cutoff]:
            del self.minutes[m]
        return out

    def _take(self, got: list[Record], bad: list[Record]) -> None:
        self._arrived += len(got)
        self._invalid += len(bad)
        sample = self._count(got) if got else []
        rows = [event_row(env) for _, env in sample]
        self.recent.extend(("event", row) for row in rows[-RECENT:])
        invalid = [invalid_row(rec) for rec in (_decode(r.value) for r in bad[-RECENT:]) if rec is not None]
        self.recent.extend(("invalid", row) for row in invalid)
        if not self.subscriptions:
            return
        narrow = [s for s in self.subscriptions if s.filters.narrow]
        for sub in self.subscriptions:
            if sub.filters.narrow:
                continue
            for row in rows:
                sub.offer("event", row)
        for sub in narrow:  # every record, but decoded only where the raw bytes may match
            for r in got:
                if sub.filters.raw_may_match(r):
                    env = _decode(r.value)
                    if env is not None:
                        sub.offer("event", event_row(env))
        for row in invalid:
            for sub in self.subscriptions:
                sub.offer("invalid", row)

    def _tick(self) -> None:
        for sub in self.subscriptions:
            sub.tick(self._arrived, self._invalid, self._sampled)
        self._arrived = self._invalid = 0
        self._sampled = False


def _decode(value: bytes) -> dict[str, Any] | None:
    try:
        env = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return env if isinstance(env, dict) else None
