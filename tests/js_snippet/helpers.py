"""Helpers for the tracker's browser tests: a site to embed it in, a stoppable collector, the log.

* ``Site``: a tiny web server (its own origin) serving the HTML pages a test registers, each
  embedding the loader snippet from the README with the script served by the collector.
* ``Collector``: the real collector (``collector.create_app``, embedded SQLite log under the
  test's tmp dir) under uvicorn on a fixed loopback port, so it can be stopped and started again
  at the same address the page knows; ``stop_log`` stops its event log while it keeps serving,
  so it answers ``503 log_unavailable`` as it does when its log fails.
* ``read_events``: every record of the events topic, read through ``SqliteLog``.
* The page side: ``open_page``, and the tracker's localStorage (``stored``, ``queued``, ``backoff``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import uvicorn
from playwright.sync_api import BrowserContext, Page
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tripwire.collector import create_app
from tripwire.config import Config, from_dict
from tripwire.log import EVENTS
from tripwire.log.sqlite import SqliteLog

from tests.fixtures.waiting import wait_until

WRITE_KEY = "wk_site"
TRACKER = Path(__file__).resolve().parents[2] / "collector" / "static" / "t.js"
T = TypeVar("T")

# The loader from js-snippet/README.md: queue stub first, then the async script tag.
STUB = "window.tw=window.tw||function(){(tw.q=tw.q||[]).push(arguments)};"


def _bind(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(256)
    return sock


class _Quiet(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # runs in a thread: leave signals alone
        yield


class Uvicorn:
    """An ASGI app served from a thread on a given (or free) loopback port; stop() and start() again."""

    def __init__(self, make_app: Callable[[], Any], port: int = 0) -> None:
        self._make_app = make_app
        self.port = port
        self._server: _Quiet | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10) -> None:
        self._sock = _bind(self.port)
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(self._make_app(), lifespan="on", access_log=False, log_config=None, timeout_graceful_shutdown=2)
        server = self._server = _Quiet(config)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(server.serve(sockets=[self._sock]))
            except BaseException as exc:  # reported by start()
                errors.append(exc)

        self._thread = threading.Thread(target=run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if errors or not self._thread.is_alive():
                raise RuntimeError(f"server on port {self.port} failed to start") from (errors[0] if errors else None)
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on port {self.port} did not start within {timeout_s}s")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        assert self._thread is not None and self._sock is not None
        self._thread.join(15)
        self._sock.close()
        self._server = None


class Site:
    """Serves registered HTML pages at its own origin (the site embedding the tracker)."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.server = Uvicorn(self._app)

    def _app(self) -> Starlette:
        async def page(request: Request) -> Response:
            if request.url.path == "/t.js":  # a site hosting the tracker itself (data-api names the collector)
                return Response(TRACKER.read_bytes(), media_type="text/javascript")
            html = self.pages.get(request.url.path)
            if html is None:
                return Response(status_code=204 if request.url.path == "/favicon.ico" else 404)
            return HTMLResponse(html)

        return Starlette(routes=[Route("/{path:path}", page)])

    @property
    def origin(self) -> str:
        return self.server.url

    def add(self, path: str, collector_url: str, *, attrs: str = "", before: str = "", key: str | None = WRITE_KEY,
            title: str = "Test page", body: str = "", self_hosted: bool = False) -> str:
        """Register a page embedding the tracker; returns its URL.

        The script comes from the collector's ``/t.js``, or with ``self_hosted`` from the site
        itself with ``data-api`` naming the collector's batch endpoint.
        """
        data_key = f' data-key="{key}"' if key else ""
        src = f"{collector_url}/t.js"
        if self_hosted:
            src = f"{self.origin}/t.js"
            attrs += f' data-api="{collector_url}/v1/batch"'
        self.pages[path] = (
            f"<!doctype html><html><head><title>{title}</title>"
            f"<script>{STUB}{before}</script>"
            f'<script async src="{src}"{data_key} {attrs}></script>'
            f"</head><body>{body}</body></html>"
        )
        return self.origin + path


class Collector:
    """The real collector with its embedded log in ``data_dir``, on a port that survives restarts."""

    def __init__(self, data_dir: Path, origins: list[str]) -> None:
        self.config: Config = from_dict({
            "data_dir": str(data_dir),
            "sources": {"site": {"write_key": WRITE_KEY, "origins": origins}},
        })
        self.server = Uvicorn(self._app)
        self.batch_sizes: list[int] = []  # body bytes of each POST /v1/batch received
        self._log: SqliteLog | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _app(self) -> Any:
        log = self._log = SqliteLog(self.config.data_dir / "log.db", self.config.log.partitions)
        app = create_app(self.config, log, own_log=True)

        async def recording(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                self._loop = asyncio.get_running_loop()
            # Note each batch request's body size (what the browser really sent).
            if scope["type"] != "http" or scope["path"] != "/v1/batch" or scope["method"] != "POST":
                return await app(scope, receive, send)
            size = 0

            async def counting() -> Any:
                nonlocal size
                message = await receive()
                size += len(message.get("body", b""))
                if not message.get("more_body"):
                    self.batch_sizes.append(size)
                return message

            await app(scope, counting, send)

        return recording

    @property
    def url(self) -> str:
        return self.server.url

    def stop_log(self) -> None:
        """Stop the event log under the running server (start() again brings a fresh one)."""
        assert self._log is not None and self._loop is not None, "the collector is not running"
        asyncio.run_coroutine_threadsafe(self._log.stop(), self._loop).result(15)

    def events(self) -> list[dict[str, Any]]:
        """The events topic in creation order (the log orders only within a key's partition)."""
        return sorted(read_events(self.config), key=lambda e: e["originalTimestamp"])


def read_events(config: Config) -> list[dict[str, Any]]:
    """Every record of the events topic (all partitions), decoded."""

    async def read() -> list[dict[str, Any]]:
        log = SqliteLog(config.data_dir / "log.db", config.log.partitions, retention_s=0)
        await log.start()
        try:
            out: list[dict[str, Any]] = []
            for p in await log.partitions(EVENTS):
                offset = 0
                while batch := await log.read(EVENTS, p, offset):
                    out.extend(orjson.loads(r.value) for r in batch)
                    offset = batch[-1].offset + 1
            return out
        finally:
            await log.stop()

    # Playwright's sync API keeps an event loop in this thread: read from another one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result(30)


def wait_for(probe: Callable[[], T], timeout_s: float = 30, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout_s`` with its last value."""
    return wait_until(probe, timeout_s, what, detail=probe)


# The page side ----------------------------------------------------------------------------------

FAST = 'data-interval="150"'


def open_page(context: BrowserContext, url: str) -> Page:
    page = context.new_page()
    page.goto(url)
    page.wait_for_function("window.tw && window.tw.l")  # the script has loaded
    return page


def stored(page: Page) -> dict[str, Any]:
    """The tracker's localStorage entries (decoded), by key."""
    raw = page.evaluate("Object.fromEntries(Object.entries(localStorage).filter(([k]) => k.startsWith('tw')))")
    return {k: json.loads(v) for k, v in raw.items()}


def queued(page: Page) -> list[dict[str, Any]]:
    """The events waiting in the retry queue, oldest first."""
    records = [v for k, v in stored(page).items() if k.startswith("tw:")]
    return [r["e"] for r in sorted(records, key=lambda r: r["t"])]


def backoff(page: Page) -> int:
    return stored(page).get("tw_b", 0)


def settle(seconds: float = 0.8) -> None:
    """Give the page time for several flush intervals (only where we assert that nothing happens)."""
    time.sleep(seconds)
