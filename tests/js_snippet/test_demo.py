"""The demo shop of examples/ as a newcomer runs it: examples/demo/index.html served by a plain static
server (as `python3 -m http.server` does in the quickstart) against a collector on examples/tripwire.toml."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.sync_api import Browser

from tripwire.config import load_config
from tripwire.log import INVALID
from tripwire.log.sqlite import SqliteLog

from .helpers import Collector, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SHIPPED_SRC = "http://127.0.0.1:8080/t.js"  # the collector's address in the quickstart


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def static_site(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "demo"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def invalid_records(collector: Collector) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        log = SqliteLog(collector.config.data_dir / "log.db", collector.config.log.partitions, retention_s=0)
        await log.start()
        try:
            return [orjson.loads(r.value) for p in await log.partitions(INVALID) for r in await log.read(INVALID, p, 0)]
        finally:
            await log.stop()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result(30)


def test_the_demo_page_as_shipped_sends_valid_events_and_no_console_errors(
        chromium: Browser, tmp_path: Path, static_site: tuple[Path, str]) -> None:
    root, origin = static_site
    collector = Collector(tmp_path / "unused", [])
    collector.config = load_config(EXAMPLES / "tripwire.toml", environ={
        "TRIPWIRE_DATA_DIR": str(tmp_path / "data"),
        "TRIPWIRE_SOURCES__SHOP__ORIGINS": f'["{origin}"]',
        "TRIPWIRE_COLLECTOR__PII_SALT": "test",
    })
    collector.server.start()
    html = (EXAMPLES / "demo" / "index.html").read_text()
    assert SHIPPED_SRC in html
    (root / "index.html").write_text(html.replace(SHIPPED_SRC, f"{collector.url}/t.js"))
    context = chromium.new_context()
    problems: list[str] = []
    try:
        page = context.new_page()
        page.on("console", lambda m: problems.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
        page.goto(f"{origin}/")
        for button in ("#add", "#checkout", "#order", "#identify"):
            page.click(button)
        events = wait_for(lambda: (e := collector.events()) and len(e) >= 6 and e, 15, "the demo's 6 events")
        page.close()
    finally:
        context.close()
        collector.server.stop()
    names = sorted(e.get("event") or e["type"] for e in events)
    assert names == ["Checkout Started", "Order Completed", "Product Added", "Product Viewed", "identify", "page"]
    assert invalid_records(collector) == []  # the demo's events fit the example catalog
    assert problems == []
