"""Console fixtures: a running console (its own uvicorn) on a real SQLite log, per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .helpers import Running, config_for, running


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Running]:
    async with running(config_for(tmp_path)) as r:
        yield r
