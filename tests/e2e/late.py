"""The stack for the late-event tests: `tripwire run` with default [rules] timing, a real receiver.

Only what has nothing to do with the engine's timing is set: one server-side
source, the rules directory, the endpoint and quick webhook retries. Lateness,
grace and max lateness are the defaults a new user gets.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.stack import SECRET, deliveries, wait_until
from tests.fixtures.servers import REPO, Process, run_command

WRITE_KEY = "late-backend-key"
SOURCE = "backend"


def write_site(dest: Path, rules: str, receiver_port: int) -> Path:
    """tripwire.toml (and rules/late.rules) under ``dest``; returns the config's path."""
    (dest / "rules").mkdir(parents=True, exist_ok=True)
    (dest / "rules" / "late.rules").write_text(rules)
    config = dest / "tripwire.toml"
    config.write_text(f"""data_dir = "data"

[sources.{SOURCE}]
write_key = "{WRITE_KEY}"
origins = []

[rules]
dir = "rules"

[endpoints.crm]
url = "http://127.0.0.1:{receiver_port}/hooks/tripwire"
secret = "{SECRET}"

[webhooks]
allow_networks = ["127.0.0.1/32"]
retry_schedule_s = [0, 0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
retry_jitter = 0
scan_interval_s = 0.2
""")
    return config


@dataclass
class Stack:
    config: Path
    run: Process
    received: Path  # what the receiver got (``tripwire webhooks receive --out``)

    @property
    def url(self) -> str:
        return self.run.url

    def post(self, events: list[dict[str, Any]], client: httpx.Client | None = None) -> None:
        """One /v1/batch request; fails the test unless the collector acknowledged it."""
        body = {"batch": events}
        r = (client.post("/v1/batch", json=body) if client is not None
             else httpx.post(f"{self.url}/v1/batch", json=body, auth=(WRITE_KEY, ""), timeout=30))
        assert r.status_code == 200, r.text

    def deliveries(self) -> list[dict[str, Any]]:
        return deliveries(self.received)

    def rules_status(self) -> dict[str, Any]:
        """`tripwire rules status --json`, as a user reads it."""
        out = self.cli("rules", "status", "--json", "--collector", self.url)
        return orjson.loads(out)  # type: ignore[no-any-return]

    def webhooks_status(self) -> dict[str, Any]:
        """`tripwire webhooks status --json` for endpoint crm."""
        rows = [orjson.loads(x) for x in self.cli("webhooks", "status", "--json").splitlines() if x.strip()]
        return next((r for r in rows if r["endpoint"] == "crm"), {"delivered": 0, "pending": 0, "failing": 0})

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The collector's /metrics: (sample name, sorted labels) -> value."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def cli(self, *args: str) -> str:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-m", "tripwire", "--config", str(self.config), *args], env=env,
                              capture_output=True, timeout=120)
        assert done.returncode == 0, f"tripwire {' '.join(args)}: {done.stderr.decode(errors='replace')}"
        return done.stdout.decode()

    def settled(self, events: int, triggers: dict[str, int], timeout_s: float) -> dict[str, Any]:
        """Wait until the engine read ``events``, wrote ``triggers`` (rule -> count) and holds no state: then
        nothing more can fire. Returns `rules status`."""
        def done() -> dict[str, Any] | None:
            st = self.rules_status()
            rules = st["rules"]
            if (st["events"].get("read", 0) >= events and all(r["pending"] == 0 for r in rules.values())
                    and {n: r["triggers"] for n, r in rules.items() if r["triggers"]} == triggers):
                return st
            return None

        try:
            return wait_until(done, timeout_s, f"{events} events read, triggers {triggers}, nothing pending",
                              interval_s=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; rules status: {self.rules_status()}") from None

    def wait_delivered(self, expected: int, timeout_s: float) -> list[dict[str, Any]]:
        """Wait until the dispatcher delivered ``expected`` webhooks and holds nothing more; the receiver's record."""
        def settled() -> list[dict[str, Any]] | None:
            st = self.webhooks_status()
            if st["delivered"] >= expected and st["pending"] == 0 and st.get("failing", 0) == 0:
                return self.deliveries() or None
            return None

        try:
            return wait_until(settled, timeout_s, f"{expected} webhooks delivered and none pending", interval_s=0.5)
        except AssertionError as exc:
            got = self.deliveries()
            by_rule: dict[str, int] = {}
            for d in got:
                by_rule[d["body"]["data"]["rule"]] = by_rule.get(d["body"]["data"]["rule"], 0) + 1
            m = self.metrics()
            raise AssertionError(
                f"{exc}: the receiver has {len(got)} {by_rule}, the dispatcher says {self.webhooks_status()}; "
                f"late events {counter(m, 'tripwire_rules_late_events_total')}, too late "
                f"{counter(m, 'tripwire_rules_too_late_events_total', source=SOURCE)}\n{self.run.output()[-3000:]}"
            ) from None


@contextlib.contextmanager
def late_stack(tmp_path: Path, rules: str) -> Iterator[Stack]:
    """A receiver and `tripwire run` (default [rules] timing), both subprocesses on loopback."""
    received = tmp_path / "received.jsonl"
    receiver = ["webhooks", "receive", "--port", "0", "--secret", SECRET, "--out", str(received), "--quiet"]
    with run_command(receiver) as rx:
        config = write_site(tmp_path / "site", rules, rx.port)
        with run_command(["--config", str(config), "run", "--port", "0"]) as run:
            stack = Stack(config, run, received)
            # The engine's first idle turn lets every partition's watermark follow the wall clock;
            # it writes its status document right after: from then on, "late" means late.
            wait_until(lambda: any((config.parent / "data" / "rules-status").glob("*.json")), 30,
                       "the rules engine's first status document")
            yield stack
            assert run.stop() == 0, run.output()[-3000:]


def counter(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """A counter's value summed over `tripwire run`'s processes (its engine and sink run in processes of their
    own: their samples carry a ``process`` label); 0 when it has no sample yet, as Prometheus reads an absent
    series in a sum."""
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items()
               if n == name and {(k, x) for k, x in ls if k != "process"} == want)
