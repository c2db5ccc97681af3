"""Scale-out on a real Kafka-protocol broker (tansu) and S3 (moto): the same config keys as on one machine.

Two collectors, two rules engines in one consumer group, one dispatcher and one
sink, each a ``tripwire`` subprocess with its own data dir. Events come from the
snippet on the demo page in Chromium (Playwright) and from a server-side
client; the test asserts the signed webhooks a real receiver got and the rows
DuckDB reads from the S3 lake.
"""

from __future__ import annotations

import argparse
import functools
import re
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import pytest
from playwright.sync_api import sync_playwright

from tests.e2e.procs import REPO, Proc, collector
from tests.e2e.stack import BACKEND_KEY, EXAMPLES, by_rule, deliveries, event, example_config, fast_env, lake_rows, wait_until
from tests.fixtures.s3 import S3Bucket
from tests.fixtures.tansu import TansuBroker, free_port
from tripwire.triggers import trigger_id

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture
def demo_site(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """The demo page on its own loopback origin (the collector's URL filled in by the test)."""
    root = tmp_path / "demo"
    root.mkdir()
    port = free_port()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, port
    server.shutdown()
    server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def browse(page_url: str) -> dict[str, str]:
    """Two visitors in Chromium: one abandons the cart (and orders big), one checks out in time.

    Waits until the collector answered 200 to batches holding every event the page
    sent (the page view, "Product Viewed" and one event per click), as seen on the wire.
    """
    seen: dict[str, str] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            for who, buttons in (("abandoner", ["#add", "#order"]), ("buyer", ["#add", "#checkout"])):
                context = browser.new_context()  # own storage: own anonymousId
                page = context.new_page()
                acked: dict[str, dict] = {}

                def finished(request: object, acked: dict[str, dict] = acked) -> None:
                    response = request.response()  # type: ignore[attr-defined]
                    if "/v1/batch" in request.url and response is not None and response.status == 200:  # type: ignore[attr-defined]
                        for e in orjson.loads(request.post_data)["batch"]:  # type: ignore[attr-defined]
                            acked[e["messageId"]] = e

                page.on("requestfinished", finished)
                page.goto(page_url)
                page.wait_for_function("window.tw && window.tw.l === 1", timeout=15_000)  # t.js loaded
                for b in buttons:
                    page.click(b)
                deadline = time.monotonic() + 30
                while len(acked) < 2 + len(buttons):  # flushed every 500 ms (data-interval)
                    assert time.monotonic() < deadline, f"{who}: the collector acknowledged only {list(acked.values())}"
                    page.wait_for_timeout(100)
                seen[f"cart:{who}"] = page.evaluate("cart")
                (seen[who],) = {e["anonymousId"] for e in acked.values()}
                context.close()
        finally:
            browser.close()
    return seen


def test_two_collectors_two_engines_dispatcher_and_sink_on_kafka_and_s3(
    tmp_path: Path, tansu: TansuBroker, s3_bucket: S3Bucket, demo_site: tuple[Path, int]
) -> None:
    config = example_config(tmp_path / "site")
    logs = tmp_path / "logs"
    logs.mkdir()
    site_root, site_port = demo_site
    out = tmp_path / "received.jsonl"
    s3 = s3_bucket.server
    receiver = Proc("receiver", ["webhooks", "receive", "--port", str(rport := free_port()), "--secret",
                                 "whsec_Y4PBOb53VF7OoWLmD0wZfsT9u0Rr2vhV", "--out", str(out)], logs, port=rport)
    metrics = {"engine": free_port(), "dispatcher": free_port(), "sink": free_port()}
    storage = (f'{{key = "{s3.key}", secret = "{s3.secret}", '
               f'client_kwargs = {{endpoint_url = "{s3.endpoint_url}", region_name = "{s3.region}"}}}}')
    env = fast_env(rport, **{
        "TRIPWIRE_LOG__BACKEND": "kafka",
        "TRIPWIRE_LOG__KAFKA_BOOTSTRAP": tansu.bootstrap,
        "TRIPWIRE_LOG__PARTITIONS": "4",
        "TRIPWIRE_COLLECTOR__PII_SALT": "e2e-shared-salt",
        "TRIPWIRE_SOURCES__SHOP__ORIGINS": f'["http://127.0.0.1:{site_port}"]',
        "TRIPWIRE_SINK__LAKE_URL": f"{s3_bucket.url}/lake",
        "TRIPWIRE_SINK__S3_ENDPOINT_URL": s3.endpoint_url,
        "TRIPWIRE_RULES__CHECKPOINT_URL": f"{s3_bucket.url}/rules-checkpoints",
        "TRIPWIRE_RULES__STORAGE_OPTIONS": storage,
        "TRIPWIRE_RULES__CHECKPOINT_INTERVAL_MS": "300",
        **s3.env(),
    })
    procs = [
        receiver,
        c1 := collector("collector-1", config, logs, env, tmp_path / "c1"),
        c2 := collector("collector-2", config, logs, env, tmp_path / "c2"),
        e1 := Proc("engine-1", ["--config", str(config), "--metrics-port", str(metrics["engine"]), "engine"], logs,
                   {**env, "TRIPWIRE_DATA_DIR": str(tmp_path / "e1")}),
        e2 := Proc("engine-2", ["--config", str(config), "engine"], logs, {**env, "TRIPWIRE_DATA_DIR": str(tmp_path / "e2")}),
        Proc("dispatcher", ["--config", str(config), "--metrics-port", str(metrics["dispatcher"]), "dispatcher"], logs,
             {**env, "TRIPWIRE_DATA_DIR": str(tmp_path / "d")}),
        Proc("sink", ["--config", str(config), "--log-format", "json", "sink"], logs,
             {**env, "TRIPWIRE_DATA_DIR": str(tmp_path / "s"), "TRIPWIRE_METRICS__PORT": str(metrics["sink"])}),
    ]
    try:
        for proc in procs:
            proc.start()
        e1.wait_output("partitions assigned", 60)
        e2.wait_output("partitions assigned", 60)

        def split() -> bool:
            a, b = assigned(e1), assigned(e2)
            return bool(a) and bool(b) and not a & b and a | b == {0, 1, 2, 3}
        wait_until(split, 60, "the two engines to share the 4 partitions")

        # the demo page, pointed at collector 1, in Chromium
        page = (EXAMPLES / "demo" / "index.html").read_text().replace("http://127.0.0.1:8080", f"http://127.0.0.1:{c1.port}")
        (site_root / "index.html").write_text(page)
        seen = browse(f"http://127.0.0.1:{site_port}/")

        # a backend sends through collector 2
        server_events = []
        for i in range(20):
            user = f"server-{i}"
            server_events.append(event("Product Added", user, sku=f"sku-{i}", quantity=1, price=10 + i))
            if i % 2:
                server_events.append(event("Checkout Started", user, total=10 + i))
        server_events.append(event("Order Completed", "server-big", order_id="o-big", total=500))
        r = httpx.post(f"http://127.0.0.1:{c2.port}/v1/batch", json={"batch": server_events}, auth=(BACKEND_KEY, ""), timeout=30)
        assert r.status_code == 200, r.text

        expected = {("abandoned cart", f"server-{i}") for i in range(0, 20, 2)} | {("big order", "server-big")}
        got = wait_until(lambda: (lambda d: d if expected <= set(d) and len([k for k in d if k[0] == "abandoned cart"
                                                                                 and not k[1].startswith("server")]) >= 1
                                   and len([k for k in d if k[0] == "big order"]) >= 2 else None)(by_rule(deliveries(out))),
                         90, "the webhooks of both the browser and the server visitors")
        browser_keys = {k for k in got if not k[1].startswith("server")}
        (abandoned,) = [k for k in browser_keys if k[0] == "abandoned cart"]
        (big,) = [k for k in browser_keys if k[0] == "big order"]
        assert abandoned[1] == big[1] == seen["abandoner"]  # the snippet's anonymousId is the key
        payload = got[abandoned][0]["body"]["data"]["payload"]
        assert payload["cart_id"] == seen["cart:abandoner"] and payload["sku"] == "shoe-42"
        assert not any(k[1] == seen["buyer"] for k in got)  # checked out in time: nothing fired
        for i in range(0, 20, 2):
            (hook,) = got[("abandoned cart", f"server-{i}")]
            added = server_events[[e["anonymousId"] for e in server_events].index(f"server-{i}")]
            assert hook["webhook_id"] == trigger_id("abandoned cart", f"server-{i}", [added["messageId"]])
        assert all(k in expected or k in browser_keys for k in got)  # nothing unexpected
        assert all(len({x["webhook_id"] for x in v}) == 1 for v in got.values())

        lake = f"{s3_bucket.url}/lake"
        want = {e["messageId"] for e in server_events}

        def lake_complete() -> list | None:
            rows = lake_rows(lake, "SELECT message_id, event, anonymous_id FROM t", storage=s3.storage_options())
            ids = {r[0] for r in rows}
            browser_events = {r[1] for r in rows if r[2] == abandoned[1]}
            return rows if want <= ids and {"Product Viewed", "Product Added", "Order Completed"} <= browser_events else None
        rows = wait_until(lake_complete, 60, "server and browser rows in the S3 lake")
        ids = [r[0] for r in rows]
        assert len(ids) == len(set(ids))  # exactly once
        assert {r[1] for r in rows if r[2] == abandoned[1]} >= {None, "Product Viewed", "Product Added", "Order Completed"}
        # every standalone service exposes Prometheus metrics and a readiness that names its backends
        for service, name in (("engine", "tripwire_rules_triggers_total"), ("dispatcher", "tripwire_webhook_deliveries_total"),
                              ("sink", "tripwire_sink_rows_written_total")):
            base = f"http://127.0.0.1:{metrics[service]}"
            assert name in httpx.get(f"{base}/metrics", timeout=10).text, service
            ready = httpx.get(f"{base}/readyz", timeout=10)
            assert ready.status_code == 200 and ready.json()["checks"]["log:kafka"] is True, (service, ready.text)
        sink_lines = [x for x in procs[-1].output().splitlines() if x.startswith("{")]
        assert sink_lines and all(orjson.loads(x)["service"] == "sink" for x in sink_lines)  # --log-format json
        assert s3.secret not in procs[-1].output()
        print(f"scale-out: {len(got)} (rule, visitor) webhooks, {len(rows)} lake rows, "
              f"engines own {sorted(assigned(e1))} and {sorted(assigned(e2))}")
        for proc in reversed(procs):
            assert proc.stop() == 0, proc.output()[-3000:]
    finally:
        for proc in procs:
            proc.kill9()


def assigned(proc: Proc) -> set[int]:
    lines = [x for x in proc.output().splitlines() if "partitions assigned: " in x]
    if not lines:
        return set()
    return {int(x) for x in lines[-1].split("partitions assigned: ", 1)[1].strip(" []").split(",") if x.strip()}


def test_engine_and_sink_wait_for_a_broker_that_is_not_there_yet_naming_the_setting(tmp_path: Path) -> None:
    """No broker at log.kafka_bootstrap: one line per try naming the address and the setting (it was a
    traceback, then an exit), and the role keeps trying, so it starts once the broker does."""
    config = example_config(tmp_path / "site")
    logs = tmp_path / "logs"
    logs.mkdir()
    port = free_port()
    nobody = f"127.0.0.1:{port}"
    env = {"TRIPWIRE_LOG__BACKEND": "kafka", "TRIPWIRE_LOG__KAFKA_BOOTSTRAP": nobody}
    procs = [Proc(role, ["--config", str(config), role], logs, {**env, "TRIPWIRE_DATA_DIR": str(tmp_path / role)})
             for role in ("engine", "sink")]
    broker = TansuBroker(tmp_path / "tansu", port=port)
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.wait_output(f"cannot reach Kafka at {nobody} (log.kafka_bootstrap)", 60)
            out = proc.output()
            assert "Traceback" not in out, out
            (line, *_) = [x for x in out.splitlines() if "cannot reach Kafka" in x]
            assert f"{proc.name} could not start (LogUnavailable: " in line and "restarting it in 1 s" in line, line
        broker.start()
        procs[0].wait_output("partitions assigned", 90)
        procs[1].wait_output("sink owns", 90)
        for proc in procs:
            assert proc.stop() == 0, proc.output()[-3000:]
    finally:
        for proc in procs:
            proc.kill9()
        broker.close()


def test_every_tripwire_command_line_in_deploy_readme_exists() -> None:
    """deploy/README.md promised `tripwire dispatcher --metrics-port` and `tripwire sink --metrics-port`:
    neither command has the option (it is the global one, before the command)."""
    from tripwire.cli.main import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    known = {None: {o for a in parser._actions for o in a.option_strings}}
    known.update({name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()})
    spans = re.findall(r"`(tripwire [^`]*)`", (REPO / "deploy" / "README.md").read_text())
    assert spans
    for span in spans:
        command = None
        for word in span.split()[1:]:
            if word.startswith("-"):
                assert word in known[command], f"{span!r}: {'tripwire ' + (command or '')} has no {word}"
            elif command is None and word in sub.choices:
                command = word


@pytest.mark.parametrize("role", ["engine", "dispatcher", "sink"])
def test_each_role_help_says_how_to_get_its_metrics(role: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Only `tripwire sink --help` said where its /metrics are (the global --metrics-port, before the command)."""
    from tripwire.cli.main import main

    with pytest.raises(SystemExit):
        main([role, "--help"])
    assert f"tripwire --metrics-port PORT {role}" in " ".join(capsys.readouterr().out.split())
