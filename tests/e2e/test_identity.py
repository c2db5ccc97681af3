"""One person across browser and server (issue 14), end to end with real components.

The snippet in Chromium adds to cart and identifies; the shop's backend, a
process of its own using the official ``segment-analytics-python`` SDK, sends
``Order Completed`` with the userId only. The collector keys that order by the
browser's anonymousId (the link learned at identify), so the abandoned-cart
rule (here: no order within the window) does not fire for the shopper who paid,
and fires once, naming the userId and the anonymousId, for the one who did not.
Embedded (``tripwire run``) and scaled out on tansu (the link learned at
collector 1, the order arriving at collector 2, two engines). Then
``tripwire lake forget --user`` after a linked journey: no lake row of either
id is left, the links are gone and the engine forgot the keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from playwright.sync_api import sync_playwright

from tests.e2e.procs import Proc, collector
from tests.e2e.stack import (BACKEND_KEY, EXAMPLES, SECRET, SHOP_KEY, by_rule, deliveries, event, example_config,
                             fast_env, lake_rows, wait_until)
from tests.e2e.test_scale_out import CHROMIUM_ARGS, assigned, demo_site  # noqa: F401  (demo_site: a fixture)
from tests.fixtures.servers import REPO, run_command
from tests.fixtures.tansu import TansuBroker, free_port
from tripwire.log.sqlite import SqliteLog

BACKEND = Path(__file__).with_name("backend.py")


def order_cancels_the_cart(config: Path) -> None:
    """The examples' abandoned-cart rule, cancelled by an order (what the backend sends) instead of a checkout."""
    rules = config.parent / "rules" / "shop.rules"
    text = rules.read_text()
    assert 'then no "Checkout Started"' in text
    rules.write_text(text.replace('then no "Checkout Started"', 'then no "Order Completed"'))


def backend(url: str, *events: dict[str, Any]) -> None:
    """The shop's backend: the Segment Python SDK in its own process, with the server-side write key."""
    done = subprocess.run([sys.executable, str(BACKEND), url, BACKEND_KEY, json.dumps(list(events))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def shop(page_url: str, visitors: dict[str, str]) -> dict[str, str]:
    """Each visitor (name -> userId) adds the shoe to the cart in Chromium, then identifies; their anonymousIds.

    Waits until the collector answered 200 to batches holding all four events (page view, Product
    Viewed, Product Added, identify), as seen on the wire.
    """
    seen: dict[str, str] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            for name, user in visitors.items():
                context = browser.new_context()
                page = context.new_page()
                acked: dict[str, dict[str, Any]] = {}

                def finished(request: Any, acked: dict[str, dict[str, Any]] = acked) -> None:
                    response = request.response()
                    if "/v1/batch" in request.url and response is not None and response.status == 200:
                        for e in orjson.loads(request.post_data)["batch"]:
                            acked[e["messageId"]] = e

                page.on("requestfinished", finished)
                page.goto(page_url)
                page.wait_for_function("window.tw && window.tw.l === 1", timeout=15_000)
                page.click("#add")
                page.evaluate(f"tw('identify', {json.dumps(user)}, {{plan: 'pro'}})")
                deadline = time.monotonic() + 30
                while {e["type"] for e in acked.values()} != {"page", "track", "identify"} or len(acked) < 4:
                    assert time.monotonic() < deadline, f"{name}: the collector acknowledged only {list(acked.values())}"
                    page.wait_for_timeout(100)
                (seen[name],) = {e["anonymousId"] for e in acked.values()}
                assert {e.get("userId") for e in acked.values() if e["type"] == "identify"} == {user}
                context.close()
        finally:
            browser.close()
    return seen


def order(user: str, total: float = 120) -> dict[str, Any]:
    return {"call": "track", "user_id": user, "event": "Order Completed",
            "properties": {"order_id": f"o-{user}", "total": total}}


def check_outcome(out: Path, anon: dict[str, str]) -> dict[str, Any]:
    """The leaver's abandoned cart arrives once, naming the person; the payer's never (its deadline came first).

    The payer's order (120, userId only) fires "big order" under the payer's browser key, as the README says.
    """
    wanted = {("abandoned cart", anon["leaver"]), ("big order", anon["payer"])}
    got = wait_until(lambda: (lambda d: d if wanted <= set(d) else None)(by_rule(deliveries(out))),
                     90, "the leaver's abandoned-cart and the payer's big-order webhooks")
    (big,) = got[("big order", anon["payer"])]
    paid = big["body"]["data"]
    assert (paid["userId"], paid["anonymousId"], paid["identity"]) == ("user-pay", anon["payer"], "claimed")
    assert paid["events"][0]["userId"] == "user-pay" and "anonymousId" not in paid["events"][0]  # as sent
    (hook,) = got[("abandoned cart", anon["leaver"])]
    data = hook["body"]["data"]
    assert (data["key"], data["userId"], data["anonymousId"]) == (anon["leaver"], "user-leave", anon["leaver"])
    assert data["identity"] == "claimed"  # the browser's identify is a claim: its source's write key is public
    assert data["payload"]["sku"] == "shoe-42"
    assert all("context" not in e for e in data["events"])  # the default: minimal events, no IP/UA/URL
    assert ("abandoned cart", anon["payer"]) not in got, "the payer's order did not cancel the cart"
    assert set(got) == wanted, set(got)
    return data


def test_the_snippet_and_the_segment_sdk_meet_in_one_rule_state(tmp_path: Path, demo_site: tuple[Path, int]) -> None:
    config = example_config(tmp_path / "site", abandon_after="20s")
    order_cancels_the_cart(config)
    out = tmp_path / "received.jsonl"
    site_root, site_port = demo_site
    receiver_args = ["webhooks", "receive", "--port", "0", "--secret", SECRET, "--out", str(out)]
    with run_command(receiver_args) as receiver:
        env = fast_env(receiver.port, TRIPWIRE_SOURCES__SHOP__ORIGINS=f'["http://127.0.0.1:{site_port}"]')
        with run_command(["--config", str(config), "run", "--port", "0"], env=env) as run:
            page = (EXAMPLES / "demo" / "index.html").read_text().replace("http://127.0.0.1:8080", run.url)
            (site_root / "index.html").write_text(page)
            anon = shop(f"http://127.0.0.1:{site_port}/", {"payer": "user-pay", "leaver": "user-leave"})
            backend(run.url, order("user-pay"))
            check_outcome(out, anon)
            assert run.stop() == 0


def test_scale_out_link_learned_at_one_collector_keys_an_order_at_the_other(
        tmp_path: Path, tansu: TansuBroker, demo_site: tuple[Path, int]) -> None:
    config = example_config(tmp_path / "site", abandon_after="20s")
    order_cancels_the_cart(config)
    logs = tmp_path / "logs"
    logs.mkdir()
    site_root, site_port = demo_site
    out = tmp_path / "received.jsonl"
    receiver = Proc("receiver", ["webhooks", "receive", "--port", str(rport := free_port()), "--secret", SECRET,
                                 "--out", str(out)], logs, port=rport)
    env = fast_env(rport, **{
        "TRIPWIRE_LOG__BACKEND": "kafka",
        "TRIPWIRE_LOG__KAFKA_BOOTSTRAP": tansu.bootstrap,
        "TRIPWIRE_LOG__PARTITIONS": "4",
        "TRIPWIRE_COLLECTOR__PII_SALT": "e2e-shared-salt",
        "TRIPWIRE_SOURCES__SHOP__ORIGINS": f'["http://127.0.0.1:{site_port}"]',
        "TRIPWIRE_RULES__CHECKPOINT_URL": str(tmp_path / "checkpoints"),
        "TRIPWIRE_RULES__CHECKPOINT_INTERVAL_MS": "300",
    })
    procs = [
        receiver,
        c1 := collector("collector-1", config, logs, env, tmp_path / "c1"),
        c2 := collector("collector-2", config, logs, env, tmp_path / "c2"),
        e1 := Proc("engine-1", ["--config", str(config), "engine"], logs, {**env, "TRIPWIRE_DATA_DIR": str(tmp_path / "e1")}),
        e2 := Proc("engine-2", ["--config", str(config), "engine"], logs, {**env, "TRIPWIRE_DATA_DIR": str(tmp_path / "e2")}),
        Proc("dispatcher", ["--config", str(config), "dispatcher"], logs, {**env, "TRIPWIRE_DATA_DIR": str(tmp_path / "d")}),
    ]
    try:
        for proc in procs:
            proc.start()
        wait_until(lambda: (lambda a, b: bool(a) and bool(b) and not a & b and a | b == {0, 1, 2, 3})(assigned(e1), assigned(e2)),
                   90, "the two engines to share the 4 partitions")
        for c in (c1, c2):  # ready: the collector has read the identity links topic
            wait_until(lambda c=c: httpx.get(f"http://127.0.0.1:{c.port}/readyz", timeout=5).status_code == 200, 60,
                       f"{c.name} ready")
        page = (EXAMPLES / "demo" / "index.html").read_text().replace("http://127.0.0.1:8080", f"http://127.0.0.1:{c1.port}")
        (site_root / "index.html").write_text(page)
        anon = shop(f"http://127.0.0.1:{site_port}/", {"payer": "user-pay", "leaver": "user-leave"})
        # The link is learned at collector 1; collector 2 knows it once its follower has read it from the
        # identities topic (the window deploy/README.md measures). The order goes to collector 2 after that.
        wait_until(lambda: knows(tmp_path / "c2", "user-pay"), 30, "collector 2 to know user-pay's link")
        backend(f"http://127.0.0.1:{c2.port}", order("user-pay"))
        check_outcome(out, anon)
        for proc in reversed(procs):
            assert proc.stop() == 0, proc.output()[-3000:]
    finally:
        for proc in procs:
            proc.kill9()


def test_lake_forget_after_a_linked_journey_leaves_no_row_of_either_id(tmp_path: Path) -> None:
    config = example_config(tmp_path / "site", abandon_after="20s")
    data_dir = tmp_path / "site" / "data"
    out = tmp_path / "received.jsonl"
    receiver_args = ["webhooks", "receive", "--port", "0", "--secret", SECRET, "--out", str(out)]
    shop_headers = {"Origin": "http://127.0.0.1:8000"}  # an origin the examples' shop source allows
    with run_command(receiver_args) as receiver:
        env = fast_env(receiver.port)
        with run_command(["--config", str(config), "run", "--port", "0"], env=env) as run:
            # The person: a cart as anonymous-1, login as person-1, an order from the backend (userId only).
            cart = event("Product Added", "anonymous-1", sku="shoe-42", quantity=1, price=49)
            login = {**event("Page", "anonymous-1"), "type": "identify", "userId": "person-1"}
            del login["event"]
            # Someone else, left alone: their abandoned cart is the witness that the engine's time passed.
            other = event("Product Added", "anonymous-2", sku="hat", quantity=1, price=15)
            r = httpx.post(f"{run.url}/v1/batch", json={"batch": [cart, login, other], "writeKey": SHOP_KEY},
                           headers=shop_headers, timeout=10)
            assert r.status_code == 200, r.text
            backend(run.url, order("person-1"))

            def journey_in_lake() -> list[Any] | None:
                rows = lake_rows(str(data_dir / "lake"), "SELECT anonymous_id, user_id, event, type FROM t")
                return rows if len(rows) >= 4 else None
            rows = wait_until(journey_in_lake, 60, "the journey's rows in the lake")
            assert ("anonymous-1", None, "Product Added", "track") in rows
            assert (None, "person-1", "Order Completed", "track") in rows  # its own ids: no anonymousId added
            assert asyncio.run(_links(data_dir, "person-1")) == ["anonymous-1"]

            forgot = subprocess.run([sys.executable, "-m", "tripwire", "--config", str(config), "lake", "forget",
                                     "--user", "person-1"], capture_output=True, text=True, timeout=120, cwd=REPO,
                                    env={**os.environ, **env, "PYTHONPATH": str(REPO)})
            assert forgot.returncode == 0, forgot.stdout + forgot.stderr
            assert "identity links in the event log: anonymous-1" in forgot.stdout, forgot.stdout
            assert "the rules engine forgets 2 key(s) (person-1, anonymous-1)" in forgot.stdout, forgot.stdout

            left = lake_rows(str(data_dir / "lake"), "SELECT anonymous_id, user_id FROM t")
            assert left and not [r for r in left if "anonymous-1" in r or "person-1" in r], left
            assert asyncio.run(_links(data_dir, "person-1")) == []
            # The engine dropped anonymous-1's pending cart: the other visitor's fires, this one never.
            got = wait_until(lambda: (lambda d: d if ("abandoned cart", "anonymous-2") in d else None)(by_rule(deliveries(out))),
                             90, "the other visitor's abandoned cart")
            assert ("abandoned cart", "anonymous-1") not in got
            assert run.stop() == 0
    rows = lake_rows(str(data_dir / "lake"), "SELECT anonymous_id, user_id FROM t")
    assert not [r for r in rows if "anonymous-1" in r or "person-1" in r], rows  # the sink skipped the erasure records


def knows(data_dir: Path, user: str) -> bool:
    """Whether a Kafka collector's local copy of the identity links (data_dir/identities/<pid>.db) has ``user``."""
    import sqlite3

    for path in (data_dir / "identities").glob("*.db"):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            if conn.execute("SELECT 1 FROM identity_links WHERE user_id = ?", (user,)).fetchone():
                return True
        except sqlite3.Error:
            pass
        finally:
            conn.close()
    return False


async def _links(data_dir: Path, user: str) -> list[str]:
    log = SqliteLog(data_dir / "log.db", 4)
    await log.start()
    try:
        return sorted(x.anonymous_id for x in (await log.links([user])).get(user, []))
    finally:
        await log.stop()
