"""The in-memory twin of the event log, for unit tests of the rooms.

Same semantics as the real backends except durability: nothing survives the
process. Tests that check durability or the wire use SQLite or Kafka.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping, Sequence

from tripwire.identity import Link, wins

from .base import Consumer, Entry, EventLog, LogClosed, RebalanceListener, Record, TopicPartition
from .partition import partition_for


class MemoryLog(EventLog):
    def __init__(self, partitions: int = 4) -> None:
        self._partitions = partitions
        self._data: dict[TopicPartition, list[Record]] = {}
        self._offsets: dict[tuple[str, TopicPartition], int] = {}
        self._appended = asyncio.Event()
        self._running = False
        self._links: dict[str, dict[str, Link]] = {}  # userId -> anonymousId -> link

    async def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False

    async def ready(self) -> bool:
        return self._running

    async def append(self, topic: str, entries: Sequence[Entry], links: Sequence[Link] = ()) -> None:
        if not self._running:
            raise LogClosed("event log not running")
        for link in links:
            pairs = self._links.setdefault(link.user_id, {})
            if wins(link, pairs.get(link.anonymous_id)):
                pairs[link.anonymous_id] = link
        ts = int(time.time() * 1000)
        for key, value in entries:
            tp = TopicPartition(topic, partition_for(key, self._partitions))
            part = self._data.setdefault(tp, [])
            part.append(Record(topic, tp.partition, len(part), key, value, ts))
        self._appended.set()
        self._appended = asyncio.Event()

    async def links(self, user_ids: Collection[str]) -> dict[str, list[Link]]:
        return {u: list(self._links[u].values()) for u in user_ids if self._links.get(u)}

    async def forget_links(self, user_id: str) -> list[Link]:
        if not self._running:
            raise LogClosed("event log not running")
        return list(self._links.pop(user_id, {}).values())

    async def partitions(self, topic: str) -> list[int]:
        return list(range(self._partitions))

    async def end_offsets(self, topic: str) -> dict[int, int]:
        return {p: len(self._data.get(TopicPartition(topic, p), [])) for p in range(self._partitions)}

    async def read(self, topic: str, partition: int, offset: int, max_records: int = 1000) -> list[Record]:
        return self._data.get(TopicPartition(topic, partition), [])[offset : offset + max_records]

    def consumer(self, group: str, topics: Sequence[str], listener: RebalanceListener | None = None,
                 exclusive: bool = False) -> Consumer:
        return MemoryConsumer(self, group, topics, listener)


class MemoryConsumer(Consumer):
    def __init__(self, log: MemoryLog, group: str, topics: Sequence[str], listener: RebalanceListener | None):
        self._log, self._group, self._topics, self._listener = log, group, list(topics), listener
        self._positions: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        self._positions = {
            TopicPartition(t, p): self._log._offsets.get((self._group, TopicPartition(t, p)), 0)
            for t in self._topics
            for p in range(self._log._partitions)
        }
        if self._listener is not None:
            await self._listener.on_assigned(self, set(self._positions))

    async def stop(self) -> None:
        if self._positions and self._listener is not None:
            await self._listener.on_revoked(self, set(self._positions))
        self._positions = {}

    def assignment(self) -> set[TopicPartition]:
        return set(self._positions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._positions[tp] = offset

    async def poll(self, timeout_ms: int = 1000, max_records: int = 1000) -> list[Record]:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            out: list[Record] = []
            for tp, pos in self._positions.items():
                got = self._log._data.get(tp, [])[pos : pos + max_records - len(out)]
                if got:
                    self._positions[tp] = got[-1].offset + 1
                    out.extend(got)
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            try:
                await asyncio.wait_for(self._log._appended.wait(), remaining)
            except TimeoutError:
                return []

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, off in offsets.items():
            self._log._offsets[(self._group, tp)] = off

    async def committed(self, tp: TopicPartition) -> int | None:
        return self._log._offsets.get((self._group, tp))

    async def lag(self, tp: TopicPartition) -> int | None:
        if tp not in self._positions:
            return None
        return max(0, len(self._log._data.get(tp, [])) - self._positions[tp])
