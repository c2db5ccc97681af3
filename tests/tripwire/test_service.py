"""The supervisor of the services downstream of the log: restarts with backoff, readiness, metrics.

The services here are small stand-ins that fail on cue (what fails in real ones,
and how they resume, is in each room's tests and in
tests/tripwire/log/test_consume_contract.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from tripwire.config import ConfigError
from tripwire.log import GroupTaken, LogUnavailable
from tripwire.metrics import READINESS
from tripwire.service import Supervisor, run_services

from tests.fixtures import waiting


class Instance:
    """One instance of a service: ``start`` may raise; ``fail()`` makes it fail once running."""

    name = "stand-in"

    def __init__(self, events: list[str], start_error: BaseException | None = None) -> None:
        self.events = events
        self.start_error = start_error
        self.failed = False
        self.error: BaseException | None = None
        self.running = False

    async def start(self) -> None:
        self.events.append("start")
        if self.start_error is not None:
            raise self.start_error
        self.running = True

    async def stop(self) -> None:
        if self.running:
            self.events.append("stop")
        self.running = False

    def fail(self, error: BaseException) -> None:
        self.failed, self.error = True, error


class Factory:
    """Builds instances; ``start_errors`` are raised by the next instances' starts, in order."""

    def __init__(self, *start_errors: BaseException) -> None:
        self.events: list[str] = []
        self.instances: list[Instance] = []
        self.start_errors = list(start_errors)

    def __call__(self) -> Instance:
        error = self.start_errors.pop(0) if self.start_errors else None
        self.instances.append(Instance(self.events, error))
        return self.instances[-1]

    @property
    def last(self) -> Instance:
        return self.instances[-1]


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    await waiting.until(predicate, timeout_s, what, interval_s=0.005)


def delays(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().rsplit("restarting it in ", 1)[1] for r in caplog.records if "restarting it in" in r.getMessage()]


def metric(name: str, service: str = "stand-in") -> float | None:
    return REGISTRY.get_sample_value(name, {"service": service})


async def test_a_failed_service_is_replaced_after_a_growing_delay(caplog: pytest.LogCaptureFixture) -> None:
    factory = Factory()
    supervisor = Supervisor(factory, delays_s=(0.01, 0.04), poll_s=0.005)
    restarts_before = metric("tripwire_service_restarts_total") or 0.0
    await supervisor.start()
    try:
        assert supervisor.up and await supervisor.ready() and metric("tripwire_service_up") == 1
        for n in range(1, 5):
            factory.last.fail(RuntimeError(f"boom {n}"))
            await until(lambda n=n: supervisor.restarts == n and supervisor.up, f"restart #{n}")
        assert not supervisor.failed  # a supervised service never stops the process
    finally:
        await supervisor.stop()
    assert delays(caplog) == ["0.01 s", "0.02 s", "0.04 s", "0.04 s"]  # doubling up to the cap
    assert metric("tripwire_service_restarts_total") == restarts_before + 4
    # each failed instance was stopped before the next one started
    assert factory.events == ["start"] + ["stop", "start"] * 4 + ["stop"]
    assert any("failed (RuntimeError: boom 1)" in r.getMessage() for r in caplog.records)


async def test_the_delay_starts_over_after_a_healthy_run(caplog: pytest.LogCaptureFixture) -> None:
    factory = Factory()
    supervisor = Supervisor(factory, delays_s=(0.01, 1.0), healthy_s=0.2, poll_s=0.005)
    await supervisor.start()
    try:
        factory.last.fail(RuntimeError("first"))
        await until(lambda: supervisor.restarts == 1 and supervisor.up, "restart #1")
        factory.last.fail(RuntimeError("second, at once"))
        await until(lambda: supervisor.restarts == 2 and supervisor.up, "restart #2")
        healthy_since = time.monotonic()
        await until(lambda: time.monotonic() - healthy_since > 0.25, "a healthy run")
        factory.last.fail(RuntimeError("after a healthy run"))
        await until(lambda: supervisor.restarts == 3 and supervisor.up, "restart #3")
    finally:
        await supervisor.stop()
    assert delays(caplog) == ["0.01 s", "0.02 s", "0.01 s"]


async def test_readiness_and_metrics_say_the_service_is_down_until_it_is_back() -> None:
    factory = Factory()
    gate = asyncio.Event()

    class Slow(Instance):
        async def start(self) -> None:
            await gate.wait()  # the replacement is not up yet
            await super().start()

    def build() -> Instance:
        instance = Slow(factory.events) if factory.instances else Instance(factory.events)
        factory.instances.append(instance)
        return instance

    supervisor = Supervisor(build, delays_s=(0.01, 0.01), poll_s=0.005)
    await supervisor.start()
    try:
        factory.last.fail(RuntimeError("boom"))
        await until(lambda: len(factory.instances) == 2, "the replacement starting")
        assert not supervisor.up and not await supervisor.ready() and metric("tripwire_service_up") == 0
        gate.set()
        await until(lambda: supervisor.up, "the replacement up")
        assert await supervisor.ready() and metric("tripwire_service_up") == 1
    finally:
        gate.set()
        await supervisor.stop()


async def test_a_configuration_error_at_the_first_start_is_raised_not_retried() -> None:
    for error in (ConfigError("Config 'x' has value 1."), GroupTaken("consumer group 'sink' is already reading")):
        factory = Factory(error)
        with pytest.raises(type(error)):
            await Supervisor(factory, delays_s=(0.01, 0.01)).start()
        assert len(factory.instances) == 1


async def test_a_transient_error_at_the_first_start_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    # `tripwire sink` with the broker not up yet: it waits for it instead of exiting.
    factory = Factory(LogUnavailable("cannot reach Kafka at 127.0.0.1:9 (log.kafka_bootstrap)"),
                      LogUnavailable("cannot reach Kafka at 127.0.0.1:9 (log.kafka_bootstrap)"))
    supervisor = Supervisor(factory, delays_s=(0.01, 0.04), poll_s=0.005)
    await supervisor.start()
    try:
        assert not supervisor.up
        await until(lambda: supervisor.up, "the service up once the broker answers")
        assert supervisor.restarts == 2 and len(factory.instances) == 3
    finally:
        await supervisor.stop()
    assert any("could not start (LogUnavailable: cannot reach Kafka" in r.getMessage() for r in caplog.records)


async def test_stop_does_not_wait_out_the_delay() -> None:
    factory = Factory()
    supervisor = Supervisor(factory, delays_s=(600.0, 600.0), poll_s=0.005)
    await supervisor.start()
    factory.last.fail(RuntimeError("boom"))
    await until(lambda: not supervisor.up, "the failure seen")
    await asyncio.wait_for(supervisor.stop(), 10)  # a bound, not a speed figure: the delay is 10 minutes
    assert len(factory.instances) == 1


async def test_run_services_keeps_the_process_up_while_a_supervised_service_fails() -> None:
    # `tripwire run` exited (collector included) when the engine died: the supervisor takes the failure.
    factory = Factory()
    supervisor = Supervisor(factory, delays_s=(0.01, 0.01), poll_s=0.005)
    stop = asyncio.Event()
    task = asyncio.create_task(run_services([supervisor], stop, poll_s=0.01))
    await until(lambda: "service:stand-in" in READINESS.names() and supervisor.up, "the service up")
    factory.last.fail(RuntimeError("boom"))
    await until(lambda: supervisor.restarts == 1 and supervisor.up, "the restart")
    assert not task.done()
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0
