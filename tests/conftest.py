"""Fixtures shared by every room's tests live in tests/fixtures/ and are imported explicitly."""
