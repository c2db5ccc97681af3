"""Rules generated from the grammar: every rule ``rules check`` accepts runs on the real engine and encoder.

Rule texts are drawn production by production from ``grammar.lark`` (steps with counts,
aliases, conditions and time bounds, absences, ``by``, caps, payload templates with literals
of every kind: strings with any character or escape, lone surrogates included, integers past
64 bits, huge and tiny decimals). Those that compile without errors run through
:class:`~tripwire.rules.engine.Engine` on random events (decoded by orjson, as the engine reads
them from the log), and every match becomes a :class:`~tripwire.triggers.Trigger` encoded as
the service writes it. Zero exceptions, and zero rule errors counted by the engine (it catches
a failing rule and counts it in ``stats.errors``). Issue 12: a rule check accepted used to stop
the engine at its first match.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tripwire.envelope import format_time_ms
from tripwire.rules.catalog import EventCatalog
from tripwire.rules.compiler import build_plan, compile_text
from tripwire.rules.engine import Engine
from tripwire.rules.explain import explain
from tripwire.triggers import Trigger, trigger_id

from .util import T0

EVENTS = ["A", "B", "Order Completed", "Añadir"]  # track event names the events below carry
KEYS = ["sku", "price", "n", "tags", "Product Name", "é", "a"]  # property names they carry
DURATIONS = ["1ms", "500ms", "1s", "5s", "30s", "1m", "10m"]
OPS = ["==", "!=", "<", "<=", ">", ">="]
ENVELOPE = ["userId", "anonymousId", "event", "type", "messageId", "timestamp", "context.page.path", "traits.plan"]

# Any character: lone surrogates (Cs) and control characters included, raw or escaped.
chars = st.characters(categories=["L", "N", "P", "S", "Zs", "Cc", "Cs"])


def quoted(text: str, ascii_only: bool) -> str:
    """A DSL string literal (JSON's syntax): escapes for non-ASCII, or the characters themselves."""
    return json.dumps(text, ensure_ascii=ascii_only)


strings = st.one_of(
    st.builds(quoted, st.text(chars, max_size=8), st.booleans()),
    st.sampled_from(['"\\ud800"', '"a\\uDFFFb"', '"\\ud83d\\ude00"', '"\\u0000"', '"tab\\there"']),
)
names = st.builds(quoted, st.text(chars, min_size=1, max_size=8), st.booleans())
numbers = st.one_of(
    st.integers(-(2**65), 2**65).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["0", "-0", "007", "1e400", "-1e400", "1e-400", "1E5", "9" * 5000, "18446744073709551615",
                     "-9223372036854775808", "18446744073709551616", "0.5"]),
)
literals = st.one_of(strings, numbers, st.sampled_from(["true", "false", "null"]))


def event_name() -> st.SearchStrategy[str]:
    names = [e if e.isidentifier() and e.isascii() else quoted(e, False) for e in EVENTS]
    return st.sampled_from([*names, "$page", "$identify", quoted("Order Completed", True)])


def key_part() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from([k if k.isidentifier() and k.isascii() else quoted(k, False) for k in KEYS]), strings)


@st.composite
def paths(draw: st.DrawFn, aliases: list[str]) -> str:
    """A field: properties.<key>, an envelope field, either behind an alias (a misspelt one now and then)."""
    field = draw(st.one_of(st.builds(lambda k: f"properties.{k}", key_part()), st.sampled_from(ENVELOPE),
                           st.just("propertes.price")))
    if aliases and draw(st.booleans()):
        return f"{draw(st.sampled_from(aliases))}.{field}"
    return field if not field.startswith("propertes") else "properties.price"


@st.composite
def conditions(draw: st.DrawFn, aliases: list[str], depth: int = 0) -> str:
    path = paths(aliases)
    kind = draw(st.integers(0, 10 if depth < 3 else 6))
    if kind == 0:
        return f"{draw(path)} {draw(st.sampled_from(OPS))} {draw(st.one_of(literals, path))}"
    if kind == 1:
        values = draw(st.lists(literals, max_size=4))
        return f"{draw(path)} {draw(st.sampled_from(['in', 'not in']))} [{', '.join(values)}]"
    if kind in (2, 3):
        op = draw(st.sampled_from(["contains", "starts with", "ends with"]))
        return f"{draw(path)} {op} {draw(st.one_of(strings, literals, path))}"
    if kind == 4:
        return f"{draw(path)} {draw(st.sampled_from(['exists', 'does not exist']))}"
    if kind in (5, 6):
        return f"{draw(path)} == {draw(strings)}"
    if kind == 7:
        return f"not {draw(conditions(aliases, depth + 1))}"
    if kind == 8:
        return f"({draw(conditions(aliases, depth + 1))})"
    op = draw(st.sampled_from(["and", "or"]))
    return f"{draw(conditions(aliases, depth + 1))} {op} {draw(conditions(aliases, depth + 1))}"


@st.composite
def templates(draw: st.DrawFn, aliases: list[str], depth: int = 0) -> str:
    kind = draw(st.integers(0, 3 if depth < 3 else 1))
    if kind == 0:
        return draw(literals)
    if kind == 1:
        return draw(paths(aliases))
    if kind == 2:
        return "[" + ", ".join(draw(st.lists(templates(aliases, depth + 1), max_size=3))) + "]"
    keys = draw(st.lists(st.one_of(st.sampled_from(["sku", "n", "rule", "x"]), strings), max_size=4, unique=True))
    return "{ " + ", ".join(f"{k}: {draw(templates(aliases, depth + 1))}" for k in keys) + " }"


@st.composite
def rules(draw: st.DrawFn) -> str:
    parts = [f"rule {draw(names)}"]
    n_steps = draw(st.integers(1, 3))
    absent_last = n_steps > 1 and draw(st.booleans())
    visible: list[str] = []  # aliases of earlier steps that hold an event
    for i in range(n_steps):
        absent = absent_last and i == n_steps - 1
        count = 1 if absent else draw(st.sampled_from([1, 1, 2, 3]))
        alias = None if absent else draw(st.sampled_from([None, f"s{i}"]))
        words = ["then no" if absent else ("when" if i == 0 else "then")]
        if count > 1:
            words.append(str(count))
        words.append(draw(event_name()))
        if alias:
            words.append(f"as {alias}")
        if draw(st.booleans()):
            words.append(f"where {draw(conditions(visible + ([alias] if alias else [])))}")
        if i > 0 or count > 1:
            words.append(f"within {draw(st.sampled_from(DURATIONS))}")
        parts.append(" ".join(words))
        if alias:
            visible.append(alias)
    if draw(st.booleans()):
        parts.append("by anonymousId")
    if draw(st.booleans()):
        times = draw(st.sampled_from(["once", "twice", "3 times"]))
        parts.append(f"at most {times} per {draw(st.sampled_from(DURATIONS))}")
    post = "post crm"
    if draw(st.booleans()):
        keys = draw(st.lists(st.one_of(st.sampled_from(["sku", "n", "rule", "x"]), strings), max_size=4, unique=True))
        post += " with { " + ", ".join(f"{k}: {draw(templates(visible, 1))}" for k in keys) + " }"
    parts.append(post)
    return "\n  ".join(parts) + "\n"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6) | st.sampled_from(["x", "", "/c/x", "shoes", "😀"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def events(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Envelopes as the engine reads them from the log: orjson-decoded, in roughly increasing event time."""
    out, t = [], 0
    for i in range(draw(st.integers(1, 25))):
        t += draw(st.sampled_from([0, 1, 400, 1000, 4000, 30_000, 600_000]))
        kind = draw(st.sampled_from(["track", "track", "track", "page", "identify"]))
        env: dict[str, Any] = {"type": kind, "messageId": draw(st.sampled_from([f"m{i}", f"m{i}", "dup"])),
                               "timestamp": format_time_ms(T0 + t)}
        if kind == "track":
            env["event"] = draw(st.sampled_from(EVENTS))
        key = draw(st.sampled_from(["k1", "k1", "k2", None]))
        if key is not None:
            env["anonymousId"] = key
        if key is None or draw(st.booleans()):
            env["userId"] = draw(st.sampled_from(["u1", "ü2"]))
        env["properties"] = draw(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=5) | json_values)
        if draw(st.booleans()):
            env["context"] = {"page": {"path": draw(json_values)}}
        if draw(st.booleans()):
            env["traits"] = {"plan": draw(json_values)}
        out.append(orjson.loads(orjson.dumps(env)))
    return out


# A catalog for the events above, so that its checks see every generated rule too (they only warn).
CATALOG = EventCatalog({
    "A": {"type": "object", "properties": {"sku": {"type": "string"}, "price": {"type": "number"}, "n": {"enum": [1, "x"]},
                                           "tags": {"type": "array"}, "é": {"type": ["string", "null"]}}},
    "Order Completed": {"type": "object", "properties": {"a": {"type": "object", "properties": {"sku": {}}}}},
    "Añadir": None,
}, {"type": "object", "properties": {"plan": {"type": "string"}}})


def run_through_the_engine(text: str, envs: list[dict[str, Any]], lateness_ms: int) -> int:
    """Compile ``text`` as check does; if it is accepted, run it and encode every trigger. Returns #triggers."""
    plans, diagnostics = compile_text(text, "gen.rules", endpoints={"crm"}, catalog=CATALOG)
    if any(d.severity == "error" for d in diagnostics):
        event("refused by check")
        return 0
    event("accepted")
    plan, dups = build_plan([plans])
    assert not dups
    for rule in plan.rules:
        explain(rule)
    engine = Engine(plan, lateness_ms)
    matches = []
    for offset, env in enumerate(envs):
        matches += engine.process(0, offset, env)
    matches += engine.advance_watermark(0, T0 + 10**10)
    assert engine.stats.errors == 0, f"the engine caught {engine.stats.errors} error(s) in the rule"
    for m in matches:  # as rules/service.py turns matches into trigger records
        trig = Trigger(
            id=trigger_id(m.rule.name, m.key, m.message_ids), rule=m.rule.name, endpoint=m.rule.endpoint, key=m.key,
            fired_at=format_time_ms(m.fired_at_ms), events=[envs[off] for _, _, _, off, _ in m.events], payload=m.payload,
        )
        assert Trigger.from_json(trig.to_json()).rule == m.rule.name
        m.key.encode()  # the log key of the trigger record
    if matches:
        event("fired")
    return len(matches)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rules(), events(), st.sampled_from([0, 5000]))
def test_every_rule_check_accepts_runs_and_encodes(text: str, envs: list[dict[str, Any]], lateness_ms: int) -> None:
    run_through_the_engine(text, envs, lateness_ms)


def test_the_generator_reaches_the_engine() -> None:
    """The property above is not vacuous: generated rules are accepted, and fire, on a fixed sample."""
    accepted = fired = 0

    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(rules(), events())
    def sample(text: str, envs: list[dict[str, Any]]) -> None:
        nonlocal accepted, fired
        plans, diagnostics = compile_text(text, "gen.rules", endpoints={"crm"}, catalog=CATALOG)
        if not any(d.severity == "error" for d in diagnostics):
            accepted += 1
            fired += run_through_the_engine(text, envs, 0) > 0

    sample()
    assert accepted >= 15 and fired >= 3, (accepted, fired)
