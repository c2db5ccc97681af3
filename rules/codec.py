"""Decoding helpers of the engine: event times, and engine state read back from disk or S3.

State is pickled plain data (tuples, lists, dicts, numbers, strings) plus the
``MISSING`` marker; reading it back allows nothing else, so a tampered
checkpoint cannot run code.
"""

from __future__ import annotations

import io
import pickle
from datetime import datetime
from typing import Any

from tripwire.envelope import EnvelopeError, event_time_ms

from .errors import StateError
from .plan import MISSING

_DAYS: dict[str, int] = {}


def parse_event_time(env: dict[str, Any]) -> int | None:
    """The envelope's corrected event time in ms, or None when it has none usable."""
    ts = env.get("timestamp")
    if type(ts) is str and len(ts) == 24 and ts[10] == "T" and ts[23] == "Z" and ts[19] == ".":
        # The collector's canonical form: YYYY-MM-DDTHH:MM:SS.mmmZ (fast path).
        day = _DAYS.get(ts[:10])
        try:
            if day is None:
                day = int(datetime.fromisoformat(ts[:10] + "T00:00:00+00:00").timestamp()) * 1000
                if len(_DAYS) < 10_000:
                    _DAYS[ts[:10]] = day
            h, m, sec, ms = int(ts[11:13]), int(ts[14:16]), int(ts[17:19]), int(ts[20:23])
        except ValueError:
            return None
        if h < 24 and m < 60 and sec < 60 and ts[13] == ":" and ts[16] == ":" and ms >= 0:
            return day + h * 3_600_000 + m * 60_000 + sec * 1000 + ms
        return None
    try:
        return event_time_ms(env)
    except (KeyError, EnvelopeError, TypeError, ValueError, OverflowError):
        return None


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "rules.plan" and name == "MISSING":
            return MISSING
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in engine state")


def loads_state(data: bytes) -> Any:
    try:
        return _Unpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise StateError(f"engine state is unreadable: {exc}") from exc
