"""The rules engine as a service: consume events, match, write triggers, keep state durable.

Lifecycle: ``start()`` compiles the rules directory, opens the state store and
joins the consumer group (embedded: every partition; Kafka: a share of them)
through a :class:`~tripwire.log.consume.Runner`, which owns the loop, the
rebalance fence and the backoff. ``stop()`` lets the batch in hand finish, saves
the state of every partition and leaves the group (safe to call twice). If
handling a batch raises, ``failed`` is set and nothing more is saved: a new
instance resumes from the last save (the supervisor starts it).

Each batch (at most ``max_records`` events, the poll waiting no longer than the
next timer's deadline) is matched; partitions read to the end of the log let
their watermark follow the wall clock; matches become
:class:`~tripwire.triggers.Trigger` records; state + offsets + triggers are
saved by the durability that :func:`build_service` chose from the config (see
:mod:`rules.durability`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import orjson

from tripwire.config import Config
from tripwire.envelope import format_time_ms
from tripwire.log import EVENTS, EventLog, LogError, Record, TopicPartition
from tripwire.log.consume import Batch, Runner
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
from .status import build_status, embedded_status_path, forget_silent, instance_name, status_documents, write_status

logger = logging.getLogger(__name__)

_STATUS_INTERVAL_S = 2.0  # how often the status document (``tripwire rules status``) is rewritten


class Durability(Protocol):
    """What the service needs of :mod:`rules.durability` (embedded or checkpoints)."""

    kind: str

    async def open(self) -> None: ...

    def behind(self) -> bool: ...

    async def restore(self, p: int) -> int | None: ...

    async def save(self, positions: Mapping[int, int], triggers: Sequence[TriggerRow]) -> None: ...

    async def revoke(self, p: int, offset: int | None) -> None: ...

    async def close(self) -> None: ...


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
    """Service ``engine``, and the :class:`~tripwire.log.consume.Handler` of its runner."""

    name = "engine"
    read_ahead = False  # the next poll's timeout depends on the timers this batch sets

    def __init__(self, log: EventLog, ruleset: RuleSet, rc: RulesConfig, engine: Engine,
                 durability: Durability, status_at: tuple[Any, str] | None = None) -> None:
        self.log = log
        self.ruleset = ruleset
        self.rc = rc
        self.engine = engine
        self.durability = durability
        self.max_records = rc.max_records
        self.runner = Runner(log, rc.group, [EVENTS], self, stop_grace_s=5.0)
        self._assigned: set[int] = set()
        self._positions: dict[int, int] = {}
        self._started = False
        self._opened = False
        self._last_reload = time.monotonic()
        self._seen_stats = EngineStats()
        self._exported: dict[tuple[str, str], int] = {}  # per-rule / per-source counts already in the metrics
        self._unsaved = False
        self._last_save = 0.0
        self.status_at = status_at  # (fsspec filesystem, path) of the status document (rules.status)
        self._last_status = 0.0
        self._triggers_by_rule: Counter[str] = Counter()
        self._too_late_logged: dict[str, float] = {}  # source -> when its refusals were last logged
        self.busy: dict[str, float] = {}  # seconds spent per phase of _handle (metrics.BUSY)

    @property
    def failed(self) -> bool:
        return self.runner.failed

    @property
    def error(self) -> BaseException | None:
        return self.runner.error

    # lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.ruleset.scan()
        self.engine.set_plan(self.ruleset.plan)
        relax_for_long_lived_state()  # large acyclic state: see rules/gctune.py
        await self.durability.open()
        self._opened = True
        await self.runner.start()
        logger.info("rules engine started (%s state, %d rule(s))", self.durability.kind, len(self.ruleset.plan.rules))

    async def stop(self) -> None:
        await self.runner.stop()  # revokes: saves every partition (unless the engine failed)
        if self._opened:
            self._opened = False
            await self.durability.close()
            await self._write_status(force=True)

    async def ready(self) -> bool:
        return await self.runner.ready()

    # the runner's handler ----------------------------------------------------------

    def poll_timeout_ms(self) -> int:
        limit = min(1000, self.rc.reload_interval_ms)
        if self._unsaved:
            limit = min(limit, self.rc.commit_interval_ms)
        nxt = self.engine.next_wake_ms()
        if nxt is None:
            return limit
        return int(max(0, min(limit, nxt - time.time() * 1000 + 1)))

    async def on_assigned(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int | None]:
        resume: dict[TopicPartition, int | None] = {}
        for tp in sorted(partitions):
            if tp.topic != EVENTS:
                continue
            offset = await self.durability.restore(tp.partition)
            self._assigned.add(tp.partition)
            resume[tp] = offset
            if offset is not None:
                self._positions[tp.partition] = offset
            else:
                self._positions.pop(tp.partition, None)
        logger.info("partitions assigned: %s", sorted(p.partition for p in partitions))
        return resume

    async def on_revoked(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
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
        logger.info("partitions revoked: %s", sorted(p.partition for p in partitions))
        return {}  # the engine resumes from its own state, not from group offsets

    async def handle(self, batch: Batch) -> None:
        await self._handle(batch)
        if time.monotonic() - self._last_reload >= self.rc.reload_interval_ms / 1000:
            self._last_reload = time.monotonic()
            await self.reload()

    async def reload(self) -> bool:
        changed = await asyncio.to_thread(self.ruleset.scan)
        if changed:
            self.engine.set_plan(self.ruleset.plan)
            logger.info("rules reloaded: %d rule(s)", len(self.ruleset.plan.rules))
        return changed

    async def _handle(self, batch: Batch) -> None:
        started = time.perf_counter()
        engine = self.engine
        engine.set_clock(int(time.time() * 1000))
        quarantined = len(engine.quarantined)
        records: Sequence[Record] = batch.records
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
        if not batch.full:  # else more is waiting: no partition is caught up
            caught_up = sorted(tp.partition for tp in await batch.caught_up() if tp.topic == EVENTS)
            matches.extend(engine.advance_wall(int(time.time() * 1000), caught_up))
        matched = time.perf_counter()
        triggers = await self._to_triggers(matches, envs)
        built = time.perf_counter()
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
        self._account(match=matched - started, triggers=built - matched, save=time.perf_counter() - built)
        self._export_metrics(matches)
        await self._write_status(force=len(engine.quarantined) != quarantined)  # a rule stopped: say so now

    def _account(self, **seconds: float) -> None:
        for phase, s in seconds.items():
            self.busy[phase] = self.busy.get(phase, 0.0) + s
            metrics.BUSY.labels(phase).inc(s)

    def _export_metrics(self, matches: list[Match]) -> None:
        engine = self.engine
        s, last = engine.stats, self._seen_stats
        metrics.EVENTS.inc(s.events - last.events)
        metrics.LATE.inc(s.late - last.late)
        metrics.DUPLICATES.inc(s.duplicates - last.duplicates)
        metrics.ERRORS.inc(s.errors - last.errors)
        metrics.OUT_OF_ORDER.inc(s.out_of_order - last.out_of_order)
        if s.too_late != last.too_late:
            self._report_too_late()
        if s.late_cancels != last.late_cancels or s.errors != last.errors:
            for name, n in engine.late_cancels_by_rule.items():
                metrics.LATE_CANCELS.labels(rule=name).inc(n - self._exported.get(("cancel", name), 0))
                self._exported[("cancel", name)] = n
            for name, n in engine.errors_by_rule.items():
                metrics.RULE_ERRORS.labels(rule=name).inc(n - self._exported.get(("error", name), 0))
                self._exported[("error", name)] = n
            metrics.QUARANTINED.set(len(engine.quarantined))
        if s.refused != last.refused:
            for name, n in engine.refused_by_rule.items():
                metrics.REFUSED.labels(rule=name).inc(n - self._exported.get(("refused", name), 0))
                self._exported[("refused", name)] = n
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

    def _report_too_late(self) -> None:
        """Events delivered later than max lateness: counted per source, logged once per source and hour."""
        engine = self.engine
        now = time.monotonic()
        for src, n in engine.too_late_by_source.items():
            metrics.TOO_LATE.labels(source=src).inc(n - self._exported.get(("late", src), 0))
            if n != self._exported.get(("late", src), 0) and now - self._too_late_logged.get(src, -1e9) >= 3600:
                self._too_late_logged[src] = now
                logger.warning("source %s: %d event(s) delivered later than [rules] max_lateness (%s; the latest "
                               "%.1f h after their time) were not matched (they are in the lake; replay history with "
                               "`tripwire rules backtest`)",
                               src, n, self.rc.max_lateness, engine.too_late_age.get(src, 0) / 3_600_000)
            self._exported[("late", src)] = n

    async def _write_status(self, force: bool = False) -> None:
        if self.status_at is None or (not force and time.monotonic() - self._last_status < _STATUS_INTERVAL_S):
            return
        self._last_status = time.monotonic()
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
        rows: list[TriggerRow] = []
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
                rows.append((trig.id, m.key.encode("utf-8", "surrogatepass"), trig.to_json(), m.partition))
            except Exception as exc:  # noqa: BLE001 - one rule's trigger that cannot be written stops that rule only
                self.engine.quarantine(m.rule, m.message_ids[-1] if m.events else None, exc)
        return rows

    async def _read_events(self, wanted: dict[tuple[int, int], str]) -> dict[tuple[int, int], dict[str, Any]]:
        """Full envelopes of matched events read back from the log (state keeps only what rules need)."""
        spans = _spans(wanted)
        try:
            got = await self.log.read_spans(EVENTS, [(p, off, n) for p, off, n in spans])
        except LogError as exc:
            logger.warning("matched events cannot be read back from the log: %s", exc)
            return {}
        out = {}
        for (p, _, _), records in zip(spans, got, strict=True):
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


def build_service(config: Config, log: EventLog) -> RulesService:
    """The engine on ``log``. Where its state lives is decided here, once, from ``log.backend``: with the
    embedded log, next to it in ``<data_dir>/rules-state.db`` (triggers go out through an outbox in the
    same transaction); with Kafka, in checkpoints at ``rules.checkpoint_url`` that every engine of the
    group shares, so a partition's state moves with it."""
    rc = rules_config(config)
    names, severity = endpoint_policy(config)
    try:
        catalog = rules_catalog(config)
    except RulesError as exc:  # the collector refuses to start on it; the engine runs, unchecked against it
        logger.warning("%s; rules are not checked against the event catalog", exc)
        catalog = None
    ruleset = RuleSet(rules_dir(config, rc), names, severity, catalog=catalog)
    kafka = config.log.backend == "kafka"
    engine = Engine(ruleset.plan, rc.allowed_lateness_ms, track_dirty=not kafka, grace_ms=rc.grace_ms,
                    max_lateness_ms=rc.max_lateness_ms, dedup_window_ms=rc.dedup_window_ms,
                    dedup_max_ids=rc.dedup_max_ids, max_pending=rc.max_pending)
    durability: Durability
    if kafka:
        store = CheckpointStore(checkpoint_url(config, rc), rc.group, rc.storage_options)
        durability = CheckpointDurability(engine, log, store, rc.checkpoint_interval_ms)
        status_at = store.status_path(instance_name())
    else:
        import fsspec

        durability = EmbeddedDurability(engine, log, SqliteStateStore(config.data_dir / "rules-state.db", rc.group))
        status_at = (fsspec.filesystem("file"), embedded_status_path(config.data_dir))
    try:
        forget_silent(*status_documents(config))
    except Exception as exc:  # noqa: BLE001 - housekeeping of status documents never stops the engine
        logger.warning("old rules status documents not removed: %s", exc)
    return RulesService(log, ruleset, rc, engine, durability, status_at)


def create_service(config: Config, log: EventLog) -> RulesService | None:
    """``tripwire run``: the engine next to the collector (embedded state with the SQLite log)."""
    if not rules_config(config).enabled:
        return None
    return build_service(config, log)
