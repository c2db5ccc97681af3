"""Helpers for the rules tests: compile rule text, build envelopes, feed an engine."""

from __future__ import annotations

import itertools
from typing import Any

from tripwire.rules.compiler import build_plan, compile_text
from tripwire.rules.engine import Engine, Match
from tripwire.rules.plan import Plan
from tripwire.envelope import format_time_ms

T0 = 1_700_000_000_000  # event times in tests are T0 + seconds
_ids = itertools.count()


def plan_of(text: str, filename: str = "t.rules") -> Plan:
    plans, diagnostics = compile_text(text, filename, endpoints=None)
    errors = [d.format() for d in diagnostics if d.severity == "error"]
    assert not errors, "\n".join(errors)
    plan, dup = build_plan([plans])
    assert not dup
    return plan


def ev(name: str, at_s: float, key: str = "u1", mid: str | None = None, **properties: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "type": "track", "event": name, "anonymousId": key,
        "messageId": mid or f"m{next(_ids)}", "timestamp": format_time_ms(T0 + int(at_s * 1000)),
        "properties": properties,
    }
    if name.startswith("$"):
        env["type"] = name[1:]
        del env["event"]
    return env


def feed(engine: Engine, events: list[dict[str, Any]], partition: int = 0, until_s: float | None = None) -> list[Match]:
    out: list[Match] = []
    for offset, env in enumerate(events):
        out.extend(engine.process(partition, offset, env))
    if until_s is not None:
        out.extend(engine.advance_watermark(partition, T0 + int(until_s * 1000)))
    return out


def run(text: str, events: list[dict[str, Any]], until_s: float | None = None, lateness_ms: int = 0) -> list[Match]:
    return feed(Engine(plan_of(text), lateness_ms), events, until_s=until_s)


def ids(matches: list[Match]) -> list[list[str]]:
    return [m.message_ids for m in matches]
