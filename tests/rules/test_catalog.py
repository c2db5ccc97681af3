"""Catalog-aware checks: unknown events, misspelt fields, comparisons the catalog's types rule out (issue 14)."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from tripwire.cli.main import main
from tripwire.rules.catalog import EventCatalog
from tripwire.rules.compiler import compile_text
from tripwire.rules.errors import Diagnostic, RulesError

CATALOG = {
    "events": {
        "Product Added": {"schema": {"type": "object", "properties": {
            "sku": {"type": "string"}, "quantity": {"type": "integer"}, "price": {"type": "number"},
            "cart_id": {"type": ["string", "null"]}, "tags": {"type": "array"},
            "shipping": {"type": "object", "properties": {"phone": {"type": "string"}}},
            "extra": {"type": "object"}}}},
        "Checkout Started": {"schema": {"type": "object", "properties": {"cart_id": {"type": "string"},
                                                                          "total": {"type": "number"}}}},
        "Order Completed": {"description": "no schema: any properties"},
    },
    "traits": {"schema": {"type": "object", "properties": {"plan": {"enum": ["free", "pro"]}}}},
}


@pytest.fixture
def catalog(tmp_path: Path) -> EventCatalog:
    path = tmp_path / "catalog.json"
    path.write_bytes(orjson.dumps(CATALOG))
    return EventCatalog.load(path)


def warnings(text: str, catalog: EventCatalog | None) -> list[Diagnostic]:
    plans, ds = compile_text(text, "shop.rules", endpoints={"crm"}, catalog=catalog)
    assert plans, [d.format() for d in ds]  # warnings only: the rule still runs
    assert all(d.severity == "warning" for d in ds), [d.format() for d in ds]
    return ds


@pytest.mark.parametrize("text, line, column, words", [
    ('rule "r"\n  when "Prodcut Added"\n  post crm', 2, 8,
     'event "Prodcut Added" is not in the event catalog; did you mean "Product Added"?'),
    ('rule "r"\n  when "Product Added" as cart\n  then no checkout_started within 1m\n  post crm', 3, 11,
     'event "checkout_started" is not in the event catalog; did you mean "Checkout Started"?'),
    ('rule "r"\n  when "Product Added" as cart where cart.properties.pricee > 3\n  post crm', 2, 38,
     "\"Product Added\" has no property 'pricee' in the event catalog; did you mean 'price'?"),
    ('rule "r"\n  when "Product Added" as cart\n  then "Checkout Started" within 1m\n  post crm with { p: cart.properties.shipping.phon }',
     4, 22, "\"Product Added\" has no property 'shipping.phon' in the event catalog; did you mean 'shipping.phone'?"),
    ('rule "r"\n  when "Product Added" where properties.price >= "20"\n  post crm', 2, 30,
     'can never hold: the event catalog says properties.price of "Product Added" is a number, and "20" is a string'),
    ('rule "r"\n  when "Product Added" where properties.sku == 5\n  post crm', 2, 30, "is a string, and 5 is a number"),
    ('rule "r"\n  when "Product Added" where properties.quantity in ["1", "2"]\n  post crm', 2, 30, "is a number, and"),
    ('rule "r"\n  when "Product Added" where properties.cart_id < 3\n  post crm', 2, 30, "is null or a string, and 3 is a number"),
    ('rule "r"\n  when "Product Added" where not (properties.price contains "9")\n  post crm', 2, 35, "is a number"),
    ('rule "r"\n  when "Product Added" where properties.price starts with "1"\n  post crm', 2, 30, "is a number"),
    ('rule "r"\n  when "Product Added" as cart\n  then "Checkout Started" where properties.total > cart.properties.sku within 1m\n  post crm',
     3, 33, 'properties.total of "Checkout Started" is a number, and cart.properties.sku of "Product Added" is a string'),
    ('rule "r"\n  when $identify where traits.plan == true\n  post crm', 2, 24, "traits.plan of $identify is a string"),
    ('rule "r"\n  when "Product Added" as cart\n  then "Checkout Started" where properties.cart_id == cart.propertes.cart_id within 1m\n  post crm',
     3, 55, "'propertes' is not an event field; did you mean 'properties'?"),
])
def test_check_with_a_catalog_warns_at_the_offending_text(text: str, line: int, column: int, words: str,
                                                          catalog: EventCatalog) -> None:
    (d,) = warnings(text, catalog)
    assert (d.line, d.column) == (line, column), d.format()
    assert words in d.message, d.message


def test_what_the_catalog_allows_gets_no_warning(catalog: EventCatalog) -> None:
    text = """rule "fine"
  when "Product Added" as cart where cart.properties.price >= 20 and properties.sku in ["a", "b"]
    and properties.quantity == 2.0 and properties.price != "x" and properties.tags contains "x"
    and properties.extra.anything == 1 and properties.cart_id starts with "c" and userId exists
  then "Order Completed" where properties.whatever == cart.properties.sku within 1m
  then no $page where context.page.path starts with "/thanks" within 1m
  post crm with { sku: cart.properties.sku, total: properties.total, phone: cart.properties.shipping.phone }
rule "unknown events are not typed" when Other where properties.x == "1" post crm
rule "traits" when $identify where traits.plan == "pro" post crm
"""
    assert warnings(text, catalog)[0].message.startswith('event "Other" is not in the event catalog')
    assert len(warnings(text, catalog)) == 1
    assert warnings(text, None) == []  # no catalog: nothing to compare with


def test_a_misspelt_field_after_an_alias_is_a_warning_even_without_a_catalog() -> None:
    (d,) = warnings('rule "r"\n  when A as cart\n  post crm with { p: cart.propertes.price }', None)
    assert d.format().startswith("shop.rules:3:22: warning: 'propertes' is not an event field; did you mean 'properties'?")


@pytest.mark.parametrize("text, column, words", [
    ('rule "r"\n  when Product Added\n  post crm', 8, 'an event name with spaces is quoted: when "Product Added"'),
    ('rule "r"\n  when 3 Product Viewed within 1m\n  post crm', 10, 'quoted: when 3 "Product Viewed"'),
    ('rule "r"\n  when A then no Checkout Started within 1m\n  post crm', 18, 'quoted: then no "Checkout Started"'),
    ('rule "r"\n  when A then Order Completed as o within 1m\n  post crm', 15, 'quoted: then "Order Completed"'),
])
def test_an_unquoted_two_word_event_name_gets_a_hint_to_quote_it(text: str, column: int, words: str) -> None:
    _, ds = compile_text(text, "shop.rules")
    (d,) = ds
    assert (d.line, d.column) == (2, column), d.format()
    assert words in d.message


def test_a_misspelt_keyword_after_an_event_still_gets_did_you_mean() -> None:
    (d,) = compile_text('rule "r"\n  when A wher properties.x == 1\n  post crm', "shop.rules")[1]
    assert "did you mean `where`?" in d.message and "quoted" not in d.message


def test_the_catalog_reader_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="event catalog '.*nope.json' does not exist"):
        EventCatalog.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"events": [1]}')
    with pytest.raises(RulesError, match="expected an object with an 'events' object"):
        EventCatalog.load(bad)
    bad.write_text("{")
    with pytest.raises(RulesError, match="is not valid JSON"):
        EventCatalog.load(bad)


def write_setup(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "catalog.json").write_bytes(orjson.dumps(CATALOG))
    cfg = tmp_path / "tripwire.toml"
    cfg.write_text('[collector]\ncatalog = "catalog.json"\n[endpoints.crm]\nurl = "https://crm.example/hook"\n')
    rules = tmp_path / "shop.rules"
    rules.write_text('rule "r"\n  when "Prodcut Added" where properties.price >= "20"\n  post crm\n')
    return cfg, rules


def test_rules_check_with_config_reads_the_catalog(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path.parent)  # not next to the config: the catalog is relative to the config file
    cfg, rules = write_setup(tmp_path)
    assert main(["rules", "check", "--config", str(cfg), str(rules)]) == 0
    out = capsys.readouterr()
    assert f'{rules}:2:8: warning: event "Prodcut Added" is not in the event catalog; did you mean "Product Added"?' in out.err
    assert "1 rule(s) ok, 1 warning(s)" in out.out  # "Prodcut Added" has no schema: nothing to type-check
    rules.write_text('rule "r"\n  when "Product Added" where properties.price >= "20"\n  post crm\n')
    assert main(["--config", str(cfg), "rules", "check", "--strict", str(rules)]) == 1  # the global option too
    assert "can never hold" in capsys.readouterr().err
    assert main(["rules", "explain", "--config", str(cfg), str(rules)]) == 0
    assert "can never hold" in capsys.readouterr().err


def test_rules_check_says_when_the_catalog_cannot_be_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, rules = write_setup(tmp_path)
    (tmp_path / "catalog.json").write_text("{")
    assert main(["rules", "check", "--config", str(cfg), str(rules)]) == 0
    err = capsys.readouterr().err
    assert "is not valid JSON" in err and "catalog checks skipped" in err


def test_the_engine_load_path_warns_the_same_way(tmp_path: Path, catalog: EventCatalog,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    from tripwire.rules.reload import RuleSet

    (tmp_path / "shop.rules").write_text('rule "r"\n  when "Prodcut Added"\n  post crm\n')
    ruleset = RuleSet(tmp_path, {"crm"}, "error", catalog=catalog)
    with caplog.at_level(logging.WARNING):
        ruleset.scan()
    assert [r.name for r in ruleset.plan.rules] == ["r"]
    assert 'shop.rules:2:8: warning: event "Prodcut Added" is not in the event catalog' in caplog.text
