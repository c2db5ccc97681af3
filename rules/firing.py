"""Completed runs become matches: the ``at most`` cap, the payload, the trigger's identity.

Both the matcher (an event completes a run) and the timers (an absence's window
passes) end here; :class:`Firing` holds the counters of what fired and what the
cap suppressed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .identity import identity_of
from .partition import EngineStats, Match, PartitionState, RuleState
from .plan import RulePlan

__all__ = ["Firing"]


class Firing:
    __slots__ = ("stats", "suppressed_by_rule")

    def __init__(self, stats: EngineStats, suppressed_by_rule: Counter[str]) -> None:
        self.stats = stats
        self.suppressed_by_rule = suppressed_by_rule

    def complete(self, ps: PartitionState, rule: RulePlan, key: str, rs: RuleState | None, matched: tuple[Any, ...],
                 t: int, out: list[Match]) -> None:
        """``matched`` (per step: a Slim, or a tuple of Slims for a count step) completed ``rule`` for ``key`` at
        event time ``t``: appended to ``out`` as a :class:`Match`, unless the cap (fire times kept in ``rs``;
        None: the rule has no cap) suppresses it."""
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
        identity = identity_of(ps.identity, key)
        payload = None
        if rule.payload is not None:
            try:
                payload = rule.payload((*matched, identity))  # bare userId/anonymousId read the last item
            except Exception:  # noqa: BLE001 - a broken template still fires, without payload
                self.stats.errors += 1
        self.stats.matches += 1
        out.append(Match(rule, key, events, t, payload, ps.partition, identity))
