"""The embedded log's consumer: groups whose members (processes) share the partitions, as on Kafka.

Membership is held by ``flock``s next to the log's file, so it goes with the process, also
after a kill -9:

* a member holds ``<log>.group-<group>.member-<i>.lock`` (the lowest free ``i``) while it runs;
  the members of a group are the slots held (a probe that can lock a slot knows it is free);
* the group's partitions, in (topic, partition) order, are dealt to the members in slot
  order: the ``k``-th partition goes to the member of rank ``k mod n``; the assignment is
  recomputed every ``_CHECK_S`` while polling, and when it changes the partitions that go
  are revoked (the listener makes what it holds durable) and the ones that come are
  assigned once their previous owner has let them go;
* a member owns a partition only while it holds ``<log>.group-<group>.<topic>-<p>.lock``, so
  two members never read one partition, even while the assignment changes: a partition
  whose lock is still held by its previous owner is taken a moment later.

An *exclusive* consumer (the webhook dispatcher, whose store is one file) is the group's only
member: it holds ``<log>.group-<group>.lock``; another fails with :class:`GroupTaken`.
Offsets are committed in the log's file, per group and partition.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .base import Consumer, GroupTaken, LogClosed, RebalanceListener, Record, TopicPartition

if TYPE_CHECKING:
    from .sqlite import SqliteLog

logger = logging.getLogger(__name__)

_CHECK_S = 1.0  # how often a member looks at the group's membership
_PENDING_CHECK_S = 0.1  # ... while a partition it was given is still held by its previous owner
_MAX_MEMBERS = 64


def _lock(path: str) -> int | None:
    """An exclusive flock on ``path`` (created), or None when another holder has it."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class SqliteConsumer(Consumer):
    """A member of a consumer group on the embedded log (the module doc says how members share)."""

    def __init__(self, log: SqliteLog, group: str, topics: Sequence[str], listener: RebalanceListener | None,
                 exclusive: bool = False) -> None:
        self._log = log
        self._group = group
        self._topics = list(topics)
        self._listener = listener
        self._exclusive = exclusive
        self._positions: dict[TopicPartition, int] = {}
        self._next = 0  # round-robin start, so no partition starves
        self._running = False
        self._member: int | None = None  # fd holding this member's slot (or the exclusive group lock)
        self._slot = -1
        self._held: dict[TopicPartition, int] = {}  # partition -> fd holding its lock
        self._wanted: set[TopicPartition] = set()  # assigned by the last look, not yet held
        self._checked = 0.0
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in group)
        self._prefix = f"{log.path}.group-{name}"

    # membership --------------------------------------------------------------------

    async def start(self) -> None:
        if self._running:
            return
        self._join()
        self._running = True
        try:
            await self._rebalance()
        except BaseException:
            self._running = False
            self._release(set(self._held))
            self._leave()
            raise

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        try:
            if self._listener is not None and self._positions:
                await self._listener.on_revoked(self, set(self._positions))
        finally:
            self._positions = {}
            self._release(set(self._held))
            self._wanted = set()
            self._leave()

    def _join(self) -> None:
        if self._exclusive:
            fd = _lock(f"{self._prefix}.lock")
            if fd is None:
                raise GroupTaken(
                    f"consumer group '{self._group}' is already reading the event log {self._log.path} "
                    "(another tripwire process on this data_dir?); this group has one member: "
                    "stop the other process, or give this one another group")
            self._member, self._slot = fd, 0
            return
        for i in range(_MAX_MEMBERS):
            fd = _lock(f"{self._prefix}.member-{i}.lock")
            if fd is not None:
                self._member, self._slot = fd, i
                return
        raise GroupTaken(f"consumer group '{self._group}' already has {_MAX_MEMBERS} members on {self._log.path}")

    def _leave(self) -> None:
        if self._member is not None:
            os.close(self._member)  # releases the flock
            self._member = None

    def _members(self) -> list[int]:
        """Slots held by running members (this one included), in order."""
        if self._exclusive:
            return [0]
        live = []
        for path in Path(self._log.path).parent.glob(Path(f"{self._prefix}.member-*.lock").name):
            try:
                i = int(path.name.rsplit("-", 1)[1].split(".")[0])
            except ValueError:
                continue
            if i == self._slot:
                live.append(i)
                continue
            fd = _lock(str(path))
            if fd is None:
                live.append(i)  # locked: a member runs
            else:
                os.close(fd)
        return sorted(live)

    async def _rebalance(self) -> None:
        """Look at the group; revoke what is no longer this member's, take what is (once it is free)."""
        self._checked = time.monotonic()
        members = await asyncio.to_thread(self._members)
        every = []
        for topic in self._topics:
            every += [TopicPartition(topic, p) for p in await self._log.partitions(topic)]
        every.sort()
        rank, n = members.index(self._slot), len(members)
        mine = {tp for k, tp in enumerate(every) if k % n == rank}
        going = set(self._positions) - mine
        if going:
            if self._listener is not None:
                await self._listener.on_revoked(self, going)
            for tp in going:
                self._positions.pop(tp, None)
            self._release(going)
        self._wanted = mine - set(self._positions)
        if not self._wanted:
            return
        got: dict[TopicPartition, int] = {}
        for tp in sorted(self._wanted):
            fd = self._held.get(tp)
            if fd is None:
                fd = _lock(f"{self._prefix}.{tp.topic}-{tp.partition}.lock")
                if fd is None:
                    continue  # its previous owner is still handing it over: next look
                self._held[tp] = fd
            got[tp] = await self._log.committed_offset(self._group, tp) or 0
        if not got:
            return
        self._wanted -= set(got)
        self._positions.update(got)
        if self._listener is not None:
            await self._listener.on_assigned(self, set(got))

    def _release(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            fd = self._held.pop(tp, None)
            if fd is not None:
                os.close(fd)

    def assignment(self) -> set[TopicPartition]:
        return set(self._positions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._positions:
            raise ValueError(f"partition {tp} is not assigned")
        self._positions[tp] = offset

    # reading -------------------------------------------------------------------------

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
            since = time.monotonic() - self._checked
            if not self._exclusive and (since >= _CHECK_S or (self._wanted and since >= _PENDING_CHECK_S)):
                await self._rebalance()
            records = await asyncio.to_thread(self._read_some, max_records) if self._positions else []
            remaining = deadline - time.monotonic()
            if records or remaining <= 0 or not self._running:
                return records
            await self._log.wait_appended(min(remaining, _PENDING_CHECK_S if self._wanted else _CHECK_S))

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
