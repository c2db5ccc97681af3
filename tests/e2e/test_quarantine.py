"""Issue 12, done when: `tripwire run` with a rule that raises at run time keeps answering /v1/track with
200, fires the other rules, and reports the failing rule in `tripwire rules status` and /metrics.

The rule passes `rules check`; what makes it raise is an input: its payload template nests twenty
objects around a property, and an event (as deep as the collector allows: 240 levels) brings a
value too deep for the trigger record (orjson writes at most 254 levels). The trigger of that rule
cannot be written; the rule is quarantined, alone; the other rule's triggers from the same events
are written, and the collector never noticed.
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

from tests.fixtures.servers import REPO, run_command
from tripwire.log import TRIGGERS
from tripwire.log.sqlite import SqliteLog

WRITE_KEY = "quarantine-key"
DEEP = "{ " + "".join(f"k{i}: {{ " for i in range(19)) + "v: properties.x" + " }" * 20  # 20 objects deep
RULES = f'rule "ping" when Ping post crm\nrule "deep" when Ping post crm with {DEEP}\n'


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"n": value}
    return value


async def _triggers(db: Path) -> list[dict[str, Any]]:
    log = SqliteLog(db, 4)
    await log.start()
    try:
        out = []
        for p, end in (await log.end_offsets(TRIGGERS)).items():
            if end:
                out += [orjson.loads(r.value) for r in await log.read(TRIGGERS, p, 0, end)]
        return out
    finally:
        await log.stop()


def test_a_rule_that_raises_at_run_time_is_quarantined_and_nothing_else_stops(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "ping.rules").write_text(RULES)
    cfg = tmp_path / "tripwire.toml"
    cfg.write_text(f"""
data_dir = "data"
[sources.backend]
write_key = "{WRITE_KEY}"
[rules]
dir = "rules"
[endpoints.crm]
url = "https://crm.example/hooks"
secret = "whsec_Y4PBOb53VF7OoWLmD0wZfsT9u0Rr2vhV"
[webhooks]
enabled = false
[sink]
enabled = false
[console]
enabled = false
""")
    env = {"PYTHONPATH": str(REPO)}
    check = subprocess.run([sys.executable, "-m", "tripwire", "--config", str(cfg), "rules", "check", "rules"],
                           cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr  # the rule is fine as written

    with run_command(["--config", str(cfg), "run", "--port", "0"], cwd=tmp_path) as run:
        with httpx.Client(base_url=run.url, auth=(WRITE_KEY, ""), timeout=10) as client:

            def ping(mid: str, x: Any) -> int:
                body = {"type": "track", "event": "Ping", "userId": f"u-{mid}", "messageId": mid, "properties": {"x": x}}
                return client.post("/v1/track", content=json.dumps(body),
                                   headers={"Content-Type": "application/json"}).status_code

            assert ping("m1", 1) == 200
            assert ping("m2", nested(235)) == 200  # the collector takes it: within its nesting limit
            assert ping("m3", 3) == 200
            deadline = time.monotonic() + 60
            while True:
                got = asyncio.run(_triggers(tmp_path / "data" / "log.db"))
                pings = sorted(t["events"][0]["messageId"] for t in got if t["rule"] == "ping")
                if pings == ["m1", "m2", "m3"]:
                    break
                assert time.monotonic() < deadline, f"the other rule's triggers never all came: {pings}\n{run.output()}"
                time.sleep(0.1)
            assert "m2" not in [t["events"][0]["messageId"] for t in got if t["rule"] == "deep"]

            deadline = time.monotonic() + 30
            while True:
                metrics = client.get("/metrics").text
                if 'tripwire_rules_quarantined{process="engine"} 1.0' in metrics:
                    break
                assert time.monotonic() < deadline, "the quarantine never reached /metrics\n" + metrics[-3000:]
                time.sleep(0.1)
            assert 'tripwire_rules_rule_errors_total{process="engine",rule="deep"} 1.0' in metrics

            assert ping("m4", 4) == 200  # still acknowledging; the other rule fires, the quarantined one no more
            deadline = time.monotonic() + 30
            while True:
                got = asyncio.run(_triggers(tmp_path / "data" / "log.db"))
                if "m4" in [t["events"][0]["messageId"] for t in got if t["rule"] == "ping"]:
                    break
                assert time.monotonic() < deadline, "the other rule stopped firing\n" + run.output()
                time.sleep(0.1)
            assert "m4" not in [t["events"][0]["messageId"] for t in got if t["rule"] == "deep"]

            # `tripwire rules status` says which rule stopped, why, and on which event (the operator's view)
            deadline = time.monotonic() + 30
            while True:
                status = subprocess.run([sys.executable, "-m", "tripwire", "--config", str(cfg), "rules", "status",
                                         "--json", "--collector", run.url], cwd=tmp_path, env={**os.environ, **env},
                                        capture_output=True, text=True, timeout=60)
                doc = json.loads(status.stdout)
                if doc["rules"].get("deep", {}).get("status") == "quarantined":
                    break
                assert time.monotonic() < deadline, f"rules status never showed the quarantine:\n{status.stdout}"
                time.sleep(0.2)
            assert doc["rules"]["ping"]["status"] == "running"
            assert doc["rules"]["deep"]["message_id"] == "m2" and "ping.rules" in doc["rules"]["deep"]["file"]
        assert "quarantined" in run.output() and 'rule "deep"' in run.output()
