"""Fuzzing the parser: random and mutated rule texts never raise, and every error has a line and column."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tripwire.rules.catalog import EventCatalog
from tripwire.rules.compiler import compile_text

SEEDS = [
    'rule "abandoned cart"\n  when AddToCart as cart where cart.properties.price >= 20\n  then no Checkout within 30s\n'
    '  at most once per 24h\n  post crm with { sku: cart.properties.sku, value: cart.properties.price }\n',
    'rule "shoe fan"\n  when 3 PageView where properties.category == "shoes" within 10m\n  post crm\n',
    'rule "x" when A as a then B as b where b.properties.t > a.properties.p and not (properties.c in [1, "2", null])'
    ' within 1h then no C where context.page.path starts with "/x" within 5m by anonymousId post crm with { a: [a.properties.p] }\n',
]
TOKENS = ["rule", "when", "then", "no", "as", "where", "within", "by", "at", "most", "once", "twice", "times", "per",
          "post", "with", "and", "or", "not", "in", "contains", "starts", "ends", "exists", "does", "exist", "true",
          "false", "null", "(", ")", "[", "]", "{", "}", ",", ":", ".", "==", "!=", "<", "<=", ">", ">=", "=", "'",
          '"', '"x"', "10s", "5", "-3.5e2", "A", "cart", "properties", "$page", "#c\n", "\n", " ", "\t", "\\", "é", "\x00",
          # what the engine or the trigger encoder cannot carry: refused with a message, never a traceback
          '"\\ud800"', '"\\udc00x"', "9" * 5000, "9" * 5000 + "s", "9" * 5000 + "w", "1e400", "18446744073709551616"]


# the catalog checks run on whatever compiles (names of the seeds and tokens above)
CATALOG = EventCatalog({"A": {"properties": {"a": {"type": "number"}, "p": {"enum": ["x", 1]}}}, "B": None,
                        "Checkout": {"properties": {"c": {"anyOf": [{"type": "string"}, {"const": None}]}}}},
                       {"properties": {"plan": {"type": ["string", "null"]}}})


def check(text: str) -> None:
    lines = text.split("\n")
    _, diagnostics = compile_text(text, "fuzz.rules", endpoints={"crm"}, catalog=CATALOG)
    for d in diagnostics:
        assert d.file == "fuzz.rules"
        assert isinstance(d.line, int) and isinstance(d.column, int)
        assert 1 <= d.line <= len(lines), d
        assert d.column >= 1
        assert d.message
        d.format()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    check(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map(" ".join))
def test_random_token_soup(text: str) -> None:
    check("rule \"r\" " + text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.sampled_from(TOKENS)), min_size=1, max_size=6))
def test_mutated_rules(seed: str, edits: list[tuple[int, int, str]]) -> None:
    text = seed
    for pos, kind, token in edits:
        i = pos % (len(text) + 1)
        if kind == 0:  # insert
            text = text[:i] + token + text[i:]
        elif kind == 1:  # delete a few characters
            text = text[:i] + text[i + len(token) :]
        elif kind == 2:  # replace
            text = text[:i] + token + text[i + len(token) :]
        else:  # duplicate a slice
            text = text[:i] + text[i : i + 20] + text[i:]
    check(text)


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    text = 'rule "r" when A where ' + "(" * 5000 + "properties.a == 1" + ")" * 5000 + " post crm"
    _, ds = compile_text(text, "deep.rules")
    assert ds and "nested more than" in ds[0].message and ds[0].line == 1


def test_binary_garbage() -> None:
    check(bytes(range(256)).decode("latin-1") * 3)
