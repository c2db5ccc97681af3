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

How the work is split: this module holds :class:`Engine` and its public API,
the dispatch table (rules are reached by event name, with each rule's
first-step predicate tried before any state is touched), the per-event loop
(:meth:`Engine.process`), change tracking and snapshots. The engine has a
:class:`~rules.matching.Matcher` (an event against a rule's steps), a
:class:`~rules.timers.Timers` (the watermark firing what it passed) and a
:class:`~rules.firing.Firing` (completed runs become matches) that both use;
the state they work on is in :mod:`rules.partition` (which describes the
layout). Each part gets the plan's rules on every plan change.

Snapshot contents (:meth:`snapshot_partition`): watermark, highest event time,
the messageIds still remembered, every (rule uid, key) state. Timers are not
stored; they are rebuilt from the states on restore.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from heapq import heappop as _heappop
from typing import Any, NamedTuple

from tripwire.identity import FORGET

from .codec import (FP_MASK, FP_SHIFT, TIME_SHIFT, MidKey, compact_mid, decode_rule_state, encode_rule_state, key_fp,
                    loads_state, mid_text, parse_event_time, parse_time_field, seen_entries, snapshot_bytes, stamp,
                    stamp_fp, stamp_time)
from .dedup import LongMemory, OldIds, id_hash
from .firing import Firing
from .identity import learn
from .matching import Matcher
from .partition import (NEG_INF, Compact, Counted, EngineStats, Forms, Match, PartitionState, RuleState, Run, State,
                        slim_of)
from .plan import Plan, Predicate, RulePlan
from .predicates import Getter, env_getter
from .timers import Timers

__all__ = ["NEG_INF", "Engine", "EngineStats", "Match", "Quarantine", "RuleState", "Run", "parse_event_time"]

logger = logging.getLogger(__name__)

_RECENT_MIN_MS = 300_000
_OLD_LOOKUP_MS = 120_000  # an event this close to (or below) the recent span's floor may repeat one moved out of it


class Quarantine(NamedTuple):
    """A rule that raised while running, and stopped."""

    name: str
    file: str
    line: int
    message_id: str | None
    error: str


# The dispatch table, per event name: the rules that follow it (uid, by anonymousId, rule, step indexes
# descending); the rules it starts, tried always; those looked up by a field's value. A starter is
# (rule, uid, by anonymousId, the predicate left to test).
_Starter = tuple[RulePlan, str, bool, "Predicate | None"]
_Follower = tuple[str, bool, RulePlan, tuple[int, ...]]
_ByValue = tuple[tuple[Getter, dict[str, tuple[_Starter, ...]]], ...]
_Dispatch = tuple["tuple[_Follower, ...] | None", "tuple[_Starter, ...] | None", "_ByValue | None"]


class Engine:
    def __init__(self, plan: Plan, allowed_lateness_ms: int = 5000, *, track_dirty: bool = False,
                 grace_ms: int = 0, max_lateness_ms: int | None = None, dedup_window_ms: int = 86_400_000,
                 dedup_max_ids: int = 4_000_000, max_pending: int = 1 << 62) -> None:
        self.lateness = allowed_lateness_ms
        self.grace_ms = grace_ms
        # messageIds are remembered for dedup_window_ms (at most dedup_max_ids per partition); an event
        # older than that is never matched, so max lateness is capped by it.
        self.dedup_window_ms = dedup_window_ms
        self.dedup_max_ids = dedup_max_ids
        self.max_lateness_ms = dedup_window_ms if max_lateness_ms is None else min(max_lateness_ms, dedup_window_ms)
        self.track_dirty = track_dirty  # remember changed (rule, key) states for incremental saving
        self.partitions: dict[int, PartitionState] = {}
        self.stats = EngineStats()
        self.suppressed_by_rule: Counter[str] = Counter()
        self.errors_by_rule: Counter[str] = Counter()
        self.late_cancels_by_rule: Counter[str] = Counter()
        self.too_late_by_source: Counter[str] = Counter()
        self.too_late_age: dict[str, int] = {}  # source -> oldest age (ms behind the watermark) refused
        self.quarantined: dict[str, Quarantine] = {}  # rule uid -> why it stopped
        self._clock_floor = NEG_INF  # set_clock(): the wall clock minus max lateness (none: backtests, tests)
        firing = Firing(self.stats, self.suppressed_by_rule)
        self._timers = Timers(self.stats, firing, track_dirty=track_dirty, dedup_window_ms=dedup_window_ms,
                              dedup_max_ids=dedup_max_ids)
        self.refused_by_rule: Counter[str] = Counter()  # partial matches not started at max_pending
        self._matcher = Matcher(self.stats, self.late_cancels_by_rule, self._timers, firing, track_dirty=track_dirty,
                                lateness_ms=allowed_lateness_ms, refused_by_rule=self.refused_by_rule,
                                max_pending=max_pending)
        self.set_plan(plan)

    # plan changes (hot reload) -------------------------------------------------

    def set_plan(self, plan: Plan) -> None:
        """Switch rules. State of rules whose uid is unchanged is kept; the rest is dropped. Quarantined rules
        stay out while their uid (their meaning) is unchanged."""
        self.quarantined = {uid: q for uid, q in self.quarantined.items() if plan.rule(uid) is not None}
        self.plan = plan
        if self.quarantined:
            plan = Plan.build(tuple(r for r in plan.rules if r.uid not in self.quarantined))
        self._forms = Forms.of(plan.rules)
        # Ids are kept exactly while a pending state may read them: the longest window, plus the grace
        # and the lateness before its timer fires, plus a minute of slack.
        self.recent_ms = max(plan.horizon_ms + self.grace_ms + self.lateness + 60_000, _RECENT_MIN_MS)
        self._timers.use(self._forms, self.recent_ms)
        self._matcher.use(self._forms)
        self._index(plan)
        for ps in self.partitions.values():
            for uid in [u for u in ps.rules if u not in self._forms.rules]:
                for key in ps.rules.pop(uid):
                    self._dirty(ps, uid, key)
            self._prepare(ps)

    def _index(self, plan: Plan) -> None:
        """The dispatch table: event name -> (followers, starters tried always, starters looked up by a value)."""

        def starter(r: RulePlan, indexed: bool = False) -> _Starter:
            # Reached through the index on a field's value, the step's residual predicate is enough.
            return (r, r.uid, r.by_anonymous_id, r.steps[0].residual if indexed else r.steps[0].pred)

        table: dict[str, _Dispatch] = {}
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
        ps = PartitionState(p, self.grace_ms)
        self._prepare(ps)
        return ps

    def _prepare(self, ps: PartitionState) -> None:
        """One state dict per rule, and the followers of each event name pointing straight at them."""
        for uid in self._forms.rules:
            ps.rules.setdefault(uid, {})
        ps.follow = {name: tuple((ps.rules[uid], rule, idxs, by_anon) for uid, by_anon, rule, idxs in followers)
                     for name, (followers, _, _) in self._dispatch.items() if followers is not None}

    def drop_partition(self, p: int) -> None:
        self.partitions.pop(p, None)

    def pending(self, partition: int | None = None) -> int:
        """Number of (rule, key) states held (in one partition, or in all)."""
        parts = self.partitions.values() if partition is None else [self.partition(partition)]
        return sum(ps.pending() for ps in parts)

    # events --------------------------------------------------------------------

    def process(self, partition: int, offset: int, env: dict[str, Any], t: int | None = None) -> list[Match]:
        """Match one event (already decoded) read at ``offset`` of ``partition``."""
        out: list[Match] = []
        stats = self.stats
        stats.events += 1
        if t is None:
            t = parse_event_time(env)
            if t is None:
                if env.get("type") == FORGET:  # an erasure's control record carries no time
                    self._forget(self.partitions.get(partition) or self.partition(partition), env.get("key"))
                else:
                    stats.errors += 1
                return out
        ps = self.partitions.get(partition) or self.partition(partition)
        if t < ps.watermark:
            # Behind the watermark: still matched (every time bound is checked on event times), unless it
            # was delivered later than max lateness, or is older than the duplicate memory covers.
            if self._too_late(ps, env, t):
                return out
            stats.late += 1
        else:
            if t < self._clock_floor and self._too_late(ps, env, t):
                return out  # history imported into an engine that follows its own backlog's time
            if t > ps.max_t:
                ps.max_t = t
                wm = t - self.lateness
                if wm > ps.watermark:
                    if (ps.timers and ps.timers[0] <= wm) or wm >= ps.next_sweep:
                        self._timers.advance(ps, wm, out)
                    else:
                        ps.watermark = wm
        # Events that carry a userId say how the collector keyed them (tripwire.identity): the one lookup
        # this costs every event.
        kb = env.get("keyedBy")
        routed = learn(ps.identity, kb, env) if kb is not None else None
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
        # A userId-only event keyed through a link is the linked anonymousId's, for every rule.
        anonymous_id = env.get("anonymousId") or routed
        log_key = anonymous_id or env.get("userId")
        # A messageId repeats an event only for the same source and key (fp); another visitor's
        # reuse of the id is remembered beside it, under (id, fp).
        fp = key_fp(env.get("source"), log_key if type(log_key) is str else "")
        seen = ps.seen
        cid = compact_mid(mid)
        cmid: MidKey = cid
        e = seen.get(cid)
        if e is not None:
            efp = (e >> FP_SHIFT) & FP_MASK
            if efp == fp or efp == 0:
                stats.duplicates += 1
                return out
            cmid = (cid, fp)
            if cmid in seen:
                stats.duplicates += 1
                return out
        elif t < ps.seen_floor + _OLD_LOOKUP_MS and (t, id_hash(cid, fp)) in ps.old:
            stats.duplicates += 1  # a retry of an event older than the recent span
            return out
        seen[cmid] = event_stamp = t << TIME_SHIFT | fp << FP_SHIFT | offset  # codec.stamp(), inlined
        if self.track_dirty:
            ps.new_seen.append((mid, t, fp))
        followers, always, by_value = disp
        matcher = self._matcher
        # A rule must never take the engine down: an error in one rule's step quarantines that rule.
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
                            if type(rs) is Compact:
                                matcher.follow_compact(ps, rule, per, key, rs, env, mid, t, offset, out)
                            elif type(rs) is RuleState:
                                matcher.follow(ps, rule, per, key, rs, env, mid, t, offset, idxs, out)
                        except Exception as exc:  # noqa: BLE001
                            self._rule_failed(rule, mid, exc)
                if ps.fired:
                    fired = ps.fired.get(key)
                    if fired:
                        try:
                            matcher.late_cancels(ps, name, key, fired, env, t)
                        except Exception:  # noqa: BLE001 - counting only; the rule's own errors surface when it runs
                            stats.errors += 1
        if always is not None:
            for entry in always:
                key = anonymous_id if entry[2] else log_key
                if type(key) is str and key:
                    try:
                        pred = entry[3]
                        if pred is None or pred(env, ()) is True:
                            matcher.start(ps, entry[0], key, env, mid, t, event_stamp, cmid, out)
                    except Exception as exc:  # noqa: BLE001
                        self._rule_failed(entry[0], mid, exc)
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
                                    matcher.start(ps, entry[0], key, env, mid, t, event_stamp, cmid, out)
                            except Exception as exc:  # noqa: BLE001
                                self._rule_failed(entry[0], mid, exc)
        return out

    def _forget(self, ps: PartitionState, key: Any) -> None:
        """An erasure: drop every state of ``key`` and what the engine remembers of it."""
        if type(key) is not str:
            self.stats.errors += 1
            return
        for uid, per in ps.rules.items():
            if per.pop(key, None) is not None:
                self._dirty(ps, uid, key)
        ps.fired.pop(key, None)
        ps.identity.pop(key, None)
        self.stats.forgotten += 1

    def set_clock(self, now_ms: int) -> None:
        """The wall clock, once per batch (the service): events older than max lateness before it are
        checked for how late they were delivered even when the watermark, following a backlog, is behind."""
        self._clock_floor = now_ms - self.max_lateness_ms

    def _too_late(self, ps: PartitionState, env: dict[str, Any], t: int) -> bool:
        """Delivered more than max lateness after its time (receivedAt - event time; without receivedAt: behind
        the watermark's notion of now by that much), or older than what the duplicate memory still covers.
        True: counted per source, not matched."""
        received = parse_time_field(env, "receivedAt")
        arrived = received if received is not None else ps.watermark + self.lateness
        floor = ps.old.floor
        if arrived - t <= self.max_lateness_ms and (floor is None or t >= floor):
            return False
        self.stats.too_late += 1
        source = env.get("source")
        source = source if type(source) is str else "(none)"
        self.too_late_by_source[source] += 1
        if arrived - t > self.too_late_age.get(source, 0):
            self.too_late_age[source] = arrived - t
        return True

    # quarantine ----------------------------------------------------------------------

    def _rule_failed(self, rule: RulePlan, mid: str | None, exc: BaseException) -> None:
        """One rule raised: it stops running (its state is dropped) until its file changes."""
        self.stats.errors += 1
        self.errors_by_rule[rule.name] += 1
        if rule.uid in self.quarantined:
            return
        self.quarantined[rule.uid] = Quarantine(rule.name, rule.file, rule.line, mid, f"{type(exc).__name__}: {exc}")
        logger.error('rule "%s" (%s:%d) is quarantined: %s: %s (event messageId %s); the other rules go on',
                     rule.name, rule.file, rule.line, type(exc).__name__, exc, mid)
        self.set_plan(self.plan)

    def quarantine(self, rule: RulePlan, mid: str | None, exc: BaseException) -> None:
        """The service could not fire one of ``rule``'s matches (its trigger would not encode)."""
        self._rule_failed(rule, mid, exc)

    # time (the timers themselves: rules.timers) ---------------------------------

    def advance_watermark(self, partition: int, wm: int) -> list[Match]:
        out: list[Match] = []
        ps = self.partition(partition)
        if wm > ps.watermark:
            self._timers.advance(ps, wm, out)
        return out

    def advance_wall(self, now_ms: int, partitions: Iterable[int] | None = None) -> list[Match]:
        """The consumer is idle: let the watermark follow the wall clock (minus the lateness)."""
        out: list[Match] = []
        for p in list(self.partitions) if partitions is None else partitions:
            ps = self.partition(p)
            wm = now_ms - self.lateness
            if wm > ps.watermark:
                self._timers.advance(ps, wm, out)
        return out

    def next_wake_ms(self) -> int | None:
        """Event time at which the earliest pending timer fires (watermark needed, plus lateness)."""
        best = None
        for ps in self.partitions.values():
            wake = self._timers.next_wake(ps)
            if wake is not None and (best is None or wake < best):
                best = wake
        return None if best is None else best + self.lateness

    # changes and snapshots ---------------------------------------------------------

    def _encode(self, p: int, uid: str, rs: State) -> bytes:
        if type(rs) is Counted:  # a one-step count's events: stored like the general form
            full = RuleState(1)
            full.acc = list(rs)
            rs = full
        elif type(rs) is Compact:  # a compact state is stored like the general form it stands for
            full = RuleState(2)
            first = slim_of(rs, self.partition(p))
            full.runs[1] = Run((first,), first[1], first[1] + self._forms.compact.get(uid, 0))  # type: ignore[index]
            rs = full
        return encode_rule_state(rs)

    def take_changes(self, p: int) -> tuple[list[tuple[str, str, bytes | None]], list[tuple[str, int, int]], int | None]:
        """(changed states encoded or None when gone, new (messageId, time, fingerprint), the recent span's new
        floor) since the last call."""
        ps = self.partition(p)
        states = []
        for uid, key in ps.dirty:
            per = ps.rules.get(uid)
            rs = per.get(key) if per is not None else None
            states.append((uid, key, None if rs is None else self._encode(p, uid, rs)))
        seen, cutoff = ps.new_seen, ps.seen_cutoff
        ps.dirty, ps.new_seen, ps.seen_cutoff = set(), [], None
        return states, seen, cutoff

    @staticmethod
    def decode_state(data: bytes) -> RuleState:
        rs: RuleState = decode_rule_state(data, RuleState, Run)
        return rs

    def meta_of(self, p: int) -> tuple[int, int]:
        ps = self.partition(p)
        return ps.max_t, ps.watermark

    def snapshot_partition(self, p: int) -> bytes:
        ps = self.partition(p)
        seen = [(mid_text(m), stamp_time(s), stamp_fp(s)) for m, s in ps.seen.items()]
        return snapshot_bytes(ps.max_t, ps.watermark, seen,
                              {(uid, key): self._encode(p, uid, rs) for uid, per in ps.rules.items() for key, rs in per.items()},
                              ps.old.dump())

    def restore_partition(self, p: int, data: bytes | None) -> None:
        if data is None:
            self.partitions[p] = self._new_partition(p)
            return
        snap = loads_state(data)
        self.load_partition(p, snap["max_t"], snap["watermark"], snap["seen"],
                            ((sk, self.decode_state(b)) for sk, b in snap["states"].items()), snap.get("old"))

    def load_partition(self, p: int, max_t: int, watermark: int, seen: Any,
                       states: Iterable[tuple[tuple[str, str], RuleState]],
                       old: dict[str, Any] | LongMemory | None = None) -> None:
        """``seen``: (messageId, time, fingerprint) entries, or a snapshot's older dict messageId -> time.
        ``old``: the long memory, or a snapshot's (:meth:`rules.dedup.OldIds.dump`) to hold in memory."""
        ps = self.partitions[p] = self._new_partition(p)
        ps.max_t, ps.watermark = max_t, watermark
        ps.old = OldIds.load(old) if old is None or isinstance(old, dict) else old
        # as process() remembers them: compact_mid(messageId) -> stamp(t, 0, fp) (the offset is not needed)
        mem = ps.seen
        for m, t, fp in seen_entries(seen):
            cid = compact_mid(m) if type(m) is str else m
            e = mem.get(cid)
            mem[(cid, fp) if e is not None and stamp_fp(e) != fp else cid] = stamp(t, 0, fp)
        if watermark > NEG_INF:
            self._timers.sweep_seen(ps, watermark)  # ids past the recent span go to the long memory
            ps.seen_cutoff = None
        for (uid, key), rs in states:
            rule = self._forms.rules.get(uid)
            if rule is None:
                self._dirty(ps, uid, key)  # its rule is gone: forget it durably too
                continue
            per = ps.rules.get(uid)
            if per is None:
                per = ps.rules[uid] = {}
            per[key] = rs
            rs.wake = 0
            self._timers.reschedule(ps, rule, per, key, rs)
