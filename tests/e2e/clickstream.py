"""A generated e-commerce clickstream of the public dataset's shape, for replaying history live.

Visitors (an anonymousId each) come back in sessions: a landing page view, product
views (some followed by a page view), add-to-carts of a viewed product, and some carts
go to checkout and an order. Gaps inside a session are 2 s to a few minutes; a
visitor's sessions never overlap. Times are milliseconds; events carry an explicit
``timestamp`` and no ``sentAt``, so the collector keeps each event's time as written
(tripwire/envelope.py) and the events are exactly as late as their timestamps say.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

PRICES = (5, 9, 12, 15, 19, 24, 29, 35, 49, 59, 79, 99, 120)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _mid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))  # canonical, as analytics clients send them


def _track(rng: random.Random, name: str, anon: str, t: int, **props: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "anonymousId": anon, "messageId": _mid(rng), "timestamp": iso(t),
            "properties": props}


def _page(rng: random.Random, anon: str, t: int, path: str) -> dict[str, Any]:
    return {"type": "page", "name": path, "anonymousId": anon, "messageId": _mid(rng), "timestamp": iso(t),
            "properties": {"path": path}, "context": {"page": {"path": path}}}


def session(rng: random.Random, anon: str, start: int, catalog: int = 400) -> tuple[list[dict[str, Any]], int]:
    """One visit, in time order, and the time of its last event."""
    t = start
    out = [_page(rng, anon, t, "/")]

    def step(mean_s: float) -> int:
        return max(2000, int(rng.expovariate(1 / mean_s) * 1000))

    cart: list[tuple[str, int]] = []
    for _ in range(rng.randint(1, 8)):
        t += step(40)
        sku = f"sku-{rng.randrange(catalog)}"
        price = PRICES[int(sku[4:]) % len(PRICES)]
        out.append(_track(rng, "Product Viewed", anon, t, sku=sku, price=price))
        if rng.random() < 0.3:
            t += step(25)
            out.append(_page(rng, anon, t, f"/p/{sku}"))
        if rng.random() < 0.22:
            t += step(30)
            cart.append((sku, price))
            out.append(_track(rng, "Product Added", anon, t, sku=sku, price=price, quantity=1))
    if cart and rng.random() < 0.55:
        t += step(90)
        total = sum(p for _, p in cart)
        out.append(_track(rng, "Checkout Started", anon, t, total=total, items=len(cart)))
        if rng.random() < 0.75:
            t += step(60)
            out.append(_track(rng, "Order Completed", anon, t, total=total, order_id=f"o-{_mid(rng)[:8]}"))
    return out, t


def clickstream(rng: random.Random, users: list[str], from_ms: int, to_ms: int, sessions: int) -> list[dict[str, Any]]:
    """About ``sessions`` visits by ``users``, starting between ``from_ms`` and ``to_ms``, in time order.

    A visitor's next session starts after the previous one ended (plus at least a minute), so
    sessions can run a little past ``to_ms``."""
    starts: dict[str, list[int]] = {}
    for _ in range(sessions):
        starts.setdefault(rng.choice(users), []).append(rng.randrange(from_ms, to_ms))
    events = []
    for anon, ts in starts.items():
        free = from_ms
        for start in sorted(ts):
            visit, end = session(rng, anon, max(start, free))
            events.extend(visit)
            free = end + 60_000
    events.sort(key=lambda e: e["timestamp"])  # ISO 8601 UTC with milliseconds sorts as time (stable)
    return events

