"""Fixtures for the tracker's tests: one chromium per module, a site and a collector per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext

from tests.fixtures.browser import chromium  # noqa: F401  (fixture)

from .helpers import Collector, Site


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    s = Site()
    s.server.start()
    try:
        yield s
    finally:
        s.server.stop()


@pytest.fixture
def collector(tmp_path: Path, site: Site) -> Iterator[Collector]:
    c = Collector(tmp_path / "data", [site.origin])
    c.server.start()
    try:
        yield c
    finally:
        c.server.stop()


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:
    ctx = chromium.new_context()
    errors: list[str] = []
    ctx.on("weberror", lambda e: errors.append(str(e.error)))
    try:
        yield ctx
    finally:
        ctx.close()
    assert not errors, f"the page saw uncaught errors: {errors}"
