"""Fixtures shared by every room's tests live in tests/fixtures/ and are imported explicitly."""

from tests.fixtures import reaper

reaper.start()  # services started by the tests die with the run, even a killed one


def pytest_collection_modifyitems(items: list) -> None:  # type: ignore[type-arg]
    """The end-to-end files first: they are the longest, and `make test` hands files to two workers
    (pytest-xdist, --dist loadfile) in this order, so the long ones start early and the short ones
    fill in around them instead of one long file running alone at the end."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/e2e/"))
