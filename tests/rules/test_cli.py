"""``tripwire rules check|explain|backtest`` end to end (in-process CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tripwire.cli.main import main
from tripwire.envelope import format_time_ms, parse_time_ms
from tripwire.triggers import trigger_id

from .util import T0

GOOD = """# ok
rule "abandoned cart"
  when AddToCart as cart where cart.properties.price >= 20
  then no Checkout within 30s
  at most once per 24h
  post crm with { sku: cart.properties.sku }
"""
BAD = """rule "bad"
  when AddToCart as cart
  then Checkout where c.total > 1
  post crm
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_ok_and_errors_with_caret(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./tripwire.toml: endpoints unknown, a warning only
    good = write(tmp_path, "good.rules", GOOD)
    code, out, err = run(["rules", "check", str(good)], capsys)
    assert code == 0 and "1 rule(s) ok, 1 warning(s)" in out
    assert f"{good}:6:3: warning: endpoint 'crm' is not configured" in err
    assert run(["rules", "check", "--strict", str(good)], capsys)[0] == 1

    bad = write(tmp_path, "bad.rules", BAD)
    code, out, err = run(["rules", "check", str(tmp_path)], capsys)  # a directory: every *.rules
    assert code == 1
    lines = err.splitlines()
    i = lines.index(f"{bad}:3:3: `then Checkout` needs a time bound: add `within 30s` (or another duration)")
    assert lines[i + 1] == "      then Checkout where c.total > 1"
    assert lines[i + 2] == "      ^"
    assert any(line.startswith(f"{bad}:3:23: unknown step or field 'c'") for line in lines)
    assert "error(s)" in err

    code, _, err = run(["rules", "check", str(tmp_path / "nope.rules")], capsys)
    assert code == 1 and "no such file" in err


def test_check_with_a_config_makes_unknown_endpoints_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path, "tripwire.toml", '[endpoints.crm]\nurl = "https://crm.example/hook"\n')
    rules = write(tmp_path, "r.rules", GOOD + 'rule "x" when Signup post mailer\n')
    code, _, err = run(["--config", str(cfg), "rules", "check", str(rules)], capsys)
    assert code == 1
    assert f"{rules}:7:22: endpoint 'mailer' is not configured (add [endpoints.mailer] to the config; configured: crm)" in err


def test_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path, "r.rules", GOOD + 'rule "fan" when 3 PageView where properties.category == "shoes" within 10m post crm\n')
    code, out, _ = run(["rules", "explain", str(rules)], capsys)
    assert code == 0
    assert 'Rule "abandoned cart"' in out
    assert "Then fires if NO Checkout event arrives within 30 seconds after step 1." in out
    assert "restarts the timer" in out and "at most once per day" in out
    assert "at least 3 PageView events within any 10 minutes" in out
    assert "windows do not overlap" in out


def envelope(name: str, key: str, mid: str, at_ms: int, **props: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "anonymousId": key, "messageId": mid,
            "timestamp": format_time_ms(at_ms), "properties": props}


DAY = 86_400_000


def history() -> list[dict[str, Any]]:
    events = []
    for day in range(2):
        base = T0 + day * DAY
        for i in range(3 + day):  # 3 abandoned carts on day 1, 4 on day 2
            events.append(envelope("AddToCart", f"k{day}-{i}", f"a{day}-{i}", base + i * 1000, price=30, sku=f"S{i}"))
        events.append(envelope("AddToCart", f"buyer{day}", f"b{day}", base, price=30, sku="B"))
        events.append(envelope("Checkout", f"buyer{day}", f"c{day}", base + 5000))
        events.append(envelope("PageView", "late", f"p{day}", base + DAY - 1000))  # moves event time on
    events.append(envelope("AddToCart", "pending", "last", T0 + 2 * DAY - 500, price=30))  # no deadline yet
    return events


def test_backtest_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path, "r.rules", GOOD)
    events = history()
    jsonl = tmp_path / "events.jsonl"
    # out of order and with junk: the backtest sorts by event time and skips what it cannot read
    jsonl.write_bytes(b"\n".join(orjson.dumps(e) for e in reversed(events)) + b"\nnot json\n{}\n")
    code, out, err = run(["rules", "backtest", str(rules), "--events", str(jsonl)], capsys)
    assert code == 0, err
    day1, day2 = format_time_ms(T0)[:10], format_time_ms(T0 + DAY)[:10]
    assert 'rule "abandoned cart": 7 trigger(s)' in out
    assert f"  {day1}         3" in out and f"  {day2}         4" in out
    assert "sample: " in out and 'payload={"sku":"S0"}' in out
    assert "2 skipped" in out
    assert "backtest [" in err and "100.0%" in err  # the progress bar

    code, out, _ = run(["rules", "backtest", str(rules), "--events", str(jsonl), "--json", "--no-progress"], capsys)
    report = orjson.loads(out)
    assert report["rules"]["abandoned cart"]["per_day"] == {day1: 3, day2: 4}
    assert report["pending_at_end"] >= 1


def write_lake(root: Path, events: list[dict[str, Any]]) -> None:
    """The sink's layout: date=YYYY-MM-DD/*.parquet, snake_case columns, promoted columns in schema.json."""
    schema = pa.schema([
        ("message_id", pa.string()), ("type", pa.string()), ("event", pa.string()), ("anonymous_id", pa.string()),
        ("user_id", pa.string()), ("timestamp", pa.timestamp("ms", tz="UTC")), ("context_page_path", pa.string()),
        ("properties", pa.string()), ("context", pa.string()), ("extra", pa.string()), ("properties_price", pa.float64()),
    ])
    by_day: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_day.setdefault(e["timestamp"][:10], []).append(e)
    for day, rows in by_day.items():
        d = root / f"date={day}"
        d.mkdir(parents=True)
        half = len(rows) // 2
        for n, chunk in enumerate((rows[:half], rows[half:])):
            cols: dict[str, list[Any]] = {f.name: [] for f in schema}
            for e in chunk:
                props = dict(e.get("properties", {}))
                price = props.pop("price", None)
                cols["message_id"].append(e["messageId"])
                cols["type"].append(e["type"])
                cols["event"].append(e.get("event"))
                cols["anonymous_id"].append(e["anonymousId"])
                cols["user_id"].append(None)
                cols["timestamp"].append(int(__import__("tripwire.envelope").envelope.parse_time_ms(e["timestamp"], "t")))
                cols["context_page_path"].append("/cart")
                cols["properties"].append(orjson.dumps(props).decode() if props else None)
                cols["context"].append(None)
                cols["extra"].append(None)
                cols["properties_price"].append(None if price is None else float(price))
            pq.write_table(pa.table(cols, schema=schema), d / f"part-{n}.parquet")
    (root / "_tripwire_sink").mkdir()
    (root / "_tripwire_sink" / "schema.json").write_bytes(
        orjson.dumps({"columns": [["properties_price", "properties", "price", "number"]]}))


def test_backtest_lake_with_date_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path, "r.rules", GOOD.replace("cart.properties.sku", "context.page.path"))
    lake = tmp_path / "lake"
    write_lake(lake, history())
    code, out, err = run(["rules", "backtest", str(rules), "--lake", str(lake), "--json"], capsys)
    assert code == 0, err
    report = orjson.loads(out)
    day1, day2 = format_time_ms(T0)[:10], format_time_ms(T0 + DAY)[:10]
    assert report["rules"]["abandoned cart"]["per_day"] == {day1: 3, day2: 4}
    assert report["rules"]["abandoned cart"]["samples"][0]["payload"] == {"sku": "/cart"}
    assert "backtest [" in err
    day3 = format_time_ms(T0 + 2 * DAY)[:10]
    code, out, _ = run(["rules", "backtest", str(rules), "--lake", str(lake), "--since", day2, "--until", day3, "--json"], capsys)
    assert orjson.loads(out)["rules"]["abandoned cart"]["per_day"] == {day2: 4}
    code, out, _ = run(["rules", "backtest", str(rules), "--lake", str(lake), "--until", day2, "--json"], capsys)
    assert orjson.loads(out)["rules"]["abandoned cart"]["per_day"] == {day1: 3}  # day 2's deadlines are not reached
    code, _, err = run(["rules", "backtest", str(rules), "--lake", str(tmp_path / "missing")], capsys)
    assert code == 2 and "does not exist" in err


def test_backtest_lake_on_s3(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                             s3_bucket: Any) -> None:
    import fsspec

    local = tmp_path / "lake"
    write_lake(local, history())
    fs = fsspec.filesystem("s3", **s3_bucket.server.storage_options())
    fs.put(str(local), f"{s3_bucket.name}/lake", recursive=True)
    for name, value in s3_bucket.server.env().items():
        monkeypatch.setenv(name, value)  # how a deployment points s3fs at its S3
    fsspec.config.conf.clear()
    rules = write(tmp_path, "r.rules", GOOD)
    code, out, err = run(["rules", "backtest", str(rules), "--lake", f"{s3_bucket.url}/lake", "--json"], capsys)
    assert code == 0, err
    day1, day2 = format_time_ms(T0)[:10], format_time_ms(T0 + DAY)[:10]
    assert orjson.loads(out)["rules"]["abandoned cart"]["per_day"] == {day1: 3, day2: 4}


def test_backtest_report_counts_only_waiting_matches_and_says_why_events_do_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path, "r.rules", GOOD)
    events = [envelope("AddToCart", "k1", "a1", T0, price=30, sku="S"),
              envelope("PageView", "k2", "p1", T0 + 60_000)]  # moves event time past the deadline
    no_mid = envelope("AddToCart", "k3", "x", T0 + 1000, price=30)
    del no_mid["messageId"]  # a hand-written event: the engine needs a messageId
    no_key = envelope("AddToCart", "k4", "a4", T0 + 2000, price=30)
    del no_key["anonymousId"]
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"\n".join(orjson.dumps(e) for e in [*events, no_mid, no_key]) + b"\n")
    code, out, err = run(["rules", "backtest", str(rules), "--events", str(jsonl), "--no-progress"], capsys)
    assert code == 0, err
    assert 'rule "abandoned cart": 1 trigger(s)' in out
    # k1's cart fired; what is left is its `at most once per 24h` memory, which is not a pending match
    assert "0 partial match(es) still waiting when history ends (not fired)" in out
    assert "1 event(s) without a messageId ignored" in out
    assert "1 event(s) without anonymousId or userId: no rule can match them" in out
    code, out, _ = run(["rules", "backtest", str(rules), "--events", str(jsonl), "--json", "--no-progress"], capsys)
    report = orjson.loads(out)
    assert report["pending_at_end"] == 0 and report["no_message_id"] == 1 and report["no_key"] == 1


def test_backtest_days_apply_to_jsonl_and_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path, "r.rules", GOOD)
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"\n".join(orjson.dumps(e) for e in history()) + b"\n")
    day1, day2 = format_time_ms(T0)[:10], format_time_ms(T0 + DAY)[:10]
    code, out, err = run(["rules", "backtest", str(rules), "--events", str(jsonl), "--since", day2, "--json"], capsys)
    assert code == 0, err
    assert orjson.loads(out)["rules"]["abandoned cart"]["per_day"] == {day2: 4}  # --since was ignored for --events
    code, out, _ = run(["rules", "backtest", str(rules), "--events", str(jsonl), "--until", day2, "--json"], capsys)
    assert orjson.loads(out)["rules"]["abandoned cart"]["per_day"] == {day1: 3}  # day 2's deadlines are not reached
    for bad in (["--since", "2026-13-01"], ["--until", "20261129"], ["--samples", "-1"]):
        with pytest.raises(SystemExit) as exc:
            main(["rules", "backtest", str(rules), "--events", str(jsonl), *bad])
        assert exc.value.code == 2
        assert "error: argument" in capsys.readouterr().err
    code, _, err = run(["rules", "backtest", str(rules), "--events", str(jsonl), "--since", day2, "--until", day1], capsys)
    assert code == 2 and f"--since {day2} is after --until {day1}" in err
    empty = tmp_path / "lake"
    empty.mkdir()
    code, out, err = run(["rules", "backtest", str(rules), "--lake", str(empty)], capsys)
    assert code == 0 and f"no date=YYYY-MM-DD partitions with Parquet files in {empty}" in err


def test_check_warns_about_what_the_engine_would_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rules = tmp_path / "rules"
    rules.mkdir()
    empty = tmp_path / "nothing"
    empty.mkdir()
    (rules / "cart.rule").write_text(GOOD)  # one letter short: the engine never reads it
    (rules / "notes.rules").write_text("# to do\n")
    code, out, err = run(["rules", "check", str(rules), str(empty)], capsys)
    assert code == 0  # used to be "0 rule(s) ok" and nothing else
    assert f"{rules / 'cart.rule'}: warning: not read (the engine reads *.rules files only)" in err
    assert f"{rules / 'notes.rules'}:1:1: warning: the file defines no rules" in err
    assert f"{empty}: warning: no *.rules files in this directory" in err
    assert "0 rule(s) ok, 3 warning(s)" in out
    assert run(["rules", "check", "--strict", str(empty)], capsys)[0] == 1


def test_explain_says_what_is_posted_and_how_events_are_reused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path, "r.rules", """
rule "searches" when Search then Search within 1m post crm
rule "cart" when "Product Added" as cart then no "Checkout Started" within 30s
  post crm with { sku: cart.properties.sku, "clé": [1, properties.x, { y: null }] }
""")
    code, out, _ = run(["rules", "explain", str(rules)], capsys)
    assert code == 0
    # S1 S2 S3 fires for S1 S2 and S2 S3: "each matched event is used by at most one trigger" was wrong here
    searches, cart = out.split("\n\n")[:2]
    assert "except that the Search completing a match also starts the next one" in searches
    assert "at most one trigger" not in searches
    assert 'Posts to endpoint "crm" (the matched events, no payload).' in searches.replace("Then posts", "Posts")
    assert '1. Starts with a "Product Added" event (called "cart").' in cart
    assert 'NO "Checkout Started" event arrives within 30 seconds' in cart
    assert ('with payload { sku: cart.properties.sku, "clé": [1, properties.x, { y: null }] } '
            "(paths without a step name read step 1's event); a missing field is null.") in cart
    assert "missing field is never true" not in cart


def test_explain_warns_that_negations_do_not_match_missing_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path, "r.rules", 'rule "r" when A where properties.plan != "pro" and properties.c does not exist '
                                       'post crm\n')
    code, out, _ = run(["rules", "explain", str(rules)], capsys)
    assert code == 0
    assert 'properties.plan is not "pro" and properties.c is missing (or null)' in out
    assert "A comparison with a missing or null field is never true, not even under `not`, `!=` or `not in`." in out


def test_backtest_on_the_lake_gives_numbers_as_the_events_had_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path, "r.rules", GOOD.replace("{ sku: cart.properties.sku }", "{ price: cart.properties.price }"))
    lake = tmp_path / "lake"
    events = history()
    events[0]["properties"]["price"] = 30.5
    write_lake(lake, events)  # price is a promoted float64 column, as the sink writes catalog numbers
    code, out, err = run(["rules", "backtest", str(rules), "--lake", str(lake), "--no-progress"], capsys)
    assert code == 0, err
    # a live trigger posts {"price":30}; the backtest of the same event said {"price":30.0}
    assert 'payload={"price":30.5}' in out and 'payload={"price":30}' in out and "30.0" not in out


def test_backtest_out_writes_every_trigger_with_the_id_the_live_engine_gives(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path, "r.rules", GOOD)
    events = history()
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    dest = tmp_path / "triggers.jsonl"
    code, out, err = run(["rules", "backtest", str(rules), "--events", str(jsonl), "--out", str(dest), "--no-progress"],
                         capsys)
    assert code == 0, err
    assert 'rule "abandoned cart": 7 trigger(s)' in out
    got = [orjson.loads(x) for x in dest.read_bytes().splitlines()]
    carts = {e["messageId"]: e for e in events if e["event"] == "AddToCart" and e["anonymousId"].startswith("k")}
    assert sorted(t["events"][0] for t in got) == sorted(carts)  # the buyers and the pending cart are not there
    for t in got:
        cart = carts[t["events"][0]]
        assert t == {"id": trigger_id("abandoned cart", cart["anonymousId"], [cart["messageId"]]),
                     "rule": "abandoned cart", "key": cart["anonymousId"],
                     "fired_at": format_time_ms(parse_time_ms(cart["timestamp"], "timestamp") + 30_000),
                     "events": [cart["messageId"]], "payload": {"sku": cart["properties"]["sku"]}}

    code, _, err = run(["rules", "backtest", str(rules), "--events", str(jsonl), "--out", str(tmp_path / "no" / "x.jsonl")],
                       capsys)
    assert code == 2 and f"cannot write --out {tmp_path / 'no' / 'x.jsonl'}: No such file or directory" in err


def test_backtest_counts_every_repeated_message_id_per_source_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14: "duplicate messageIds ignored" counted only repeats of events some rule uses; a retried
    PageView (no rule reads it) went uncounted. Now: every repeat of a messageId from the same source and
    key, as the engine's duplicate memory recognises them; the same id from another visitor is no repeat."""
    rules = write(tmp_path, "r.rules", GOOD)
    view = envelope("PageView", "v1", "p1", T0)
    cart = envelope("AddToCart", "v1", "a1", T0 + 1000, price=30)
    events = [view, view, view, cart, cart,
              envelope("PageView", "v2", "p1", T0 + 2000),  # another visitor's id clash: not a repeat
              {**view, "source": "other"}]  # another source: not a repeat either
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    code, out, err = run(["rules", "backtest", str(rules), "--events", str(jsonl), "--json", "--no-progress"], capsys)
    assert code == 0, err
    assert orjson.loads(out)["duplicates"] == 3
    code, out, _ = run(["rules", "backtest", str(rules), "--events", str(jsonl), "--no-progress"], capsys)
    assert "7 events from" in out and "3 duplicate messageIds ignored" in out
