"""Fixtures shared by every room's tests live in tests/fixtures/ and are imported explicitly."""

import pytest

from tests.fixtures import reaper

reaper.start()  # services started by the tests die with the run, even a killed one


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow end-to-end files first: with the suite split over workers a file at a time
    (`make test`), a long file started last would leave the other worker idle at the end."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/e2e/"))  # stable: the order within stays
