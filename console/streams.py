"""Server-sent event streams: the live view, and a backtest's progress.

Each message's data is HTML rendered here (a table row, the stats line, the chart),
so the page's script only inserts it. Streams end when the console stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from .live import Filters

if TYPE_CHECKING:
    from .app import Console

CHART_EVERY_S = 5.0
HEADERS = {"cache-control": "no-store", "x-accel-buffering": "no"}


def sse(event: str, data: str) -> str:
    return f"event: {event}\n" + "".join(f"data: {line}\n" for line in data.split("\n")) + "\n"


async def live(request: Request) -> Response:
    from .views import live_chart

    c: Console = request.app.state.console
    q = request.query_params
    filters = Filters(q.get("source", "").strip(), q.get("event", "").strip(), q.get("person", "").strip())
    sub = c.tailer.subscribe(filters)
    row = c.templates.get_template("_row.html")
    stats = c.templates.get_template("_stats.html")

    async def messages() -> AsyncIterator[str]:
        try:
            yield "retry: 2000\n\n"
            last_chart = time.monotonic()
            while True:
                try:
                    kind, data = await asyncio.wait_for(sub.queue.get(), 1.0)
                except TimeoutError:
                    kind, data = "", None
                if kind == "end":
                    return
                if kind in ("event", "invalid"):
                    yield sse(kind, row.render(r=data))
                elif kind == "tick":
                    yield sse("stats", stats.render(s=data, cap=c.settings.live_rows_per_s))
                if time.monotonic() - last_chart >= CHART_EVERY_S:
                    last_chart = time.monotonic()
                    yield sse("chart", str(live_chart(c)))
        finally:
            c.tailer.unsubscribe(sub)

    return StreamingResponse(messages(), media_type="text/event-stream", headers=HEADERS)


async def backtest(request: Request) -> Response:
    c: Console = request.app.state.console
    job = c.backtests.jobs.get(request.path_params["job"])
    if job is None:
        return PlainTextResponse("no such backtest", 404)
    bar = c.templates.get_template("_progress.html")

    async def messages() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        while True:
            yield sse("progress", bar.render(job=job))
            if job.state in ("done", "failed"):
                yield sse("done", job.state)
                return
            await asyncio.sleep(0.3)

    return StreamingResponse(messages(), media_type="text/event-stream", headers=HEADERS)
