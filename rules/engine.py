"""The event-time matcher: one small automaton per (rule, key), driven by events and a watermark.

Contract (see LANGUAGE.md for the user-facing semantics):

* Events are fed in log order per partition (:meth:`Engine.process`); replaying
  the same partition from the same state gives the same matches.
* The watermark of a partition is the highest event time seen minus the
  allowed lateness; :meth:`Engine.advance_wall` moves it with the wall clock
  when the consumer is idle. An event older than the watermark is *late*:
  counted in ``stats.late`` and not matched.
* Timers (absence deadlines, window expiry, cooldown expiry) fire when the
  watermark passes them, in deadline order, before the event that moved the
  watermark is matched.
* Per (rule, key) at most one partial run waits at each step: a newer run
  reaching a step replaces the older one waiting there (so the absence timer
  restarts at the latest AddToCart). Completed runs are consumed.
* A messageId is matched at most once per partition while it can matter (for
  the longest rule horizon): duplicates are counted in ``stats.duplicates``.
* State per (rule, key) is dropped as soon as nothing in it can still match,
  so memory is bounded by the rule windows.

Snapshot contents (:meth:`snapshot_partition`): watermark, highest event time,
the messageIds still remembered, every (rule uid, key) state. Timers are not
stored; they are rebuilt from the states on restore.
"""

from __future__ import annotations

import heapq
from collections import Counter
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .codec import loads_state, parse_event_time
from .plan import Plan, RulePlan, Slim, event_name, get_path

__all__ = ["Engine", "EngineStats", "Match", "RuleState", "Run", "parse_event_time"]

NEG_INF = -(2**62)
_FIRST = (0,)
_SEEN_SWEEP_MIN_MS = 1000


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
        self.wake = 0  # watermark at which something in here changes (0: nothing pending)

    def empty(self) -> bool:
        return not self.acc and not self.fires and (self.runs is None or not any(self.runs))


class PartitionState:
    __slots__ = ("partition", "max_t", "watermark", "states", "timers", "wheel", "seen", "next_sweep", "dirty",
                 "new_seen", "seen_cutoff")

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.max_t = NEG_INF
        self.watermark = NEG_INF
        self.states: dict[tuple[str, str], RuleState] = {}
        self.timers: list[int] = []  # heap of the distinct wake times in ``wheel``
        self.wheel: dict[int, list[tuple[str, str]]] = {}  # wake time -> (rule uid, key) registered then
        self.seen: dict[str, int] = {}
        self.next_sweep = NEG_INF
        self.dirty: set[tuple[str, str]] = set()  # changed since the last take_changes()
        self.new_seen: list[tuple[str, int]] = []
        self.seen_cutoff: int | None = None


class Engine:
    def __init__(self, plan: Plan, allowed_lateness_ms: int = 5000, *, track_dirty: bool = False,
                 dedup_window_ms: int = 300_000) -> None:
        # messageIds are remembered while their event time is within max(longest rule horizon,
        # dedup_window_ms) of the watermark; an older copy is late anyway.
        self.dedup_window_ms = dedup_window_ms
        self.plan = plan
        self.track_dirty = track_dirty  # remember changed (rule, key) states for incremental saving
        self.lateness = allowed_lateness_ms
        self.partitions: dict[int, PartitionState] = {}
        self.stats = EngineStats()
        self.suppressed_by_rule: Counter[str] = Counter()
        self._rules = {r.uid: r for r in plan.rules}
        self._follow = self._index_followers(plan)

    @staticmethod
    def _index_followers(plan: Plan) -> dict[str, tuple[tuple[str, bool, RulePlan, tuple[int, ...]], ...]]:
        # Hot path: the followers of an event name with their uid and key choice unpacked once per plan.
        return {name: tuple((r.uid, r.by_anonymous_id, r, idxs) for r, idxs in fs) for name, fs in plan.followers.items()}

    # plan changes (hot reload) -------------------------------------------------

    def set_plan(self, plan: Plan) -> None:
        """Switch rules. State of rules whose uid is unchanged is kept; the rest is dropped."""
        self.plan = plan
        self._rules = {r.uid: r for r in plan.rules}
        self._follow = self._index_followers(plan)
        for ps in self.partitions.values():
            gone = [sk for sk in ps.states if sk[0] not in self._rules]
            for sk in gone:
                del ps.states[sk]
                self._dirty(ps, sk)

    def _dirty(self, ps: PartitionState, sk: tuple[str, str]) -> None:
        if self.track_dirty:
            ps.dirty.add(sk)

    # partitions ----------------------------------------------------------------

    def partition(self, p: int) -> PartitionState:
        ps = self.partitions.get(p)
        if ps is None:
            ps = self.partitions[p] = PartitionState(p)
        return ps

    def drop_partition(self, p: int) -> None:
        self.partitions.pop(p, None)

    def pending(self) -> int:
        return sum(len(ps.states) for ps in self.partitions.values())

    # events --------------------------------------------------------------------

    def process(self, partition: int, offset: int, env: dict[str, Any], t: int | None = None) -> list[Match]:
        """Match one event (already decoded) read at ``offset`` of ``partition``."""
        out: list[Match] = []
        self.stats.events += 1
        if t is None:
            t = parse_event_time(env)
            if t is None:
                self.stats.errors += 1
                return out
        ps = self.partitions.get(partition) or self.partition(partition)
        if t < ps.watermark:
            self.stats.late += 1
            return out
        if t > ps.max_t:
            ps.max_t = t
            wm = t - self.lateness
            if wm > ps.watermark:
                if (ps.timers and ps.timers[0] <= wm) or wm >= ps.next_sweep:
                    self._advance(ps, wm, out)
                else:
                    ps.watermark = wm
        name = event_name(env)
        starters = self.plan.starters.get(name)  # type: ignore[arg-type]
        followers = self._follow.get(name)  # type: ignore[arg-type]
        if starters is None and followers is None:
            return out
        mid = env.get("messageId")
        if not isinstance(mid, str):
            self.stats.errors += 1
            return out
        seen = ps.seen
        if mid in seen:
            self.stats.duplicates += 1
            return out
        seen[mid] = t
        if self.track_dirty:
            ps.new_seen.append((mid, t))
        anonymous_id = env.get("anonymousId")
        log_key = anonymous_id or env.get("userId")
        states = ps.states
        on_event = self._on_event
        # A rule must never take the engine down: any error in one rule's step is counted and skipped.
        if followers is not None:
            # Later steps only matter where a run of that rule is pending for this key.
            for uid, by_anon, rule, idxs in followers:
                key = anonymous_id if by_anon else log_key
                if type(key) is str and (uid, key) in states:
                    try:
                        on_event(ps, rule, key, env, t, offset, idxs, out)
                    except Exception:  # noqa: BLE001
                        self.stats.errors += 1
        if starters is not None:
            for rule in starters.always:
                key = anonymous_id if rule.by_anonymous_id else log_key
                if type(key) is str and key:
                    try:
                        on_event(ps, rule, key, env, t, offset, _FIRST, out)
                    except Exception:  # noqa: BLE001
                        self.stats.errors += 1
            for path, table in starters.by_value:
                value = get_path(env, path)
                if type(value) is str:
                    for rule in table.get(value, ()):
                        key = anonymous_id if rule.by_anonymous_id else log_key
                        if type(key) is str and key:
                            try:
                                on_event(ps, rule, key, env, t, offset, _FIRST, out)
                            except Exception:  # noqa: BLE001
                                self.stats.errors += 1
        return out

    def _try(self, ps: PartitionState, rule: RulePlan, key: str, env: dict[str, Any], t: int, offset: int,
             idxs: tuple[int, ...], out: list[Match]) -> None:
        try:
            self._on_event(ps, rule, key, env, t, offset, idxs, out)
        except Exception:  # noqa: BLE001 - a rule must never take the engine down
            self.stats.errors += 1

    def _slim(self, env: dict[str, Any], mid: str, t: int, partition: int, offset: int, needs: tuple[tuple[str, ...], ...]) -> Slim:
        return (mid, t, partition, offset, tuple(get_path(env, p) for p in needs) if needs else ())

    def _on_event(self, ps: PartitionState, rule: RulePlan, key: str, env: dict[str, Any], t: int, offset: int,
                  idxs: tuple[int, ...], out: list[Match]) -> None:
        sk = (rule.uid, key)
        rs = ps.states.get(sk)
        steps = rule.steps
        mid = env["messageId"]
        touched = False
        if rs is not None and rs.runs is not None:
            for i in reversed(idxs):
                if i == 0:
                    continue
                run = rs.runs[i]
                if run is None or not (run.anchor <= t <= run.deadline):
                    continue
                step = steps[i]
                if step.pred is not None and step.pred(env, run.steps) is not True:
                    continue
                touched = True
                if step.absent:
                    rs.runs[i] = None
                    continue
                s = self._slim(env, mid, t, ps.partition, offset, step.needs)
                if step.count > 1:
                    acc = (run.acc or ()) + (s,)
                    if len(acc) < step.count:
                        run.acc = acc
                        continue
                    matched: Any = acc
                else:
                    matched = s
                rs.runs[i] = None
                self._advance_run(ps, rule, key, rs, run.steps + (matched,), t, out)
        if idxs[0] == 0:
            step = steps[0]
            if step.pred is None or step.pred(env, ()) is True:
                if rs is None:
                    rs = ps.states[sk] = RuleState(len(steps))
                touched = True
                s = self._slim(env, mid, t, ps.partition, offset, step.needs)
                if step.count > 1:
                    group = self._count_first(rs, step.count, step.within_ms or 0, s)
                    if group is not None:
                        self._advance_run(ps, rule, key, rs, (group,), max(e[1] for e in group), out)
                else:
                    self._advance_run(ps, rule, key, rs, (s,), t, out)
        if touched and rs is not None:
            self._dirty(ps, sk)
            self._reschedule(ps, rule, sk, rs)

    @staticmethod
    def _count_first(rs: RuleState, n: int, within: int, s: Slim) -> tuple[Slim, ...] | None:
        acc = rs.acc
        if acc is None:
            acc = rs.acc = []
        # Insert in event-time order (events usually arrive in order: append).
        i = len(acc)
        while i > 0 and acc[i - 1][1] > s[1]:
            i -= 1
        acc.insert(i, s)
        for j in range(len(acc) - n + 1):
            if acc[j + n - 1][1] - acc[j][1] <= within:
                group = tuple(acc[j : j + n])
                del acc[j : j + n]
                return group
        return None

    def _advance_run(self, ps: PartitionState, rule: RulePlan, key: str, rs: RuleState, matched: tuple[Any, ...],
                     t: int, out: list[Match]) -> None:
        i = len(matched)
        if i == len(rule.steps):
            self._complete(ps, rule, key, rs, matched, t, out)
            return
        assert rs.runs is not None
        existing = rs.runs[i]
        if existing is not None and existing.anchor > t:
            return  # a run that got here later in event time stays
        rs.runs[i] = Run(matched, t, t + (rule.steps[i].within_ms or 0))

    def _complete(self, ps: PartitionState, rule: RulePlan, key: str, rs: RuleState, matched: tuple[Any, ...],
                  t: int, out: list[Match]) -> None:
        if rule.cap_times is not None and rule.cap_per_ms is not None:
            per = rule.cap_per_ms
            fires = [f for f in (rs.fires or ()) if f > t - per]
            if sum(1 for f in fires if abs(f - t) < per) >= rule.cap_times:
                self.stats.suppressed += 1
                self.suppressed_by_rule[rule.name] += 1
                rs.fires = fires
                return
            fires.append(t)
            rs.fires = fires
        events: list[Slim] = []
        for m in matched:
            if type(m[0]) is tuple:
                events.extend(m)
            else:
                events.append(m)
        payload = None
        if rule.payload is not None:
            try:
                payload = rule.payload(matched)
            except Exception:  # noqa: BLE001 - a broken template still fires, without payload
                self.stats.errors += 1
        self.stats.matches += 1
        out.append(Match(rule, key, tuple(events), t, payload, ps.partition))

    # time ------------------------------------------------------------------------

    def _reschedule(self, ps: PartitionState, rule: RulePlan, sk: tuple[str, str], rs: RuleState) -> None:
        wake = 0
        if rs.runs is not None:
            for run in rs.runs:
                if run is not None and (wake == 0 or run.deadline + 1 < wake):
                    wake = run.deadline + 1
        if rs.acc:
            w = rs.acc[0][1] + (rule.steps[0].within_ms or 0) + 1
            wake = w if wake == 0 else min(wake, w)
        if rs.fires and rule.cap_per_ms is not None:
            w = min(rs.fires) + rule.cap_per_ms + 1
            wake = w if wake == 0 else min(wake, w)
        if wake == 0:
            if rs.empty():
                del ps.states[sk]
            rs.wake = 0
            return
        # Timers are registered lazily: a state keeps its earliest registration; when that one comes
        # due the state is looked at again and registers its real wake (most updates move it later,
        # so they cost nothing here).
        if rs.wake == 0 or wake < rs.wake:
            rs.wake = wake
            self._register(ps, wake, sk)

    @staticmethod
    def _register(ps: PartitionState, wake: int, sk: tuple[str, str]) -> None:
        lst = ps.wheel.get(wake)
        if lst is None:
            ps.wheel[wake] = [sk]
            heapq.heappush(ps.timers, wake)
            if len(ps.timers) > 2 * len(ps.states) + 1024:
                # Superseded registrations are skipped when they come due; rebuild before they pile up.
                ps.wheel = {}
                for s, r in ps.states.items():
                    if r.wake:
                        ps.wheel.setdefault(r.wake, []).append(s)
                ps.timers = list(ps.wheel)
                heapq.heapify(ps.timers)
        else:
            lst.append(sk)

    def _advance(self, ps: PartitionState, wm: int, out: list[Match]) -> None:
        ps.watermark = wm
        timers, wheel, states = ps.timers, ps.wheel, ps.states
        while timers and timers[0] <= wm:
            wake = heapq.heappop(timers)
            sks = wheel.pop(wake)
            if len(sks) > 1:
                sks.sort()  # deadline order, then rule and key: deterministic
            for sk in sks:
                rs = states.get(sk)
                if rs is None or rs.wake != wake:
                    continue  # superseded registration
                rule = self._rules.get(sk[0])
                if rule is None:
                    del states[sk]
                    self._dirty(ps, sk)
                    continue
                rs.wake = 0
                changed = self._expire(ps, rule, sk[1], rs, wm, out)
                self._reschedule(ps, rule, sk, rs)
                if changed or sk not in states:
                    self._dirty(ps, sk)
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
            timers, wheel, states = ps.timers, ps.wheel, ps.states
            while timers:
                wake = timers[0]
                if any((rs := states.get(sk)) is not None and rs.wake == wake for sk in wheel[wake]):
                    break
                heapq.heappop(timers)
                del wheel[wake]
            if timers and (best is None or timers[0] < best):
                best = timers[0]
        return None if best is None else best + self.lateness

    def take_changes(self, p: int) -> tuple[list[tuple[str, str, bytes | None]], list[tuple[str, int]], int | None]:
        """(changed states encoded or None when gone, new messageIds, messageId cutoff) since the last call."""
        ps = self.partition(p)
        states = []
        for sk in ps.dirty:
            rs = ps.states.get(sk)
            states.append((sk[0], sk[1], None if rs is None else self.encode_state(rs)))
        seen, cutoff = ps.new_seen, ps.seen_cutoff
        ps.dirty, ps.new_seen, ps.seen_cutoff = set(), [], None
        return states, seen, cutoff

    # snapshots -------------------------------------------------------------------

    @staticmethod
    def encode_state(rs: RuleState) -> bytes:
        runs = None if rs.runs is None else [None if r is None else (r.steps, r.anchor, r.deadline, r.acc) for r in rs.runs]
        return pickle.dumps((runs, rs.acc, rs.fires), protocol=5)

    @staticmethod
    def decode_state(data: bytes) -> RuleState:
        runs, acc, fires = loads_state(data)
        rs = RuleState(1)
        rs.runs = None if runs is None else [None if r is None else Run(*r) for r in runs]
        rs.acc, rs.fires = acc, fires
        return rs

    def meta_of(self, p: int) -> tuple[int, int]:
        ps = self.partition(p)
        return ps.max_t, ps.watermark

    def snapshot_partition(self, p: int) -> bytes:
        ps = self.partition(p)
        states = {sk: self.encode_state(rs) for sk, rs in ps.states.items()}
        return pickle.dumps({"max_t": ps.max_t, "watermark": ps.watermark, "seen": ps.seen, "states": states}, protocol=5)

    def restore_partition(self, p: int, data: bytes | None) -> None:
        if data is None:
            self.partitions[p] = PartitionState(p)
            return
        snap = loads_state(data)
        self.load_partition(p, snap["max_t"], snap["watermark"], snap["seen"],
                            ((sk, self.decode_state(b)) for sk, b in snap["states"].items()))

    def load_partition(self, p: int, max_t: int, watermark: int, seen: dict[str, int],
                       states: Iterable[tuple[tuple[str, str], RuleState]]) -> None:
        ps = self.partitions[p] = PartitionState(p)
        ps.max_t, ps.watermark, ps.seen = max_t, watermark, dict(seen)
        for sk, rs in states:
            rule = self._rules.get(sk[0])
            if rule is None:
                self._dirty(ps, sk)  # its rule is gone: forget it durably too
                continue
            ps.states[sk] = rs
            rs.wake = 0
            self._reschedule(ps, rule, sk, rs)
