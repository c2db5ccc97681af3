"""Small async helpers for event log tests (bounded waits only)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from tripwire.log import Consumer, EventLog, Record

from tests.fixtures.waiting import until


async def wait_for(predicate: Callable[[], Awaitable[bool] | bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    await until(predicate, timeout_s, what, interval_s=0.05)


async def poll_until(consumer: Consumer, count: int, timeout_s: float = 30.0) -> list[Record]:
    """Poll until at least ``count`` records arrived (or fail after ``timeout_s``)."""
    out: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"got {len(out)} of {count} records within {timeout_s}s")
        out.extend(await consumer.poll(timeout_ms=200))
    return out


async def wait_assigned(consumer: Consumer, timeout_s: float = 30.0) -> None:
    """Poll (driving the group protocol) until the consumer has partitions."""
    deadline = time.monotonic() + timeout_s
    while not consumer.assignment():
        if time.monotonic() > deadline:
            raise AssertionError(f"no partitions assigned within {timeout_s}s")
        await consumer.poll(timeout_ms=100)


async def read_all(log: EventLog, topic: str) -> list[Record]:
    """Every record of ``topic``, partition by partition, in offset order."""
    out: list[Record] = []
    for partition, end in (await log.end_offsets(topic)).items():
        offset = 0
        while offset < end:
            got = await log.read(topic, partition, offset, 1000)
            assert got, f"{topic}/{partition}: nothing at offset {offset} below end {end}"
            out.extend(got)
            offset = got[-1].offset + 1
    return out
