"""The console in Debian chromium against a real stack (`tripwire run` subprocess), issue 17's "Tests that show it".

Events come from the snippet in a page of a test site (the real tracker served by the collector) and from a
server through the HTTP API (as a Segment server SDK posts /v1/batch); webhooks go to real loopback receivers.
Every test saves a screenshot of the page it looked at in the pytest tmp dir (``console-screenshots``; the
path is printed), so anyone can look at the pages; they are not committed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.fixtures.browser import chromium  # noqa: F401  (fixture)
from tests.fixtures.servers import REPO, Process, run_command
from tests.fixtures.tansu import free_port
from tests.fixtures.waiting import wait_until
from tests.js_snippet.helpers import Site, stored
from tests.webhooks.receiver import Receiver, Reply

SECRET = "whsec_Y4PBOb53VF7OoWLmD0wZfsT9u0Rr2vhV"
SHOP_KEY, BACKEND_KEY = "shop-key", "backend-key"
RULES = """
rule "abandoned cart"
  when AddToCart as cart where cart.properties.price >= 20
  then no Checkout within 3s
  post crm with { sku: cart.properties.sku, price: cart.properties.price }

rule "big order"
  when "Order Completed" as order where order.properties.total >= 100
  post ads with { total: order.properties.total }
"""


@dataclass
class Stack:
    proc: Process
    collector: str
    console: str
    crm: Receiver
    ads: Receiver
    ads_ok: threading.Event
    site: Site
    shots: Path
    data_dir: Path

    def send(self, *events: dict[str, Any], key: str = BACKEND_KEY) -> None:
        """As a server SDK does: POST /v1/batch with the source's write key."""
        reply = httpx.post(f"{self.collector}/v1/batch", json={"batch": list(events)}, auth=(key, ""), timeout=10)
        assert reply.status_code == 200, reply.text

    def shot(self, page: Page, name: str) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


def track(name: str, *, anonymous_id: str | None = None, user_id: str | None = None, **props: Any) -> dict[str, Any]:
    env: dict[str, Any] = {"type": "track", "event": name, "messageId": str(uuid.uuid4()), "properties": props,
                           "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")}
    if anonymous_id:
        env["anonymousId"] = anonymous_id
    if user_id:
        env["userId"] = user_id
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("console-stack")
    shots = tmp_path_factory.mktemp("console-screenshots")
    (root / "rules").mkdir()
    (root / "rules" / "shop.rules").write_text(RULES)
    ads_ok = threading.Event()
    crm = Receiver().start()
    ads = Receiver(lambda req, n: Reply(200) if ads_ok.is_set() else Reply(500, body=b"down")).start()
    site = Site()
    site.server.start()
    collector_port, console_port = free_port(), free_port()
    (root / "tripwire.toml").write_text(f"""
data_dir = "data"
[server]
port = {collector_port}
[sources.shop]
write_key = "{SHOP_KEY}"
origins = ["{site.origin}"]
[sources.backend]
write_key = "{BACKEND_KEY}"
origins = []
[rules]
dir = "rules"
grace = "1s"
allowed_lateness_ms = 500
reload_interval_ms = 200
[endpoints.crm]
url = "{crm.url}"
secret = "{SECRET}"
[endpoints.ads]
url = "{ads.url}"
secret = "{SECRET}"
[webhooks]
allow_networks = ["127.0.0.1/32"]
retry_schedule_s = [0, 0.2]
retry_jitter = 0
scan_interval_s = 0.2
[sink]
max_file_age_s = 1
[console]
port = {console_port}
""")
    try:
        with run_command(["--config", str(root / "tripwire.toml"), "run"], cwd=root,
                         ready_url=f"http://127.0.0.1:{collector_port}/healthz", timeout_s=60) as proc:
            console = f"http://127.0.0.1:{console_port}"
            _wait(lambda: _answers(f"{console}/healthz"), 30, "the console to answer")
            yield Stack(proc, f"http://127.0.0.1:{collector_port}", console, crm, ads, ads_ok, site, shots,
                        root / "data")
    finally:
        print(f"\nconsole screenshots: {shots}")
        site.server.stop()
        crm.stop()
        ads.stop()


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:  # noqa: F811
    ctx = chromium.new_context(viewport={"width": 1360, "height": 900})
    errors: list[str] = []
    ctx.on("weberror", lambda e: errors.append(str(e.error)))
    try:
        yield ctx
    finally:
        ctx.close()
    assert not errors, f"a console page saw uncaught errors: {errors}"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(probe: Any, timeout_s: float, what: str) -> Any:
    return wait_until(probe, timeout_s, what, interval_s=0.1)


def _shop_page(stack: Stack, context: BrowserContext) -> tuple[Page, str]:
    url = stack.site.add(f"/shop-{uuid.uuid4().hex[:8]}", stack.collector, key=SHOP_KEY, attrs='data-interval="200"')
    page = context.new_page()
    page.goto(url)
    page.wait_for_function("window.tw && window.tw.l")
    anonymous_id = _wait(lambda: stored(page).get("tw_i", {}).get("a"), 10, "the snippet's anonymousId")
    return page, anonymous_id


def test_the_live_page_shows_snippet_and_server_events_within_a_second(stack: Stack, context: BrowserContext) -> None:
    live = context.new_page()
    live.goto(f"{stack.console}/live")
    expect(live.locator("#stats")).to_contain_text("events/s arriving", timeout=10_000)  # the stream is open
    shop, anonymous_id = _shop_page(stack, context)
    with shop.expect_response(lambda r: r.url.endswith("/v1/batch") and r.status == 200) as sent:
        shop.evaluate("tw('track', 'AddToCart', {sku: 'shoe-42', price: 9})")
    acknowledged = time.monotonic()
    assert sent.value.ok
    expect(live.locator("#rows tr", has_text=anonymous_id).filter(has_text="AddToCart")).to_be_visible(timeout=1000)
    browser_s = time.monotonic() - acknowledged
    order = track("Order Completed", user_id="u-live", total=42, order_id="o-1")
    stack.send(order)
    acknowledged = time.monotonic()
    expect(live.locator(f'#rows tr[data-mid="{order["messageId"]}"]')).to_be_visible(timeout=1000)
    server_s = time.monotonic() - acknowledged
    print(f"\nlive page: the snippet's event shown {browser_s * 1000:.0f} ms, the server's {server_s * 1000:.0f} ms "
          "after the collector acknowledged it")
    expect(live.locator("#rows tr", has_text="$page").filter(has_text=anonymous_id)).to_be_visible()
    stack.shot(live, "live")


def test_the_person_page_shows_the_abandoned_cart_waiting_then_fired_with_its_delivery(
        stack: Stack, context: BrowserContext) -> None:
    shop, anonymous_id = _shop_page(stack, context)
    with shop.expect_response(lambda r: r.url.endswith("/v1/batch") and r.status == 200):
        shop.evaluate("tw('track', 'AddToCart', {sku: 'boot-7', price: 49})")
    page = context.new_page()
    page.goto(f"{stack.console}/person?id={anonymous_id}")
    row = page.locator('tr.rule-row[data-rule="abandoned cart"]')
    expect(row).to_have_attribute("data-verdict", "waiting")
    expect(row).to_contain_text("Waiting at step 2 (then no Checkout within 3s)")
    expect(row.locator(".countdown")).to_be_visible()
    stack.shot(page, "person-waiting")
    _wait(lambda: any(r.path == "/hook" for r in stack.crm.requests if anonymous_id.encode() in r.body), 30,
          "the abandoned-cart webhook at the receiver")

    def fired() -> bool:
        page.reload()
        return (page.locator('tr.rule-row[data-rule="abandoned cart"]').get_attribute("data-verdict") == "fired"
                and page.locator(".trigger[data-rule='abandoned cart'] .badge.b-delivered").count() > 0)

    _wait(fired, 30, "the person page to show the rule fired and its delivery delivered")
    trigger = page.locator(".trigger[data-rule='abandoned cart']")
    expect(trigger).to_contain_text('"sku": "boot-7"')
    expect(trigger.locator("table.attempts")).to_contain_text("success")
    expect(trigger.locator("table.attempts")).to_contain_text("200")
    stack.shot(page, "person-fired")


def test_why_not_names_the_failing_condition_for_a_cart_under_the_price(stack: Stack, context: BrowserContext) -> None:
    stack.send(track("AddToCart", anonymous_id="cheap-cart", sku="sock-1", price=12))
    page = context.new_page()
    page.goto(f"{stack.console}/person?id=cheap-cart&rule=abandoned%20cart")
    why = page.locator("#why")
    expect(why.locator("p.why")).to_have_attribute("data-verdict", "never started")
    expect(why).to_contain_text("cart.properties.price >= 20 is false (cart.properties.price is 12)")
    expect(why.locator("table")).to_contain_text("condition false")
    stack.shot(page, "why-not")


def test_the_rules_page_shows_each_rule_in_plain_words_with_its_state(stack: Stack, context: BrowserContext) -> None:
    page = context.new_page()

    def loaded() -> bool:
        page.goto(f"{stack.console}/rules")
        return page.locator(".badge.b-loaded").count() == 2

    _wait(loaded, 30, "both rules loaded in the engine's status")
    expect(page.locator("body")).to_contain_text("Then fires if NO Checkout event arrives within 3 seconds after step 1")
    expect(page.locator("svg.chart").first).to_be_visible()
    stack.shot(page, "rules")


def test_a_dead_letter_is_replayed_from_the_deliveries_page(stack: Stack, context: BrowserContext) -> None:
    order = track("Order Completed", user_id="u-big", total=150, order_id="o-2")
    stack.send(order)
    page = context.new_page()

    def dead() -> bool:
        page.goto(f"{stack.console}/deliveries")
        return page.locator("#dead tr[data-id]", has_text="u-big").count() == 1

    _wait(dead, 30, "the big order's delivery to be a dead letter (its endpoint answers 500)")
    attempts = len(stack.ads.requests)
    stack.ads_ok.set()
    page.locator("#dead tr[data-id]", has_text="u-big").get_by_role("button", name="Replay").click()
    expect(page.locator("#replay-note")).to_contain_text("Replaying")
    _wait(lambda: len(stack.ads.requests) > attempts, 30, "the replayed webhook at the receiver")

    def delivered() -> bool:
        page.goto(f"{stack.console}/deliveries")
        return page.locator("#dead tr[data-id]", has_text="u-big").count() == 0

    _wait(delivered, 30, "the dead letter to leave the list once delivered")
    stack.shot(page, "deliveries")


def test_a_backtest_runs_over_the_lake_with_progress_and_links_samples_to_people(
        stack: Stack, context: BrowserContext) -> None:
    stack.send(track("Order Completed", anonymous_id="bt-person", total=300, order_id="o-3"))
    _wait(lambda: "bt-person" in _lake_people(stack.data_dir / "lake"), 30, "the order in the lake")
    page = context.new_page()
    page.goto(f"{stack.console}/backtest")
    page.get_by_role("button", name="Run backtest").click()
    expect(page.locator("h1")).to_contain_text("Backtest")
    expect(page.locator("#progress .badge")).to_have_text("done", timeout=60_000)
    expect(page.locator("svg.chart")).to_be_visible()
    link = page.locator("a", has_text="bt-person").first
    expect(link).to_be_visible()
    stack.shot(page, "backtest")
    link.click()
    expect(page.locator("h1")).to_contain_text("bt-person")


def test_the_live_page_stays_responsive_at_1000_events_per_second(stack: Stack, context: BrowserContext) -> None:
    live = context.new_page()
    live.goto(f"{stack.console}/live")
    expect(live.locator("#stats")).to_contain_text("events/s arriving", timeout=10_000)
    stop = threading.Event()
    sent = [0]

    def blast() -> None:  # 1,000 events a second, in 10 requests of 100, as a busy backend would
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                start = time.monotonic()
                for _ in range(10):
                    batch = [track("PageView", anonymous_id=f"load-{i % 300}", n=i) for i in range(100)]
                    client.post(f"{stack.collector}/v1/batch", json={"batch": batch}, auth=(BACKEND_KEY, ""))
                    sent[0] += 100
                time.sleep(max(0.0, 1 - (time.monotonic() - start)))  # paces the sender (not a wait)

    thread = threading.Thread(target=blast, daemon=True)
    thread.start()
    try:
        expect(live.locator("#stats .badge")).to_have_text("sampled", timeout=15_000)
        arriving = _wait(lambda: _arriving(live) >= 500 and _arriving(live), 20, "the stats line to count the load")
        inserted = live.evaluate("""() => new Promise(done => {
            let n = 0; const rows = document.getElementById('rows');
            const seen = new MutationObserver(ms => ms.forEach(m => n += m.addedNodes.length));
            seen.observe(rows, {childList: true});
            setTimeout(() => { seen.disconnect(); done(n); }, 3000);
        })""")
        assert inserted <= 3 * 20 + 20, f"{inserted} rows in 3 s: the live view must sample (at most 20 rows/s)"
        assert live.locator("#rows tr").count() <= 100
        stack.shot(live, "live-under-load")
        # the page still answers its user: a filter by one person narrows the view while the load goes on
        live.fill("input[name=person]", "load-7")
        live.get_by_role("button", name="Filter").click()
        expect(live.locator("#rows tr").first).to_contain_text("load-7", timeout=10_000)
        assert all("load-7" in t for t in live.locator("#rows tr").all_inner_texts()[:10])
    finally:
        stop.set()
        thread.join(15)
    print(f"\nlive page under load: {sent[0]} events sent, {arriving} events/s counted on the page, "
          f"{inserted} rows shown in 3 s")


def _lake_people(lake: Path) -> set[str]:
    import pyarrow.parquet as pq

    people: set[str] = set()
    for f in lake.glob("date=*/*.parquet"):
        people.update(x for x in pq.read_table(f, columns=["anonymous_id"]).column(0).to_pylist() if x)
    return people


def _arriving(page: Page) -> int:
    text = page.locator("#stats b").first.inner_text() if page.locator("#stats b").count() else "0"
    return int(text) if text.isdigit() else 0


def test_the_console_refuses_a_non_loopback_address_without_a_token(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "tripwire", "run", "--port", str(port)], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, env={**_env(), "TRIPWIRE_CONSOLE__HOST": "0.0.0.0", "TRIPWIRE_CONSOLE__PORT": "0"})
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("tripwire:")]
    assert len(lines) == 1 and "console.host" in lines[0] and "[console] token" in lines[0], done.stderr
    assert "listening" not in done.stderr  # nothing started: not the collector either


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))}

