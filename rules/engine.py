"""The event-time matcher: one small automaton per (rule, key), driven by events and a watermark.

Contract (see LANGUAGE.md for the user-facing semantics):

* Events are fed in log order per partition (:meth:`Engine.process`); replaying
  the same partition from the same state gives the same matches.
* The watermark of a partition is the highest event time seen minus the
  allowed lateness; :meth:`Engine.advance_wall` moves it with the wall clock
  when the consumer is idle. An event older than the watermark is *late*:
  counted in ``stats.late`` and not matched.
* Timers (absence deadlines, window expiry, cooldown expiry) fire when the
  watermark passes them, in deadline order (then rule uid, then key), before
  the event that moved the watermark is matched.
* Per (rule, key) at most one partial run waits at each step: a newer run
  reaching a step replaces the older one waiting there (so the absence timer
  restarts at the latest AddToCart). Completed runs are consumed.
* A messageId is matched at most once per partition while it can matter (for
  the longest rule horizon): duplicates are counted in ``stats.duplicates``.
* State per (rule, key) is dropped as soon as nothing in it can still match,
  so memory is bounded by the rule windows.

Layout, chosen for the hot path and for memory: per partition, one dict per
rule uid mapping key -> :class:`RuleState`, or, for "A then B within T" rules
without a cap, the compact form of the one run that can wait there: the flat
tuple ``(messageId, time, offset, *projection)`` of its A (its deadline follows
from the time; it is saved in the general form). Timers are a heap of distinct wake
times plus, per wake time, a flat list ``[uid, key, uid, key, ...]``. A state
registers its earliest wake only; when that comes due the state is looked at
and registers its real wake (so updates that push a deadline later cost
nothing). Rules are reached through a dispatch table by event name, with each
rule's first-step predicate tried before any state is touched.

Snapshot contents (:meth:`snapshot_partition`): watermark, highest event time,
the messageIds still remembered, every (rule uid, key) state. Timers are not
stored; they are rebuilt from the states on restore.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .codec import decode_rule_state, encode_rule_state, loads_state, parse_event_time, snapshot_bytes
from .plan import Plan, RulePlan, Slim
from .predicates import env_getter

__all__ = ["Engine", "EngineStats", "Match", "RuleState", "Run", "parse_event_time"]

NEG_INF = -(2**62)
_SEEN_SWEEP_MIN_MS = 1000
_heappush, _heappop = heapq.heappush, heapq.heappop


class Match(NamedTuple):
    rule: RulePlan
    key: str
    events: tuple[Slim, ...]  # flattened, in match order
    fired_at_ms: int
    payload: Any
    partition: int

    @property
    def message_ids(self) -> list[str]:
        return [e[0] for e in self.events]


@dataclass
class EngineStats:
    events: int = 0
    late: int = 0
    duplicates: int = 0
    matches: int = 0
    suppressed: int = 0
    errors: int = 0


class Run:
    """A partial match waiting at one step."""

    __slots__ = ("steps", "anchor", "deadline", "acc")

    def __init__(self, steps: tuple[Any, ...], anchor: int, deadline: int, acc: tuple[Slim, ...] | None = None):
        self.steps = steps  # per matched step: a Slim, or a tuple of Slims for a count step
        self.anchor = anchor  # event time of the last matched event
        self.deadline = deadline  # anchor + the waiting step's within
        self.acc = acc  # events counted so far when the waiting step is a count


class RuleState:
    __slots__ = ("runs", "acc", "fires", "wake")

    def __init__(self, n_steps: int) -> None:
        self.runs: list[Run | None] | None = [None] * n_steps if n_steps > 1 else None
        self.acc: list[Slim] | None = None  # count step 0: counted events, time order
        self.fires: list[int] | None = None  # fire times inside the cap window
        self.wake = 0  # earliest registered timer (0: none)

    def empty(self) -> bool:
        return not self.acc and not self.fires and (self.runs is None or not any(self.runs))


class PartitionState:
    __slots__ = ("partition", "max_t", "watermark", "rules", "follow", "timers", "wheel", "registered", "seen",
                 "next_sweep", "dirty", "new_seen", "seen_cutoff")

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.max_t = NEG_INF
        self.watermark = NEG_INF
        self.rules: dict[str, dict[str, RuleState]] = {}  # rule uid -> key -> state (one dict per rule, kept)
        self.follow: dict[str, tuple[Any, ...]] = {}  # event name -> (states of the rule, rule, steps, by_anon)
        self.timers: list[int] = []  # heap of the distinct wake times in ``wheel``
        self.wheel: dict[int, list[str]] = {}  # wake time -> [uid, key, uid, key, ...] registered then
        self.registered = 0  # registrations in ``wheel`` (live or superseded)
        self.seen: dict[str, int] = {}
        self.next_sweep = NEG_INF
        self.dirty: set[tuple[str, str]] = set()  # changed since the last take_changes()
        self.new_seen: list[tuple[str, int]] = []
        self.seen_cutoff: int | None = None

    @property
    def states(self) -> dict[tuple[str, str], Any]:
        """Every (rule uid, key) state (a copy; for inspection and snapshots)."""
        return {(uid, key): rs for uid, per in self.rules.items() for key, rs in per.items()}

    def register(self, wake: int, uid: str, key: str) -> None:
        self.registered += 1
        lst = self.wheel.get(wake)
        if lst is None:
            self.wheel[wake] = [uid, key]
            _heappush(self.timers, wake)
        else:
            lst += (uid, key)


def _uid_key(m: Match) -> tuple[str, str]:
    return m.rule.uid, m.key


def _slim_of(c: tuple[Any, ...], partition: int) -> Slim:
    """The Slim a compact state ``(messageId, time, offset, *projection)`` stands for."""
    return (c[0], c[1], partition, c[2], c[3:])


class Engine:
    def __init__(self, plan: Plan, allowed_lateness_ms: int = 5000, *, track_dirty: bool = False,
                 dedup_window_ms: int = 300_000) -> None:
        # messageIds are remembered while their event time is within max(longest rule horizon,
        # dedup_window_ms) of the watermark; an older copy is late anyway.
        self.dedup_window_ms = dedup_window_ms
        self.track_dirty = track_dirty  # remember changed (rule, key) states for incremental saving
        self.lateness = allowed_lateness_ms
        self.partitions: dict[int, PartitionState] = {}
        self.stats = EngineStats()
        self.suppressed_by_rule: Counter[str] = Counter()
        self.set_plan(plan)

    # plan changes (hot reload) -------------------------------------------------

    def set_plan(self, plan: Plan) -> None:
        """Switch rules. State of rules whose uid is unchanged is kept; the rest is dropped."""
        self.plan = plan
        self._rules = {r.uid: r for r in plan.rules}
        self._index(plan)
        for ps in self.partitions.values():
            for uid in [u for u in ps.rules if u not in self._rules]:
                for key in ps.rules.pop(uid):
                    self._dirty(ps, uid, key)
            self._prepare(ps)

    def _index(self, plan: Plan) -> None:
        """Dispatch table: event name -> (followers, starters tried always, starters looked up by a value)."""
        # Rules "A then B within T" (single events, no cap): a key's state is at most one run waiting
        # at B, kept as the Slim of its A alone (the deadline follows from it): the compact form.
        self._compact = {r.uid: r.steps[1].within_ms or 0 for r in plan.rules
                         if len(r.steps) == 2 and r.steps[0].count == 1 and r.steps[1].count == 1 and r.cap_times is None}
        def starter(r: RulePlan, indexed: bool = False) -> tuple[Any, ...]:
            # Reached through the index on a field's value, the step's residual predicate is enough.
            return (r, r.uid, r.by_anonymous_id, r.steps[0].residual if indexed else r.steps[0].pred)

        table: dict[str, tuple[Any, ...]] = {}
        for name in plan.event_names:
            fs = tuple((r.uid, r.by_anonymous_id, r, tuple(reversed(idxs))) for r, idxs in plan.followers.get(name, ()))
            st = plan.starters.get(name)
            always = tuple(starter(r) for r in st.always) if st is not None else ()
            by_value = tuple((env_getter(path), {v: tuple(starter(r, True) for r in rs) for v, rs in tbl.items()})
                             for path, tbl in st.by_value) if st is not None else ()
            table[name] = (fs or None, always or None, by_value or None)
        self._dispatch = table

    def _dirty(self, ps: PartitionState, uid: str, key: str) -> None:
        if self.track_dirty:
            ps.dirty.add((uid, key))

    # partitions ----------------------------------------------------------------

    def partition(self, p: int) -> PartitionState:
        ps = self.partitions.get(p)
        if ps is None:
            ps = self.partitions[p] = self._new_partition(p)
        return ps

    def _new_partition(self, p: int) -> PartitionState:
        ps = PartitionState(p)
        self._prepare(ps)
        return ps

    def _prepare(self, ps: PartitionState) -> None:
        """One state dict per rule, and the followers of each event name pointing straight at them."""
        for uid in self._rules:
            ps.rules.setdefault(uid, {})
        ps.follow = {name: tuple((ps.rules[uid], rule, idxs, by_anon) for uid, by_anon, rule, idxs in followers)
                     for name, (followers, _, _) in self._dispatch.items() if followers is not None}

    def drop_partition(self, p: int) -> None:
        self.partitions.pop(p, None)

    def pending(self, partition: int | None = None) -> int:
        """Number of (rule, key) states held (in one partition, or in all)."""
        parts = self.partitions.values() if partition is None else [self.partition(partition)]
        return sum(len(per) for ps in parts for per in ps.rules.values())

    # events --------------------------------------------------------------------

    def process(self, partition: int, offset: int, env: dict[str, Any], t: int | None = None) -> list[Match]:
        """Match one event (already decoded) read at ``offset`` of ``partition``."""
        out: list[Match] = []
        stats = self.stats
        stats.events += 1
        if t is None:
            t = parse_event_time(env)
            if t is None:
                stats.errors += 1
                return out
        ps = self.partitions.get(partition) or self.partition(partition)
        if t < ps.watermark:
            stats.late += 1
            return out
        if t > ps.max_t:
            ps.max_t = t
            wm = t - self.lateness
            if wm > ps.watermark:
                if (ps.timers and ps.timers[0] <= wm) or wm >= ps.next_sweep:
                    self._advance(ps, wm, out)
                else:
                    ps.watermark = wm
        kind = env.get("type")
        if kind == "track":
            name = env.get("event")
            if type(name) is not str:
                return out
        elif type(kind) is str:
            name = "$" + kind
        else:
            return out
        disp = self._dispatch.get(name)
        if disp is None:
            return out
        mid = env.get("messageId")
        if type(mid) is not str and not isinstance(mid, str):
            stats.errors += 1
            return out
        seen = ps.seen
        if mid in seen:
            stats.duplicates += 1
            return out
        seen[mid] = t
        if self.track_dirty:
            ps.new_seen.append((mid, t))
        anonymous_id = env.get("anonymousId")
        log_key = anonymous_id or env.get("userId")
        followers, always, by_value = disp
        # A rule must never take the engine down: any error in one rule's step is counted and skipped.
        if followers is not None:
            # Later steps only matter where a run of that rule is pending for this key. The same key
            # serves every rule when the event has an anonymousId; else rules `by anonymousId` skip it.
            if anonymous_id:
                key, anon_ok = anonymous_id, True
            else:
                key, anon_ok = log_key, False
            if type(key) is str:
                for per, rule, idxs, by_anon in ps.follow[name]:
                    rs = per.get(key)
                    if rs is not None and (anon_ok or not by_anon):
                        try:
                            if type(rs) is tuple:
                                self._follow_compact(ps, rule, per, key, rs, env, mid, t, offset, out)
                            else:
                                self._follow(ps, rule, per, key, rs, env, mid, t, offset, idxs, out)
                        except Exception:  # noqa: BLE001
                            stats.errors += 1
        if always is not None:
            for entry in always:
                key = anonymous_id if entry[2] else log_key
                if type(key) is str and key:
                    try:
                        pred = entry[3]
                        if pred is None or pred(env, ()) is True:
                            self._start(ps, entry[0], key, env, mid, t, offset, out)
                    except Exception:  # noqa: BLE001
                        stats.errors += 1
        if by_value is not None:
            for get, table in by_value:
                value = get(env, None)
                if type(value) is str:
                    for entry in table.get(value, ()):
                        key = anonymous_id if entry[2] else log_key
                        if type(key) is str and key:
                            try:
                                pred = entry[3]
                                if pred is None or pred(env, ()) is True:
                                    self._start(ps, entry[0], key, env, mid, t, offset, out)
                            except Exception:  # noqa: BLE001
                                stats.errors += 1
        return out

    def _follow_compact(self, ps: PartitionState, rule: RulePlan, per: dict[str, Any], key: str, c: tuple[Any, ...],
                        env: dict[str, Any], mid: str, t: int, offset: int, out: list[Match]) -> None:
        """``env`` for step 2 of a compact rule where ``key`` waits with ``c`` (the first event, compact)."""
        step = rule.steps[1]
        anchor = c[1]
        if not (anchor <= t <= anchor + (step.within_ms or 0)):
            return
        first = (c[0], anchor, ps.partition, c[2], c[3:])
        pred = step.pred
        if pred is not None and pred((env), (first,)) is not True:
            return
        del per[key]
        if self.track_dirty:
            ps.dirty.add((rule.uid, key))
        if not step.absent:
            proj = step.project
            self._complete(ps, rule, key, None, (first, (mid, t, ps.partition, offset, proj(env) if proj is not None else ())),
                           t, out)

    def _follow(self, ps: PartitionState, rule: RulePlan, per: dict[str, RuleState], key: str, rs: RuleState,
                env: dict[str, Any], mid: str, t: int, offset: int, idxs: tuple[int, ...], out: list[Match]) -> None:
        """``env`` for the later steps ``idxs`` (descending) of ``rule`` where ``key`` has a state."""
        runs = rs.runs
        if runs is None:
            return
        steps = rule.steps
        touched = False
        for i in idxs:
            run = runs[i]
            if run is None or not (run.anchor <= t <= run.deadline):
                continue
            step = steps[i]
            pred = step.pred
            if pred is not None and pred(env, run.steps) is not True:
                continue
            touched = True
            if step.absent:
                runs[i] = None
                continue
            proj = step.project
            s = (mid, t, ps.partition, offset, proj(env) if proj is not None else ())
            if step.count > 1:
                acc = (run.acc or ()) + (s,)
                if len(acc) < step.count:
                    run.acc = acc
                    continue
                matched: Any = acc
            else:
                matched = s
            runs[i] = None
            self._advance_run(ps, rule, key, rs, run.steps + (matched,), t, out)
        if touched:
            if self.track_dirty:
                ps.dirty.add((rule.uid, key))
            self._reschedule(ps, rule, per, key, rs)

    def _start(self, ps: PartitionState, rule: RulePlan, key: str, env: dict[str, Any], mid: str, t: int,
               offset: int, out: list[Match]) -> None:
        """``env`` satisfied the first step of ``rule`` (its predicate held)."""
        steps = rule.steps
        step = steps[0]
        proj = step.project
        uid = rule.uid
        per = ps.rules[uid]
        rs = per.get(key)
        if type(rs) is tuple or (rs is None and uid in self._compact):
            if self.track_dirty:
                ps.dirty.add((uid, key))
            if rs is None or rs[1] <= t:  # a newer run replaces the one waiting (whose registration comes first)
                per[key] = (mid, t, offset, *proj(env)) if proj is not None else (mid, t, offset)
                if rs is None:
                    ps.register(t + self._compact[uid] + 1, uid, key)
            return
        s = (mid, t, ps.partition, offset, proj(env) if proj is not None else ())
        n = len(steps)
        if rs is None:
            if n == 1 and step.count == 1 and rule.cap_times is None:
                self._complete(ps, rule, key, None, (s,), t, out)  # nothing to remember
                return
            rs = per[key] = RuleState(n)
        if self.track_dirty:
            ps.dirty.add((uid, key))
        if step.count > 1:
            group = self._count_first(rs, step.count, step.within_ms or 0, s)
            if group is None:
                # only the window's first event can make the state wake earlier
                w = rs.acc[0][1] + (step.within_ms or 0) + 1  # type: ignore[index]
                if rs.wake == 0 or w < rs.wake:
                    rs.wake = w
                    ps.register(w, uid, key)
                return
            self._advance_run(ps, rule, key, rs, (group,), max(e[1] for e in group), out)
        elif n > 1:
            runs = rs.runs
            existing = runs[1]  # type: ignore[index]
            if existing is None or existing.anchor <= t:
                w = t + (steps[1].within_ms or 0)
                runs[1] = Run((s,), t, w)  # type: ignore[index]
                w += 1
                if rs.wake == 0 or w < rs.wake:
                    rs.wake = w
                    ps.register(w, uid, key)
            return
        else:
            self._complete(ps, rule, key, rs, (s,), t, out)
        self._reschedule(ps, rule, per, key, rs)

    @staticmethod
    def _count_first(rs: RuleState, n: int, within: int, s: Slim) -> tuple[Slim, ...] | None:
        acc = rs.acc
        if acc is None:
            rs.acc = [s]
            return (s,) if n <= 1 else None
        # Insert in event-time order (events usually arrive in order: append).
        i = len(acc)
        t = s[1]
        while i > 0 and acc[i - 1][1] > t:
            i -= 1
        acc.insert(i, s)
        if len(acc) < n:
            return None
        for j in range(len(acc) - n + 1):
            if acc[j + n - 1][1] - acc[j][1] <= within:
                group = tuple(acc[j : j + n])
                del acc[j : j + n]
                return group
        return None

    def _advance_run(self, ps: PartitionState, rule: RulePlan, key: str, rs: RuleState, matched: tuple[Any, ...],
                     t: int, out: list[Match]) -> None:
        i = len(matched)
        steps = rule.steps
        if i == len(steps):
            self._complete(ps, rule, key, rs, matched, t, out)
            return
        runs = rs.runs
        assert runs is not None
        existing = runs[i]
        if existing is not None and existing.anchor > t:
            return  # a run that got here later in event time stays
        runs[i] = Run(matched, t, t + (steps[i].within_ms or 0))

    def _complete(self, ps: PartitionState, rule: RulePlan, key: str, rs: RuleState | None, matched: tuple[Any, ...],
                  t: int, out: list[Match]) -> None:
        if rs is not None and rule.cap_times is not None and rule.cap_per_ms is not None:
            per = rule.cap_per_ms
            fires = rs.fires
            if fires:
                fires = [f for f in fires if f > t - per]
                if sum(1 for f in fires if abs(f - t) < per) >= rule.cap_times:
                    self.stats.suppressed += 1
                    self.suppressed_by_rule[rule.name] += 1
                    rs.fires = fires
                    return
                fires.append(t)
                rs.fires = fires
            else:
                rs.fires = [t]
        if len(matched) == 1 and type(matched[0][0]) is str:
            events: Any = matched
        else:
            events = []
            for m in matched:
                if type(m[0]) is tuple:
                    events.extend(m)
                else:
                    events.append(m)
            events = tuple(events)
        payload = None
        if rule.payload is not None:
            try:
                payload = rule.payload(matched)
            except Exception:  # noqa: BLE001 - a broken template still fires, without payload
                self.stats.errors += 1
        self.stats.matches += 1
        out.append(Match(rule, key, events, t, payload, ps.partition))

    # time ------------------------------------------------------------------------

    def _reschedule(self, ps: PartitionState, rule: RulePlan, per: dict[str, RuleState], key: str,
                    rs: RuleState) -> None:
        wake = 0
        runs = rs.runs
        if runs is not None:
            for run in runs:
                if run is not None and (wake == 0 or run.deadline < wake):
                    wake = run.deadline
            if wake:
                wake += 1
        acc = rs.acc
        if acc:
            w = acc[0][1] + (rule.steps[0].within_ms or 0) + 1
            if wake == 0 or w < wake:
                wake = w
        fires = rs.fires
        if fires and rule.cap_per_ms is not None:
            w = min(fires) + rule.cap_per_ms + 1
            if wake == 0 or w < wake:
                wake = w
        if wake == 0:
            if rs.empty():
                del per[key]
            rs.wake = 0
            return
        # Registered lazily: a state keeps its earliest registration; when that one comes due the
        # state is looked at again and registers its real wake.
        if rs.wake == 0 or wake < rs.wake:
            rs.wake = wake
            ps.register(wake, rule.uid, key)
            if ps.registered > 65_536 and ps.registered & 4095 == 0:
                self._maybe_rebuild_timers(ps)

    def _maybe_rebuild_timers(self, ps: PartitionState) -> None:
        """Drop superseded registrations when they outnumber the live states."""
        live = self.pending(ps.partition)
        if ps.registered <= 2 * live + 4096:
            return
        ps.wheel = {}
        for uid, per in ps.rules.items():
            for key, rs in per.items():
                wake = self._wake_of(uid, rs)
                if wake:
                    ps.wheel.setdefault(wake, []).extend((uid, key))
        ps.timers = list(ps.wheel)
        heapq.heapify(ps.timers)
        ps.registered = live

    def _advance(self, ps: PartitionState, wm: int, out: list[Match]) -> None:
        ps.watermark = wm
        timers, wheel, prules = ps.timers, ps.wheel, ps.rules
        rules_get, track, compact = self._rules.get, self.track_dirty, self._compact
        while timers and timers[0] <= wm:
            wake = _heappop(timers)
            flat = wheel.pop(wake)
            ps.registered -= len(flat) >> 1
            first_out = len(out)
            it = iter(flat)
            for uid in it:
                key = next(it)
                per = prules.get(uid)
                if per is None:
                    continue
                rs = per.get(key)
                if rs is None:
                    continue
                if type(rs) is tuple:
                    w = rs[1] + compact[uid] + 1  # type: ignore[index]
                    if w != wake:
                        if w > wake:
                            ps.register(w, uid, key)  # replaced by a later run: wake it then
                        continue
                    del per[key]
                    if track:
                        ps.dirty.add((uid, key))
                    rule = rules_get(uid)
                    if rule is not None and rule.steps[1].absent:
                        self._complete(ps, rule, key, None, (_slim_of(rs, ps.partition),), w - 1, out)
                    continue
                if rs.wake != wake:
                    continue  # superseded registration
                rule = rules_get(uid)
                if rule is None:
                    del per[key]
                    if track:
                        ps.dirty.add((uid, key))
                    continue
                rs.wake = 0
                if rs.fires is None and rs.runs is None:
                    acc = rs.acc
                    if acc and acc[-1][1] < wm - rule.steps[0].within_ms:  # type: ignore[operator]
                        del per[key]  # a count whose whole window passed: the common end of a state
                        if track:
                            ps.dirty.add((uid, key))
                        continue
                if self._expire(ps, rule, key, rs, wm, out) and track:
                    ps.dirty.add((uid, key))
                self._reschedule(ps, rule, per, key, rs)
            if len(out) - first_out > 1:
                # Timers due at one time fire in (rule uid, key) order; each entry fires at most once
                # and entries do not affect one another, so sorting what they fired is the same.
                out[first_out:] = sorted(out[first_out:], key=_uid_key)
        if wm >= ps.next_sweep:
            horizon = max(self.plan.horizon_ms, self.dedup_window_ms)
            cutoff = wm - horizon
            if ps.seen:
                ps.seen = {m: t for m, t in ps.seen.items() if t >= cutoff}
            if self.track_dirty:
                ps.seen_cutoff = cutoff
            ps.next_sweep = wm + max(_SEEN_SWEEP_MIN_MS, horizon // 8)

    def _expire(self, ps: PartitionState, rule: RulePlan, key: str, rs: RuleState, wm: int, out: list[Match]) -> bool:
        """Drop what the watermark ``wm`` has passed (firing absences); True when anything changed."""
        changed = False
        if rs.runs is not None:
            for i, run in enumerate(rs.runs):
                if run is not None and run.deadline < wm:
                    rs.runs[i] = None
                    changed = True
                    if rule.steps[i].absent:
                        self._complete(ps, rule, key, rs, run.steps, run.deadline, out)
        if rs.acc:
            cutoff = wm - (rule.steps[0].within_ms or 0)
            if rs.acc[0][1] < cutoff:
                rs.acc = [s for s in rs.acc if s[1] >= cutoff] or None
                changed = True
        if rs.fires and rule.cap_per_ms is not None:
            per = rule.cap_per_ms
            if min(rs.fires) + per <= wm:
                rs.fires = [f for f in rs.fires if f + per > wm] or None
                changed = True
        return changed

    def advance_watermark(self, partition: int, wm: int) -> list[Match]:
        out: list[Match] = []
        ps = self.partition(partition)
        if wm > ps.watermark:
            self._advance(ps, wm, out)
        return out

    def advance_wall(self, now_ms: int, partitions: Iterable[int] | None = None) -> list[Match]:
        """The consumer is idle: let the watermark follow the wall clock (minus the lateness)."""
        out: list[Match] = []
        for p in list(self.partitions) if partitions is None else partitions:
            ps = self.partition(p)
            wm = now_ms - self.lateness
            if wm > ps.watermark:
                self._advance(ps, wm, out)
        return out

    def next_wake_ms(self) -> int | None:
        """Event time at which the earliest pending timer fires (watermark needed, plus lateness)."""
        best = None
        for ps in self.partitions.values():
            timers, wheel, prules = ps.timers, ps.wheel, ps.rules
            while timers:
                wake = timers[0]
                flat = wheel[wake]
                live, moved = False, []
                for j in range(0, len(flat), 2):
                    uid, key = flat[j], flat[j + 1]
                    per = prules.get(uid)
                    rs = per.get(key) if per is not None else None
                    if rs is not None:
                        w = self._wake_of(uid, rs)
                        if w == wake:
                            live = True
                            break
                        if type(rs) is tuple and w > wake:
                            moved.append((w, uid, key))  # a compact state replaced by a later run
                if live:
                    break
                _heappop(timers)
                ps.registered -= len(wheel.pop(wake)) >> 1
                for w, uid, key in moved:
                    ps.register(w, uid, key)
            if timers and (best is None or timers[0] < best):
                best = timers[0]
        return None if best is None else best + self.lateness

    def _wake_of(self, uid: str, rs: Any) -> int:
        return rs[1] + self._compact.get(uid, 0) + 1 if type(rs) is tuple else rs.wake

    def _encode(self, p: int, uid: str, rs: Any) -> bytes:
        if type(rs) is tuple:  # a compact state is stored like the general form it stands for
            full = RuleState(2)
            full.runs[1] = Run((_slim_of(rs, p),), rs[1], rs[1] + self._compact.get(uid, 0))  # type: ignore[index]
            rs = full
        return encode_rule_state(rs)

    def take_changes(self, p: int) -> tuple[list[tuple[str, str, bytes | None]], list[tuple[str, int]], int | None]:
        """(changed states encoded or None when gone, new messageIds, messageId cutoff) since the last call."""
        ps = self.partition(p)
        states = []
        for uid, key in ps.dirty:
            per = ps.rules.get(uid)
            rs = per.get(key) if per is not None else None
            states.append((uid, key, None if rs is None else self._encode(p, uid, rs)))
        seen, cutoff = ps.new_seen, ps.seen_cutoff
        ps.dirty, ps.new_seen, ps.seen_cutoff = set(), [], None
        return states, seen, cutoff

    # snapshots -------------------------------------------------------------------

    encode_state = staticmethod(encode_rule_state)

    @staticmethod
    def decode_state(data: bytes) -> RuleState:
        return decode_rule_state(data, RuleState, Run)

    def meta_of(self, p: int) -> tuple[int, int]:
        ps = self.partition(p)
        return ps.max_t, ps.watermark

    def snapshot_partition(self, p: int) -> bytes:
        ps = self.partition(p)
        return snapshot_bytes(ps.max_t, ps.watermark, ps.seen,
                              {(uid, key): self._encode(p, uid, rs) for uid, per in ps.rules.items() for key, rs in per.items()})

    def restore_partition(self, p: int, data: bytes | None) -> None:
        if data is None:
            self.partitions[p] = self._new_partition(p)
            return
        snap = loads_state(data)
        self.load_partition(p, snap["max_t"], snap["watermark"], snap["seen"],
                            ((sk, self.decode_state(b)) for sk, b in snap["states"].items()))

    def load_partition(self, p: int, max_t: int, watermark: int, seen: dict[str, int],
                       states: Iterable[tuple[tuple[str, str], RuleState]]) -> None:
        ps = self.partitions[p] = self._new_partition(p)
        ps.max_t, ps.watermark, ps.seen = max_t, watermark, dict(seen)
        for (uid, key), rs in states:
            rule = self._rules.get(uid)
            if rule is None:
                self._dirty(ps, uid, key)  # its rule is gone: forget it durably too
                continue
            per = ps.rules.get(uid)
            if per is None:
                per = ps.rules[uid] = {}
            per[key] = rs
            rs.wake = 0
            self._reschedule(ps, rule, per, key, rs)

