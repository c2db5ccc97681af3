"""Time in a partition: registering state wakes, firing them when the watermark passes, forgetting old ids.

:class:`Timers` works on the wheel of a :class:`~rules.partition.PartitionState`
(the layout and the rules of time are described in :mod:`rules.partition`):
it fires absences, expires windows and cooldowns when the watermark passes them
(:meth:`Timers.advance`), keeps each state registered at its earliest wake
(:meth:`Timers.reschedule`), and moves messageIds past the recent span from the
duplicate memory to the long one (:meth:`Timers.sweep_seen`). What fires goes
through :class:`~rules.firing.Firing`.
"""

from __future__ import annotations

import heapq
from typing import Any

from .codec import FP_MASK, FP_SHIFT, TIME_SHIFT, MidKey, Stamp
from .dedup import id_hash
from .firing import Firing
from .partition import (Compact, Counted, EngineStats, Forms, Match, PartitionState, RuleState, State, compact_time,
                        remember_fired, slim_of, wheel_entries)
from .plan import RulePlan

__all__ = ["Timers"]

_SEEN_SWEEP_MIN_MS = 1000
_heappop = heapq.heappop


def _uid_key(m: Match) -> tuple[str, str]:
    return m.rule.uid, m.key


class Timers:
    """Timer bookkeeping of an engine's partitions. :meth:`use` gives it the plan's rules and the recent span."""

    __slots__ = ("_rules", "_compact", "_counts", "recent_ms", "_stats", "_firing", "_track", "_dedup_window_ms",
                 "_dedup_max_ids")

    def __init__(self, stats: EngineStats, firing: Firing, *, track_dirty: bool, dedup_window_ms: int,
                 dedup_max_ids: int) -> None:
        self._stats = stats
        self._firing = firing
        self._track = track_dirty
        self._dedup_window_ms = dedup_window_ms
        self._dedup_max_ids = dedup_max_ids
        self._rules: dict[str, RulePlan] = {}
        self._compact: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self.recent_ms = 0

    def use(self, forms: Forms, recent_ms: int) -> None:
        """The rules of a new plan, and how long ids are kept exactly (``recent_ms``)."""
        self._rules, self._compact, self._counts = forms.rules, forms.compact, forms.counts
        self.recent_ms = recent_ms

    def reschedule(self, ps: PartitionState, rule: RulePlan, per: dict[str, State], key: str, rs: RuleState) -> None:
        """Register ``rs`` at its earliest wake (or drop it from ``per`` when nothing in it can wake)."""
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
        wake = ps.wheel_time(wake)
        # Registered lazily: a state keeps its earliest registration; when that one comes due the
        # state is looked at again and registers its real wake.
        if rs.wake == 0 or wake < rs.wake:
            rs.wake = wake
            ps.register(wake, rule.uid, key)
            if ps.registered > 65_536 and ps.registered & 4095 == 0:
                self._maybe_rebuild(ps)

    def _maybe_rebuild(self, ps: PartitionState) -> None:
        """Drop superseded registrations when they outnumber the live states."""
        live = ps.pending()
        if ps.registered <= 2 * live + 4096:
            return
        wheel: dict[int, list[Any]] = {}
        tail: dict[int, tuple[str]] = {}  # wake -> marker of its list's last group
        for uid, per in ps.rules.items():
            mark = ps.mark(uid)
            for key, rs in per.items():
                wake = self._wake_of(ps, uid, rs)
                if wake:
                    lst = wheel.get(wake)
                    if lst is None:
                        wheel[wake] = [mark, key]
                    elif tail[wake] is mark:
                        lst.append(key)
                    else:
                        lst += (mark, key)
                    tail[wake] = mark
        ps.reset_wheel(wheel, live)

    def advance(self, ps: PartitionState, wm: int, out: list[Match]) -> None:
        """Move the watermark to ``wm``: fire the timers it passed. A state is looked at as of event time
        ``wm - grace``: what its key could still receive is not older than that."""
        ps.watermark = wm
        now = wm - ps.grace
        timers, wheel, prules, seen, grace = ps.timers, ps.wheel, ps.rules, ps.seen, ps.grace
        rules_get, track, compact, counts = self._rules.get, self._track, self._compact, self._counts
        complete = self._firing.complete
        while timers and timers[0] <= wm:
            wake = _heappop(timers)
            flat = wheel.pop(wake)
            if wake == ps.last_wake:
                ps.last_wake = 0
            first_out = len(out)
            uid, per = "", None
            for key in flat:
                if type(key) is tuple:
                    uid = key[0]
                    per = prules.get(uid)
                    continue
                ps.registered -= 1
                if per is None:
                    continue
                rs = per.get(key)
                if rs is None:
                    continue
                if type(rs) is Compact:
                    stamp = seen.get(rs[0])
                    if stamp is None:  # cannot happen while ``recent_ms`` outlives every compact state; never crash
                        del per[key]
                        self._stats.errors += 1
                        continue
                    due = (stamp >> TIME_SHIFT) + compact[uid] + 1
                    if due + grace > wake:
                        ps.register(due + grace, uid, key)  # replaced by a later run: wake it then
                        continue
                    del per[key]
                    if track:
                        ps.dirty.add((uid, key))
                    rule = rules_get(uid)
                    if rule is not None and rule.steps[1].absent:
                        first = slim_of(rs, ps)
                        remember_fired(ps, uid, key, (first,), first[1], due - 1)
                        complete(ps, rule, key, None, (first,), due - 1, out)
                    continue
                if type(rs) is Counted:  # a one-step count's events (time order)
                    within = counts[uid]
                    due = rs[0][1] + within + 1
                    if due + grace > wake:
                        ps.register(due + grace, uid, key)  # its first events were counted since: wake then
                        continue
                    cutoff = now - within  # only memory: an event this old can never be counted again
                    i = 0
                    while i < len(rs) and rs[i][1] < cutoff:
                        i += 1
                    if track:
                        ps.dirty.add((uid, key))
                    if i == len(rs):
                        del per[key]
                        continue
                    del rs[:i]
                    ps.register(ps.wheel_time(rs[0][1] + within + 1), uid, key)
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
                    if acc and acc[-1][1] < now - (rule.steps[0].within_ms or 0):
                        del per[key]  # a count whose whole window passed: the common end of a state
                        if track:
                            ps.dirty.add((uid, key))
                        continue
                if self.expire(ps, rule, key, rs, now, out) and track:
                    ps.dirty.add((uid, key))
                self.reschedule(ps, rule, per, key, rs)
            if len(out) - first_out > 1:
                # Timers due at one time fire in (rule uid, key) order; each entry fires at most once
                # and entries do not affect one another, so sorting what they fired is the same.
                out[first_out:] = sorted(out[first_out:], key=_uid_key)
        if wm >= ps.next_sweep:
            self.sweep_seen(ps, wm)

    def sweep_seen(self, ps: PartitionState, wm: int) -> None:
        """Move ids older than the recent span from ``seen`` to the long memory; expire that memory."""
        if ps.budget < 0:
            ps.budget = 0  # at max_pending: the next start counts the states again (some may have gone)
        recent = self.recent_ms
        cutoff = wm - recent
        if ps.seen and cutoff > ps.seen_floor:
            stamp_cutoff = cutoff << TIME_SHIFT  # stamps are ordered by time
            keep: dict[MidKey, Stamp] = {}
            old = []
            for m, stamp in ps.seen.items():
                if stamp >= stamp_cutoff:
                    keep[m] = stamp
                else:
                    old.append((stamp >> TIME_SHIFT, id_hash(m, (stamp >> FP_SHIFT) & FP_MASK)))
            ps.seen = keep
            if old and self._dedup_window_ms > recent:
                ps.old.add(old)
        ps.seen_floor = max(ps.seen_floor, cutoff)
        ps.old.expire(wm - self._dedup_window_ms, self._dedup_max_ids)
        if self._track:
            ps.seen_cutoff = cutoff
        ps.next_sweep = wm + max(_SEEN_SWEEP_MIN_MS, recent // 8)

    def expire(self, ps: PartitionState, rule: RulePlan, key: str, rs: RuleState, wm: int, out: list[Match]) -> bool:
        """Drop what the time ``wm`` has passed (firing absences); True when anything changed."""
        changed = False
        if rs.runs is not None:
            for i, run in enumerate(rs.runs):
                if run is not None and run.deadline < wm:
                    rs.runs[i] = None
                    changed = True
                    if rule.steps[i].absent:
                        remember_fired(ps, rule.uid, key, run.steps, run.anchor, run.deadline)
                        self._firing.complete(ps, rule, key, rs, run.steps, run.deadline, out)
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

    def next_wake(self, ps: PartitionState) -> int | None:
        """The earliest wheel time at which a live state of ``ps`` wakes (superseded registrations at the
        head of the heap are dropped on the way)."""
        timers, wheel, prules, grace = ps.timers, ps.wheel, ps.rules, ps.grace
        while timers:
            wake = timers[0]
            flat = wheel[wake]
            live = False
            moved: list[tuple[int, str, str]] = []
            for uid, key in wheel_entries(flat):
                per = prules.get(uid)
                rs = per.get(key) if per is not None else None
                if rs is None:
                    continue
                if type(rs) is RuleState:
                    if rs.wake == wake:
                        live = True
                        break
                    continue  # superseded registration
                w = self._due_of(ps, uid, rs) + grace
                if w <= wake:  # fires when this registration pops (a count's early events included)
                    live = True
                    break
                moved.append((w, uid, key))  # a compact state replaced by a later run
            if live:
                return wake
            _heappop(timers)
            ps.registered -= sum(1 for _ in wheel_entries(wheel.pop(wake)))
            if wake == ps.last_wake:
                ps.last_wake = 0
            for w, uid, key in moved:
                ps.register(w, uid, key)
        return None

    def _wake_of(self, ps: PartitionState, uid: str, rs: State) -> int:
        """The wheel time a state should be registered at now."""
        if type(rs) is RuleState:
            return rs.wake
        return ps.wheel_time(self._due_of(ps, uid, rs))

    def _due_of(self, ps: PartitionState, uid: str, rs: Compact | Counted) -> int:
        """Event time at which a compact or count-list state's timer is due (``deadline + 1``)."""
        if type(rs) is Compact:
            return compact_time(rs, ps) + self._compact.get(uid, 0) + 1
        return rs[0][1] + self._counts.get(uid, 0) + 1
