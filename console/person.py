"""One person's journey: events, triggers, deliveries, and each rule's progress with "why not".

Finding a person. The events topic is keyed by the engine's correlation key
(``anonymousId``, else ``userId``), so the events of an id are in one partition
(:mod:`console.logread`). Starting from the id asked for, the ids found next to it
in its events (an identify carries both ``anonymousId`` and ``userId``) are
looked up too, one hop: that joins a browser's anonymous history and a backend's
userId-only events once the two ids appear together in an event. Ids linked
elsewhere (an identity-link store) come in through :data:`Links`: the ids it
returns for the id asked for are searched as well.

Each rule's progress is :func:`tripwire.rules.why_not` over the events of one
correlation key, with the wall clock and the engine's grace and reorder buffer:
the step it waits at (and until when), where it stopped and why, or when it fired.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tripwire.log import EVENTS, TRIGGERS, EventLog
from tripwire.rules import RulePlan, WhyNot, why_not
from tripwire.triggers import Trigger

from .deliveries import Attempt, Deliveries
from .logread import Scan, by_keys, decode

# id -> other ids of the same person known elsewhere (an identity-link store); none by default
Links = Callable[[str], Iterable[str]]


def no_links(person: str) -> Iterable[str]:
    return ()


@dataclass
class RuleProgress:
    rule: RulePlan
    key: str
    why: WhyNot


@dataclass
class Journey:
    person: str
    ids: list[str]  # every id searched: the one asked for first
    events: list[dict[str, Any]]  # envelopes, event-time order
    triggers: list[Trigger]
    deliveries: dict[str, tuple[Any, list[Attempt]]]  # trigger id -> (delivery row, attempts)
    progress: list[RuleProgress] = field(default_factory=list)
    scanned: int = 0
    complete: bool = True
    oldest_ms: int | None = None


def engine_key(env: dict[str, Any], rule: RulePlan) -> str | None:
    """The key the engine correlates ``env`` under for ``rule`` (the log key; ``by anonymousId``: that alone)."""
    anonymous = env.get("anonymousId")
    if rule.by_anonymous_id:
        return anonymous if isinstance(anonymous, str) and anonymous else None
    key = anonymous or env.get("userId")
    return key if isinstance(key, str) and key else None


async def journey(log: EventLog, person: str, *, rules: Iterable[RulePlan], deliveries: Deliveries | None,
                  limit: int, wait_ms: int, links: Links = no_links, now_ms: int | None = None) -> Journey:
    ids = [person] + [i for i in dict.fromkeys(links(person)) if i and i != person]
    scan = await by_keys(log, EVENTS, ids, limit)
    found = [e for e in (decode(r) for r in scan.records) if e is not None]
    more = [i for e in found for i in (e.get("anonymousId"), e.get("userId"))
            if isinstance(i, str) and i and i not in ids]
    if more:  # one hop: the ids seen next to it
        more = list(dict.fromkeys(more))
        ids += more
        extra = await by_keys(log, EVENTS, more, limit)
        found += [e for e in (decode(r) for r in extra.records) if e is not None]
        scan = _merged(scan, extra)
    events = _unique(found)
    tscan = await by_keys(log, TRIGGERS, ids, limit)
    triggers = []
    for r in tscan.records:
        try:
            triggers.append(Trigger.from_json(r.value))
        except (TypeError, ValueError):
            continue
    triggers.sort(key=lambda t: t.fired_at)
    delivered: dict[str, tuple[Any, list[Attempt]]] = {}
    if deliveries is not None:
        for t in triggers:
            got = deliveries.delivery(t.id)
            if got is not None:
                delivered[t.id] = got
    out = Journey(person, ids, events, triggers, delivered, [], scan.scanned + tscan.scanned,
                  scan.complete and tscan.complete, scan.oldest_ms)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    for rule in rules:
        by_key: dict[str, list[dict[str, Any]]] = {}
        for env in events:
            key = engine_key(env, rule)
            if key is not None:
                by_key.setdefault(key, []).append(env)
        if not by_key:
            out.progress.append(RuleProgress(rule, person, why_not(rule, [], now_ms=now, wait_ms=wait_ms, key=person)))
            continue
        for key, envs in sorted(by_key.items(), key=lambda kv: max(_t(e) for e in kv[1]), reverse=True):
            out.progress.append(RuleProgress(rule, key, why_not(rule, envs, now_ms=now, wait_ms=wait_ms, key=key)))
    return out


def _t(env: dict[str, Any]) -> str:
    return str(env.get("timestamp") or "")


def _unique(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[Any] = set()
    out = []
    for env in events:
        mid = env.get("messageId")
        if mid in seen:
            continue
        seen.add(mid)
        out.append(env)
    out.sort(key=_t)
    return out


def _merged(a: Scan, b: Scan) -> Scan:
    oldest = [x for x in (a.oldest_ms, b.oldest_ms) if x is not None]
    return Scan(a.records + b.records, a.scanned + b.scanned, a.complete and b.complete, min(oldest) if oldest else None)


def shown(env: dict[str, Any]) -> dict[str, Any]:
    """An event as the person page prints it: no IP at all, page URLs without their query (tokens live there)."""
    out = dict(env)
    ctx = env.get("context")
    if isinstance(ctx, dict):
        ctx = {k: v for k, v in ctx.items() if k != "ip"}
        page = ctx.get("page")
        if isinstance(page, dict):
            ctx["page"] = {k: (_no_query(v) if k in ("url", "referrer", "search") and isinstance(v, str) else v)
                           for k, v in page.items()}
        out["context"] = ctx
    props = env.get("properties")
    if env.get("type") == "page" and isinstance(props, dict):  # the snippet copies the page's URL here too
        out["properties"] = {k: (_no_query(v) if k in ("url", "referrer", "search") and isinstance(v, str) else v)
                             for k, v in props.items()}
    return out


def _no_query(url: str) -> str:
    if url.startswith("?"):
        return "?..." if len(url) > 1 else url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "..."
    tail = "?..." if parts.query else ""
    host = parts.netloc.rsplit("@", 1)[-1]  # never credentials
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", "")) + tail
