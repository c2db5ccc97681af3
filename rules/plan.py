"""The compiled evaluation plan: what the engine runs.

A :class:`Plan` is immutable. Predicates and payload templates are compiled to
plain closures; every field a later step or the payload needs from an earlier
event is listed in that step's ``needs`` so the engine keeps only those values
(a *projection*) in pending state, never whole envelopes.

Predicates use three-valued logic: a comparison on a missing field is
*unknown* (``None``); ``not`` of unknown stays unknown; a step's ``where``
holds only when it is ``True``. So an event missing a referenced field never
matches, and nothing raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import ast


class _Missing:
    """A field that is not in the event (distinct from JSON null)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

# A slim event kept in pending state: (messageId, event time ms, partition, offset, projection).
Slim = tuple[str, int, int, int, tuple[Any, ...]]
# Per step of a run: a Slim (single-event step) or a tuple of Slims (count step).
Predicate = Callable[[Mapping[str, Any], tuple[Any, ...]], "bool | None"]
Renderer = Callable[[tuple[Any, ...]], Any]


def get_path(obj: Any, parts: tuple[str, ...]) -> Any:
    for part in parts:
        if type(obj) is not dict:
            return MISSING
        obj = obj.get(part, MISSING)
        if obj is MISSING:
            return MISSING
    return obj


def event_name(env: Mapping[str, Any]) -> str | None:
    """The name a step matches: ``event`` for track calls, ``$page``, ``$identify``, ... otherwise."""
    kind = env.get("type")
    if kind == "track":
        name = env.get("event")
        return name if isinstance(name, str) else None
    return f"${kind}" if isinstance(kind, str) else None


@dataclass(frozen=True, eq=False)
class StepPlan:
    index: int
    event: str
    count: int  # >= 1; "at least count events"
    within_ms: int | None  # first step: sliding window of a count; later steps: after the previous step
    absent: bool
    alias: str | None
    pred: Predicate | None
    needs: tuple[tuple[str, ...], ...]  # projection kept for later steps and the payload
    # A necessary condition of ``pred`` usable as an index: (path, string values) from a
    # top-level `path == "x"` / `path in ["x", "y"]` conjunct on the step's own event.
    discriminator: tuple[tuple[str, ...], frozenset[str]] | None = None
    project: Callable[[Mapping[str, Any]], tuple[Any, ...]] | None = None  # env -> values of ``needs``
    # ``pred`` where the engine reached the step through ``discriminator`` (that conjunct left out)
    residual: Predicate | None = None


@dataclass(frozen=True, eq=False)
class RulePlan:
    name: str
    uid: str  # fingerprint of the rule's meaning: unchanged uid => state is kept on reload
    file: str
    line: int
    steps: tuple[StepPlan, ...]
    by_anonymous_id: bool  # key = anonymousId (events without one are skipped); else the log key
    cap_times: int | None
    cap_per_ms: int | None
    endpoint: str
    payload: Renderer | None
    horizon_ms: int  # longest a partial match lives (its windows); the cap keeps fire times, not events
    rule: ast.Rule = field(repr=False)


@dataclass(frozen=True, eq=False)
class Starters:
    """Rules whose first step names one event: always tried, or looked up by a field's value."""

    always: tuple[RulePlan, ...]
    by_value: tuple[tuple[tuple[str, ...], Mapping[str, tuple[RulePlan, ...]]], ...]


@dataclass(frozen=True, eq=False)
class Plan:
    """Rules indexed by the event names they react to, so unrelated events cost one dict lookup.

    ``starters[name]``: rules whose first step is ``name`` (further narrowed by an
    equality on a field when the step has one); ``followers[name]``: (rule, step
    indexes > 0) that only matter for keys with a pending run of that rule.
    """

    rules: tuple[RulePlan, ...]
    starters: Mapping[str, Starters]
    followers: Mapping[str, tuple[tuple[RulePlan, tuple[int, ...]], ...]]
    horizon_ms: int

    @property
    def event_names(self) -> set[str]:
        return set(self.starters) | set(self.followers)

    @classmethod
    def build(cls, rules: tuple[RulePlan, ...]) -> Plan:
        always: dict[str, list[RulePlan]] = {}
        by_value: dict[str, dict[tuple[str, ...], dict[str, list[RulePlan]]]] = {}
        followers: dict[str, dict[str, tuple[RulePlan, list[int]]]] = {}
        for rule in rules:
            first = rule.steps[0]
            if first.discriminator is None:
                always.setdefault(first.event, []).append(rule)
            else:
                path, values = first.discriminator
                table = by_value.setdefault(first.event, {}).setdefault(path, {})
                for v in sorted(values):
                    table.setdefault(v, []).append(rule)
            for step in rule.steps[1:]:
                followers.setdefault(step.event, {}).setdefault(rule.uid, (rule, []))[1].append(step.index)
        starters = {
            name: Starters(
                tuple(always.get(name, ())),
                tuple((path, {v: tuple(rs) for v, rs in table.items()}) for path, table in by_value.get(name, {}).items()),
            )
            for name in set(always) | set(by_value)
        }
        follow = {name: tuple((r, tuple(idx)) for r, idx in per.values()) for name, per in followers.items()}
        horizon = max((r.horizon_ms for r in rules), default=0)
        return cls(rules, starters, follow, horizon)

    def rule(self, uid: str) -> RulePlan | None:
        for r in self.rules:
            if r.uid == uid:
                return r
        return None
