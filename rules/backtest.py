"""Replaying history through the same engine, in event time (``tripwire rules backtest``).

Events must come in event-time order, and are streamed: a JSONL file is read
in order or sorted out of core (:mod:`rules.history`), the lake day by day, each
day sorted with bounded memory (:mod:`rules.lake`). The engine runs with no
allowed lateness, one partition, and the watermark advancing with the events
only, so absences fire when later history shows their deadline passed; matches
still waiting when history ends are reported as pending, not fired.

Memory is bounded by the rules' windows, not by the history: in time order no
event is ever behind the watermark, so the engine's long memory of messageIds
(a day of them, for retries that arrive late) would never be read; the replay's
engine keeps ids only for its exact span (:class:`Repeats` counts repeats
within that same span).

Each trigger can be written out as the live engine would write it
(:func:`trigger_record`: rule, key, fired_at, the matched messageIds, the
trigger id and the payload), so a backtest can be compared with what the
triggers topic or the webhooks received. A repeated messageId is counted for
every event, as the engine's duplicate memory recognises it (per source and
key), also where no rule listens to the event.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from tripwire.envelope import format_time_ms
from tripwire.triggers import trigger_id

from .codec import compact_mid, key_fp
from .dedup import id_hash
from .engine import Engine, Match, parse_event_time
from .gctune import relax_for_long_lived_state
from .partition import holds_partial
from .plan import Plan
from .progress import Progress

__all__ = ["BacktestResult", "Progress", "RuleReport", "backtest", "format_report", "trigger_record"]


@dataclass
class RuleReport:
    name: str
    per_day: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.per_day.values())


@dataclass
class BacktestResult:
    rules: dict[str, RuleReport]
    events: int
    skipped: int  # unreadable lines or events without a usable time
    late: int
    duplicates: int
    pending: int  # partial matches still waiting (not cooldowns: those fired)
    first_ms: int | None = None
    last_ms: int | None = None
    no_message_id: int = 0  # events the engine ignores: every event needs a messageId
    no_key: int = 0  # events with neither anonymousId nor userId: no rule can match them

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events, "skipped": self.skipped, "late": self.late, "duplicates": self.duplicates,
            "no_message_id": self.no_message_id, "no_key": self.no_key, "pending_at_end": self.pending,
            "from": None if self.first_ms is None else format_time_ms(self.first_ms),
            "to": None if self.last_ms is None else format_time_ms(self.last_ms),
            "rules": {n: {"triggers": r.total, "per_day": dict(sorted(r.per_day.items())), "samples": r.samples}
                      for n, r in self.rules.items()},
        }


def trigger_record(m: Match) -> dict[str, Any]:
    """A trigger as the live engine writes it, with the matched events as their messageIds."""
    ids = m.message_ids
    return {"id": trigger_id(m.rule.name, m.key, ids), "rule": m.rule.name, "key": m.key,
            "fired_at": format_time_ms(m.fired_at_ms), "events": ids, "payload": m.payload}


class Repeats:
    """Counts repeated messageIds as the engine's duplicate memory would recognise them: the same id from
    the same source and log key, within ``window_ms`` of event time.

    Events come in time order, and a retry carries its original's event time, so the copies of one
    event sit next to each other here: remembering the engine's exact span (``Engine.recent_ms``, the
    longest rule window plus the grace, at least 5 minutes) finds them, in memory bounded by that span
    of history rather than by the day a live engine must cover for retries that arrive hours later."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.count = 0
        self._ids: set[int] = set()
        self._order: deque[tuple[int, int]] = deque()

    def add(self, env: dict[str, Any], t: int) -> None:
        mid = env.get("messageId")
        if type(mid) is not str:
            return
        order, ids = self._order, self._ids
        while order and order[0][0] < t - self.window_ms:
            ids.discard(order.popleft()[1])
        key = env.get("anonymousId") or env.get("userId")
        h = id_hash(compact_mid(mid), key_fp(env.get("source"), key if type(key) is str else ""))
        if h in ids:
            self.count += 1
        else:
            ids.add(h)
            order.append((t, h))


def backtest(plan: Plan, events: Iterable[dict[str, Any]] | Iterator[tuple[int | None, dict[str, Any] | None]], *,
             samples: int = 3, progress: Callable[[int], None] | None = None, skipped: int = 0,
             on_trigger: Callable[[dict[str, Any]], None] | None = None) -> BacktestResult:
    """Replay ``events`` in event-time order: envelopes, or (time, envelope) pairs (time None: the event
    has none usable, and is skipped). ``on_trigger`` gets each trigger's :func:`trigger_record` as it fires."""
    relax_for_long_lived_state()  # large acyclic state: see rules/gctune.py
    # The engine's exact span of messageIds is all an in-order replay reads (see the module docstring).
    engine = Engine(plan, 0, dedup_window_ms=Engine(plan, 0).recent_ms)
    repeats = Repeats(engine.recent_ms)
    reports = {r.name: RuleReport(r.name) for r in plan.rules}
    count = no_mid = no_key = 0
    first = last = None
    for item in events:
        if isinstance(item, tuple):
            t, env = item
        else:
            env = item
            t = parse_event_time(env)
        if t is None or env is None:
            skipped += 1
            continue
        count += 1
        first = t if first is None else first
        last = t
        if not isinstance(env.get("messageId"), str):
            no_mid += 1  # the engine skips it (it dedupes by messageId); say so instead of matching nothing
        elif not (env.get("anonymousId") or env.get("userId")):
            no_key += 1
        repeats.add(env, t)
        for m in engine.process(0, count, env, t):
            if on_trigger is not None:
                on_trigger(trigger_record(m))
            report = reports[m.rule.name]
            report.per_day[format_time_ms(m.fired_at_ms)[:10]] += 1
            if len(report.samples) < samples:
                report.samples.append({"key": m.key, "fired_at": format_time_ms(m.fired_at_ms),
                                       "events": m.message_ids, "payload": m.payload})
        if progress is not None and count % 1000 == 0:
            progress(count)
    return BacktestResult(reports, count, skipped, engine.stats.late, repeats.count, waiting(engine),
                          first, last, no_mid, no_key)


def waiting(engine: Engine) -> int:
    """(rule, key) states holding a partial match. ``Engine.pending()`` also counts states that only
    remember fire times for an ``at most`` cap; those matches fired, so a report must not call them
    pending."""
    return sum(1 for ps in engine.partitions.values() for per in ps.rules.values() for rs in per.values()
               if holds_partial(rs))


def format_report(result: BacktestResult) -> str:
    span = ""
    if result.first_ms is not None and result.last_ms is not None:
        span = f" from {format_time_ms(result.first_ms)} to {format_time_ms(result.last_ms)}"
    lines = [f"{result.events:,} events{span}"
             + (f", {result.skipped:,} skipped (not a JSON object, or no usable timestamp)" if result.skipped else "")
             + (f", {result.duplicates:,} duplicate messageIds ignored" if result.duplicates else "")]
    if result.no_message_id:
        lines.append(f"{result.no_message_id:,} event(s) without a messageId ignored: the engine needs one per event "
                     "(the collector always sets it; add \"messageId\" to hand-written events)")
    if result.no_key:
        lines.append(f"{result.no_key:,} event(s) without anonymousId or userId: no rule can match them")
    for report in result.rules.values():
        lines.append("")
        lines.append(f'rule "{report.name}": {report.total:,} trigger(s)')
        for day, n in sorted(report.per_day.items()):
            lines.append(f"  {day}  {n:>8,}")
        for s in report.samples:
            payload = "" if s["payload"] is None else " payload=" + orjson.dumps(s["payload"]).decode()
            lines.append(f"  sample: {s['fired_at']} key={s['key']} events={','.join(s['events'])}{payload}")
    lines.append("")
    lines.append(f"{result.pending:,} partial match(es) still waiting when history ends (not fired)")
    return "\n".join(lines)
