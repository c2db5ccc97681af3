"""The embedded log's consumer: one member per group, every partition, offsets in the log's file."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .base import Consumer, GroupTaken, LogClosed, RebalanceListener, Record, TopicPartition

if TYPE_CHECKING:
    from .sqlite import SqliteLog

logger = logging.getLogger(__name__)


class SqliteConsumer(Consumer):
    """The embedded consumer: one member per group, assigned every partition.

    "One member" holds across processes too: a started consumer holds an exclusive
    ``flock`` on ``<log file>.group-<group>.lock`` until it stops, so a second member
    (``tripwire sink`` or ``engine`` next to ``tripwire run`` on the same data_dir)
    fails to start with :class:`GroupTaken` instead of reading every partition again
    (a second sink writing the same events into other files, a second engine firing
    every trigger twice). The lock goes with the process, even after a kill -9.
    """

    def __init__(
        self, log: SqliteLog, group: str, topics: Sequence[str], listener: RebalanceListener | None
    ) -> None:
        self._log = log
        self._group = group
        self._topics = list(topics)
        self._listener = listener
        self._positions: dict[TopicPartition, int] = {}
        self._next = 0  # round-robin start, so no partition starves
        self._running = False
        self._member: int | None = None  # fd holding the group's flock while started

    async def start(self) -> None:
        if self._running:
            return
        self._join()
        try:
            assigned: dict[TopicPartition, int] = {}
            for topic in self._topics:
                for p in await self._log.partitions(topic):
                    tp = TopicPartition(topic, p)
                    assigned[tp] = await self._log.committed_offset(self._group, tp) or 0
            self._positions = assigned
            self._running = True
            if self._listener is not None:
                await self._listener.on_assigned(self, set(assigned))
        except BaseException:
            self._running = False
            self._leave()
            raise

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        try:
            if self._listener is not None:
                await self._listener.on_revoked(self, set(self._positions))
        finally:
            self._positions = {}
            self._leave()

    def _join(self) -> None:
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in self._group)
        path = f"{self._log.path}.group-{name}.lock"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GroupTaken(
                f"consumer group '{self._group}' is already reading the event log {self._log.path} "
                "(another tripwire process on this data_dir?); the embedded log gives a group one member: "
                "stop the other process, or give this one another group"
            ) from None
        self._member = fd

    def _leave(self) -> None:
        if self._member is not None:
            os.close(self._member)  # releases the flock
            self._member = None

    def assignment(self) -> set[TopicPartition]:
        return set(self._positions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._positions:
            raise ValueError(f"partition {tp} is not assigned")
        self._positions[tp] = offset

    def _read_some(self, max_records: int) -> list[Record]:
        tps = list(self._positions)
        out: list[Record] = []
        for i in range(len(tps)):
            tp = tps[(self._next + i) % len(tps)]
            position = self._positions[tp]
            got = self._log.read_sync(tp.topic, tp.partition, position, max_records - len(out))
            if got:
                if got[0].offset > position:
                    logger.warning(
                        "consumer group %r: %s partition %d: records %d to %d expired (log.retention) before "
                        "this group read them; going on from %d", self._group, tp.topic, tp.partition,
                        position, got[0].offset - 1, got[0].offset,
                    )
                self._positions[tp] = got[-1].offset + 1
                out.extend(got)
            if len(out) >= max_records:
                break
        self._next = (self._next + 1) % max(1, len(tps))
        return out

    async def poll(self, timeout_ms: int = 1000, max_records: int = 1000) -> list[Record]:
        if not self._running:
            raise LogClosed("consumer not started")
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            records = await asyncio.to_thread(self._read_some, max_records)
            remaining = deadline - time.monotonic()
            if records or remaining <= 0 or not self._running:
                return records
            await self._log.wait_appended(remaining)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        await self._log.commit_offsets(self._group, offsets)

    async def committed(self, tp: TopicPartition) -> int | None:
        return await self._log.committed_offset(self._group, tp)

    async def lag(self, tp: TopicPartition) -> int | None:
        return (await self.lags([tp]))[tp]

    async def lags(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int | None]:
        """One look at the end offsets per topic, however many partitions are asked about. What retention
        took before it was read will not be returned, so it is not counted."""
        ends = {topic: await self._log.end_offsets(topic) for topic in {tp.topic for tp in tps}}
        out: dict[TopicPartition, int | None] = {}
        for tp in tps:
            position = self._positions.get(tp)
            if position is None:
                out[tp] = None
                continue
            end = ends[tp.topic].get(tp.partition, 0)
            if end > position:
                first = await asyncio.to_thread(self._log.first_offset_sync, tp.topic, tp.partition)
                position = max(position, end if first is None else first)
            out[tp] = max(0, end - position)
        return out
