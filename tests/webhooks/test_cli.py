"""`tripwire webhooks status|failed|replay|enable` against a store a live dispatcher writes."""

from __future__ import annotations

import logging

import orjson
import pytest

from tripwire.webhooks import WebhooksConfig, create_service
from tripwire.webhooks.store import DEAD, DELIVERED, PENDING
from tripwire.cli.main import main
from tripwire.config import ConfigError, from_dict, load_config

from .helpers import make_trigger, new_secret, publish, state_of
from .receiver import Received, Reply, wait_until


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """main() configures the root logger for a process; give later tests theirs back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _toml(tmp_path, urls: dict[str, str], secret: str) -> str:
    lines = [
        f'data_dir = "{tmp_path}"',
        "[log]\npartitions = 2",
        "[webhooks]\nretry_schedule_s = [0, 0.05]\nretry_jitter = 0.0\nattempt_timeout_s = 3\n"
        'scan_interval_s = 0.1\nstop_grace_s = 0.5\nallow_networks = ["127.0.0.1/32"]',
    ]
    for name, url in urls.items():
        lines.append(f'[endpoints.{name}]\nurl = "{url}"\nsecret = "{secret}"')
    path = tmp_path / "tripwire.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _run(capsys, cfg: str, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--config", cfg, "--log-level", "warning", *argv])
    return code, capsys.readouterr().out


async def test_status_failed_replay_enable(log, receivers, tmp_path, capsys):
    healthy = {"flaky": False, "gone": False}

    def flaky(req: Received, n: int) -> Reply:
        return Reply(200) if healthy["flaky"] else Reply(500, body=b"database down")

    def gone(req: Received, n: int) -> Reply:
        return Reply(200) if healthy["gone"] else Reply(410)

    rx_ok, rx_flaky, rx_gone = receivers(), receivers(flaky), receivers(gone)
    secret = new_secret()
    cfg = _toml(tmp_path, {"ok": rx_ok.url, "flaky": rx_flaky.url, "gone": rx_gone.url}, secret)
    config = load_config(cfg, environ={})
    d = create_service(config, log)
    assert d is not None
    t_ok, t_f1, t_f2, t_gone = make_trigger("ok", 1), make_trigger("flaky", 2), make_trigger("flaky", 3), make_trigger("gone", 4)
    await d.start()
    try:
        await publish(log, [t_ok, t_f1, t_f2, t_gone])
        await wait_until(
            lambda: state_of(d, t_ok.id) == DELIVERED and state_of(d, t_f1.id) == DEAD and state_of(d, t_f2.id) == DEAD
            and (st := d.store.endpoint_states().get("gone")) is not None and st.disabled_reason is not None
        )
        code, out = _run(capsys, cfg, "webhooks", "status", "--json")
        assert code == 0
        rows = {r["endpoint"]: r for r in map(orjson.loads, out.splitlines())}
        assert rows["ok"]["delivered"] == 1 and rows["ok"]["disabled"] is None
        assert rows["flaky"]["dead"] == 2 and rows["flaky"]["failing_since"]
        assert rows["gone"]["pending"] == 1 and rows["gone"]["failing"] == 1 and "410" in rows["gone"]["disabled"]

        code, out = _run(capsys, cfg, "webhooks", "status")
        assert code == 0 and "DISABLED" in out and "flaky" in out

        code, out = _run(capsys, cfg, "webhooks", "failed")
        assert code == 0 and t_f1.id in out and t_f2.id in out and "database down" in out and t_ok.id not in out

        healthy["flaky"] = True
        code, out = _run(capsys, cfg, "webhooks", "replay", t_f1.id)
        assert code == 0 and t_f1.id in out
        await wait_until(lambda: state_of(d, t_f1.id) == DELIVERED)
        assert state_of(d, t_f2.id) == DEAD
        code, out = _run(capsys, cfg, "webhooks", "replay", "--all")
        assert code == 0 and "1 dead letter" in out
        await wait_until(lambda: state_of(d, t_f2.id) == DELIVERED)

        healthy["gone"] = True
        assert state_of(d, t_gone.id) == PENDING
        code, out = _run(capsys, cfg, "webhooks", "enable", "gone")
        assert code == 0 and "gone enabled" in out
        await wait_until(lambda: state_of(d, t_gone.id) == DELIVERED)

        code, _ = _run(capsys, cfg, "webhooks", "replay", "trg_nope")
        assert code == 1
        code, _ = _run(capsys, cfg, "webhooks", "enable", "nope")
        assert code == 1
        code, out = _run(capsys, cfg, "webhooks", "failed")
        assert "no dead letters" in out
    finally:
        await d.stop()
    # every delivery carries the same id on each attempt
    assert set(rx_flaky.ids()) == {t_f1.id, t_f2.id}
    assert rx_gone.ids() == [t_gone.id, t_gone.id]


async def test_create_service_from_config(log, tmp_path):
    config = from_dict({"data_dir": str(tmp_path), "webhooks": {"enabled": False}})
    assert create_service(config, log) is None
    config = from_dict({
        "data_dir": str(tmp_path),
        "webhooks": {"retry_schedule_s": [0, 1], "allow_hosts": ["hooks.intranet", "10.0.0.0/8"]},
        "endpoints": {"crm": {"url": "https://crm.example.com/h", "secret": new_secret()}},
    })
    service = create_service(config, log)
    assert service is not None and service.name == "dispatcher"
    await service.start()
    await service.stop()
    await service.stop()  # safe twice
    assert (tmp_path / "webhooks.db").exists()


@pytest.mark.parametrize(
    ("section", "endpoints", "match"),
    [
        ({"retry_schedule_s": []}, {}, "webhooks.retry_schedule_s"),
        ({"retry_schedule_s": [0, -1]}, {}, "webhooks.retry_schedule_s"),
        ({"allow_networks": ["not-a-net"]}, {}, "webhooks.allow_networks"),
        ({"attempt_timeout_s": 0}, {}, "webhooks.attempt_timeout_s"),
        ({"dedup_window_s": 0}, {}, "webhooks.dedup_window_s"),
        ({"delivered_history_s": -1}, {}, "webhooks.delivered_history_s"),
        ({"colour": "red"}, {}, "webhooks.colour"),
        ({"ca_bundle": "/nonexistent/ca.pem"}, {}, "webhooks.ca_bundle"),
        ({}, {"crm": {"url": "https://x.example.com", "secret": ""}}, "endpoints.crm.secret"),
        ({}, {"crm": {"url": "https://x.example.com", "secret": "whsec_%%%"}}, "endpoints.crm.secret"),
        ({}, {"crm": {"url": "ftp://x.example.com", "secret": "whsec_" + "A" * 40}}, "endpoints.crm.url"),
        ({}, {"crm": {"url": "https://x.example.com", "secret": "whsec_" + "A" * 40, "concurrency": 0}}, "endpoints.crm.concurrency"),
    ],
)
def test_config_errors_name_the_key(log, tmp_path, section, endpoints, match):
    config = from_dict({"data_dir": str(tmp_path), "webhooks": section, "endpoints": endpoints})
    with pytest.raises(ConfigError, match=match):
        create_service(config, log)


def test_env_override_of_the_schedule(tmp_path):
    from tripwire.config import apply_env

    data: dict = {}
    apply_env(data, {"TRIPWIRE_WEBHOOKS__RETRY_SCHEDULE_S": "[0, 0.5, 2]"})
    config = from_dict(data)
    assert config.section("webhooks", WebhooksConfig).retry_schedule_s == [0.0, 0.5, 2.0]


def test_commands_do_not_create_a_store_where_there_is_none(tmp_path, capsys):
    (tmp_path / "nowhere").mkdir()  # the config's dir, also its data_dir: no dispatcher ran there
    cfg = _toml(tmp_path / "nowhere", {"crm": "https://crm.example/hook"}, new_secret())
    store = tmp_path / "nowhere" / "webhooks.db"
    code, out = _run(capsys, cfg, "webhooks", "status")
    assert code == 0 and "crm" in out  # the configured endpoints, nothing delivered
    code, out = _run(capsys, cfg, "webhooks", "failed")
    assert code == 0 and "no dead letters" in out
    capsys.readouterr()
    assert main(["--config", cfg, "webhooks", "replay", "trg_x"]) == 1
    assert f"no webhook delivery store at {store}" in capsys.readouterr().err
    code, out = _run(capsys, cfg, "webhooks", "enable", "crm")
    assert code == 0 and "crm was not disabled" in out
    assert not store.exists()  # a read-only look used to create an empty store (and its data dir)
    assert main(["--config", cfg, "webhooks", "replay", "trg_x", "--endpoint", "crm"]) == 2
    with pytest.raises(SystemExit):
        main(["--config", cfg, "webhooks", "failed", "-n", "0"])
