"""What an operator sees from the CLI when something is wrong: one line naming the key, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tripwire import metrics
from tripwire.config import ConfigError, from_dict

REPO = Path(__file__).resolve().parents[2]


def tripwire(args: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "tripwire", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout_s)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("command", [["run"], ["collector"]])
def test_a_taken_port_is_one_line_naming_the_key(tmp_path: Path, taken_port: int, command: list[str]) -> None:
    done = tripwire([*command, "--port", str(taken_port)], cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"Config 'server.port': cannot listen on 127.0.0.1:{taken_port}: Address already in use" in done.stderr


@pytest.mark.parametrize(("data", "key"), [
    ({"server": {"port": 70000}}, "server.port"),
    ({"server": {"port": -1}}, "server.port"),
    ({"server": {"workers": 0}}, "server.workers"),
])
def test_server_values_out_of_range_are_config_errors(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        from_dict(data)


def test_metrics_port_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'metrics.port'"):
        metrics.metrics_config(from_dict({"metrics": {"port": 70000}}))
    with pytest.raises(ConfigError, match="'metrics.port'.*65535"):
        metrics.serve("127.0.0.1", -1)  # tripwire --metrics-port -1 ...


def test_unknown_sections_are_refused_with_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "tripwire.toml"
    path.write_text("[colector]\nstrict = true\n")
    done = tripwire(["--config", str(path), "config", "check"], cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"tripwire: Unknown config section '[colector]' (did you mean [collector]?). Known sections: collector, console, "
        f"endpoints, log, logging, metrics, rules, server, sink, sources, webhooks. (in {path})"]
    (tmp_path / "empty").mkdir()
    done = tripwire(["config", "check"], cwd=tmp_path / "empty", env={"TRIPWIRE_SINKS__LAKE_URL": "s3://b/p"})
    assert done.returncode == 2
    assert "Unknown config section '[sinks]' (did you mean [sink]?)" in done.stderr
    assert done.stderr.strip().endswith("(set by TRIPWIRE_SINKS__LAKE_URL)")


def test_config_check_refuses_a_broker_address_written_as_a_url(tmp_path: Path) -> None:
    # kafka://host:port is the --log form; as log.kafka_bootstrap every role looked for a host named
    # 'kafka'. config check says so, as starting any role would.
    env = {"TRIPWIRE_LOG__BACKEND": "kafka", "TRIPWIRE_LOG__KAFKA_BOOTSTRAP": "kafka://127.0.0.1:9092"}
    done = tripwire(["config", "check"], cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert "'log.kafka_bootstrap' is <not shown>: write host:port without kafka://" in done.stderr  # an env value
    assert done.stderr.strip().endswith("(set by TRIPWIRE_LOG__KAFKA_BOOTSTRAP)")


def test_config_check_reads_endpoint_secrets_as_the_dispatcher_will(tmp_path: Path) -> None:
    # A secret that is not whsec_<base64> stopped the dispatcher at start while config check said ok.
    path = tmp_path / "tripwire.toml"
    path.write_text('[endpoints.crm]\nurl = "https://crm.example/hook"\nsecret = "whsec_not base64!"\n')
    done = tripwire(["--config", str(path), "config", "check"], cwd=tmp_path)
    assert done.returncode == 2
    assert "'endpoints.crm.secret' secret #1 is not a whsec_<base64> secret" in done.stderr
    assert "Traceback" not in done.stderr


def test_config_errors_of_any_command_name_the_key_and_where_it_was_set(tmp_path: Path) -> None:
    done = tripwire(["config", "check"], cwd=tmp_path, env={"TRIPWIRE_COLLECTOR__PORT": "abc"})
    assert done.returncode == 2  # as for every config error, whichever check finds it
    assert done.stderr.startswith("tripwire: Unknown config key 'collector.port'.")
    assert done.stderr.strip().endswith("(set by TRIPWIRE_COLLECTOR__PORT)")
    path = tmp_path / "tripwire.toml"
    path.write_text('[sink]\npartitioning = "hour"\n')
    done = tripwire(["--config", str(path), "lake", "compact"], cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"tripwire: Config 'sink.partitioning' has value 'hour'. "
                                   f"Expected one of date, date/hour. (in {path})")


def test_events_tail_where_no_log_is_says_so_and_creates_nothing(tmp_path: Path) -> None:
    done = tripwire(["events", "tail"], cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"tripwire events tail: no event log at {tmp_path / 'data' / 'log.db'} "
                                   "(nothing was collected with this data_dir; check --config)")
    assert not (tmp_path / "data").exists()
    done = tripwire(["events", "tail", "-n", "-3"], cwd=tmp_path)
    assert done.returncode == 2 and "-n: -3 is not a count (0 or more)" in done.stderr


def test_run_logs_little_at_info_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    from tests.fixtures.servers import run_command

    with run_command(["run", "--port", "0"], cwd=tmp_path, env={"TRIPWIRE_RULES__ENABLED": "false"}) as proc:
        assert proc.stop() == 0
        lines = proc.output().splitlines()
    assert any("collector listening on" in line for line in lines)
    assert any("sink stopped" in line for line in lines)
    assert not [line for line in lines if "uvicorn" in line]  # "Waiting for application startup." and 6 more
    (owns,) = [line for line in lines if "sink owns" in line]  # one line for the 4 partitions
    assert "events-0 from offset 0, events-1 from offset 0" in owns
    assert not [line for line in lines if "Traceback" in line or " ERROR " in line]


def test_the_readme_lists_every_default_that_config_show_prints() -> None:
    import tomllib

    from tripwire.cli.config import render

    readme = (REPO / "README.md").read_text()
    block = readme.split("these are the defaults:\n\n```toml\n", 1)[1].split("```", 1)[0]
    documented = tomllib.loads(block.split("# Tables keyed by your names", 1)[0])
    effective = tomllib.loads(render(from_dict({})))
    assert documented == effective


def test_config_show_masks_secrets_inside_tables_and_urls() -> None:
    from tripwire.cli.config import render

    text = render(from_dict({
        "rules": {"storage_options": {"key": "AKIAEXAMPLE", "secret": "s3cr3t-value",
                                      "client_kwargs": {"endpoint_url": "http://minio:9000"}}},
        "sink": {"lake_url": "s3://bucket/x", "s3_endpoint_url": "https://user:pa55word@s3.example"},
        "endpoints": {"crm": {"url": "https://crm.example/h?token=tok-123", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                              "headers": {"Authorization": "Bearer abc123xyz", "X-Api-Key": "k-999", "X-Team": "growth"}}},
    }))
    for secret in ("AKIAEXAMPLE", "s3cr3t-value", "pa55word", "tok-123", "MfKQ9r8", "abc123xyz", "k-999", "growth"):
        assert secret not in text
    assert 'endpoint_url = "http://minio:9000"' in text  # the rest stays readable
    assert 'url = "https://crm.example/***"' in text and 'X-Team = "***"' in text  # header names stay


def test_config_show_masks_endpoint_paths_and_every_header_value() -> None:
    from tripwire.cli.config import render

    text = render(from_dict({"endpoints": {"slack": {
        "url": "https://hooks.slack.com/services/T000/B000/abcSLACKTOKENabc",
        "headers": {"X-Custom-Auth": "tok-custom-1", "X-Trace": "tok-trace-2"}}}}))
    for secret in ("abcSLACKTOKENabc", "T000", "tok-custom-1", "tok-trace-2"):
        assert secret not in text
    assert 'url = "https://hooks.slack.com/***"' in text
    assert 'headers = {X-Custom-Auth = "***", X-Trace = "***"}' in text


def test_a_malformed_headers_variable_is_named_and_never_printed(tmp_path: Path) -> None:
    env = {"TRIPWIRE_ENDPOINTS__CRM__URL": "https://crm.example/hooks/T000/B000/tok-url-77",
           "TRIPWIRE_ENDPOINTS__CRM__SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
           "TRIPWIRE_ENDPOINTS__CRM__HEADERS": '{X-Custom-Auth = "tok-raw-123"'}
    for command in (["config", "check"], ["config", "show"]):
        done = tripwire(command, cwd=tmp_path, env=env)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "'endpoints.crm.headers'" in done.stderr and "TRIPWIRE_ENDPOINTS__CRM__HEADERS" in done.stderr
        assert "Traceback" not in done.stderr
        for secret in ("tok-raw-123", "tok-url-77", "MfKQ9r8"):
            assert secret not in done.stderr + done.stdout, command


@pytest.mark.parametrize(("catalog", "message"), [
    (None, "event catalog '{path}' does not exist"),
    ('{"events": {"A": {"schema": {"type": "objekt"}}}}', "'events.A.schema' is not a valid JSON Schema"),
    ('{"events": [1]}', "expected an object with an 'events' object"),
])
def test_config_check_reads_the_event_catalog(tmp_path: Path, catalog: str | None, message: str) -> None:
    path = tmp_path / "catalog.json"
    if catalog is not None:
        path.write_text(catalog)
    (tmp_path / "tripwire.toml").write_text('[collector]\ncatalog = "catalog.json"\n')
    done = tripwire(["config", "check"], cwd=tmp_path)
    assert done.returncode == 2, done.stdout
    assert message.format(path="catalog.json") in done.stderr  # as configured, relative to ./tripwire.toml
    assert not (tmp_path / "data").exists()  # a check creates nothing (no PII salt file)


def test_an_error_about_a_command_line_value_does_not_blame_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tripwire.toml"
    path.write_text('[server]\nhost = "127.0.0.1"\n')
    done = tripwire(["--config", str(path), "run", "--port", "70000"], cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "tripwire: Config 'server.port' has value 70000. Must be 0-65535 (0 = any free port)."


class Dying:
    """A service whose background task dies after a moment (an unsupervised one: the collector's server)."""

    def __init__(self, name: str, dies: bool) -> None:
        self.name, self.dies = name, dies
        self.failed = False
        self.stopped = False

    async def start(self) -> None:
        import asyncio

        if self.dies:
            asyncio.get_running_loop().call_later(0.2, setattr, self, "failed", True)

    async def stop(self) -> None:
        self.stopped = True


async def test_a_service_that_dies_stops_the_process_with_status_1() -> None:
    # A process kept running with a dead service: /healthz 200, nothing done, nobody restarting it. (The
    # engine, sink and dispatcher run under a Supervisor, which restarts them in the process instead.)
    import asyncio

    from tripwire.service import run_services

    services = [Dying("sink", dies=False), Dying("collector", dies=True)]
    status = await asyncio.wait_for(run_services(services, poll_s=0.05), 10)
    assert status == 1
    assert all(s.stopped for s in services)


def test_events_tail_on_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = tripwire(["events", "tail", "--log", f"kafka://127.0.0.1:{port}"], cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"tripwire events tail: cannot reach Kafka at 127.0.0.1:{port}")


@pytest.mark.parametrize("command", [["run", "--port", "0"], ["collector", "--port", "0"], ["sink"]])
def test_a_data_dir_that_cannot_be_used_is_one_line(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "file").write_text("not a directory")
    done = tripwire(command, cwd=tmp_path, env={"TRIPWIRE_DATA_DIR": str(tmp_path / "file" / "data")})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "tripwire: Config 'data_dir' has value <not shown>: cannot create it "  # the variable's value: not echoed
        "(Not a directory) (set by TRIPWIRE_DATA_DIR)")


def test_a_second_signal_while_stopping_exits_at_once(tmp_path: Path) -> None:
    # Stopping drains every service (a minute with the broker away); a second Ctrl-C must not wait.
    import signal

    from tests.fixtures.servers import run_command
    from tests.fixtures.waiting import wait_until

    with run_command(["run", "--port", "0"], cwd=tmp_path) as proc:
        proc.proc.send_signal(signal.SIGINT)
        wait_until(lambda: any(line.endswith("tripwire.service: stopping") for line in proc.lines), 20,
                   "the 'stopping' line after the first SIGINT", interval_s=0.01, detail=proc.output)
        proc.proc.send_signal(signal.SIGINT)  # (sent at once, the kernel merges two pending SIGINTs)
        assert proc.proc.wait(20) == 130
        # the output pump reads what the process wrote before it exited
        wait_until(lambda: any("second signal while stopping: exiting now" in line for line in proc.lines), 10,
                   "the 'second signal' line", detail=proc.output)
