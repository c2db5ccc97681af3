"""Fixtures shared by every room's tests live in tests/fixtures/ and are imported explicitly."""

from tests.fixtures import reaper

reaper.start()  # services started by the tests die with the run, even a killed one

