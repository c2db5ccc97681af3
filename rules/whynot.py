"""Why a rule did (not) fire for one key: its events replayed through that one rule, step by step.

:func:`why_not` takes a compiled rule and the events of one correlation key (what
the engine would read for it: the log key, ``anonymousId`` or else ``userId``)
and answers in two parts:

* **What the engine does** with them: the events run through a real
  :class:`~rules.engine.Engine` holding that rule alone, as a backtest does
  (event-time order, no lateness), with the watermark then moved to
  ``now_ms - wait_ms`` (the live engine's grace and reorder buffer): the
  triggers it writes are the truth the explanation is checked against.
* **Why**, per *attempt* (a partial match, from an event that satisfied the
  first step): where it stopped and the reason: the event missing, the
  condition false (each test of the condition with the values it read), an
  event outside the window or before the step before, an absence cancelled, a
  newer start replacing it ("the latest start wins"), or the ``at most`` cap
  suppressing a complete match (:mod:`rules.whytrace`).

It reads events, never engine state, so it works wherever the events are (the
log, the lake, a test's list). The attempts explain the engine's semantics for
one key; an attempt is "fired" only where the engine wrote a trigger for exactly
its events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .codec import parse_event_time
from .engine import Engine
from .plan import Plan, RulePlan
from .whycheck import Check
from .whytrace import Attempt, Candidate, StepTrace, Timed, Trace, _time

__all__ = ["Attempt", "Candidate", "Check", "StepTrace", "WhyNot", "why_not"]

MAX_ATTEMPTS = 20  # attempts reported per call (the newest); older ones are counted only


@dataclass(frozen=True)
class WhyNot:
    rule: str
    key: str | None
    verdict: str  # fired | waiting | stopped | cancelled | suppressed | replaced | never started | no events
    summary: str  # one sentence
    stopped_at: int | None  # 0-based step where the explained attempt stopped (or waits)
    steps: tuple[StepTrace, ...]  # of the newest attempt, or the first step alone when none started
    attempts: tuple[Attempt, ...]  # newest first
    triggers: tuple[tuple[int, tuple[str, ...]], ...]  # (fired_at ms, messageIds) the engine wrote
    events: int  # events of the key read
    ignored: dict[str, int] = field(default_factory=dict)  # why events were left out -> how many
    older_attempts: int = 0  # attempts older than the ones traced


def why_not(rule: RulePlan, events: Iterable[Mapping[str, Any]], *, now_ms: int | None = None,
            wait_ms: int = 0, key: str | None = None) -> WhyNot:
    """Trace ``rule`` over ``events`` (one key's envelopes, any order). ``now_ms``: the wall clock;
    windows that ended before ``now_ms - wait_ms`` have passed (``wait_ms``: the live engine's grace
    plus its reorder buffer), later ones are still open. None: only the events move time, as in a
    backtest."""
    timeline, ignored = _timeline(rule, events)
    if not timeline:
        why = "No events of this key" + (f" ({_ignored_words(ignored)})" if ignored else "")
        return WhyNot(rule.name, key, "no events", why + ".", 0, (), (), (), 0, ignored)
    horizon = None if now_ms is None else now_ms - wait_ms
    triggers = _engine(rule, timeline, horizon)
    trace = Trace(rule, timeline, horizon, triggers)
    done = [a.done for a in trace.attempts if a.done is not None]
    if not done:
        first = trace.first_step()
        return WhyNot(rule.name, key, "never started", f"Never started: {first.reason}", 0, (first,), (),
                      tuple(triggers), len(timeline), ignored)
    newest = done[-1]
    shown = tuple(reversed(done[-MAX_ATTEMPTS:]))
    stopped = next((s.index for s in newest.steps if s.state in ("waiting", "stopped", "cancelled")), None)
    return WhyNot(rule.name, key, newest.outcome, _summary(newest, triggers), stopped, newest.steps, shown,
                  tuple(triggers), len(timeline), ignored, max(0, len(done) - MAX_ATTEMPTS))


def _timeline(rule: RulePlan, events: Iterable[Mapping[str, Any]]) -> tuple[list[Timed], dict[str, int]]:
    """The events the engine would match for this rule, in event-time order (stable), and what was left out."""
    out: list[Timed] = []
    seen: set[str] = set()
    ignored: dict[str, int] = {}

    def skip(why: str) -> None:
        ignored[why] = ignored.get(why, 0) + 1

    for raw in events:
        env = dict(raw)
        t = parse_event_time(env)
        mid = env.get("messageId")
        if t is None:
            skip("no usable timestamp")
        elif type(mid) is not str:
            skip("no messageId")
        elif mid in seen:
            skip("repeated messageId")
        elif rule.by_anonymous_id and not env.get("anonymousId"):
            skip("no anonymousId (the rule is `by anonymousId`)")
        else:
            seen.add(mid)
            out.append((t, mid, env))
    out.sort(key=lambda e: e[0])
    return out, ignored


def _engine(rule: RulePlan, timeline: list[Timed], horizon: int | None) -> list[tuple[int, tuple[str, ...]]]:
    """The triggers the engine writes for these events: (fired_at ms, messageIds)."""
    engine = Engine(Plan.build((rule,)), 0)
    matches = []
    for offset, (t, _, env) in enumerate(timeline):
        matches += engine.process(0, offset, env, t)
    if horizon is not None:
        matches += engine.advance_watermark(0, horizon)
    return [(m.fired_at_ms, tuple(m.message_ids)) for m in matches]


def _summary(attempt: Attempt, triggers: list[tuple[int, tuple[str, ...]]]) -> str:
    fired = f" It fired {len(triggers)} time(s) for this key." if triggers and attempt.outcome != "fired" else ""
    stopped = next((s for s in attempt.steps if s.state in ("waiting", "stopped", "cancelled")), None)
    where = f"step {stopped.index + 1} ({stopped.text})" if stopped is not None else ""
    first = {
        "fired": f"Fired at {_time(attempt.fired_at_ms or 0)}.",
        "waiting": f"Waiting at {where}: {attempt.reason}",
        "stopped": f"Stopped at {where}: {attempt.reason}",
        "cancelled": f"Cancelled at {where}: {attempt.reason}",
        "replaced": f"Replaced at {where}: {attempt.reason}",
        "suppressed": f"Suppressed: {attempt.reason}",
        "not fired": f"Not fired: {attempt.reason}",
    }[attempt.outcome]
    return first + fired


def _ignored_words(ignored: Mapping[str, int]) -> str:
    return ", ".join(f"{n} left out: {why}" for why, n in ignored.items())
