"""kill -9 of a `tripwire dispatcher` process mid-retry, then restart: nothing lost, nothing doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from standardwebhooks import Webhook

from tripwire.webhooks import Store
from tripwire.webhooks.lane import WINDOW_PER_SLOT
from tests.fixtures.tansu import free_port

from .helpers import make_trigger, new_secret, publish
from .receiver import Received, Reply, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, url: str, secret: str) -> Path:
    path = tmp_path / "tripwire.toml"
    path.write_text(
        f"""
data_dir = "{tmp_path}"

[log]
partitions = 2

[webhooks]
retry_schedule_s = [0, 2, 2, 2, 2, 2, 2, 2]
retry_jitter = 0.0
attempt_timeout_s = 4
scan_interval_s = 0.1
stop_grace_s = 0.5
allow_networks = ["127.0.0.1/32"]

[endpoints.crm]
url = "{url}"
secret = "{secret}"
concurrency = 4
"""
    )
    return path


def _start(config: Path, tmp_path: Path, name: str, *global_args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRIPWIRE_CONFIG", None)
    with (tmp_path / f"{name}.stderr").open("wb") as err:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "tripwire", "--config", str(config), *global_args, "dispatcher"],
            cwd=ROOT, env=env, stdout=err, stderr=err,
        )


async def test_kill_9_mid_retry_then_restart(log, receivers, tmp_path):
    secret = new_secret()
    t0, t1, t2, t3 = (make_trigger("crm", i) for i in range(4))
    killed_at: list[float] = []

    def handler(req: Received, n: int) -> Reply:
        if killed_at:
            return Reply(200)
        if req.id == t1.id:  # fails, then its retry hangs: in flight when the process dies
            return Reply(500) if n == 1 else Reply(200, delay_s=30)
        if req.id == t2.id:  # keeps failing: a retry is scheduled in the store when it dies
            return Reply(500)
        return Reply(200)

    rx = receivers(handler)
    config = _config(tmp_path, rx.url, secret)
    first = _start(config, tmp_path, "first")
    try:
        await publish(log, [t0, t1, t2])
        await wait_until(lambda: len(rx.by_id(t1.id)) >= 2 and len(rx.by_id(t0.id)) == 1, 30, "retry in flight")
        assert first.poll() is None
        first.kill()  # SIGKILL, mid-retry
        first.wait(timeout=10)
        killed_at.append(time.monotonic())
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL

    # while it is down: a new trigger, and a replay of one already delivered
    await publish(log, [t3, t0])
    metrics_port = free_port()
    second = _start(config, tmp_path, "second", "--metrics-port", str(metrics_port))
    try:
        store = Store(tmp_path / "webhooks.db")
        try:
            await wait_until(
                lambda: all((row := store.get(t.id)) is not None and row.state == "delivered" for t in (t0, t1, t2, t3)),
                40, "every trigger delivered after restart",
            )
        finally:
            store.close()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}", timeout=10) as client:
            exposed = (await client.get("/metrics")).text
            assert (await client.get("/readyz")).status_code == 200
        assert 'tripwire_webhook_deliveries_total{endpoint="crm",outcome="delivered"} 3.0' in exposed
        assert 'tripwire_webhook_pending{endpoint="crm"}' in exposed
        assert "tripwire_webhook_attempt_duration_seconds_bucket" in exposed
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0
    finally:
        for name in ("first", "second"):  # shown on failure
            print(name, (tmp_path / f"{name}.stderr").read_text(errors="replace")[-4000:])
        if second.poll() is None:
            second.kill()
            second.wait(timeout=10)

    after = [r for r in rx.requests if r.at > killed_at[0]]
    # after the restart each unfinished trigger is sent exactly once more, nothing finished is resent
    assert sorted(r.id for r in after) == sorted([t1.id, t2.id, t3.id])
    assert len(rx.by_id(t0.id)) == 1
    # t1: 500, the attempt in flight at the kill, and the one after restart, all with one id and body
    t1_requests = rx.by_id(t1.id)
    assert len(t1_requests) >= 3
    assert len({r.body for r in t1_requests}) == 1
    for req in rx.requests:
        Webhook(secret).verify(req.body, req.headers)


async def test_kill_9_under_load_resends_only_what_was_not_recorded(log, receivers, tmp_path):
    """Attempt results are recorded in batches: a kill -9 mid-stream loses none that were recorded
    (none of those is sent again) and no trigger; only attempts whose result was not yet written
    reach the receiver a second time, a bounded few."""
    secret = new_secret()
    rx = receivers()
    config = _config(tmp_path, rx.url, secret)
    config.write_text(config.read_text().replace("attempt_timeout_s = 4", "attempt_timeout_s = 2"))
    triggers = [make_trigger("crm", i) for i in range(400)]
    first = _start(config, tmp_path, "first")
    try:
        await publish(log, triggers)
        await wait_until(lambda: len(rx.requests) >= 150, 60, "150 deliveries before the kill")
        first.kill()
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)
    store = Store(tmp_path / "webhooks.db")
    try:
        recorded = {t.id for t in triggers if (row := store.get(t.id)) is not None and row.state == "delivered"}
    finally:
        store.close()
    assert len(recorded) >= 100, "the results of most deliveries were recorded before the kill"
    second = _start(config, tmp_path, "second")
    try:
        store = Store(tmp_path / "webhooks.db")
        try:
            await wait_until(
                lambda: all((row := store.get(t.id)) is not None and row.state == "delivered" for t in triggers),
                60, "every trigger delivered after restart",
            )
        finally:
            store.close()
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0
    finally:
        for name in ("first", "second"):  # shown on failure
            print(name, (tmp_path / f"{name}.stderr").read_text(errors="replace")[-4000:])
        if second.poll() is None:
            second.kill()
            second.wait(timeout=10)
    ids = rx.ids()
    assert set(ids) == {t.id for t in triggers}
    twice = {i for i in ids if ids.count(i) > 1}
    assert not twice & recorded
    # in flight, or reported while a transaction was being written: at most two windows and the slots
    assert len(twice) <= (2 * WINDOW_PER_SLOT + 1) * 4
