"""Fixtures of the rules engine tests (the webhook tests below have their own)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fixtures.s3 import moto_server, s3_bucket  # noqa: F401
from tests.fixtures.tansu import tansu  # noqa: F401
from tripwire.log.sqlite import SqliteLog


@pytest.fixture
async def sqlite_log(tmp_path: Path) -> AsyncIterator[SqliteLog]:
    log = SqliteLog(tmp_path / "data" / "log.db", partitions=4)
    await log.start()
    yield log
    await log.stop()
