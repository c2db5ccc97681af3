"""Matching of events against rule steps: starting runs, following them, completing matches.

:class:`Matcher` does the per-event work of :class:`rules.engine.Engine`: an
event that satisfies a rule's first step starts a run (or, for a compact "A
then B within T" rule, becomes the :class:`~rules.partition.Compact` waiting for
B); an event for a later step advances the run waiting there; a count step
gathers its events in event-time order; a completed run goes to
:class:`~rules.firing.Firing`. Before an event touches a state, what the event's
time has passed expires first (:meth:`rules.timers.Timers.expire`), as in a
backtest. The state forms are described in :mod:`rules.partition`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .codec import OFFSET_MASK, TIME_SHIFT, MidKey, Stamp
from .firing import Firing
from .partition import (Compact, Counted, EngineStats, Forms, Match, PartitionState, RuleState, Run, State,
                        remember_fired, slim_of)
from .plan import RulePlan, Slim
from .timers import Timers

__all__ = ["Matcher"]


class Matcher:
    """Step matching of an engine's partitions. :meth:`use` gives it the plan's rules."""

    __slots__ = ("_rules", "_compact", "_counts", "_stats", "_late_cancels_by_rule", "_refused_by_rule", "_timers",
                 "_firing", "_track", "_lateness", "_max_pending")

    def __init__(self, stats: EngineStats, late_cancels_by_rule: Counter[str], timers: Timers, firing: Firing, *,
                 track_dirty: bool, lateness_ms: int, refused_by_rule: Counter[str], max_pending: int) -> None:
        self._max_pending = max_pending  # states per partition (rules.config: max_pending)
        self._stats = stats
        self._late_cancels_by_rule = late_cancels_by_rule
        self._refused_by_rule = refused_by_rule
        self._timers = timers
        self._firing = firing
        self._track = track_dirty
        self._lateness = lateness_ms
        self._rules: dict[str, RulePlan] = {}
        self._compact: dict[str, int] = {}
        self._counts: dict[str, int] = {}

    def use(self, forms: Forms) -> None:
        """The rules of a new plan."""
        self._rules, self._compact, self._counts = forms.rules, forms.compact, forms.counts

    # events for later steps ---------------------------------------------------------

    def follow(self, ps: PartitionState, rule: RulePlan, per: dict[str, State], key: str, rs: RuleState,
               env: dict[str, Any], mid: str, t: int, offset: int, idxs: tuple[int, ...], out: list[Match]) -> None:
        """``env`` for the later steps ``idxs`` (descending) of ``rule`` where ``key`` has a state."""
        runs = rs.runs
        if runs is None:
            return
        steps = rule.steps
        # Timers before the event, as in a backtest: what t passed ends first (absences fire).
        touched = self._timers.expire(ps, rule, key, rs, t, out)
        for i in idxs:
            run = runs[i]
            if run is None:
                continue
            if not (run.anchor <= t <= run.deadline):
                if t < run.anchor and run.anchor - t > self._lateness:
                    self._stats.out_of_order += 1
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
            if self._track:
                ps.dirty.add((rule.uid, key))
            self._timers.reschedule(ps, rule, per, key, rs)

    def follow_compact(self, ps: PartitionState, rule: RulePlan, per: dict[str, State], key: str, c: Compact,
                       env: dict[str, Any], mid: str, t: int, offset: int, out: list[Match]) -> None:
        """``env`` for step 2 of a compact rule where ``key`` waits with ``c``."""
        step = rule.steps[1]
        anchor = ps.seen[c[0]] >> TIME_SHIFT
        if t > anchor + (step.within_ms or 0):
            self._expire_compact(ps, rule, per, key, c, out)
            return
        if t < anchor:
            if anchor - t > self._lateness:
                self._stats.out_of_order += 1
            return
        first = slim_of(c, ps)
        pred = step.pred
        if pred is not None and pred(env, (first,)) is not True:
            return
        del per[key]
        if self._track:
            ps.dirty.add((rule.uid, key))
        if not step.absent:
            proj = step.project
            self._firing.complete(ps, rule, key, None,
                                  (first, (mid, t, ps.partition, offset, proj(env) if proj is not None else ())), t, out)

    def _expire_compact(self, ps: PartitionState, rule: RulePlan, per: dict[str, State], key: str, c: Compact,
                        out: list[Match]) -> None:
        """A compact run whose deadline the key's own event time passed: it ends now, as its timer would have
        (an absence fires; its timer, waiting for the grace, finds nothing)."""
        del per[key]
        if self._track:
            ps.dirty.add((rule.uid, key))
        if rule.steps[1].absent:
            first = slim_of(c, ps)
            deadline = first[1] + (rule.steps[1].within_ms or 0)
            remember_fired(ps, rule.uid, key, (first,), first[1], deadline)
            self._firing.complete(ps, rule, key, None, (first,), deadline, out)

    def late_cancels(self, ps: PartitionState, name: str, key: str, fired: dict[str, tuple[Any, int, int]],
                     env: dict[str, Any], t: int) -> None:
        """``env`` (event ``name``) would have cancelled absences that fired for ``key``: counted, nothing else."""
        for uid, (steps, anchor, deadline) in list(fired.items()):
            rule = self._rules.get(uid)
            if rule is None:
                del fired[uid]
                continue
            step = rule.steps[len(steps)]
            if step.event == name and step.absent and anchor <= t <= deadline and (
                    step.pred is None or step.pred(env, steps) is True):
                del fired[uid]
                self._stats.late_cancels += 1
                self._late_cancels_by_rule[rule.name] += 1

    # events for a first step ----------------------------------------------------------

    def start(self, ps: PartitionState, rule: RulePlan, key: str, env: dict[str, Any], mid: str, t: int,
              stamp: Stamp, cmid: MidKey, out: list[Match]) -> None:
        """``env`` satisfied the first step of ``rule`` (its predicate held).

        ``stamp``: the event's stamp (rules.codec.stamp) and ``cmid``: the key under which the duplicate memory
        holds ``mid``.
        """
        steps = rule.steps
        step = steps[0]
        proj = step.project
        uid = rule.uid
        per = ps.rules[uid]
        rs = per.get(key)
        if type(rs) is Compact or (rs is None and uid in self._compact):
            within = self._compact[uid]
            if rs is not None:
                anchor = ps.seen[rs[0]] >> TIME_SHIFT
                if anchor + within < t:
                    self._expire_compact(ps, rule, per, key, rs, out)  # t passed its deadline first
                    rs = None
                elif anchor > t:
                    return  # the run waiting started later in event time: it stays
            due = t + within + 1
            # A start the watermark has nearly passed (a late event) takes the general form: the recent
            # span of ``seen``, where a compact state finds its time, may not outlive its timer.
            if rs is not None or due + ps.grace > ps.watermark:
                if rs is None and not self._room(ps, rule):
                    return
                if self._track:
                    ps.dirty.add((uid, key))
                per[key] = Compact((cmid, *proj(env)) if proj is not None else (cmid,))
                if rs is None:
                    ps.register(due + ps.grace, uid, key)
                return
        s = (mid, t, ps.partition, stamp & OFFSET_MASK, proj(env) if proj is not None else ())
        if type(rs) is Counted or (rs is None and uid in self._counts):
            self._start_count(ps, rule, per, key, rs, s, out)
            return
        n = len(steps)
        if rs is None:
            if n == 1 and step.count == 1 and rule.cap_times is None:
                self._firing.complete(ps, rule, key, None, (s,), t, out)  # nothing to remember
                return
            if not self._room(ps, rule):
                return
            rs = per[key] = RuleState(n)
        else:
            assert type(rs) is RuleState  # a rule's states change form only from Counted to RuleState
            self._timers.expire(ps, rule, key, rs, t, out)  # timers before the event, as in a backtest
        if self._track:
            ps.dirty.add((uid, key))
        if step.count > 1:
            group = self._count_first(rs, step.count, step.within_ms or 0, s)
            if group is None:
                # only the window's first event can make the state wake earlier
                w = ps.wheel_time(rs.acc[0][1] + (step.within_ms or 0) + 1)  # type: ignore[index]
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
                w = ps.wheel_time(w + 1)
                if rs.wake == 0 or w < rs.wake:
                    rs.wake = w
                    ps.register(w, uid, key)
            return
        else:
            self._firing.complete(ps, rule, key, rs, (s,), t, out)
        self._timers.reschedule(ps, rule, per, key, rs)

    def _start_count(self, ps: PartitionState, rule: RulePlan, per: dict[str, State], key: str, acc: Counted | None,
                     s: Slim, out: list[Match]) -> None:
        """``s`` counts for a one-step count rule whose state is its Counted events (or none yet)."""
        if self._track:
            ps.dirty.add((rule.uid, key))
        step = rule.steps[0]
        within = step.within_ms or 0
        if acc is None:
            if not self._room(ps, rule):
                return
            per[key] = Counted((s,))  # its timer: when this first event leaves the window
            ps.register(ps.wheel_time(s[1] + within + 1), rule.uid, key)
            return
        group = _count_insert(acc, step.count, within, s)
        if group is None:
            return
        t = max(e[1] for e in group)
        if rule.cap_times is None:
            if not acc:
                del per[key]  # its registration finds nothing when it comes due
            self._firing.complete(ps, rule, key, None, (group,), t, out)
            return
        rs = per[key] = RuleState(1)  # a cap remembers fire times: the general form from now on
        rs.acc = list(acc) or None
        self._firing.complete(ps, rule, key, rs, (group,), t, out)
        self._timers.reschedule(ps, rule, per, key, rs)

    def _room(self, ps: PartitionState, rule: RulePlan) -> bool:
        """Whether a new partial match may start: the partition holds fewer than ``max_pending`` states. The
        states are counted when the budget of the last count runs out, then on each sweep of the partition
        and every 1,024 refusals (states expire meanwhile); a start refused is counted (the event itself is in
        the log and the lake as any other)."""
        ps.budget -= 1
        if ps.budget >= 0:
            return True
        if ps.budget & 1023 == 1023:  # -1, -1025, ...: count again
            ps.budget = self._max_pending - ps.pending() - 1
            if ps.budget >= 0:
                return True
        self._stats.refused += 1
        self._refused_by_rule[rule.name] += 1
        return False

    @staticmethod
    def _count_first(rs: RuleState, n: int, within: int, s: Slim) -> tuple[Slim, ...] | None:
        acc = rs.acc
        if acc is None:
            rs.acc = [s]
            return (s,) if n <= 1 else None
        return _count_insert(acc, n, within, s)

    def _advance_run(self, ps: PartitionState, rule: RulePlan, key: str, rs: RuleState, matched: tuple[Any, ...],
                     t: int, out: list[Match]) -> None:
        i = len(matched)
        steps = rule.steps
        if i == len(steps):
            self._firing.complete(ps, rule, key, rs, matched, t, out)
            return
        runs = rs.runs
        assert runs is not None
        existing = runs[i]
        if existing is not None and existing.anchor > t:
            return  # a run that got here later in event time stays
        runs[i] = Run(matched, t, t + (steps[i].within_ms or 0))


def _count_insert(acc: list[Slim], n: int, within: int, s: Slim) -> tuple[Slim, ...] | None:
    """Count ``s`` in ``acc``; the first ``n`` events within ``within`` (taken out of ``acc``), or None."""
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
