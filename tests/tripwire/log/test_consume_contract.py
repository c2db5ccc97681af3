"""The consumer runner's contract, for each of its handlers (engine, sink, dispatcher) on each log.

Every handler kind runs on the in-memory twin, the embedded SQLite log and a
real Kafka broker (tansu), under a :class:`~tripwire.service.Supervisor`, and
must deliver what was appended exactly once through the runner's whole
lifecycle: records appended before the start and while running; a failure of
the handler on a batch it was handed (injected: the handler raises instead of
handling it), after which a new instance resumes from the durable state, not
from where the failed consumer had read; a clean stop, records appended while
nothing runs, and a new start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.sinks.helpers import event as sink_event
from tests.sinks.helpers import lake_table, send
from tests.sinks.lakes import make_lake
from tests.webhooks.helpers import make_trigger, publish, settings
from tripwire.config import from_dict
from tripwire.envelope import format_time_ms
from tripwire.log import EVENTS, TRIGGERS, EventLog
from tripwire.log.consume import Batch
from tripwire.log.kafka import KafkaLog
from tripwire.log.memory import MemoryLog
from tripwire.log.sqlite import SqliteLog
from tripwire.rules.service import build_service
from tripwire.service import Service, Supervisor
from tripwire.sinks.service import SinkService
from tripwire.triggers import Trigger, trigger_id
from tripwire.webhooks import Dispatcher, Store

from .helpers import read_all

PARTITIONS = 4


@pytest.fixture(params=["memory", "sqlite", "kafka"])
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventLog]:
    backend: EventLog
    if request.param == "memory":
        backend = MemoryLog(PARTITIONS)
    elif request.param == "sqlite":
        backend = SqliteLog(tmp_path / "log.db", PARTITIONS)
    else:
        backend = KafkaLog(request.getfixturevalue("tansu").bootstrap, spill_dir=tmp_path / "spill", partitions=PARTITIONS)
    async with backend:
        yield backend


@dataclass
class Kind:
    """One handler kind: how to build it, what to append, what it produced (ids, with repeats)."""

    make: Callable[[], Service]
    append: Callable[[list[int]], Any]  # coroutine function: append items numbered so
    output: Callable[[], Any]  # coroutine function -> list of ids produced
    expected: Callable[[list[int]], list[str]]


def engine_kind(log: EventLog, tmp_path: Path) -> Kind:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "signup.rules").write_text('rule "signup" when Signup post crm\n')
    backend = "kafka" if isinstance(log, KafkaLog) else "sqlite"
    config = from_dict({
        "data_dir": str(tmp_path / "engine"),
        "log": {"backend": backend},
        "rules": {"dir": str(rules), "allowed_lateness_ms": 60_000, "checkpoint_interval_ms": 200,
                  "checkpoint_url": str(tmp_path / "checkpoints")},
        "endpoints": {"crm": {"url": "http://127.0.0.1:9/hook"}},
    })

    async def append(items: list[int]) -> None:
        now = int(time.time() * 1000)
        await log.append(EVENTS, [
            (f"u{i}".encode(), orjson.dumps({"type": "track", "event": "Signup", "anonymousId": f"u{i}",
                                             "messageId": f"m{i}", "timestamp": format_time_ms(now)}))
            for i in items
        ])

    async def output() -> list[str]:
        return [Trigger.from_json(r.value).id for r in await read_all(log, TRIGGERS)]

    return Kind(lambda: build_service(config, log), append, output,
                lambda items: [trigger_id("signup", f"u{i}", [f"m{i}"]) for i in items])


def sink_kind(log: EventLog, tmp_path: Path) -> Kind:
    lake = make_lake("local", tmp_path, None)

    async def append(items: list[int]) -> None:
        await send(log, [sink_event(i, user=f"u{i % 13}") for i in items])

    async def output() -> list[str]:
        return list(await asyncio.to_thread(lambda: lake_table(lake.lake)["message_id"]))

    return Kind(lambda: SinkService(lake.cfg, log, lake.lake), append, output, lambda items: [f"m-{i}" for i in items])


def dispatcher_kind(log: EventLog, tmp_path: Path) -> Kind:
    # No endpoint is configured, so every trigger becomes a dead letter at once: what counts here is that
    # each one reached the delivery store.
    path = tmp_path / "webhooks.db"

    async def append(items: list[int]) -> None:
        await publish(log, [make_trigger("crm", i) for i in items])

    async def output() -> list[str]:
        if not path.exists():
            return []
        store = Store(path)
        try:
            return [row[0] for row in store.read("SELECT id FROM deliveries")]
        finally:
            store.close()

    return Kind(lambda: Dispatcher(log, path, settings(), {}), append, output,
                lambda items: [make_trigger("crm", i).id for i in items])


KINDS = {"engine": engine_kind, "sink": sink_kind, "dispatcher": dispatcher_kind}


def fails_on_second_batch(service: Service) -> Service:
    """``service``, whose handler raises on the second non-empty batch instead of handling it."""
    handle = service.handle  # type: ignore[attr-defined]
    batches = 0

    async def failing(batch: Batch) -> None:
        nonlocal batches
        if batch.records:
            batches += 1
            if batches == 2:
                raise RuntimeError("injected: the handler fails on a batch")
        await handle(batch)

    service.handle = failing  # type: ignore[attr-defined]
    return service


async def produced(kind: Kind, items: list[int], timeout_s: float = 90.0) -> list[str]:
    want = set(kind.expected(items))
    deadline = time.monotonic() + timeout_s
    while True:
        got = await kind.output()
        if want <= set(got):
            return got
        if time.monotonic() > deadline:
            missing = sorted(want - set(got))
            raise AssertionError(f"after {timeout_s}s, {len(missing)} of {len(want)} never came out, e.g. {missing[:3]}")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("name", list(KINDS))
async def test_each_handler_delivers_exactly_once_through_failure_and_restart(
    name: str, log: EventLog, tmp_path: Path
) -> None:
    kind = KINDS[name](log, tmp_path)
    first = fails_on_second_batch(kind.make())
    supervisor = Supervisor(kind.make, first, delays_s=(0.1, 0.5))
    await kind.append(list(range(0, 20)))
    await supervisor.start()
    try:
        await produced(kind, list(range(0, 20)))
        await kind.append(list(range(20, 40)))  # the batch the first instance fails on
        await produced(kind, list(range(0, 40)))
        assert supervisor.restarts == 1 and supervisor.service is not first
    finally:
        await supervisor.stop()
    await kind.append(list(range(40, 60)))  # nothing runs
    again = Supervisor(kind.make)
    await again.start()
    try:
        await kind.append(list(range(60, 80)))
        got = await produced(kind, list(range(0, 80)))
    finally:
        await again.stop()
    assert sorted(got) == sorted(kind.expected(list(range(0, 80))))  # every one, once
    assert again.restarts == 0
