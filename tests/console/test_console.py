"""The console over the wire (its own uvicorn, a real SQLite log and webhook store): pages, the live stream,
the replay form and who may use it."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from tripwire.console import ConsoleConfigError, ConsoleService
from tripwire.log.sqlite import SqliteLog
from tripwire.webhooks import Store

from tests.fixtures.waiting import until

from .helpers import HOOK, RULES, SECRET, Running, config_for, envelope, running

NOW = int(time.time() * 1000)
PAGES = ["/live", "/rules", "/person?id=anon-1", "/person?id=anon-1&rule=abandoned%20cart", "/deliveries", "/backtest"]


async def test_every_page_renders_without_an_ip_a_url_token_or_a_secret(console: Running) -> None:
    await console.append(envelope("AddToCart", "anon-1", NOW - 60_000, "m-1", price=12, sku="s1"),
                         envelope("Checkout", "anon-1", NOW - 50_000, "m-2"))
    console.dead_letter("trg_1", "anon-1")
    await console.append_trigger({"id": "trg_1", "rule": "abandoned cart", "endpoint": "crm", "key": "anon-1",
                                  "fired_at": "2026-01-01T00:00:30.000Z", "events": [], "payload": {"sku": "s1"}})
    for path in PAGES:
        page = await console.client.get(path)
        assert page.status_code == 200, (path, page.text[:500])
        for leak in ("203.0.113", "secret-token-123", SECRET, "tok-999"):
            assert leak not in page.text, f"{path} shows {leak!r}"
        assert "script-src 'nonce-" in page.headers["content-security-policy"]
    deliveries = (await console.client.get("/deliveries")).text
    assert "https://hooks.example.com/***" in deliveries  # scheme and host only
    person = (await console.client.get("/person?id=anon-1")).text
    assert "/cart?..." in person  # the page URL without its query


async def test_the_person_page_names_the_failing_condition_with_the_value(console: Running) -> None:
    await console.append(envelope("AddToCart", "anon-2", NOW - 60_000, "m-3", price=12, sku="s1"))
    page = (await console.client.get("/person", params={"id": "anon-2", "rule": "abandoned cart"})).text
    assert "never started" in page
    assert "cart.properties.price &gt;= 20</code> is <b>false</b>" in page
    assert "<code>cart.properties.price</code> is <code>12</code>" in page


async def test_replay_needs_the_forms_csrf_token_and_puts_a_dead_letter_back(console: Running) -> None:
    console.dead_letter("trg_dead", "anon-3")
    refused = await console.client.post("/deliveries/replay", data={"id": "trg_dead"})
    assert refused.status_code == 403
    token = await console.csrf()
    foreign = await console.client.post("/deliveries/replay", data={"id": "trg_dead", "csrf": token},
                                        headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403 and "another origin" in foreign.text
    store = Store(console.store_path)
    try:
        assert store.get("trg_dead").state == "dead"  # type: ignore[union-attr]
        done = await console.client.post("/deliveries/replay", data={"id": "trg_dead", "csrf": token})
        assert done.status_code == 303
        assert store.get("trg_dead").state == "pending"  # type: ignore[union-attr]
    finally:
        store.close()
    note = (await console.client.get(done.headers["location"])).text
    assert "Replaying <span class=\"mono\">trg_dead</span>" in note


async def test_without_a_token_only_loopback_host_names_are_answered(console: Running) -> None:
    assert (await console.client.get("/live", headers={"Host": "localhost"})).status_code == 200
    rebound = await console.client.get("/live", headers={"Host": "attacker.example"})
    assert rebound.status_code == 421


async def test_a_token_is_required_when_set_and_compared_whole(tmp_path: Path) -> None:
    async with running(config_for(tmp_path, token="s3cr3t-token")) as r:
        assert (await r.client.get("/live")).status_code == 401
        assert "WWW-Authenticate" in (await r.client.get("/live")).headers
        for wrong in ("s3cr3t", "s3cr3t-token-", ""):
            basic = base64.b64encode(f"me:{wrong}".encode()).decode()
            assert (await r.client.get("/live", headers={"Authorization": f"Basic {basic}"})).status_code == 401
        basic = base64.b64encode(b"anyone:s3cr3t-token").decode()
        assert (await r.client.get("/live", headers={"Authorization": f"Basic {basic}"})).status_code == 200
        assert (await r.client.get("/rules", headers={"Authorization": "Bearer s3cr3t-token"})).status_code == 200
        # with a token any Host name is fine (the token is what protects it)
        assert (await r.client.get("/live", headers={"Authorization": "Bearer s3cr3t-token",
                                                     "Host": "console.internal"})).status_code == 200


def test_a_non_loopback_address_without_a_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConsoleConfigError, match=r"'console.host' is '0.0.0.0'.*set \[console\] token"):
        ConsoleService(config_for(tmp_path, host="0.0.0.0"), SqliteLog(tmp_path / "log.db"))


async def test_a_taken_port_stops_start_up_only_when_it_was_chosen(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    log = SqliteLog(tmp_path / "log.db")
    await log.start()
    try:
        chosen = ConsoleService(config_for(tmp_path, port=port), log, port_set=True)
        with pytest.raises(ConsoleConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            await chosen.start()
        default = ConsoleService(config_for(tmp_path, port=port), log, port_set=False)
        await default.start()  # the default port taken: a warning, and the rest of the stack runs
        assert not default.serving
        await default.stop()
    finally:
        taken.close()
        await log.stop()


async def _messages(client: httpx.AsyncClient, path: str) -> AsyncIterator[tuple[str, str]]:
    async with client.stream("GET", path) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event, data = "", []
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line and event:
                yield event, "\n".join(data)
                event, data = "", []


async def test_the_live_stream_filters_by_person_and_shows_invalid_events_with_their_reason(console: Running) -> None:
    seen: list[tuple[str, str]] = []

    async def read() -> None:
        async for event, data in _messages(console.client, "/live/stream?person=anon-9"):
            seen.append((event, data))
            if event == "invalid":
                return

    reader = asyncio.create_task(read())
    await _until(lambda: console.service.console.tailer.subscriptions, "the stream to subscribe")
    await console.append(envelope("AddToCart", "someone-else", NOW, "m-other", price=30))
    await console.append(envelope("AddToCart", "anon-9", NOW, "m-mine", price=30))
    await console.append_invalid(envelope("AddToCart", "anon-9", NOW, "m-bad", price="x"), "schema",
                                 "properties.price must be number")
    await asyncio.wait_for(reader, 10)
    rows = [d for e, d in seen if e == "event"]
    assert len(rows) == 1 and 'data-mid="m-mine"' in rows[0]
    (bad,) = [d for e, d in seen if e == "invalid"]
    assert "schema" in bad and "properties.price must be number" in bad


async def test_the_live_stream_samples_a_burst_and_says_so(console: Running) -> None:
    cap = console.service.console.settings.live_rows_per_s
    rows, stats = 0, ""

    async def read() -> None:
        nonlocal rows, stats
        async for event, data in _messages(console.client, "/live/stream"):
            rows += event == "event"
            if event == "stats" and "sampled" in data:
                stats = data
                return

    reader = asyncio.create_task(read())
    await _until(lambda: console.service.console.tailer.subscriptions, "the stream to subscribe")
    await console.append(*[envelope("PageView", f"v{i}", NOW, f"burst-{i}") for i in range(2000)])
    await asyncio.wait_for(reader, 10)
    assert rows <= cap * 2, f"{rows} rows streamed for a burst: the view must sample (at most {cap}/s)"
    m = re.search(r"<b>(\d+)</b> shown of (\d+) matching", stats)
    assert m, stats
    shown, matched = int(m.group(1)), int(m.group(2))
    assert shown <= cap < matched, stats


async def _until(probe, what: str, timeout_s: float = 10) -> None:  # type: ignore[no-untyped-def]
    await until(probe, timeout_s, what)


async def test_rules_whynot_in_the_terminal_gives_the_same_answer(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.fixtures.servers import REPO

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "shop.rules").write_text(RULES)
    (tmp_path / "tripwire.toml").write_text(
        f'data_dir = "data"\n[rules]\ndir = "rules"\n[endpoints.crm]\nurl = "{HOOK}"\nsecret = "{SECRET}"\n')
    (tmp_path / "data").mkdir()
    log = SqliteLog(tmp_path / "data" / "log.db", 4)
    await log.start()
    env = envelope("AddToCart", "anon-t", NOW - 60_000, "m-t", price=12)
    await log.append("events", [(b"anon-t", orjson.dumps(env))])
    await log.stop()
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "tripwire", "--config", str(tmp_path / "tripwire.toml"), "rules", "whynot",
                         "abandoned cart", "--person", "anon-t"],
        capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "key anon-t: never started" in done.stdout
    assert "cart.properties.price >= 20 is false (cart.properties.price is 12)" in done.stdout
