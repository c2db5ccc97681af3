"""Event times as Tripwire writes them: ISO 8601 in UTC with milliseconds, and back.

One implementation for every room. The envelope stores times as
``2026-11-29T12:00:00.000Z`` (:func:`format_time_ms`); the lake stores them as
``timestamp[ms, UTC]``; clients send any ISO 8601 form, a naive one meaning UTC
(:func:`parse_iso_ms`). Both directions are on hot paths (the collector formats
``receivedAt`` for every request, the sink routes every row by its time), so
each keeps a small cache of what it did last.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

PARSED: dict[str, int] = {}  # recent strings (a batch's events share sentAt, often timestamps); read-only for callers
_PARSED_MAX = 1024

_SECONDS: dict[int, str] = {}  # formatted whole seconds: strftime is the slow part of the hot path
_SECONDS_MAX = 4096
_MILLIS = tuple(f"{i:03d}Z" for i in range(1000))  # "000Z" .. "999Z"


def parse_iso_ms(value: Any, *, cache: bool = True) -> int | None:
    """Milliseconds since the epoch of an ISO 8601 string (naive means UTC); None when it is not one.

    ``cache=False`` for strings that rarely repeat (every event's own timestamp).
    """
    if type(value) is str:
        cached = PARSED.get(value)
        if cached is not None:
            return cached
    elif not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    ms = int(dt.timestamp() * 1000)
    if cache:
        if len(PARSED) >= _PARSED_MAX:
            PARSED.clear()
        PARSED[value] = ms
    return ms


def datetime_ms(dt: datetime) -> int:
    """Milliseconds since the epoch of ``dt`` (naive means UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def format_time_ms(ms: int) -> str:
    """``ms`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC; years before 1000 zero-padded).

    Raises ValueError, OverflowError or OSError outside the years 1-9999.
    """
    # One dict lookup and one concatenation when the second was seen lately (the events of a
    # request are seconds apart): the collector formats every event's corrected time.
    prefix = _SECONDS.get(ms // 1000)
    if prefix is None:
        prefix = _format_second(ms // 1000)
    return prefix + _MILLIS[ms % 1000]  # floor division and modulo: right for times before 1970 too


def _format_second(seconds: int) -> str:
    if len(_SECONDS) >= _SECONDS_MAX:
        _SECONDS.clear()
    dt = datetime.fromtimestamp(seconds, UTC)  # %Y would not zero-pad years before 1000
    prefix = _SECONDS[seconds] = (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}."
    )
    return prefix


def format_datetime(dt: datetime) -> str:
    """``dt`` (naive means UTC) in the envelope's form, truncated to milliseconds."""
    return format_time_ms(datetime_ms(dt))
