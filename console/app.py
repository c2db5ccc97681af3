"""The console's Starlette app: pages, server-sent event streams, the replay form.

``create_app(config, log)`` builds the app around a :class:`Console` (the state the
pages share: the live tailer, the delivery store, backtest jobs, the CSRF secret).
The :class:`~tripwire.console.service.ConsoleService` starts and stops it with the
server. Every page is rendered on the server (Jinja2 templates in ``templates/``);
the live page, the person page's countdown and the backtest's progress bar carry
one small inline script each, allowed by a per-page CSP nonce.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from tripwire.config import Config, mask_url
from tripwire.log import EventLog
from tripwire.rules import rules_config

from . import streams, views
from .backtests import Backtests
from .config import ConsoleConfig, console_config
from .deliveries import Deliveries
from .live import Tailer
from .person import Links, no_links
from .security import Csrf, Guard, csp, nonce

TEMPLATES = Path(__file__).parent / "templates"


class Console:
    """What the pages share; ``start()``/``stop()`` with the server (stop is safe twice)."""

    def __init__(self, config: Config, log: EventLog, *, links: Links = no_links) -> None:
        self.config = config
        self.log = log
        self.settings: ConsoleConfig = console_config(config)
        rc = rules_config(config)
        self.grace_ms, self.lateness_ms = rc.grace_ms, rc.allowed_lateness_ms
        self.tailer = Tailer(log, self.settings.live_rows_per_s)
        self.deliveries = Deliveries(config)
        self.backtests = Backtests(config)
        self.csrf = Csrf()
        self.links = links
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True)
        self.templates = Jinja2Templates(env=env)
        env.filters.update(when=when, clock=clock, ago=ago, pct=pct, ms=ms_text, masked=mask_url)
        env.globals.update(now_ms=lambda: int(time.time() * 1000))

    async def start(self) -> None:
        await self.tailer.start()

    async def stop(self) -> None:
        await self.tailer.stop()
        await self.backtests.stop()
        self.deliveries.close()

    def page(self, request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
        script_nonce = nonce()
        response = self.templates.TemplateResponse(
            request, name, {**context, "nonce": script_nonce, "csrf": self.csrf.token(), "nav": name.split(".")[0]},
            status_code=status)
        response.headers["content-security-policy"] = csp(script_nonce)
        return response


def create_app(config: Config, log: EventLog, console: Console | None = None) -> Starlette:
    console = console or Console(config, log)
    routes = [
        Route("/", lambda request: RedirectResponse("/live", 303)),
        Route("/healthz", lambda request: PlainTextResponse("ok")),
        Route("/live", views.live),
        Route("/live/stream", streams.live),
        Route("/rules", views.rules),
        Route("/person", views.person),
        Route("/backtest", views.backtest, methods=["GET", "POST"]),
        Route("/backtest/{job}", views.backtest_job),
        Route("/backtest/{job}/progress", streams.backtest),
        Route("/deliveries", views.deliveries),
        Route("/deliveries/replay", views.replay, methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(Guard, token=console.settings.token)])
    app.state.console = console
    return app


# template filters -----------------------------------------------------------------------------


def when(value: int | str | None) -> str:
    """Milliseconds since the epoch (or an ISO time) as ``2026-11-29 14:03:05Z``."""
    if value is None or value == "":
        return "–"
    if isinstance(value, str):  # ISO 8601 from an event: to the second
        return value[:19].replace("T", " ") + "Z" if len(value) >= 19 and value[10:11] == "T" else value
    return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def clock(value: str | None) -> str:
    """The time of day of an ISO 8601 time, to the millisecond (the live table; its title has the date)."""
    return value[11:23] if value and len(value) >= 23 and value[10:11] == "T" else (value or "–")


def ago(value: int | None) -> str:
    if value is None:
        return "–"
    s = (time.time() * 1000 - value) / 1000
    if s < 0:
        return f"in {ms_text(-s * 1000)}"
    return f"{ms_text(s * 1000)} ago"


def ms_text(value: float | None) -> str:
    if value is None:
        return "–"
    s = value / 1000
    if s < 1:
        return f"{value:.0f} ms"
    if s < 120:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172_800:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} d"


def pct(value: float | None) -> Markup | str:
    return "–" if value is None else f"{value * 100:.1f} %"
