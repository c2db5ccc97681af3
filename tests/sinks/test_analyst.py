"""The lake as an analyst meets it: events from the official SDKs and the snippet, no catalog.

Events go through the real collector (in-process, over HTTP/ASGI) into the real
SQLite log, the real sink writes the lake (local and S3), and the lake is read
with DuckDB and pandas as ``sinks/README.md`` says, including its first queries,
which are taken from the README as written.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tripwire.cli.main import main
from tripwire.collector import create_app
from tripwire.config import from_dict
from tripwire.lake_layout import COLUMNS_FILE
from tripwire.log import EVENTS, INVALID
from tripwire.log.sqlite import SqliteLog
from tripwire.sinks.lake import data_files
from tripwire.sinks.registry import read_registry
from tripwire.sinks.service import SinkService
from tripwire.times import format_time_ms
from tests.sinks.helpers import BASE_MS, DAY_MS, wait_caught_up
from tests.sinks.lakes import LakeSetup

README = Path(__file__).resolve().parents[2] / "sinks" / "README.md"
EXAMPLE_CATALOG = Path(__file__).resolve().parents[2] / "examples" / "catalog.json"
WEB, SERVER = "wk_web", "wk_server"
SOURCES = {"web": {"write_key": WEB}, "backend": {"write_key": SERVER}}
D2, D1, D0 = BASE_MS - 2 * DAY_MS, BASE_MS - DAY_MS, BASE_MS  # two days ago, yesterday, today (01:00 UTC)


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def at(ms: int) -> str:
    return format_time_ms(ms)


def snippet(name: str, anon: str, ms: int, props: dict[str, Any], user: str | None = None) -> dict[str, Any]:
    """A track call as js-snippet queues it."""
    e = {"type": "track", "event": name, "properties": props, "anonymousId": anon, "messageId": str(uuid.uuid4()),
         "timestamp": at(ms), "context": {"library": {"name": "tripwire.js", "version": "1.0.0"}, "locale": "en-GB",
                                          "page": {"path": "/p/1", "url": "https://shop.example/p/1", "title": "Shoe"}}}
    if user:
        e["userId"] = user
    return e


@dataclass
class Stack:
    client: httpx.AsyncClient
    log: SqliteLog
    lake: LakeSetup
    sent: list[dict[str, Any]]  # what the collector acknowledged, as sent

    async def post(self, path: str, body: dict[str, Any], key: str) -> None:
        r = await self.client.post(path, json=body, headers=basic(key))
        assert r.status_code == 200, r.text
        self.sent += body.get("batch", [body])

    async def batch(self, events: list[dict[str, Any]], key: str = WEB) -> None:
        # sentAt is now: the SDKs send past events (a queue, an import) with their own timestamps.
        await self.post("/v1/batch", {"batch": events, "sentAt": at(int(time.time() * 1000))}, key)

    async def sink(self) -> None:
        """Run a sink until the log is in the lake, then stop it (each run writes files of its own)."""
        service = SinkService(self.lake.config(), self.log, self.lake.lake)
        await service.start()
        try:
            await wait_caught_up(self.lake.lake, await self.log.end_offsets(EVENTS))
            await wait_caught_up(self.lake.lake, await self.log.end_offsets(INVALID), topic=INVALID)
        finally:
            await service.stop()
        assert not service.failed


@pytest.fixture
async def stack(lake: LakeSetup, tmp_path: Path):  # type: ignore[no-untyped-def]
    yield await _stack(lake, tmp_path, {"sources": SOURCES})


async def _stack(lake: LakeSetup, tmp_path: Path, raw: dict[str, Any]):  # type: ignore[no-untyped-def]
    config = from_dict({"data_dir": str(tmp_path / "data"), **raw})
    log = SqliteLog(tmp_path / "log.db", 4)
    await log.start()
    app = create_app(config, log)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("203.0.113.9", 4000)),
                               base_url="http://collector.test")
    _OPEN.append((client, log))
    return Stack(client, log, lake, [])


_OPEN: list[tuple[httpx.AsyncClient, SqliteLog]] = []


@pytest.fixture(autouse=True)
async def _close_stacks():  # type: ignore[no-untyped-def]
    yield
    while _OPEN:
        client, log = _OPEN.pop()
        await client.aclose()
        await log.stop()


async def evolving_shop(s: Stack) -> None:
    """Three sink runs over three days; the properties change their shape between them.

    Run 1: prices are whole numbers (an integer column; yesterday gets a file
    with it too, from a visitor's clock). Run 2: a fractional
    price (the column widens), a new ``coupon`` property (a column the first
    files lack), a date-time property. Run 3: a price that is a string (a conflict).
    """
    # Day -2, the snippet: four visitors; a1 signs in as user-42 (analytics-python identify)
    await s.batch([snippet("Product Viewed", "a1", D2 + 1000, {"sku": "S-1", "price": 30, "in_stock": True}),
                   snippet("Product Added", "a1", D2 + 2000, {"sku": "S-1", "price": 30, "quantity": 1}),
                   snippet("Product Viewed", "a2", D2 + 3000, {"sku": "S-2", "price": 12, "in_stock": False}),
                   snippet("Product Added", "a4", D2 + 3500, {"sku": "S-2", "price": 12, "quantity": 2}),
                   snippet("Product Viewed", "a4", D2 + 4000, {"sku": "S-2", "price": 12, "in_stock": True}),
                   snippet("Product Viewed", "a6", D1 + 500, {"sku": "S-6", "price": 7, "in_stock": True})])
    await s.batch([{"type": "identify", "userId": "user-42", "anonymousId": "a1", "messageId": str(uuid.uuid4()),
                    "timestamp": at(D2 + 5000), "traits": {"plan": "pro", "signed_up_at": at(D2 + 5000)},
                    "context": {"library": {"name": "analytics-python", "version": "2.3.2"}}, "integrations": {}}],
                  key=SERVER)
    # RudderStack's JS SDK: a page call with a category and a channel, and empty properties
    await s.batch([{"type": "page", "name": "Pricing", "category": "Docs", "channel": "web", "properties": {},
                    "anonymousId": "a3", "messageId": str(uuid.uuid4()), "timestamp": at(D2 + 6000),
                    "rudderId": "r-1", "context": {"library": {"name": "RudderLabs JavaScript SDK", "version": "3.0"}}}])
    await s.sink()
    # Day -1: a fractional price, a coupon, a date-time, an order; analytics-node ships it
    await s.batch([snippet("Product Viewed", "a3", D1 + 1000, {"sku": "S-3", "price": 19.99, "in_stock": True}),
                   snippet("Product Added", "a2", D1 + 2000, {"sku": "S-2", "price": 12, "quantity": 1,
                                                               "coupon": "WELCOME"}),
                   snippet("Order Completed", "a1", D1 + 3000, {"total": 30, "coupon": "WELCOME"}, user="user-42")])
    await s.batch([{"type": "track", "event": "Order Shipped", "userId": "user-42", "messageId": str(uuid.uuid4()),
                    "timestamp": at(D1 + 4000), "properties": {"shipped_at": at(D1 + 4000), "carrier": "DHL"},
                    "context": {"library": {"name": "@segment/analytics-node", "version": "2.1.0"}},
                    "_metadata": {"jsRuntime": "node"}}], key=SERVER)
    await s.sink()
    # Today: a price sent as a string by a broken page
    await s.batch([snippet("Product Viewed", "a5", D0 + 1000, {"sku": "S-9", "price": "free", "in_stock": True}),
                   snippet("Product Viewed", "a5", D0 + 2000, {"sku": "S-9", "price": 5, "in_stock": True})])
    await s.sink()


def readme_blocks() -> list[tuple[str, str]]:
    """The fenced sql/python blocks of the README's "First queries" section, in order."""
    text = README.read_text()
    section = text[text.index("## First queries"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```(sql|python)\n(.*?)```", section, re.S)


def readme_sql(con: duckdb.DuckDBPyConnection, sql: str, lake: str) -> pd.DataFrame:
    return con.execute(sql.replace("data/lake", lake)).df()


def readme_python(code: str, lake: str, storage: dict[str, Any] | None) -> dict[str, Any]:
    code = code.replace('pd.read_parquet("data/lake")', f'pd.read_parquet("{lake}", storage_options={storage!r})')
    scope: dict[str, Any] = {}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - the README's own code, as an analyst runs it
    return scope


def connect(lake: LakeSetup) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    if lake.bucket is not None:
        import s3fs

        con.register_filesystem(s3fs.S3FileSystem(skip_instance_cache=True, **lake.storage))  # type: ignore[arg-type]
    return con


async def test_a_lake_without_catalog_has_typed_columns_and_the_readme_queries_work(
        stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    s = stack
    await evolving_shop(s)
    lake = s.lake
    tracks = [e for e in s.sent if e["type"] == "track"]

    # A price needs no JSON function; whole and fractional prices are one DOUBLE column.
    prices = [e["properties"]["price"] for e in tracks if isinstance(e["properties"].get("price"), (int, float))]
    avg = lake.duckdb("SELECT avg(properties_price) AS p FROM lake").p[0]
    assert avg == pytest.approx(sum(prices) / len(prices))
    types = dict(lake.duckdb("DESCRIBE SELECT * FROM lake")[["column_name", "column_type"]].values)
    assert types["properties_price"] == "DOUBLE" and types["properties_quantity"] == "BIGINT"
    assert types["properties_in_stock"] == "BOOLEAN" and types["properties_sku"] == "VARCHAR"
    assert types["properties_shipped_at"] == "TIMESTAMP WITH TIME ZONE" and types["traits_plan"] == "VARCHAR"
    assert types["traits_signed_up_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["category"] == types["channel"] == "VARCHAR" and types["date"] == "DATE"

    # Files differ: those of the first run have no coupon column and an int64 price...
    first = [p for p in lake.lake.list("", ".parquet") if p.startswith(f"date={at(D2)[:10]}/")]
    assert first
    for path in first:
        schema = pq.read_schema(__import__("pyarrow").BufferReader(lake.lake.read(path)))
        assert "properties_coupon" not in schema.names and str(schema.field("properties_price").type) == "int64"
    # ...and pandas, with no option, reads every column of every file (the column file goes first).
    df = lake.pandas()
    assert len(df) == len(s.sent) and str(df.properties_price.dtype) == "float64"
    assert set(df.properties_coupon.dropna()) == {"WELCOME"} and df.properties_coupon.isna().sum() == len(s.sent) - 2
    assert df.properties_price.mean() == pytest.approx(avg)

    # The page call: Segment's category and RudderStack's channel have columns; {} stays {}.
    page = df[df.type == "page"].iloc[0]
    assert (page.category, page.channel, page.properties, page.extra) == ("Docs", "web", "{}", '{"rudderId":"r-1"}')
    # The string price is kept where it was, in the JSON of its row, and recorded as a conflict.
    odd = df[df.properties.str.contains("free", na=False)]
    assert len(odd) == 1 and orjson.loads(odd.iloc[0].properties) == {"price": "free"}
    registry = read_registry(lake.lake)
    assert registry is not None
    price = registry.column("properties_price")
    assert price is not None and (price.kind, price.first_seen, price.widened) == ("number", at(D2)[:10], at(D1)[:10])
    assert [(c.column, c.event, c.kind, c.why, c.first_seen) for c in registry.conflicts] == [
        ("properties_price", "Product Viewed", "string", "type", at(D0)[:10])]

    # `tripwire lake schema` says all that.
    if lake.kind == "local":
        assert main(["lake", "schema", "--lake", lake.url]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"properties_price +DOUBLE \(BIGINT until {at(D1)[:10]}\) +inferred +{at(D2)[:10]} +"
                         r"Product Added, Product Viewed", out)
        assert re.search(rf"properties_coupon +VARCHAR +inferred +{at(D1)[:10]} +Order Completed, Product Added", out)
        assert re.search(rf"properties_price +Product Viewed +string +{at(D0)[:10]} +not the column's type", out)

    # The README's first queries, as written, in DuckDB and in pandas.
    blocks = readme_blocks()
    assert [lang for lang, _ in blocks] == ["sql", "python"] * 3
    con = connect(lake)
    names = Counter((e["timestamp"][:10], e.get("event") or e["type"]) for e in s.sent)
    per_day = readme_sql(con, blocks[0][1], lake.url)
    assert {(str(r.date)[:10], r.event): r.events for r in per_day.itertuples()} == dict(names)
    scope = readme_python(blocks[1][1], lake.url, lake.storage)
    assert {(str(d), e): n for (d, e), n in scope["per_day"].items()} == dict(names)

    funnel = readme_sql(con, blocks[2][1], lake.url)
    # a1: viewed, added, completed; a2 added a day after viewing; a3, a5, a6 viewed; a4 added before viewing
    assert funnel.iloc[0].tolist() == [6, 2, 1]
    assert readme_python(blocks[3][1], lake.url, lake.storage)["funnel"] == [6, 2, 1]

    mine = {e["messageId"] for e in s.sent if e.get("userId") == "user-42" or (e.get("anonymousId") == "a1")}
    history = readme_sql(con, blocks[4][1], lake.url)
    assert len(history) == len(mine) == 5 and list(history.timestamp) == sorted(history.timestamp)
    got = readme_python(blocks[5][1], lake.url, lake.storage)["history"]
    assert list(got.timestamp) == list(history.timestamp)
    assert set(df[df.timestamp.isin(history.timestamp)].message_id) == mine
    con.close()


async def test_invalid_events_are_in_the_invalid_table_with_their_reason(lake: LakeSetup, tmp_path: Path) -> None:
    s = await _stack(lake, tmp_path, {"sources": SOURCES, "collector": {"catalog": str(EXAMPLE_CATALOG)}})
    good = snippet("Product Added", "a1", D0 + 1000, {"sku": "S-1", "quantity": 1, "price": 30})
    bad = snippet("Product Added", "a2", D0 + 2000, {"sku": "S-2", "quantity": 0})  # the catalog says minimum 1
    await s.batch([good, bad])
    await s.sink()
    # The events table (the README's glob, and pandas on the root) has the good event only...
    assert list(lake.duckdb("SELECT message_id FROM lake").message_id) == [good["messageId"]]
    assert list(lake.pandas().message_id) == [good["messageId"]]
    # ...and the invalid table the other, with why, where in the schema, who, and the event itself.
    invalid = lake.duckdb("SELECT * FROM invalid", invalid=True)
    assert len(invalid) == 1
    row = invalid.iloc[0]
    assert (row.reason, row.field, row.message_id, row.source, row.anonymous_id, row.event, row.type) == (
        "schema", "properties.quantity", bad["messageId"], "web", "a2", "Product Added", "track")
    assert row.message == "properties.quantity must be bigger than or equal to 1" and str(row.date)[:10] == format_time_ms(int(row.received_at.timestamp() * 1000))[:10]
    raw = orjson.loads(row.raw_event)
    assert raw["properties"] == {"sku": "S-2", "quantity": 0} and raw["originalTimestamp"] == bad["timestamp"]
    assert format_time_ms(round(row.timestamp.timestamp() * 1000)) == raw["timestamp"]  # the corrected event time
    assert list(lake.pandas("_invalid").message_id) == [bad["messageId"]]
    invalid_files = [n for d, names in data_files(lake.lake).items() if d.startswith("_invalid/date=") for n in names]
    assert len(invalid_files) == 1 and invalid_files[0].endswith(".parq")


async def test_compaction_forget_and_backtest_work_across_evolved_files(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from tests.sinks.lakes import make_lake

    lake = make_lake("local", tmp_path, None)
    s = await _stack(lake, tmp_path, {"sources": SOURCES})
    await evolving_shop(s)
    before = lake.duckdb("SELECT message_id, properties_price, properties_coupon FROM lake ORDER BY message_id")
    cfg = tmp_path / "tripwire.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[sink]\nlake_url = "{lake.url}"\n')

    # Yesterday has a file of run 1 (price int64, no coupon) and files of run 2 (price double, coupon).
    yesterday = f"date={at(D1)[:10]}"
    schemas = [pq.read_schema(lake.lake.full(f"{yesterday}/{n}")) for n in data_files(lake.lake)[yesterday]]
    assert {str(s.field("properties_price").type) for s in schemas if "properties_price" in s.names} == {"int64", "double"}
    for day in (at(D2)[:10], at(D1)[:10]):
        assert main(["--config", str(cfg), "lake", "compact", "--date", day]) == 0
    merged = {d: names for d, names in data_files(lake.lake).items() if not d.startswith("_")}
    assert all(len(names) == 1 for names in merged.values()), merged
    (name,) = merged[yesterday]
    schema = pq.read_schema(lake.lake.full(f"{yesterday}/{name}"))
    assert str(schema.field("properties_price").type) == "double" and "properties_coupon" in schema.names
    after = lake.duckdb("SELECT message_id, properties_price, properties_coupon FROM lake ORDER BY message_id")
    pd.testing.assert_frame_equal(before, after)
    assert lake.lake.exists(f"date=0001-01-01/{COLUMNS_FILE}")  # compaction leaves the column file alone

    assert f"{yesterday}: " in capsys.readouterr().out
    # A backtest over files with an int64 price and files with a double price.
    rules = tmp_path / "r.rules"
    rules.write_text('rule "big view"\n  when "Product Viewed" as v where v.properties.price >= 12\n'
                     '  post crm with { price: v.properties.price }\n')
    assert main(["rules", "backtest", str(rules), "--lake", lake.url, "--json", "--no-progress", "--samples", "9"]) == 0
    report = orjson.loads(capsys.readouterr().out)["rules"]["big view"]
    assert report["per_day"] == {at(D2)[:10]: 3, at(D1)[:10]: 1}
    assert sorted(x["payload"]["price"] for x in report["samples"]) == [12, 12, 19.99, 30]

    # Erasure: user-42's rows (identify, order, shipment, and a1's anonymous history) from every schema.
    assert main(["--config", str(cfg), "lake", "forget", "--user", "user-42"]) == 0
    capsys.readouterr()
    left = lake.duckdb("SELECT anonymous_id, user_id FROM lake")
    assert "user-42" not in set(left.user_id.dropna()) and "a1" not in set(left.anonymous_id.dropna())
    assert len(left) == len(before) - 5
    assert len(lake.pandas()) == len(left)
