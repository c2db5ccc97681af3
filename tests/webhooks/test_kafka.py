"""`tripwire dispatcher` alone on a Kafka log (the scale-out setup), against a real tansu broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from standardwebhooks import Webhook

from tripwire.webhooks import Store
from tests.fixtures.tansu import TansuBroker
from tripwire.log.kafka import KafkaLog

from .helpers import make_trigger, new_secret, publish
from .receiver import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _dispatcher(tmp_path: Path, broker: TansuBroker, url: str, secret: str) -> subprocess.Popen[bytes]:
    config = tmp_path / "tripwire.toml"
    config.write_text(
        f"""
data_dir = "{tmp_path / 'dispatcher'}"
[log]
partitions = 2
[webhooks]
retry_schedule_s = [0, 0.2]
retry_jitter = 0.0
scan_interval_s = 0.1
stop_grace_s = 0.5
allow_networks = ["127.0.0.1/32"]
[endpoints.crm]
url = "{url}"
secret = "{secret}"
"""
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRIPWIRE_CONFIG", None)
    with (tmp_path / "dispatcher.stderr").open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "tripwire", "--config", str(config), "dispatcher", "--log", broker.url],
            cwd=ROOT, env=env, stdout=err, stderr=err,
        )


async def test_standalone_dispatcher_on_kafka(tansu, receivers, tmp_path):
    secret = new_secret()
    rx = receivers()
    first_batch = [make_trigger("crm", i) for i in range(5)]
    second_batch = [make_trigger("crm", 10 + i) for i in range(5)]
    # same keys as the replayed records, so the same partitions, after them: once these are delivered,
    # the replays were handled
    witnesses = [make_trigger("crm", i, rule="witness") for i in range(2)]
    async with KafkaLog(tansu.bootstrap, spill_dir=tmp_path / "spill", partitions=2) as log:
        proc = _dispatcher(tmp_path, tansu, rx.url, secret)
        try:
            await publish(log, first_batch)
            await wait_until(lambda: len(rx.requests) == 5, 60, "first batch over Kafka")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            # while it is down: new triggers plus a replay of delivered ones
            await publish(log, second_batch + first_batch[:2] + witnesses)
            proc = _dispatcher(tmp_path, tansu, rx.url, secret)
            wanted = {t.id for t in second_batch + witnesses}
            await wait_until(lambda: wanted <= set(rx.ids()), 60, "second batch and witnesses after restart")
        finally:
            print((tmp_path / "dispatcher.stderr").read_text(errors="replace")[-6000:])  # shown on failure
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
    assert sorted(rx.ids()) == sorted(t.id for t in first_batch + second_batch + witnesses)
    for req in rx.requests:
        Webhook(secret).verify(req.body, req.headers)
    store = Store(tmp_path / "dispatcher" / "webhooks.db")
    try:
        assert store.counts()["crm"]["delivered"] == 12
        assert [store.get(t.id).attempts for t in first_batch[:2]] == [1, 1]  # the replays made no attempt
    finally:
        store.close()
