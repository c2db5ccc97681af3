"""The console's pages (request -> template). Reads go to threads where they touch SQLite or files."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
from collections import defaultdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from tripwire.envelope import EnvelopeError, parse_time_ms
from tripwire.log import TRIGGERS, LogError
from tripwire.logs import redact
from tripwire.rules import engine_status, explain

from . import charts, rulefiles
from .deliveries import clean
from .live import Filters
from .logread import decode, newest
from .person import journey, shown

if TYPE_CHECKING:
    from .app import Console

MAX_FORM_BYTES = 16_384
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}\Z")


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


async def live(request: Request) -> Response:
    c = _console(request)
    q = request.query_params
    filters = Filters(q.get("source", "").strip(), q.get("event", "").strip(), q.get("person", "").strip())
    minutes, series = c.tailer.chart()
    stream = "/live/stream?" + urllib.parse.urlencode({k: v for k, v in vars(filters).items() if v})
    return c.page(request, "live.html", {
        "filters": filters, "stream": stream, "chart": live_chart(c), "sources": sorted(series),
        "rows_per_s": c.settings.live_rows_per_s, "recent": c.tailer.newest(filters, "event", 50),
        "recent_invalid": c.tailer.newest(filters, "invalid", 20),
        "chart_note": "estimated from a sample" if c.tailer.estimated else "",
    })


def live_chart(c: Console) -> Any:
    minutes, series = c.tailer.chart()
    labels = [datetime.fromtimestamp(m, UTC).strftime("%H:%M") for m in minutes]
    return charts.bars(labels, series, what="events")


async def rules(request: Request) -> Response:
    c = _console(request)
    files = await asyncio.to_thread(rulefiles.load, c.config)
    status = await asyncio.to_thread(engine_status, c.config)
    endpoints = {e["name"]: e for e in await asyncio.to_thread(c.deliveries.endpoint_rows)}
    hours, per_rule, scanned = await _hourly(c)
    labels = [datetime.fromtimestamp(h, UTC).strftime("%H:00") for h in hours]
    running = status.get("instances", 0) > 0
    views = []
    for rule in files.plan.rules:
        st = status["rules"].get(rule.name) if running else None
        state = "not running" if not running else ("quarantined" if st and st["status"] == "quarantined" else
                                                    "loaded" if st else "not loaded yet")
        counts = per_rule.get(rule.name, [0] * len(hours))
        views.append({
            "rule": rule, "text": rule.rule.source.strip(), "explain": explain(rule), "state": state,
            "error": clean(st.get("error")) if st else "", "pending": st["pending"] if st else None,
            "triggers": st["triggers"] if st else None, "errors": st["errors"] if st else None,
            "day_total": sum(counts), "chart": charts.bars(labels, {rule.name: counts}, width=360, height=90,
                                                           what="triggers", legend=False),
            "endpoint": endpoints.get(rule.endpoint),
        })
    broken = {f: [d.headline() for d in ds] for f, ds in files.errors.items()}
    for f, heads in status.get("broken_files", {}).items():
        broken.setdefault(f, heads)
    return c.page(request, "rules.html", {
        "rules": views, "broken": broken, "warnings": {f: [d.headline() for d in ds] for f, ds in files.warnings.items()},
        "status": status, "running": running, "directory": files.directory, "scanned": scanned,
    })


async def _hourly(c: Console) -> tuple[list[int], dict[str, list[int]], int]:
    """Per rule, triggers per hour (of their event time) over the last 24 hours, from the triggers topic."""
    now = int(time.time()) // 3600 * 3600
    hours = [now - 3600 * i for i in range(23, -1, -1)]
    since_ms = hours[0] * 1000
    try:
        scan = await newest(c.log, TRIGGERS, since_ms - 3_600_000, c.settings.scan_max_records)
    except LogError:
        return hours, {}, 0
    out: dict[str, list[int]] = defaultdict(lambda: [0] * len(hours))
    for r in scan.records:
        t = decode(r)
        if t is None:
            continue
        try:
            fired = parse_time_ms(t.get("fired_at"), "fired_at") // 1000
        except EnvelopeError:
            continue
        i = (fired - hours[0]) // 3600
        if 0 <= i < len(hours):
            out[str(t.get("rule"))][i] += 1
    return hours, dict(out), scan.scanned


async def person(request: Request) -> Response:
    c = _console(request)
    pid = request.query_params.get("id", "").strip()
    chosen = request.query_params.get("rule", "")
    if not pid:
        return c.page(request, "person.html", {"journey": None, "pid": "", "chosen": chosen})
    files = await asyncio.to_thread(rulefiles.load, c.config)
    try:
        j = await journey(c.log, pid, rules=files.plan.rules, deliveries=c.deliveries,
                          limit=c.settings.scan_max_records, wait_ms=c.grace_ms + c.lateness_ms, links=c.links)
    except LogError as exc:
        return c.page(request, "person.html", {"journey": None, "pid": pid, "chosen": chosen,
                                               "error": f"the event log cannot be read: {redact(str(exc))}"}, 503)
    j.progress.sort(key=lambda p: _RANK.get(p.why.verdict, 5))
    if not chosen and j.progress:
        chosen = j.progress[0].rule.name
    return c.page(request, "person.html", {
        "journey": j, "pid": pid, "chosen": chosen, "events": [shown(e) for e in j.events],
        "grace_ms": c.grace_ms, "lateness_ms": c.lateness_ms,
    })


# the person page lists rules by how far this person got: the ones in motion first
_RANK = {"waiting": 0, "fired": 1, "stopped": 2, "cancelled": 2, "suppressed": 2, "replaced": 2, "not fired": 2,
         "never started": 3, "no events": 4}


async def backtest(request: Request) -> Response:
    c = _console(request)
    files = await asyncio.to_thread(rulefiles.load, c.config)
    names = [p.name for p in files.files]
    context: dict[str, Any] = {"files": names, "lake": redact(c.backtests.lake), "jobs": list(c.backtests.jobs.values())[::-1],
                               "running": c.backtests.running, "error": "", "form": {}}
    if request.method == "GET":
        return c.page(request, "backtest.html", context)
    form = await _form(request)
    refused = c.csrf.check(form.get("csrf"), request.headers)
    if refused:
        return PlainTextResponse(refused, 403)
    context["form"] = form
    name, since, until = form.get("file", ""), form.get("since", "") or None, form.get("until", "") or None
    if name not in names:
        context["error"] = f"choose one of the rules files in {files.directory}"
    elif any(d and not _DAY.match(d) for d in (since, until)):
        context["error"] = "days are written YYYY-MM-DD"
    elif since and until and since > until:
        context["error"] = f"the first day ({since}) is after the last ({until})"
    elif c.backtests.running is not None:
        context["error"] = "a backtest is running: wait for it to finish"
    if context["error"]:
        return c.page(request, "backtest.html", context, 400)
    job = c.backtests.start(files.directory / name, since, until)
    return RedirectResponse(f"/backtest/{job.id}", 303)


async def backtest_job(request: Request) -> Response:
    c = _console(request)
    job = c.backtests.jobs.get(request.path_params["job"])
    if job is None:
        return PlainTextResponse("no such backtest (the console keeps the last ten)", 404)
    chart = None
    if job.result is not None:
        days = sorted({d for r in job.result.rules.values() for d in r.per_day})
        chart = charts.bars(days, {n: [r.per_day.get(d, 0) for d in days] for n, r in job.result.rules.items()},
                            what="triggers", height=160)
    return c.page(request, "backtest_job.html", {"job": job, "chart": chart})


async def deliveries(request: Request) -> Response:
    c = _console(request)
    endpoints = await asyncio.to_thread(c.deliveries.endpoint_rows)
    dead = await asyncio.to_thread(c.deliveries.letters, "dead")
    failing = await asyncio.to_thread(c.deliveries.letters, "pending")
    replayed = request.query_params.get("replayed", "")
    note = request.query_params.get("note", "")
    return c.page(request, "deliveries.html", {
        "endpoints": endpoints, "dead": dead, "failing": failing, "replayed": replayed,
        "note": note if note in _NOTES else "", "store": c.deliveries.path.exists(),
    })


_NOTES = {"replaying", "pending", "missing"}


async def replay(request: Request) -> Response:
    c = _console(request)
    form = await _form(request)
    refused = c.csrf.check(form.get("csrf"), request.headers)
    if refused:
        return PlainTextResponse(refused, 403)
    trigger_id = form.get("id", "")
    message = await asyncio.to_thread(c.deliveries.replay, trigger_id)
    note = "replaying" if message.startswith("replaying") else "pending" if "already pending" in message else "missing"
    return RedirectResponse("/deliveries?" + urllib.parse.urlencode({"replayed": trigger_id, "note": note}), 303)


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (the console's forms are small; no multipart)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            break
    pairs = urllib.parse.parse_qsl(body[:MAX_FORM_BYTES].decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v.strip() for k, v in pairs}
