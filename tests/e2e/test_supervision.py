"""`tripwire run` whose engine fails: the collector keeps acknowledging, the engine is restarted.

The fault is real: the test holds the write lock of the engine's state
database (``<data_dir>/rules-state.db``) from another process, as a backup tool
or a second engine on the same data_dir would. The engine's next save waits out
SQLite's busy timeout and fails. `tripwire run` used to exit with the engine,
collector included; now a supervisor restarts the engine (1 s, 2 s, 4 s ...),
/readyz and /metrics say it is down, and once the lock is gone the engine
replays what it had not saved and writes every trigger, once.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.fixtures.servers import run_command
from tripwire.log import TRIGGERS
from tripwire.log.sqlite import SqliteLog
from tripwire.triggers import trigger_id

WRITE_KEY = "supervision-key"


async def _trigger_ids(db: Path) -> list[str]:
    log = SqliteLog(db, 4)
    await log.start()
    try:
        ids = []
        for p, end in (await log.end_offsets(TRIGGERS)).items():
            if end:
                ids += [orjson.loads(r.value)["id"] for r in await log.read(TRIGGERS, p, 0, end)]
        return ids
    finally:
        await log.stop()


def _metric(text: str, name: str) -> float | None:
    """The engine process's own figure for its engine service (the parent's page also has its own sample
    for the child process, which stays up while the child restarts the engine inside)."""
    m = re.search(rf'^{name}\{{process="engine",service="engine"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


@pytest.mark.timeout(300)
def test_run_keeps_acknowledging_while_its_engine_fails_and_restarts_it(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "signup.rules").write_text('rule "signup" when Signup post crm\n')
    (tmp_path / "tripwire.toml").write_text(f"""
data_dir = "data"
[sources.web]
write_key = "{WRITE_KEY}"
[rules]
dir = "rules"
allowed_lateness_ms = 60000  # the watermark follows the wall clock: an event a moment old is not late
[endpoints.crm]
url = "https://crm.example/hooks"
[webhooks]
enabled = false
[sink]
enabled = false
""")
    data = tmp_path / "data"

    def track(client: httpx.Client, mid: str) -> int:
        body = {"type": "track", "event": "Signup", "anonymousId": "visitor-1", "messageId": mid}
        return client.post("/v1/track", json=body, auth=(WRITE_KEY, "")).status_code

    with run_command(["--config", str(tmp_path / "tripwire.toml"), "run", "--port", "0"], cwd=tmp_path) as run:
        with httpx.Client(base_url=run.url, timeout=10) as client:
            assert track(client, "m-before") == 200
            deadline = time.monotonic() + 30
            while asyncio.run(_trigger_ids(data / "log.db")) != [trigger_id("signup", "visitor-1", ["m-before"])]:
                assert time.monotonic() < deadline, "the engine never fired before the fault\n" + run.output()
                time.sleep(0.1)

            holder = sqlite3.connect(data / "rules-state.db", isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")  # the engine's next save waits for it, then fails
            try:
                assert track(client, "m-during-1") == 200
                # Down: seen by /readyz (the collector's: it names the service) and /metrics, each at least once
                # (the engine is restarted after 1 s, fails again on its first save, then waits 2 s, ...).
                seen_ready, seen_metric = False, False
                deadline = time.monotonic() + 150
                while not (seen_ready and seen_metric):
                    assert time.monotonic() < deadline, f"the engine never showed as down\n{run.output()[-4000:]}"
                    ready = client.get("/readyz")
                    if ready.status_code == 503 and "service:engine" in ready.json()["message"]:
                        seen_ready = True
                    if _metric(client.get("/metrics").text, "tripwire_service_up") == 0:
                        seen_metric = True
                    time.sleep(0.02)
                assert track(client, "m-during-2") == 200  # the collector is not affected
            finally:
                holder.execute("ROLLBACK")
                holder.close()

            expected = sorted(trigger_id("signup", "visitor-1", [m]) for m in ("m-before", "m-during-1", "m-during-2"))
            deadline = time.monotonic() + 120
            while sorted(set(got := asyncio.run(_trigger_ids(data / "log.db")))) != expected:
                assert time.monotonic() < deadline, f"triggers {got}\n{run.output()[-4000:]}"
                time.sleep(0.2)
            assert sorted(got) == expected  # each once
            metrics = client.get("/metrics").text
            assert _metric(metrics, "tripwire_service_restarts_total") >= 1  # type: ignore[operator]
            deadline = time.monotonic() + 60
            while _metric(client.get("/metrics").text, "tripwire_service_up") != 1:
                assert time.monotonic() < deadline, "the engine never came back up"
                time.sleep(0.1)
            assert client.get("/readyz").status_code == 200
        assert run.proc.poll() is None  # still running: nothing made it exit
        assert run.stop() == 0
    assert "engine failed (StateError: rules state database" in run.output()
