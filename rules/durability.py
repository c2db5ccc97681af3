"""How the service keeps engine state durable: embedded (SQLite + outbox) or Kafka (checkpoints).

Both expose the same four steps to :class:`rules.service.RulesService`:
``restore(p) -> offset`` when a partition is assigned, ``save(positions,
triggers)`` after every processed batch, ``revoke(p)`` before a partition goes
away, and ``close()``. See :mod:`rules.state` for what is stored and when.
:func:`rules.service.build_service` picks one from the config.

An error of ``save`` means the batch is not durable: the service fails and a new
one replays from the last save. The one exception: embedded triggers that are
committed to the outbox but cannot reach the triggers topic yet wait there, and
go out with a later save (``behind()``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping, Sequence

import orjson

from tripwire.log import EVENTS, TRIGGERS, EventLog, LogError

from .dedup import StoredOldIds
from .engine import Engine
from .state import CheckpointStore, PartitionDelta, SqliteStateStore

logger = logging.getLogger(__name__)

TriggerRow = tuple[str, bytes | None, bytes, int]  # (trigger id, key, Trigger JSON, events partition)
_MARK_INTERVAL_S = 10.0


async def trigger_ids(log: EventLog, partition: int, start: int, end: int) -> set[str]:
    """Ids of the trigger records in ``[start, end)`` of one triggers-topic partition."""
    ids: set[str] = set()
    pos = start
    while pos < end:
        batch = await log.read(TRIGGERS, partition, pos, 1000)
        if not batch:
            break
        for record in batch:
            try:
                ids.add(orjson.loads(record.value)["id"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                pass
        pos = batch[-1].offset + 1
    return ids


class EmbeddedDurability:
    """State, offsets and triggers of the partitions this engine owns, in one SQLite transaction.

    Engines of one group may share the file (processes on one data_dir, each owning some
    partitions): each forwards only the outbox rows of its own partitions (their *owner*), and
    records per owner how far the triggers topic had got when that owner's outbox was emptied,
    so a recovery knows where its unforwarded triggers can be.
    """

    kind = "embedded"

    def __init__(self, engine: Engine, log: EventLog, store: SqliteStateStore) -> None:
        self.engine = engine
        self.log = log
        self.store = store
        self._owned: set[int] = set()
        self._old: dict[int, StoredOldIds] = {}  # each owned partition's long memory, given to the engine
        self._outbox_waiting = False
        self._marked = 0.0

    async def open(self) -> None:
        await asyncio.to_thread(self.store.open)

    def behind(self) -> bool:
        """Triggers are committed but not yet on the triggers topic (a forward failed)."""
        return self._outbox_waiting

    async def restore(self, p: int) -> int | None:
        loaded = await asyncio.to_thread(self.store.load, p)
        old = self._old[p] = StoredOldIds.load(functools.partial(self.store.old_ids, p), loaded.old_counts, loaded.old,
                                               loaded.old_floor)
        self.engine.load_partition(
            p, loaded.max_t, loaded.watermark, loaded.seen,
            ((sk, self.engine.decode_state(data)) for sk, data in loaded.states), old,
        )
        self._owned.add(p)
        await self._recover_outbox(p)
        return loaded.offset

    async def save(self, positions: Mapping[int, int], triggers: Sequence[TriggerRow]) -> None:
        deltas = []
        for p, offset in positions.items():
            states, seen, cutoff = self.engine.take_changes(p)
            max_t, wm = self.engine.meta_of(p)
            snapshot = self.engine.snapshot_partition(p) if self.store.wants_snapshot(p) else None
            old, old_below, old_floor = self._old[p].take()
            deltas.append(PartitionDelta(p, offset, max_t, wm, states, seen, cutoff, snapshot, old, old_below, old_floor))
        await asyncio.to_thread(self.store.commit, deltas, triggers)
        for p in positions:
            self._old[p].committed()
        if triggers or self._outbox_waiting:
            self._outbox_waiting = True
            try:
                await self._forward(self._owned)
            except LogError as exc:  # committed in the outbox: durable; the next save forwards them
                logger.warning("triggers wait in the outbox; the triggers topic refused them: %s", exc)
                return
            self._outbox_waiting = False

    async def revoke(self, p: int, offset: int | None) -> None:
        if offset is not None:
            await self.save({p: offset}, [])
        self._owned.discard(p)
        self._old.pop(p, None)

    async def _forward(self, owners: set[int]) -> None:
        rows = await asyncio.to_thread(self.store.outbox, owners)
        if not rows:
            return
        await self.log.append(TRIGGERS, [(key, value) for _, _, key, value in rows])
        marks: dict[int, Mapping[int, int]] = {}
        if time.monotonic() - self._marked >= _MARK_INTERVAL_S:
            # A mark may lag (recovery then scans a little more); refreshing it on every
            # forward would cost a query over the whole topic each time.
            ends = await self.log.end_offsets(TRIGGERS)
            marks = dict.fromkeys(owners, ends)
            self._marked = time.monotonic()
        await asyncio.to_thread(self.store.forwarded, [r[0] for r in rows], marks)

    async def _recover_outbox(self, p: int) -> None:
        """Drop partition ``p``'s outbox rows that reached the topic before a crash; forward the rest."""
        rows = await asyncio.to_thread(self.store.outbox, {p})
        if not rows:
            return
        marks = await asyncio.to_thread(self.store.marks, p)
        present: set[str] = set()
        for q, end in (await self.log.end_offsets(TRIGGERS)).items():
            present |= await trigger_ids(self.log, q, marks.get(q, 0), end)
        done = [seq for seq, tid, _, _ in rows if tid in present]
        if done:
            logger.info("%d trigger(s) had reached the triggers topic before a restart; not sent again", len(done))
            await asyncio.to_thread(self.store.forwarded, done, {})
        await self._forward({p})

    async def close(self) -> None:
        await asyncio.to_thread(self.store.close)


class CheckpointDurability:
    kind = "kafka"

    def __init__(self, engine: Engine, log: EventLog, store: CheckpointStore, interval_ms: int) -> None:
        self.engine = engine
        self.log = log
        self.store = store
        self.interval_s = interval_ms / 1000
        self._last = time.monotonic()
        self._positions: dict[int, int] = {}
        self._unsaved = False
        # ids a previous owner already produced after our restored checkpoint: not produced again
        self._already: dict[int, set[str]] = {}
        self._replay_end: dict[int, int] = {}  # events end offset when the partition was restored

    async def open(self) -> None:
        return None

    def behind(self) -> bool:
        """Something was processed since the last checkpoint, and the interval has passed."""
        return self._unsaved and time.monotonic() - self._last >= self.interval_s

    async def restore(self, p: int) -> int | None:
        got = await asyncio.to_thread(self.store.load_marked, EVENTS, p)
        offset, mark, snapshot = got if got is not None else (None, None, None)
        self.engine.restore_partition(p, snapshot)
        self._already[p] = await self._produced_since(p, mark or 0)
        if self._already[p]:
            try:
                self._replay_end[p] = (await self.log.end_offsets(EVENTS)).get(p, 0)
            except LogError:
                self._replay_end[p] = 2**62  # keep the ids for as long as we own the partition
        if offset is not None:
            logger.info("partition %d restored from checkpoint at offset %s (%d pending states, %d trigger(s) already written)",
                        p, offset, self.engine.pending(p), len(self._already[p]))
        elif self._already[p]:
            logger.info("partition %d has no checkpoint; %d trigger(s) already written for it are not written again",
                        p, len(self._already[p]))
        return offset

    async def _produced_since(self, p: int, mark: int) -> set[str]:
        ids: set[str] = set()
        try:
            if p not in await self.log.partitions(TRIGGERS):
                return ids
            end = (await self.log.end_offsets(TRIGGERS)).get(p, 0)
            ids = await trigger_ids(self.log, p, mark, end)
        except LogError as exc:
            logger.warning("triggers written after the checkpoint of partition %d cannot be read (%s); "
                           "a replay may write some again with the same id", p, exc)
        return ids

    async def save(self, positions: Mapping[int, int], triggers: Sequence[TriggerRow]) -> None:
        already = set().union(*self._already.values()) if self._already else set()
        fresh = [(key, value) for tid, key, value, _ in triggers if tid not in already]
        if fresh:
            # Produced before the checkpoint covering them: a crash replays them, never loses them.
            await self.log.append(TRIGGERS, fresh)
        if triggers or any(self._positions.get(p) != o for p, o in positions.items()):
            self._unsaved = True
        self._positions.update(positions)
        if self._unsaved and time.monotonic() - self._last >= self.interval_s:
            await self._checkpoint(dict(positions))
            self._unsaved = False

    async def _checkpoint(self, positions: Mapping[int, int]) -> None:
        try:
            marks = await self.log.end_offsets(TRIGGERS)
        except LogError as exc:
            logger.warning("triggers topic offsets unavailable for the checkpoint: %s", exc)
            marks = {}
        for p, offset in positions.items():
            snapshot = self.engine.snapshot_partition(p)
            await asyncio.to_thread(self.store.save, EVENTS, p, offset, snapshot, marks.get(p, -1))
            if offset >= self._replay_end.get(p, 0):
                self._already.pop(p, None)  # the previous owner's stretch is replayed: forget its ids
        self._last = time.monotonic()

    async def revoke(self, p: int, offset: int | None) -> None:
        if offset is not None:
            await self._checkpoint({p: offset})
        self._already.pop(p, None)
        self._replay_end.pop(p, None)

    async def close(self) -> None:
        return None
