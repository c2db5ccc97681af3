"""Parser and compiler diagnostics: file:line:col, a message for people, the source line and a caret."""

from __future__ import annotations

import pytest

from tripwire.rules.compiler import build_plan, compile_text
from tripwire.rules.errors import Diagnostic


def diags(text: str, endpoints: set[str] | None = None, severity: str = "error") -> list[Diagnostic]:
    return compile_text(text, "cart.rules", endpoints=endpoints, endpoint_severity=severity)[1]


def only(text: str) -> Diagnostic:
    (d,) = [d for d in diags(text) if d.severity == "error"]
    return d


@pytest.mark.parametrize("text, line, column, words", [
    ('rule "r"\n  when A where properties.a = 3\n  post crm', 2, 29, "use `==`"),
    ("rule cart\n  when A post crm", 1, 6, "quoted string"),
    ('rule "r"\n  when A\n  then B within 30\n  post crm', 3, 17, "needs a unit"),
    ('rule "r"\n  when A where properties.a post crm', 2, 29, "must be compared"),
    ('rule "r"\n  when A where\n  post crm', 2, 10, "condition after `where` is missing"),
    ('rule "r"\n  when A\n  then\n', 3, 3, "event name is expected"),
    ('rule "r" when A where properties.a == \'x\' post crm', 1, 39, "double quotes"),
    ('rule "r" when A where properties.a == "x post crm', 1, 39, "not closed"),
    ('rule "r" when A post crm with { a: }', 1, 36, "payload template"),
    ('rule "r" when A at most per 1h post crm', 1, 25, "at most"),
    ('rule "r" when A post', 1, 17, "post"),
    ('rule "r" when A where properties.a == "\\q" post crm', 1, 39, "escape"),
    ('rule "r"\n  when Añadir\n  post crm', 2, 9, 'quote the name: when "Añadir al carrito"'),
    ('rule "r"\n  when A where properties.név == 1\n  post crm', 2, 28, 'properties."precio €"'),
    ('rule "r"\n  when A\n  then no 2 B within 1m\n  post crm', 3, 11, "an absence takes no count"),
    ('rule "r"\n  when A\n  post crm with {', 3, 17, "the rule ends too early; expected `}`"),
    ('rule "r"\n  when A\n  thn no B within 1m\n  post crm', 3, 3, "did you mean `then`?"),
    ('rule "r"\n  when A as cart where\n  then no B within 1m\n  post crm', 2, 18,
     "the condition after `where` is missing (`then` is a keyword, not a field)"),
    ('rule "r"\n  when A\n  then B within 1h30m\n  post crm', 3, 17, "one number and one unit per duration: write 90m"),
    ('rule "r"\n  when A\n  then B within 1.5h\n  post crm', 3, 17, "whole number and a unit: write 90m"),
    ('rule "r"\n  when A\n  then B within 30 sec\n  post crm', 3, 17, "write 30s (found '30 sec'"),
    ('rule "r"\n  when A\n  then B within 2w\n  post crm', 3, 17, "there is no week unit: write 14d"),
    ('rule "r"\n  when A\n  then B within -5s\n  post crm', 3, 17, "more than zero"),
    ('rule "r"\n  when A at most once per 1d12h post crm', 2, 27, "write 36h, not 1d12h"),
    ('rule "r"\n  when A\n  then B wihtin 1m\n  post crm', 3, 10, "did you mean `within`?"),
    ('rule "r"\n  when A where properties.x == 1 adn properties.y == 2\n  post crm', 2, 34, "did you mean `and`?"),
])
def test_syntax_errors_point_at_the_offending_text(text: str, line: int, column: int, words: str) -> None:
    d = only(text)
    assert (d.file, d.line, d.column) == ("cart.rules", line, column), d.format()
    assert words in d.message
    formatted = d.format().split("\n")
    assert formatted[0].startswith(f"cart.rules:{line}:{column}: ")
    assert formatted[1] == "    " + text.split("\n")[line - 1]
    assert formatted[2] == "    " + " " * (column - 1) + "^"


@pytest.mark.parametrize("text, line, column, words", [
    ('rule "r"\n  when A\n  then B\n  post crm', 3, 3, "needs a time bound"),
    ('rule "r"\n  when A\n  then no B\n  post crm', 3, 3, "needs a time bound"),
    ('rule "r"\n  when 3 A\n  post crm', 2, 3, "needs a time bound"),
    ('rule "r"\n  when A within 5m\n  post crm', 2, 17, "no meaning"),
    ('rule "r"\n  when A as a\n  then B where x.total > 3 within 1m\n  post crm', 3, 16, "unknown step or field 'x'"),
    ('rule "r"\n  when A where b.total > 3\n  then B as b within 1m\n  post crm', 2, 16, "comes later"),
    ('rule "r"\n  when A\n  by userId\n  post crm', 3, 6, "partitioned by anonymousId"),
    ('rule "r"\n  when A\n  by properties.cart\n  post crm', 3, 6, "cannot correlate"),
    ('rule "r"\n  when A\n  then no B within 1s\n  then C within 1s\n  post crm', 3, 3, "must be the last step"),
    ('rule "r"\n  when A as properties\n  post crm', 2, 13, "would hide"),
    ('rule "r"\n  when A as a\n  then B as a within 1s\n  post crm', 3, 13, "already used"),
    ('rule "r"\n  when 0 A within 1s\n  post crm', 2, 8, "between 1 and"),
    ('rule "r"\n  when A\n  then B within 0s\n  post crm', 3, 17, "more than zero"),
    ('rule "r"\n  when A\n  then B within 100d\n  post crm', 3, 17, "limited to 90d"),
    ('rule "r"\n  when A\n', 1, 1, "no action"),
    ('rule "r"\n  when A\n  post crm\n  post crm', 4, 3, "`post` is given twice"),
    ('rule "r"\n  when A\n  by anonymousId\n  by anonymousId\n  post crm', 4, 3, "`by` is given twice"),
    ('rule "r"\n  when A as post\n  post crm', 2, 13, "'post' is a reserved word"),
    ('rule "r"\n  when A as true\n  post crm', 2, 13, "'true' is a reserved word"),
    ('rule "r" when A post crm\nrule "r" when B post crm', 2, 1, "already defined at line 1"),
    ('rule "r"\n  when A as a\n  then no B as b within 1s\n  post crm with { x: b.properties.y }', 4, 22, "is an absence"),
    ('rule "r"\n  when A where 1 == 1\n  post crm', 2, 16, "two constants"),
    ('rule ""\n  when A post crm', 1, 1, "non-empty name"),
])
def test_compile_errors_name_file_line_and_column(text: str, line: int, column: int, words: str) -> None:
    d = only(text)
    assert (d.line, d.column) == (line, column), d.format()
    assert words in d.message, d.message


def test_unknown_endpoint_is_an_error_or_a_warning() -> None:
    text = 'rule "r"\n  when A\n  post mailer'
    (d,) = diags(text, endpoints={"crm"})
    assert d.severity == "error" and (d.line, d.column) == (3, 3) and "endpoint 'mailer' is not configured" in d.message
    (d,) = diags(text, endpoints=set(), severity="warning")
    assert d.severity == "warning" and d.format().startswith("cart.rules:3:3: warning: ")
    assert compile_text(text, "x.rules", endpoints=set(), endpoint_severity="warning")[0]  # still compiles


def test_one_broken_rule_does_not_hide_the_others() -> None:
    text = 'rule "a" when A post crm\nrule "b" when B where x = 1 post crm\nrule "c" when C then D post crm\nrule "d" when D post crm\n'
    plans, ds = compile_text(text, "f.rules")
    assert [p.name for p in plans] == ["a", "d"]
    assert [(d.line, d.severity) for d in ds] == [(2, "error"), (3, "error")]


def test_comments_durations_quoted_names_and_several_rules_per_file() -> None:
    text = """
# a comment
rule "one"  // another comment
  when "Order Completed" as o where o.properties.total >= 100.5  # trailing
  then $page where context.page.path starts with "/thanks" within 500ms
  post crm with { total: o.properties.total, items: [1, "two", { three: true }], note: null }
rule "two" when 2 Login within 1d at most 3 times per 12h post crm
"""
    plans, ds = compile_text(text, "f.rules")
    assert not ds
    one, two = plans
    assert one.steps[0].event == "Order Completed" and one.steps[1].event == "$page"
    assert one.steps[1].within_ms == 500
    assert two.steps[0].within_ms == 86_400_000 and (two.cap_times, two.cap_per_ms) == (3, 43_200_000)


def test_duplicate_rule_names_across_files() -> None:
    a = compile_text('rule "r" when A post crm', "a.rules")[0]
    b = compile_text('\n\nrule "r" when B post crm', "b.rules")[0]
    plan, ds = build_plan([a, b])
    assert len(plan.rules) == 1
    assert ds[0].headline() == 'b.rules:3:1: rule "r" is already defined in a.rules:1'


def test_fingerprint_ignores_layout_and_comments_but_not_meaning() -> None:
    a = compile_text('rule "r" when A then B within 1m post crm', "a.rules")[0][0]
    b = compile_text('\n# hi\nrule "r"\n  when A   # x\n  then B within 1m\n  post crm', "a.rules")[0][0]
    c = compile_text('rule "r" when A then B within 2m post crm', "a.rules")[0][0]
    assert a.uid == b.uid != c.uid


def test_a_payload_key_named_rule_at_the_start_of_a_line_does_not_start_a_rule() -> None:
    text = 'rule "r"\n  when A as a\n  post crm with {\n    rule: a.event,\n    x: 1 }\n'
    plans, ds = compile_text(text, "f.rules")
    assert not ds, [d.format() for d in ds]  # the file used to be cut before `rule:`: two broken rules
    assert plans[0].payload is not None


def test_quoted_field_names_read_any_key() -> None:
    from .util import ev, run

    text = ('rule "r"\n  when "Añadir" as c where c.properties."Product Name" starts with "Shoe"'
            '\n  then no Checkout where properties."cart id" == c.properties."cart id" within 1m'
            '\n  post crm with { "név": c.properties."név", name: c.properties."Product Name" }\n')
    cart = {"Product Name": "Shoe 42", "cart id": "c1", "név": "😀"}
    fired = run(text, [ev("Añadir", 0, **cart), ev("Checkout", 5, **{"cart id": "other"})], until_s=100)
    assert [m.payload for m in fired] == [{"név": "😀", "name": "Shoe 42"}]
    assert run(text, [ev("Añadir", 0, **cart), ev("Checkout", 5, **{"cart id": "c1"})], until_s=100) == []
    from tripwire.rules.explain import explain
    from .util import plan_of

    assert 'c.properties."Product Name" starts with "Shoe"' in explain(plan_of(text).rules[0])


def test_short_names_get_no_keyword_suggestion() -> None:
    d = only('rule "r"\n  when A where x B\n  post crm')
    assert "did you mean" not in d.message  # `B` is not a misspelt `by`


# what the engine or the trigger encoder cannot run: refused by check, never a traceback ---------

HUGE = "9" * 5000  # past Python's 4,300-digit limit for int(): a lark VisitError traceback before


@pytest.mark.parametrize("text, line, column, words", [
    ('rule "r"\n  when A\n  post crm with { n: 123456789012345678901234567890 }', 3, 22,
     "integer 123456789012345678901234567890 is outside the 64-bit range"),
    ('rule "r"\n  when A\n  post crm with { n: 18446744073709551616 }', 3, 22, "outside the 64-bit range"),
    ('rule "r"\n  when A\n  post crm with { n: [1, -9223372036854775809] }', 3, 26, "outside the 64-bit range"),
    ('rule "r"\n  when A where properties.n == 99999999999999999999\n  post crm', 2, 32, "outside the 64-bit range"),
    ('rule "r"\n  when A where properties.n in [1, 99999999999999999999]\n  post crm', 2, 36, "outside the 64-bit range"),
    (f'rule "r"\n  when A\n  post crm with {{ n: {HUGE} }}', 3, 22, "(5000 digits) is outside the 64-bit range"),
    (f'rule "r"\n  when A where properties.n == -{"0" * 5000}1{HUGE}\n  post crm', 2, 32, "outside the 64-bit range"),
    ('rule "r"\n  when A\n  post crm with { n: 1e400 }', 3, 22, "the number 1e400 is too large"),
    (f'rule "r"\n  when A where properties.n < {HUGE}.5\n  post crm', 2, 31, "is too large"),
    (f'rule "r"\n  when {HUGE} A within 1m\n  post crm', 2, 8, "(5000 digits) is too large"),
    (f'rule "r"\n  when A at most {HUGE} times per 1h\n  post crm', 2, 18, "is too large"),
    (f'rule "r"\n  when A\n  then B within {HUGE}s\n  post crm', 3, 17, "is too large"),
    ('rule "bad \\ud800 name"\n  when A\n  post crm', 1, 11, '"\\ud800" is half of a UTF-16 surrogate pair'),
    ('rule "r"\n  when "A\\udfff"\n  post crm', 2, 10, '"\\udfff" is half of a UTF-16 surrogate pair'),
    ('rule "r"\n  when A where properties.x == "\\uDC00"\n  post crm', 2, 33, '"\\uDC00" is half'),
    ('rule "r"\n  when A where properties."\\ud800" exists\n  post crm', 2, 28, "surrogate pair"),
    ('rule "r"\n  when A\n  post crm with { "k\\ud800": 1 }', 3, 21, "surrogate pair"),
    ('rule "r"\n  when A\n  post crm with { k: ["\\ud83d"] }', 3, 24, "surrogate pair"),
    ('rule "r"\n  when A where ' + " and ".join(f"properties.a{i} == 1" for i in range(2500)) + "\n  post crm", 2, 16,
     "this condition has 2499 and/or/not; at most 100"),
    ('rule "r"\n  when A where ' + "not " * 5000 + "properties.a == 1\n  post crm", 2, 16, "has 5000 and/or/not"),
])
def test_check_refuses_what_the_engine_or_the_trigger_encoder_cannot_run(text: str, line: int, column: int, words: str) -> None:
    d = only(text)
    assert (d.line, d.column) == (line, column), d.format()
    assert words in d.message, d.message
    assert len(d.message) < 300  # a 5000-digit number is not echoed whole


def test_numbers_at_the_edges_of_the_encoders_range_are_accepted() -> None:
    from tripwire.triggers import Trigger

    from .util import ev, run

    text = ('rule "r" when A where properties.n >= -9223372036854775808 and properties.a."\\ud83d\\ude00" exists'
            ' post crm with { hi: 18446744073709551615, lo: -9223372036854775808, tiny: 1e-400, "k\\u00e9": "\\ud83d\\ude00" }')
    (m,) = run(text, [ev("A", 0, n=5, a={"😀": 1})])
    assert m.payload == {"hi": 2**64 - 1, "lo": -(2**63), "tiny": 0.0, "ké": "😀"}
    Trigger("t", "r", "crm", "k", "2024-01-01T00:00:00.000Z", [], m.payload).to_json()


@pytest.mark.parametrize("written", [f"{HUGE}w", f"{HUGE}h30m", f"1h{HUGE}m", f"{HUGE} seconds", f"{HUGE}.5h"])
def test_a_malformed_huge_duration_gets_a_message_not_a_traceback(written: str) -> None:
    d = only(f'rule "r"\n  when A\n  then B within {written}\n  post crm')
    assert (d.line, d.column) == (3, 17) and "duration" in d.message and len(d.message) < 300, d.message


def test_rules_check_never_prints_a_traceback(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from tripwire.cli.main import main

    bad = tmp_path / "bad.rules"
    bad.write_text(f'rule "big"\n  when A\n  post crm with {{ n: {HUGE} }}\n'
                   'rule "bad \\ud800 name"\n  when A\n  post crm\n'
                   'rule "ok"\n  when A\n  post crm\n')
    assert main(["rules", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3:22: the integer 99999" in err and f"{bad}:4:11: " in err
    assert "Traceback" not in err and "2 error(s)" in err


def test_a_long_field_path_compiles_and_matches() -> None:
    from .util import ev, run

    deep = ".".join(["a"] * 600)  # the generated predicate read its prefixes recursively: RecursionError
    value: object = 7
    for _ in range(599):
        value = {"a": value}
    text = f'rule "r" when A where properties.{deep} == 7 post crm with {{ v: properties.{deep} }}'
    (m,) = run(text, [ev("A", 0, a=value), ev("A", 1, a={"a": 7})])
    assert m.payload == {"v": 7}


@pytest.mark.parametrize("condition, column, words", [
    ("properties.z == null", 16, "`properties.z == null` is never true: null counts as missing; write `properties.z does not exist`"),
    ("null != properties.z", 16, "`null != properties.z` is never true: null counts as missing; write `properties.z exists`"),
    ("properties.z < null", 16, "is never true: null counts as missing"),
    ('properties."a b" starts with null', 16, '`properties."a b" starts with null` is never true'),
    ('properties.z in ["a", null]', 38, "null in a list never matches (null counts as missing)"),
])
def test_a_comparison_with_null_is_a_warning(condition: str, column: int, words: str) -> None:
    plans, ds = compile_text(f'rule "r"\n  when A where {condition}\n  post crm', "cart.rules", endpoints={"crm"})
    (d,) = ds
    assert plans and d.severity == "warning" and (d.line, d.column) == (2, column), d.format()
    assert words in d.message


def test_the_engine_loader_reports_such_a_file_and_runs_the_others(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A 4,300+ digit number made the loader raise: the engine stopped, at every restart.
    import os

    from tripwire.rules.reload import RuleSet

    good, bad = tmp_path / "a.rules", tmp_path / "b.rules"
    good.write_text('rule "good" when A post crm\n')
    bad.write_text(f'rule "bad" when A post crm with {{ n: {HUGE} }}\nrule "bad \\ud800" when A post crm\n')
    rules = RuleSet(tmp_path, {"crm"}, "error")
    rules.scan()
    assert [r.name for r in rules.plan.rules] == ["good"]
    assert [(d.line, d.column) for d in rules.broken()[str(bad)]] == [(1, 38), (2, 11)]
    good.write_text(f'rule "good" when A where properties.n == {HUGE} post crm\n')  # hot reload: now broken
    os.utime(good, ns=(1, 1))
    rules.scan()
    assert [r.name for r in rules.plan.rules] == ["good"]  # the last good version keeps running
    assert str(good) in rules.broken()
