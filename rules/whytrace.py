"""The trace behind :func:`rules.whynot.why_not`: one key's events through one rule, attempt by attempt.

A small replica of the engine's matching for a single key (rules/LANGUAGE.md,
"Matching semantics"; :mod:`rules.matching`), keeping for every *attempt* (a
partial match, from the event that satisfied the first step) what happened at
each step, instead of the engine's compact state:

* per rule at most one attempt waits at each step; a newer one reaching a step
  replaces the one waiting there (the latest start wins), an older one does not;
* before an event is matched, every window its time has passed ends
  (``deadline < t``): an absence completes at its deadline, any other step stops;
* later steps are tried before the first (as the engine does), an event moving
  an attempt on is not tried again by it; a count step gathers its events;
* a complete attempt fires unless the ``at most`` cap has fired often enough
  within its period for the key.

Conditions are evaluated with the rule's own compiled predicates, and each
test of a condition that did not hold is reported with the values it read
(:func:`rules.whycheck.leaves`: the same compiler, :mod:`rules.predcode`). The engine's
real triggers are passed in: an attempt fires only when the engine wrote a
trigger for exactly its events, so the trace can never claim a trigger the
engine did not write.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .explain import duration
from .plan import RulePlan, event_name
from .whycheck import Check, checks, leaves, step_texts

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z").match
MAX_CANDIDATES = 5  # events shown per step
Timed = tuple[int, str, dict[str, Any]]  # (event time ms, messageId, envelope)

__all__ = ["Attempt", "Candidate", "StepTrace", "Trace"]


@dataclass(frozen=True)
class Candidate:
    """An event of a step's name, and what the step made of it."""

    message_id: str
    time_ms: int
    verdict: str  # matched | condition false | before the step | after the window | cancels | ignored
    checks: tuple[Check, ...] = ()  # the tests that did not hold (condition false)
    note: str = ""


@dataclass(frozen=True)
class StepTrace:
    index: int  # 0-based
    text: str  # `then no Checkout within 30s`
    state: str  # matched | waiting | stopped | passed (an absence's window ended) | cancelled | not reached
    reason: str  # plain words
    matched: tuple[tuple[str, int], ...] = ()  # (messageId, time ms) of the events it matched
    candidates: tuple[Candidate, ...] = ()
    deadline_ms: int | None = None  # the end of this step's window, from the step before


@dataclass(frozen=True)
class Attempt:
    start: tuple[str, int]  # the first step's (first) event
    outcome: str  # fired | suppressed | waiting | stopped | cancelled | replaced | not fired
    reason: str
    steps: tuple[StepTrace, ...]
    fired_at_ms: int | None = None
    due_ms: int | None = None  # waiting: when the step's window ends (an absence fires then, plus the wait)


@dataclass(eq=False)
class _Open:
    """An attempt being traced."""

    start: tuple[str, int]
    matched: list[Any]  # per matched step: a Slim, or a tuple of Slims (count step)
    mids: list[str]
    traces: list[StepTrace]
    at: int = 0  # the step it waits at
    at_i: int = 0  # timeline index of the event that brought it there
    anchor: int = 0
    deadline: int = 0
    acc: list[Timed] = field(default_factory=list)  # a count step's events so far
    cands: list[Candidate] = field(default_factory=list)
    done: Attempt | None = None


class Trace:
    """Replays ``timeline`` (one key's events, event-time order) through ``rule``; read :attr:`attempts`
    (oldest first) and :attr:`first` (the first step's rejected events) afterwards."""

    def __init__(self, rule: RulePlan, timeline: list[Timed], horizon: int | None,
                 triggers: list[tuple[int, tuple[str, ...]]]) -> None:
        self.rule = rule
        self.tl = timeline
        self.triggers = {ids: f for f, ids in triggers}
        self.leaves = [leaves(rule, i) for i in range(len(rule.steps))]
        self.texts = step_texts(rule.rule)
        self.attempts: list[_Open] = []
        self.first: list[Candidate] = []  # events of the first step's name whose condition was false
        self.counted: list[Timed] = []  # a first count step's events not yet in a group
        self._waiting: dict[int, _Open] = {}
        self._fires: list[int] = []
        for i, item in enumerate(timeline):
            self._event(i, item)
        if horizon is not None:
            self._expire(horizon, None)
        for a in list(self._waiting.values()):
            self._wait(a)

    # events ----------------------------------------------------------------------------

    def _event(self, i: int, item: Timed) -> None:
        t, mid, env = item
        self._expire(t, item)
        name = event_name(env)
        steps = self.rule.steps
        for s in sorted(self._waiting, reverse=True):
            a = self._waiting.get(s)
            step = steps[s]
            if a is None or a.at != s or step.event != name or not (a.anchor <= t <= a.deadline):
                continue
            st = tuple(a.matched)
            if not self._holds(s, env, st):
                a.cands.append(Candidate(mid, t, "condition false", self._checks(s, env, st)))
                continue
            if step.absent:
                del self._waiting[s]
                a.cands.append(Candidate(mid, t, "cancels"))
                self._end(a, "cancelled", "cancelled",
                          f"{_event(step.event)} at {_time(t)}, {_after(t - a.anchor)} after the step before, "
                          f"within {duration(step.within_ms or 0)}: nothing to fire.", ((mid, t),))
                continue
            a.acc.append(item)
            if len(a.acc) < step.count:
                a.cands.append(Candidate(mid, t, "matched", note=f"{len(a.acc)} of {step.count}"))
                continue
            del self._waiting[s]
            self._advance(a, s, a.acc, i)
        if name == steps[0].event:
            if self._holds(0, env, ()):
                self._start(i, item)
            else:
                self.first.append(Candidate(mid, t, "condition false", self._checks(0, env, ())))

    def _start(self, i: int, item: Timed) -> None:
        step = self.rule.steps[0]
        if step.count == 1:
            group = [item]
        else:
            window = step.within_ms or 0
            self.counted = [e for e in self.counted if e[0] >= item[0] - window] + [item]
            if len(self.counted) < step.count:
                return
            group, self.counted = self.counted[: step.count], self.counted[step.count:]
        a = _Open((group[0][1], group[0][0]), [], [], [])
        self.attempts.append(a)
        self._advance(a, 0, group, i)

    def _advance(self, a: _Open, s: int, items: list[Timed], i: int) -> None:
        """``a`` matched step ``s`` with ``items``: on to the next step, or complete."""
        steps = self.rule.steps
        t = max(x[0] for x in items)
        slims = [self._slim(s, x) for x in items]
        a.matched.append(tuple(slims) if steps[s].count > 1 else slims[0])
        a.mids += [x[1] for x in items]
        shown = tuple(c for c in a.cands if c.verdict == "condition false")[-MAX_CANDIDATES:]
        a.traces.append(StepTrace(s, self.texts[s], "matched", f"matched at {_time(t)}.",
                                  tuple((x[1], x[0]) for x in items), shown, a.deadline if s else None))
        if s + 1 == len(steps):
            self._complete(a, t)
            return
        existing = self._waiting.get(s + 1)
        if existing is not None and existing.anchor > t:
            self._end(a, "replaced", "stopped", f"a newer match already waits at step {s + 2}.")
            return
        if existing is not None:
            self._end(existing, "replaced", "stopped",
                      f"replaced by the match that started at {_time(a.start[1])} (the latest start wins).")
        a.at, a.at_i, a.anchor, a.deadline = s + 1, i, t, t + (steps[s + 1].within_ms or 0)
        a.acc, a.cands = [], []
        self._waiting[s + 1] = a

    def _expire(self, t: int, item: Timed | None) -> None:
        """Every window that ended before ``t`` (``item``: the event at ``t``, when one moved time)."""
        steps = self.rule.steps
        for s in sorted(self._waiting):
            a = self._waiting[s]
            if a.deadline >= t:
                continue
            del self._waiting[s]
            step = steps[s]
            if step.absent:
                a.traces.append(StepTrace(s, self.texts[s], "passed",
                                          f"no {_event(step.event)} within {duration(step.within_ms or 0)} "
                                          f"(until {_time(a.deadline)}).", (), tuple(a.cands[-MAX_CANDIDATES:]), a.deadline))
                self._complete(a, a.deadline)
                continue
            if item is not None and event_name(item[2]) == step.event:
                a.cands.append(Candidate(item[1], item[0], "after the window",
                                         note=f"{_after(item[0] - a.anchor)} after the step before; the window is "
                                              f"{duration(step.within_ms or 0)}"))
            self._end(a, "stopped", "stopped", self._missing(a, open_=False))
        step0 = steps[0]
        if step0.count > 1:
            self.counted = [e for e in self.counted if e[0] >= t - (step0.within_ms or 0)]

    def _wait(self, a: _Open) -> None:
        """Still waiting when the events (and the clock) end."""
        self._end(a, "waiting", "waiting", self._missing(a, open_=True), due=a.deadline)

    def _complete(self, a: _Open, t: int) -> None:
        rule = self.rule
        fired_at = self.triggers.get(tuple(a.mids))
        if rule.cap_times is not None and rule.cap_per_ms is not None:
            per = rule.cap_per_ms
            self._fires = [f for f in self._fires if f > t - per]
            if fired_at is None and sum(1 for f in self._fires if abs(f - t) < per) >= rule.cap_times:
                times = {1: "once", 2: "twice"}.get(rule.cap_times, f"{rule.cap_times} times")
                words = duration(per)
                words = words[2:] if words.startswith("1 ") else words
                self._end(a, "suppressed", None, f"cooldown: complete at {_time(t)}, but the rule fires at most "
                                                 f"{times} per {words} for a key (it fired at {_time(max(self._fires))}).")
                return
            if fired_at is not None:
                self._fires.append(t)
        if fired_at is None:
            self._end(a, "not fired", None, "complete, but the engine wrote no trigger for these events.")
            return
        self._end(a, "fired", None, f"fired at {_time(fired_at)}.", fired_at=fired_at)

    def _end(self, a: _Open, outcome: str, state: str | None, reason: str, matched: tuple[tuple[str, int], ...] = (),
             *, due: int | None = None, fired_at: int | None = None) -> None:
        steps = a.traces
        if state is not None:
            cands = tuple(self._before(a)) + tuple(a.cands[-MAX_CANDIDATES:])
            steps.append(StepTrace(a.at, self.texts[a.at], state, reason, matched, cands, a.deadline))
        for s in range(len(steps), len(self.rule.steps)):
            steps.append(StepTrace(s, self.texts[s], "not reached", ""))
        a.done = Attempt(a.start, outcome, reason, tuple(steps), fired_at, due)

    # explanations ------------------------------------------------------------------------

    def _before(self, a: _Open) -> list[Candidate]:
        """The nearest event of the waiting step's name read just before the step before (order matters)."""
        step = self.rule.steps[a.at]
        if a.at == 0 or step.absent:
            return []
        for t, mid, env in reversed(self.tl[: a.at_i]):
            if a.anchor - t > (step.within_ms or 0):
                break
            if event_name(env) == step.event:
                return [Candidate(mid, t, "before the step", note=f"{_after(a.anchor - t)} before the step before")]
        return []

    def _missing(self, a: _Open, open_: bool) -> str:
        step = self.rule.steps[a.at]
        within = duration(step.within_ms or 0)
        if step.absent:
            return f"no {_event(step.event)} so far; the window ends at {_time(a.deadline)}."
        if step.count > 1:
            head = f"{len(a.acc)} of {step.count} {_event(step.event, plural=True)} within {within}"
            return f"{head} so far; the window ends at {_time(a.deadline)}." if open_ else f"only {head}."
        false = [c for c in a.cands if c.verdict == "condition false"]
        if false:
            c = false[-1]
            why = "; ".join(x.words() for x in c.checks) or "the condition is not true"
            tail = f"; waiting until {_time(a.deadline)}" if open_ else ""
            return f"{_event(step.event)} at {_time(c.time_ms)}: {why}{tail}."
        if open_:
            return f"waiting for {_event(step.event)} until {_time(a.deadline)}."
        late = next((c for c in a.cands if c.verdict == "after the window"), None)
        if late is not None:
            return f"outside the window: {_event(step.event)} at {_time(late.time_ms)} came {late.note}."
        early = self._before(a)
        if early:
            return f"{_event(step.event)} at {_time(early[0].time_ms)} came {early[0].note}: the order matters."
        return f"event missing: no {_event(step.event)} within {within} after the step before."

    def first_step(self) -> StepTrace:
        """Why no attempt started."""
        step = self.rule.steps[0]
        text = self.texts[0]
        named = [x for x in self.tl if event_name(x[2]) == step.event]
        if not named:
            return StepTrace(0, text, "stopped", f"no {_event(step.event)} among this key's {len(self.tl)} event(s).")
        cands = tuple(self.first[-MAX_CANDIDATES:][::-1])
        if step.count > 1:
            passing = len(named) - len(self.first)
            return StepTrace(0, text, "stopped", f"{passing} {_event(step.event, plural=True)} matched the condition, "
                             f"never {step.count} within {duration(step.within_ms or 0)}.", (), cands)
        newest = cands[0]
        why = "; ".join(c.words() for c in newest.checks)
        return StepTrace(0, text, "stopped", f"the condition is false for every {_event(step.event)} ({len(named)}); "
                         f"the newest, at {_time(newest.time_ms)}: {why}.", (), cands)

    # conditions --------------------------------------------------------------------------

    def _slim(self, index: int, item: Timed) -> tuple[Any, ...]:
        proj = self.rule.steps[index].project
        t, mid, env = item
        return (mid, t, 0, 0, proj(env) if proj is not None else ())

    def _holds(self, index: int, env: dict[str, Any], st: tuple[Any, ...]) -> bool:
        pred = self.rule.steps[index].pred
        return pred is None or pred(env, st) is True

    def _checks(self, index: int, env: dict[str, Any], st: tuple[Any, ...]) -> tuple[Check, ...]:
        return checks(self.leaves[index], env, st)


def _event(name: str, plural: bool = False) -> str:
    if name.startswith("$"):
        return f"{name[1:]} call{'s' if plural else ''}"
    shown = name if _WORD(name) else json.dumps(name, ensure_ascii=False)
    return f"{shown} event{'s' if plural else ''}"


def _after(ms: int) -> str:
    if ms % 1000 == 0 or ms >= 10_000:
        return f"{ms / 1000:.0f} s" if ms < 120_000 else duration(ms - ms % 1000)
    return f"{ms / 1000:.1f} s"


def _time(ms: int) -> str:
    from tripwire.envelope import format_time_ms

    return format_time_ms(ms).replace("T", " ").replace(".000Z", "Z")
