from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.tansu import tansu  # noqa: F401  (real Kafka-protocol broker for the scale-out test)
from tripwire.log.sqlite import SqliteLog

from .receiver import Receiver


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[SqliteLog]:
    log = SqliteLog(tmp_path / "log.db", partitions=2)
    await log.start()
    yield log
    await log.stop()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(*args: Any, **kwargs: Any) -> Receiver:
        receiver = Receiver(*args, **kwargs).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()
