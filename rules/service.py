"""The rules engine as a service: consume events, match, write triggers, keep state durable.

Lifecycle: ``start()`` compiles the rules directory, opens the state store and
joins the consumer group (embedded: every partition; Kafka: a share of them),
then runs one background task. ``stop()`` stops the task, saves the state of
every partition and leaves the group (safe to call twice). If the task dies,
``failed`` is set and the error logged.

Each loop turn polls at most ``max_records`` events (waiting no longer than the
next timer's deadline), matches them, lets the watermark follow the wall clock
when the log is drained, turns matches into :class:`~tripwire.triggers.Trigger`
records, and saves state + offsets + triggers (see :mod:`rules.durability`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from tripwire.config import Config
from tripwire.envelope import format_time_ms
from tripwire.log import EVENTS, Consumer, EventLog, LogError, TopicPartition
from tripwire.triggers import Trigger, trigger_id

from . import metrics
from .catalog import rules_catalog
from .config import RulesConfig, checkpoint_url, rules_config, rules_dir
from .durability import CheckpointDurability, EmbeddedDurability, TriggerRow
from .engine import NEG_INF, Engine, EngineStats, Match
from .errors import RulesError
from .gctune import relax_for_long_lived_state
from .reload import RuleSet
from .state import CheckpointStore, SqliteStateStore
from .status import FILE_NAME as STATUS_FILE
from .status import instance_name

logger = logging.getLogger(__name__)

_CAUGHT_UP_FOR_S = 0.25  # a partition found caught up is not asked again for this long
_STATUS_INTERVAL_S = 2.0  # how often the status document (``tripwire rules status``) is rewritten


def endpoint_policy(config: Config) -> tuple[set[str], str]:
    """Configured endpoint names, and how a rule posting elsewhere is reported.

    With a config file (or any endpoint configured) an unknown endpoint is an
    error; with neither it is a warning, so rules can be written before the
    endpoints exist.
    """
    from tripwire.triggers import endpoints

    names = set(endpoints(config))
    severity = "error" if (config.source_path is not None or names) else "warning"
    return names, severity


class RulesService:
    name = "rules"

    def __init__(self, log: EventLog, ruleset: RuleSet, rc: RulesConfig, durability_kind: str, *,
                 state_path: Any = None, checkpoint: CheckpointStore | None = None,
                 status_at: tuple[Any, str] | None = None) -> None:
        self.log = log
        self.ruleset = ruleset
        self.rc = rc
        self.engine = Engine(ruleset.plan, rc.allowed_lateness_ms, track_dirty=durability_kind == "embedded",
                             grace_ms=rc.grace_ms, max_lateness_ms=rc.max_lateness_ms,
                             dedup_window_ms=rc.dedup_window_ms, dedup_max_ids=rc.dedup_max_ids)
        self.kind = durability_kind
        if durability_kind == "embedded":
            self.durability: EmbeddedDurability | CheckpointDurability = EmbeddedDurability(
                self.engine, log, SqliteStateStore(state_path, rc.group))
        else:
            assert checkpoint is not None
            self.durability = CheckpointDurability(self.engine, log, checkpoint, rc.checkpoint_interval_ms)
        self.failed = False
        self.triggers_written = 0
        self._consumer: Consumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._assigned: set[int] = set()
        self._positions: dict[int, int] = {}
        self._generation = 0  # bumped at both ends of every rebalance callback
        self._caught_up_at: dict[int, float] = {}  # partition -> when it was last found caught up
        self._stopping = False
        self._last_reload = time.monotonic()
        self._seen_stats = EngineStats()
        self._exported: dict[tuple[str, str], int] = {}  # per-rule / per-source counts already in the metrics
        self._unsaved = False
        self._last_save = 0.0
        self.status_at = status_at  # (fsspec filesystem, path) of the status document (rules.status)
        self._last_status = 0.0
        self._triggers_by_rule: Counter[str] = Counter()
        self._too_late_logged: dict[str, float] = {}  # source -> when its refusals were last logged

    # lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self.ruleset.scan()
        self.engine.set_plan(self.ruleset.plan)
        relax_for_long_lived_state()  # large acyclic state: see rules/gctune.py
        await self.durability.open()
        self._consumer = self.log.consumer(self.rc.group, [EVENTS], listener=self)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="tripwire-rules")
        self._task.add_done_callback(self._done)
        logger.info("rules engine started (%s state, %d rule(s))", self.kind, len(self.ruleset.plan.rules))

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.failed = True
            logger.error("rules engine stopped by an error", exc_info=task.exception())

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=5)
            if not self._task.done():
                self._task.cancel()
        if self._consumer is not None:
            with contextlib.suppress(LogError):
                await self._consumer.stop()  # revokes: saves every partition
        await self.durability.close()
        await self._write_status(force=True)

    # rebalance listener ----------------------------------------------------------

    async def on_assigned(self, consumer: Consumer, partitions: set[TopicPartition]) -> None:
        async with self._lock:
            self._generation += 1
            self._caught_up_at.clear()
            for tp in sorted(partitions):
                if tp.topic != EVENTS:
                    continue
                offset = await self.durability.restore(tp.partition)
                self._assigned.add(tp.partition)
                if offset is not None:
                    consumer.seek(tp, offset)
                    self._positions[tp.partition] = offset
                else:
                    self._positions.pop(tp.partition, None)
            self._generation += 1  # a poll that began while this ran may predate the seeks
            logger.info("partitions assigned: %s", sorted(p.partition for p in partitions))

    async def on_revoked(self, consumer: Consumer, partitions: set[TopicPartition]) -> None:
        async with self._lock:
            self._generation += 1
            self._caught_up_at.clear()
            for tp in sorted(partitions):
                if tp.topic != EVENTS or tp.partition not in self._assigned:
                    continue
                try:
                    await self.durability.revoke(tp.partition, self._positions.get(tp.partition))
                except Exception:  # noqa: BLE001 - the next owner replays from the last good save
                    logger.exception("state of partition %d could not be saved on revoke", tp.partition)
                self._assigned.discard(tp.partition)
                self._positions.pop(tp.partition, None)
                self.engine.drop_partition(tp.partition)
            self._generation += 1
            logger.info("partitions revoked: %s", sorted(p.partition for p in partitions))

    # the loop ------------------------------------------------------------------------

    def _poll_timeout_ms(self) -> int:
        limit = min(1000, self.rc.reload_interval_ms)
        if self._unsaved:
            limit = min(limit, self.rc.commit_interval_ms)
        nxt = self.engine.next_wake_ms()
        if nxt is None:
            return limit
        return int(max(0, min(limit, nxt - time.time() * 1000 + 1)))

    async def _run(self) -> None:
        assert self._consumer is not None
        while not self._stopping:
            generation = self._generation
            try:
                records = await self._consumer.poll(self._poll_timeout_ms(), self.rc.max_records)
            except LogError as exc:
                logger.warning("rules engine cannot read the event log: %s", exc)
                await asyncio.sleep(1)
                continue
            try:
                async with self._lock:
                    if generation != self._generation:
                        self._rewind(records)
                        continue
                    await self._handle(records)
            except LogError as exc:
                # Embedded: the batch is committed and its triggers wait in the outbox (retried on the
                # next save). Kafka: the checkpoint did not move, so the batch is replayed after a restart.
                logger.warning("rules engine could not write triggers: %s", exc)
                await asyncio.sleep(1)
            if time.monotonic() - self._last_reload >= self.rc.reload_interval_ms / 1000:
                self._last_reload = time.monotonic()
                await self.reload()

    def _rewind(self, records: Sequence[Any]) -> None:
        """Drop a batch fetched across a rebalance and read again from where each partition is.

        Its records may predate a listener's seek; matching them would process a
        partition out of order. A partition restored without a checkpoint has no
        known position: it goes back to the batch's first record of it.
        """
        assert self._consumer is not None
        self._caught_up_at.clear()
        first: dict[int, int] = {}
        for r in records:
            if r.topic == EVENTS:
                first[r.partition] = min(first.get(r.partition, r.offset), r.offset)
        for tp in self._consumer.assignment():
            offset = self._positions.get(tp.partition, first.get(tp.partition))
            if tp.topic == EVENTS and tp.partition in self._assigned and offset is not None:
                self._consumer.seek(tp, offset)

    async def reload(self) -> bool:
        changed = await asyncio.to_thread(self.ruleset.scan)
        if changed:
            async with self._lock:
                self.engine.set_plan(self.ruleset.plan)
            logger.info("rules reloaded: %d rule(s)", len(self.ruleset.plan.rules))
        return changed

    async def _handle(self, records: Sequence[Any]) -> None:
        engine = self.engine
        matches: list[Match] = []
        envs: dict[tuple[int, int], dict[str, Any]] = {}
        for r in records:
            if r.topic != EVENTS or r.partition not in self._assigned:
                continue
            self._positions[r.partition] = r.offset + 1
            try:
                env = orjson.loads(r.value)
            except orjson.JSONDecodeError:
                engine.stats.errors += 1
                continue
            if not isinstance(env, dict):
                engine.stats.errors += 1
                continue
            envs[(r.partition, r.offset)] = env
            matches.extend(engine.process(r.partition, r.offset, env))
        drained = not records or (self.kind == "embedded" and len(records) < self.rc.max_records)
        if drained:
            matches.extend(engine.advance_wall(int(time.time() * 1000), await self._caught_up()))
        triggers = await self._to_triggers(matches, envs)
        positions = {p: self._positions[p] for p in self._assigned if p in self._positions}
        # Triggers are committed (and forwarded) at once; progress without triggers can wait a
        # little: a crash then replays a few more events, deterministically.
        now = time.monotonic()
        progressed = bool(records) or any(self.engine.partition(p).dirty for p in self._assigned)
        self._unsaved = self._unsaved or progressed
        if triggers or self.durability.behind() or (
            self._unsaved and now - self._last_save >= self.rc.commit_interval_ms / 1000
        ):
            await self.durability.save(positions, triggers)
            self._unsaved = False
            self._last_save = now
        self.triggers_written += len(triggers)
        self._export_metrics(matches)
        await self._write_status()

    async def _caught_up(self) -> list[int]:
        """Assigned partitions read to the end of the log: only their watermark follows the wall clock.

        A partition with a backlog (just restored after a crash or a rebalance, or
        behind after an outage) must not: its unread events would be declared late
        before they are read. The consumer knows its lag (unknown, e.g. before the
        first fetch, counts as behind). Once caught up, a partition can only fall
        behind by new events, which are not late, so the answer is kept a moment.
        """
        assert self._consumer is not None
        now = time.monotonic()
        out = []
        for p in sorted(self._assigned):
            if now - self._caught_up_at.get(p, float("-inf")) >= _CAUGHT_UP_FOR_S:
                try:
                    lag = await self._consumer.lag(TopicPartition(EVENTS, p))
                except LogError:
                    lag = None
                if lag != 0:
                    continue
                self._caught_up_at[p] = now
            out.append(p)
        return out

    def _export_metrics(self, matches: list[Match]) -> None:
        engine = self.engine
        s, last = engine.stats, self._seen_stats
        metrics.EVENTS.inc(s.events - last.events)
        metrics.LATE.inc(s.late - last.late)
        metrics.DUPLICATES.inc(s.duplicates - last.duplicates)
        metrics.ERRORS.inc(s.errors - last.errors)
        metrics.OUT_OF_ORDER.inc(s.out_of_order - last.out_of_order)
        if s.too_late != last.too_late:
            self._report_too_late(last.too_late)
        if s.late_cancels != last.late_cancels or s.errors != last.errors:
            for name, n in engine.late_cancels_by_rule.items():
                metrics.LATE_CANCELS.labels(rule=name).inc(n - self._exported.get(("cancel", name), 0))
                self._exported[("cancel", name)] = n
            for name, n in engine.errors_by_rule.items():
                metrics.RULE_ERRORS.labels(rule=name).inc(n - self._exported.get(("error", name), 0))
                self._exported[("error", name)] = n
            metrics.QUARANTINED.set(len(engine.quarantined))
        self._seen_stats = EngineStats(**vars(s))
        for m in matches:
            if m.rule.uid not in engine.quarantined:  # else its trigger was not written
                metrics.TRIGGERS.labels(rule=m.rule.name).inc()
                self._triggers_by_rule[m.rule.name] += 1
        for name, n in engine.suppressed_by_rule.items():
            metrics.SUPPRESSED.labels(rule=name).inc(n)
        engine.suppressed_by_rule.clear()
        metrics.PENDING.set(self.engine.pending())
        marks = [self.engine.partition(p).watermark for p in self._assigned]
        marks = [w for w in marks if w > NEG_INF]
        if marks:
            metrics.WATERMARK_LAG.set(max(0.0, time.time() - min(marks) / 1000))

    def _report_too_late(self, before: int) -> None:
        """Events older than max lateness: counted per source, logged once per source and hour (with the age)."""
        engine = self.engine
        now = time.monotonic()
        for src, n in engine.too_late_by_source.items():
            metrics.TOO_LATE.labels(source=src).inc(n - self._exported.get(("late", src), 0))
            if n != self._exported.get(("late", src), 0) and now - self._too_late_logged.get(src, -1e9) >= 3600:
                self._too_late_logged[src] = now
                logger.warning("source %s: %d event(s) older than [rules] max_lateness (%s; the oldest %.1f h behind) "
                               "were not matched (they are in the lake; replay history with `tripwire rules backtest`)",
                               src, n, self.rc.max_lateness, engine.too_late_age.get(src, 0) / 3_600_000)
            self._exported[("late", src)] = n

    async def _write_status(self, force: bool = False) -> None:
        if self.status_at is None or (not force and time.monotonic() - self._last_status < _STATUS_INTERVAL_S):
            return
        self._last_status = time.monotonic()
        from .status import build_status, write_status

        doc = build_status(self.engine, self.ruleset, triggers=self._triggers_by_rule, partitions=self._assigned,
                           allowed_lateness_ms=self.rc.allowed_lateness_ms)
        fs, path = self.status_at
        try:
            await asyncio.to_thread(write_status, fs, path, doc)
        except Exception as exc:  # noqa: BLE001 - the status is informational; matching goes on
            logger.warning("rules status %s cannot be written: %s", path, exc)

    async def _to_triggers(self, matches: list[Match], envs: dict[tuple[int, int], dict[str, Any]]) -> list[TriggerRow]:
        if not matches:
            return []
        wanted = {(p, off): mid for m in matches for mid, _, p, off, _ in m.events if (p, off) not in envs}
        found = await self._read_events(wanted) if wanted else {}
        rows = []
        for m in matches:
            events = [envs.get((p, off)) or found.get((p, off)) or {"messageId": mid, "timestamp": format_time_ms(t)}
                      for mid, t, p, off, _ in m.events]  # the fallback: no longer in the log (retention)
            if m.rule.uid in self.engine.quarantined:
                continue  # its rule failed earlier in this batch
            try:
                trig = Trigger(
                    id=trigger_id(m.rule.name, m.key, m.message_ids), rule=m.rule.name, endpoint=m.rule.endpoint,
                    key=m.key, fired_at=format_time_ms(m.fired_at_ms), events=events, payload=m.payload,
                    user_id=m.identity[0], anonymous_id=m.identity[1], identity=m.identity[2],
                )
                rows.append((trig.id, m.key.encode("utf-8", "surrogatepass"), trig.to_json()))
            except Exception as exc:  # noqa: BLE001 - one rule's trigger that cannot be written stops that rule only
                self.engine.quarantine(m.rule, m.message_ids[-1] if m.events else None, exc)
        return rows

    async def _read_events(self, wanted: dict[tuple[int, int], str]) -> dict[tuple[int, int], dict[str, Any]]:
        """Full envelopes of matched events read back from the log (state keeps only what rules need)."""
        read_sync = getattr(self.log, "read_sync", None)
        try:
            if read_sync is not None:  # embedded: every read in one trip to a worker thread
                got = await asyncio.to_thread(lambda: [(span, read_sync(EVENTS, *span)) for span in _spans(wanted)])
            else:
                got = [(span, await self.log.read(EVENTS, *span)) for span in _spans(wanted)]
        except LogError as exc:
            logger.warning("matched events cannot be read back from the log: %s", exc)
            return {}
        out = {}
        for (p, _, _), records in got:
            for r in records:
                mid = wanted.get((p, r.offset))
                if mid is None:
                    continue
                try:
                    env = orjson.loads(r.value)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(env, dict) and env.get("messageId") == mid:
                    out[(p, r.offset)] = env
        return out


def _spans(refs: Iterable[tuple[int, int]], max_gap: int = 16) -> list[tuple[int, int, int]]:
    """(partition, first offset, count) reads covering ``refs``: near ones (gap <= ``max_gap``) share a read."""
    spans: list[list[int]] = []
    for p, off in sorted(refs):
        last = spans[-1] if spans else None
        if last is not None and last[0] == p and off - (last[1] + last[2] - 1) <= max_gap:
            last[2] = off - last[1] + 1
        else:
            spans.append([p, off, 1])
    return [(p, off, n) for p, off, n in spans]


def build_service(config: Config, log: EventLog, *, kind: str | None = None) -> RulesService:
    rc = rules_config(config)
    names, severity = endpoint_policy(config)
    try:
        catalog = rules_catalog(config)
    except RulesError as exc:  # the collector refuses to start on it; the engine runs, unchecked against it
        logger.warning("%s; rules are not checked against the event catalog", exc)
        catalog = None
    ruleset = RuleSet(rules_dir(config, rc), names, severity, catalog=catalog)
    kind = kind or ("kafka" if config.log.backend == "kafka" else "embedded")
    if kind == "embedded":
        import fsspec

        return RulesService(log, ruleset, rc, "embedded", state_path=config.data_dir / "rules-state.db",
                            status_at=(fsspec.filesystem("file"), str(config.data_dir / STATUS_FILE)))
    store = CheckpointStore(checkpoint_url(config, rc), rc.group, rc.storage_options)
    return RulesService(log, ruleset, rc, "kafka", checkpoint=store, status_at=store.status_path(instance_name()))


def create_service(config: Config, log: EventLog) -> RulesService | None:
    """``tripwire run``: the engine next to the collector (embedded state with the SQLite log)."""
    if not rules_config(config).enabled:
        return None
    return build_service(config, log)
