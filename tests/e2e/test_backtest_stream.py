"""``tripwire rules backtest`` streams history (issue 16): the same triggers as the whole history sorted in memory.

The reference here is what the backtest did before it streamed: every event of the file (or of a
lake day, every column) decoded into memory, sorted by event time (stable), replayed. The CLI's
streaming paths (a JSONL file read in order, or sorted out of core in spilled runs merged in
passes; a lake day ordered from its time column alone, reading only the columns the rules need,
with read-ahead or spilled runs per file) must write exactly the same ``--out``: same triggers,
same order, same ids and payloads. Run sizes are made tiny so that small histories spill.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tripwire.cli.main import main
from tripwire.envelope import format_time_ms, log_key
from tripwire.times import format_datetime
from tripwire.log import Record
from tripwire.log.partition import partition_for
from tripwire.rules import history as history_module
from tripwire.rules import lakeorder
from tripwire.rules.backtest import backtest
from tripwire.rules.compiler import build_plan, compile_text
from tripwire.rules.engine import parse_event_time
from tripwire.lake_layout import CONTEXT_COLUMNS, SOURCE_COLUMNS, TIME_COLUMNS, TOP_COLUMNS
from tripwire.rules.lake import LakeReader
from tripwire.rules.plan import Plan
from tripwire.sinks.config import SinkConfig
from tripwire.sinks.lake import LocalLake
from tripwire.sinks.writer import LakeWriter

REPO = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY = 86_400_000
RULES = """
rule "abandoned" when AddToCart as cart where cart.properties.price >= 20 then no Checkout within 30s
  post crm with { sku: cart.properties.sku, price: cart.properties.price, path: cart.context.page.path }
rule "carted" when ProductViewed as v then AddToCart where properties.sku == v.properties.sku within 2m
  post crm with { ua: v.context.userAgent, lib: v.context.library.name, version: v.version, width: v.context.screen.width,
                  price: v.properties.price, item: v.properties.item.id }
rule "busy" when 3 PageView within 1m at most once per 10m post crm with { at: timestamp }
rule "activated" when Signup as s then Login within 1h post crm with { plan: s.traits.plan, user: s.userId }
rule "paid" when AddToCart then Checkout within 30s by anonymousId post crm
"""
NAMES = ["AddToCart", "AddToCart", "Checkout", "ProductViewed", "PageView", "PageView", "Signup", "Login"]


def events(seed: int, n: int = 1200, days: int = 3) -> list[dict[str, Any]]:
    """Shoppers over ``days`` days, in no order, at whole seconds (many events share a time, also of one
    visitor), near the start and the end of each day; prices of two types (the lake keeps the odd
    ones in its JSON column), a top-level field without a column, userId-only logins."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        second = rng.randrange(400) if rng.random() < 0.5 else 86_399 - rng.randrange(400)
        at = T0 + rng.randrange(days) * DAY + second * 1000
        name = rng.choice(NAMES)
        env: dict[str, Any] = {
            "type": "track", "event": name, "anonymousId": f"v{rng.randrange(20)}", "messageId": f"m{seed}-{i}",
            "timestamp": format_time_ms(at), "receivedAt": format_time_ms(at + rng.randrange(5000)), "source": "web",
            "properties": {"price": rng.choice([10, 25, 30.5, 99, "cheap"]), "sku": f"s{rng.randrange(4)}"},
            "context": {"page": {"path": f"/p/{rng.randrange(5)}", "title": "Shop"}, "userAgent": "UA/1",
                        "library": {"name": "tripwire.js", "version": "1"}, "screen": {"width": rng.choice([800, 1440])}},
        }
        if rng.random() < 0.2:
            env["version"] = rng.randrange(3)
        if rng.random() < 0.5:
            env["properties"]["item"] = {"id": rng.randrange(3)}  # an object: JSON column only
        if name in ("Signup", "Login"):
            env["traits"] = {"plan": rng.choice(["free", "pro"])}
            if rng.random() < 0.3:
                env["userId"] = "u-" + env.pop("anonymousId")
        out.append(env)
    return out


def plan() -> Plan:
    plans, diagnostics = compile_text(RULES, "shop.rules")
    assert not [d for d in diagnostics if d.severity == "error"], diagnostics
    return build_plan([plans])[0]


def replay(pairs: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    pairs.sort(key=lambda p: p[0])  # stable: file order for equal times
    out: list[dict[str, Any]] = []
    backtest(plan(), iter(pairs), samples=0, on_trigger=out.append)
    return out


def reference_jsonl(path: Path, since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
    pairs = []
    for line in path.read_bytes().splitlines():
        try:
            env = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        t = parse_event_time(env) if isinstance(env, dict) else None
        if t is None:
            continue
        day = format_time_ms(t)[:10]
        if (since is None or day >= since) and (until is None or day <= until):
            pairs.append((t, env))
    return replay(pairs)


def row_to_envelope(row: dict[str, Any], promoted: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """A lake row as the backtest made it before it streamed (every column of the row looked at)."""
    def iso(v: Any) -> Any:
        return format_datetime(v) if isinstance(v, datetime) else v

    def js(text: Any) -> Any:
        try:
            return orjson.loads(text) if isinstance(text, str) else None
        except orjson.JSONDecodeError:
            return None

    env: dict[str, Any] = {key: row[col] for col, key in TOP_COLUMNS + SOURCE_COLUMNS if row.get(col) is not None}
    env.update((key, iso(row[col])) for col, key in TIME_COLUMNS if row.get(col) is not None)
    props, traits = js(row.get("properties")) or {}, js(row.get("traits")) or {}
    for col, (field, key) in promoted.items():
        value = row.get(col)
        if value is not None:
            if type(value) is float and value.is_integer() and abs(value) < 2**53:
                value = int(value)
            (props if field == "properties" else traits)[key] = iso(value)
    if props or row.get("properties") is not None or env.get("type") in ("track", "page", "screen"):
        env["properties"] = props
    if traits:
        env["traits"] = traits
    ctx = js(row.get("context")) or {}
    for col, group, key in CONTEXT_COLUMNS:
        if row.get(col) is not None:
            if key is None:
                ctx[group] = row[col]
            else:
                ctx.setdefault(group, {})[key] = row[col]
    if ctx:
        env["context"] = ctx
    extra = js(row.get("extra"))
    for k, v in (extra.items() if isinstance(extra, dict) else ()):
        env.setdefault(k, v)
    return env


def reference_lake(lake: Path) -> list[dict[str, Any]]:
    reader = LakeReader(str(lake))
    pairs = []
    for _, files in reader.days():
        rows = [row_to_envelope(r, reader.promoted) for f in files for r in pq.read_table(f).to_pylist()]
        rows.sort(key=lambda e: e.get("timestamp") or "")
        pairs += [(t, e) for e in rows if (t := parse_event_time(e)) is not None]
    return replay(pairs)


def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], *source: str) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    rules, out = tmp_path / "shop.rules", tmp_path / "triggers.jsonl"
    rules.write_text(RULES)
    code = main(["rules", "backtest", str(rules), *source, "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return [orjson.loads(x) for x in out.read_bytes().splitlines()], orjson.loads(captured.out), captured.err


@pytest.fixture
def small_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Runs of a few lines or rows, merged 3 at a time; spilled files under the returned directory."""
    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(history_module, "RUN_BYTES", 6000)
    monkeypatch.setattr(history_module, "MAX_FANIN", 3)
    monkeypatch.setattr(lakeorder, "MAX_HELD_ROWS", 4)
    monkeypatch.setattr(lakeorder, "RUN_ROWS", 25)
    monkeypatch.setattr(lakeorder, "BATCH_ROWS", 7)
    monkeypatch.setattr(lakeorder, "_CHUNK", 50)
    monkeypatch.setenv("TMPDIR", str(spill))
    monkeypatch.setattr("tempfile.tempdir", None)  # read $TMPDIR again
    return spill


def write_jsonl(path: Path, items: list[dict[str, Any]], junk: bool = True) -> Path:
    lines = [orjson.dumps(e) for e in items]
    if junk:
        lines[5:5] = [b"not json", b"{}", b"[1]", b""]
        lines.insert(11, lines[10])  # an event sent twice
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_jsonl_in_order_and_shuffled_give_the_triggers_of_the_file_sorted_in_memory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], small_runs: Path) -> None:
    shuffled = events(1)
    in_order = sorted(shuffled, key=lambda e: e["timestamp"])
    for name, items in (("in-order", in_order), ("shuffled", shuffled)):
        path = write_jsonl(tmp_path / f"{name}.jsonl", items)
        expected = reference_jsonl(path)
        assert len(expected) > 50 and {t["rule"] for t in expected} == {"abandoned", "carted", "busy", "activated", "paid"}
        got, report, err = cli(tmp_path, capsys, "--events", str(path))
        assert got == expected, name
        assert report["skipped"] == 3 and report["events"] == len(items) + 1 and report["duplicates"] == 1
        assert sum(r["triggers"] for r in report["rules"].values()) == len(expected)
        assert "100.0%" in err and "events" in err and "/s" in err  # the bar, with its rate
        if name == "shuffled":
            assert re.search(r"shuffled.jsonl: line \d+ is older than an event before it: sorting the events first", err)
            assert "sorting [" in err and "lines" in err
        else:
            assert "sorting" not in err
        assert not list(small_runs.iterdir())  # the spilled runs are gone

    # in order but for one event near the end: triggers written before it are taken back
    late = [*in_order[:-50], in_order[-1], *in_order[-50:-1]]
    path = write_jsonl(tmp_path / "late.jsonl", late, junk=False)
    got, _, err = cli(tmp_path, capsys, "--events", str(path))
    assert "sorting the events first" in err
    assert got == reference_jsonl(path)


def test_jsonl_days_and_stdin(tmp_path: Path, capsys: pytest.CaptureFixture[str], small_runs: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", events(2))
    day2, day3 = format_time_ms(T0 + DAY)[:10], format_time_ms(T0 + 2 * DAY)[:10]
    got, _, _ = cli(tmp_path, capsys, "--events", str(path), "--since", day2, "--until", day2)
    assert got == reference_jsonl(path, day2, day2) and got != reference_jsonl(path, day2, day3)
    # stdin (a pipe) cannot be read twice: sorted from the start
    out = tmp_path / "stdin-triggers.jsonl"
    with open(path, "rb") as f:
        done = subprocess.run([sys.executable, "-m", "tripwire.cli.main", "rules", "backtest", str(tmp_path / "shop.rules"),
                               "--events", "-", "--out", str(out)], stdin=f, capture_output=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert [orjson.loads(x) for x in out.read_bytes().splitlines()] == reference_jsonl(path)
    assert b"sorting 1,2" in done.stderr and b"sorting the events first" not in done.stderr  # lines read (size unknown)


def test_out_of_core_sort_spills_runs_and_removes_them(tmp_path: Path, small_runs: Path) -> None:
    items = events(3, n=300)
    path = write_jsonl(tmp_path / "events.jsonl", items, junk=False)
    stream = history_module.JsonlHistory(str(path)).in_time_order()
    first = next(stream)
    runs = list(next(small_runs.iterdir()).iterdir())
    # 300 lines of ~500 bytes in runs of 6,000 bytes (with each line's overhead), merged 3 at a time
    # in passes: at most 3 merged runs are left to merge with the lines still held
    assert 1 < len(runs) <= 3 and all(r.name.startswith("merge-") for r in runs), runs
    rest = list(stream)
    assert [first, *rest] == sorted(((parse_event_time(e) or 0, e) for e in items), key=lambda p: p[0])
    assert not list(small_runs.iterdir())


def write_lake(root: Path, items: list[dict[str, Any]]) -> Path:
    """The sink writes the events as the log would hold them (arrival order, 4 partitions), in small files."""
    arrival = sorted(items, key=lambda e: e["receivedAt"])
    cfg = SinkConfig(lake_url=str(root), promote={"price": "number"}, max_file_rows=40)
    records: dict[int, list[Record]] = {p: [] for p in range(4)}
    for env in arrival:
        p = partition_for(log_key(env).encode(), 4)
        records[p].append(Record("events", p, len(records[p]), None, orjson.dumps(env), 0))
    writer = LakeWriter(LocalLake(root), cfg)
    for p in range(4):
        writer.assign(p)
        for i in range(0, len(records[p]), 100):
            writer.process(records[p][i : i + 100])
    writer.close()
    return root


def test_lake_days_give_the_triggers_of_each_day_sorted_in_memory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], small_runs: Path) -> None:
    items = events(4)
    lake = write_lake(tmp_path / "lake", items)
    # a file far from time order (it goes through spilled runs), with a row without a time
    day = format_time_ms(T0 + DAY)[:10]
    table = pq.read_table(sorted((lake / f"date={day}").glob("part-*.parquet"))[0])
    table = table.take(list(reversed(range(table.num_rows))))
    times = table.column("timestamp").to_pylist()
    times[3] = None
    table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp",
                             pa.array(times, table.schema.field("timestamp").type))
    pq.write_table(table, lake / f"date={day}" / "zz-by-hand.parquet")
    conflicts = orjson.loads((lake / "_tripwire_sink" / "schema.json").read_bytes())["conflicts"]
    assert any(c["key"] == "price" for c in conflicts)  # "cheap" stayed in the JSON column

    expected = reference_lake(lake)
    assert len(expected) > 50
    got, report, err = cli(tmp_path, capsys, "--lake", str(lake))
    assert got == expected
    assert report["skipped"] == 1 and "1,239/1,240 events" in err  # the row without a time is not replayed
    assert not list(small_runs.iterdir())
