"""Decoding helpers of the engine: event times, and engine state read back from disk or S3.

State is pickled plain data (tuples, lists, dicts, numbers, strings) plus the
``MISSING`` marker; reading it back allows nothing else, so a tampered
checkpoint cannot run code.
"""

from __future__ import annotations

import io
import pickle
import re
import zlib
from datetime import datetime
from typing import Any

from tripwire.times import parse_iso_ms

from .errors import StateError
from .plan import MISSING

_DAYS: dict[str, int] = {}
_SECONDS: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" -> epoch ms (hot path: one lookup per event)
_SECONDS_MAX = 200_000


def _second_ms(prefix: str) -> int | None:
    """Epoch ms of a validated "YYYY-MM-DDTHH:MM:SS" prefix, or None."""
    day = _DAYS.get(prefix[:10])
    try:
        if day is None:
            day = int(datetime.fromisoformat(prefix[:10] + "T00:00:00+00:00").timestamp()) * 1000
            if len(_DAYS) < 10_000:
                _DAYS[prefix[:10]] = day
        h, m, sec = int(prefix[11:13]), int(prefix[14:16]), int(prefix[17:19])
    except ValueError:
        return None
    if h < 24 and m < 60 and sec < 60 and prefix[13] == ":" and prefix[16] == ":":
        return day + h * 3_600_000 + m * 60_000 + sec * 1000
    return None


def parse_event_time(env: dict[str, Any]) -> int | None:
    """The envelope's corrected event time in ms, or None when it has none usable."""
    return time_ms(env.get("timestamp"))


def parse_time_field(env: dict[str, Any], name: str) -> int | None:
    """A time field of the envelope (``receivedAt``, ...) in ms, or None when it has none usable."""
    return time_ms(env.get(name))


def time_ms(ts: Any) -> int | None:
    if type(ts) is str and len(ts) == 24 and ts[10] == "T" and ts[23] == "Z" and ts[19] == ".":
        # The collector's canonical form: YYYY-MM-DDTHH:MM:SS.mmmZ (fast path: the second is cached).
        prefix = ts[:19]
        base = _SECONDS.get(prefix)
        if base is None:
            base = _second_ms(prefix)
            if base is None:
                return None
            if len(_SECONDS) >= _SECONDS_MAX:
                _SECONDS.clear()
            _SECONDS[prefix] = base
        try:
            ms = int(ts[20:23])
        except ValueError:
            return None
        return base + ms if ms >= 0 else None
    try:
        return parse_iso_ms(ts)
    except (TypeError, ValueError, OverflowError):
        return None


# messageIds ----------------------------------------------------------------------------------
# The duplicate memory holds, per messageId, the event's *stamp*: its time, the fingerprint of its
# source and key, and its log offset packed into one int ordered by time,
# ``t << TIME_SHIFT | fingerprint << FP_SHIFT | offset`` (0 <= offset < 2**64). The fingerprint
# (30 bits, never 0; 0 marks ids stored before fingerprints existed and matches any) tells a
# messageId repeating an event (same source and key) from a visitor who reuses or guesses another's
# id, which must not suppress it.
TIME_SHIFT = 94
FP_SHIFT = 64
FP_MASK = (1 << 30) - 1
OFFSET_MASK = (1 << 64) - 1

Stamp = int
"""``time << TIME_SHIFT | fingerprint << FP_SHIFT | offset``: see :func:`stamp`."""

MidKey = int | str | tuple[int | str, int]
"""A messageId as the duplicate memory keys it: :func:`compact_mid`, or (that, fingerprint) when another
source or key sent the same id first."""


def stamp(t: int, offset: int, fp: int = 0) -> Stamp:
    """An event's stamp: time ``t`` (ms), log ``offset``, source/key fingerprint ``fp``. The per-event loop
    inlines it."""
    return t << TIME_SHIFT | fp << FP_SHIFT | offset


def stamp_time(s: Stamp) -> int:
    return s >> TIME_SHIFT


def stamp_fp(s: Stamp) -> int:
    return (s >> FP_SHIFT) & FP_MASK


def stamp_offset(s: Stamp) -> int:
    return s & OFFSET_MASK


_SOURCE_CRC: dict[str, int] = {}


def key_fp(source: Any, key: str) -> int:
    """Fingerprint of (source, log key): ``zlib.crc32`` folded to 30 bits, never 0."""
    base = _SOURCE_CRC.get(source) if type(source) is str else None
    if base is None:
        text = source if type(source) is str else repr(source)
        base = zlib.crc32(text.encode("utf-8", "surrogatepass"))
        if type(source) is str and len(_SOURCE_CRC) < 4096:
            _SOURCE_CRC[source] = base
    return (zlib.crc32(key.encode("utf-8", "surrogatepass"), base) & FP_MASK) | 1


# A canonical UUID messageId (36 characters, lowercase hex and dashes: what analytics clients
# send) is remembered as its 128-bit integer (44 bytes instead of an 85-byte string) in the
# duplicate memory and in compact pending states; any other messageId stays the string it is.
# The mapping is exact both ways, and an int never equals a str, so duplicate detection is
# unchanged. Matches, stored seen rows, snapshots and trigger ids always get the exact text.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z").match


def compact_mid(mid: str) -> int | str:
    return int(mid.replace("-", ""), 16) if _CANONICAL_UUID(mid) else mid


def mid_text(mid: MidKey) -> str:
    """The messageId :func:`compact_mid` was given (also from the ``(compact id, fingerprint)`` form)."""
    if type(mid) is int:
        h = f"{mid:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if type(mid) is tuple:
        return mid_text(mid[0])
    return mid  # type: ignore[return-value]


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module in ("tripwire.rules.plan", "rules.plan") and name == "MISSING":  # the name states before 0.2 were written under
            return MISSING
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in engine state")


def loads_state(data: bytes) -> Any:
    try:
        return _Unpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise StateError(f"engine state is unreadable: {exc}") from exc


# (rule, key) states and partition snapshots ------------------------------------------------
# A state is pickled as (runs, acc, fires); a run as (steps, anchor, deadline, acc).


def encode_rule_state(rs: Any) -> bytes:
    runs = None if rs.runs is None else [None if r is None else (r.steps, r.anchor, r.deadline, r.acc) for r in rs.runs]
    return pickle.dumps((runs, rs.acc, rs.fires), protocol=5)


def decode_rule_state(data: bytes, state_cls: Any, run_cls: Any) -> Any:
    runs, acc, fires = loads_state(data)
    rs = state_cls(1)
    rs.runs = None if runs is None else [None if r is None else run_cls(*r) for r in runs]
    rs.acc, rs.fires = acc, fires
    return rs


def snapshot_bytes(max_t: int, watermark: int, seen: list[tuple[str, int, int]], states: dict[tuple[str, str], bytes],
                   old: dict[str, Any] | None = None) -> bytes:
    """A partition: ``seen`` as (messageId, event time, fingerprint), the long memory ``old``
    (:meth:`rules.dedup.OldIds.dump`). Snapshots written before fingerprints hold ``seen`` as a
    dict messageId -> time; :func:`seen_entries` reads both."""
    return pickle.dumps({"max_t": max_t, "watermark": watermark, "seen": seen, "states": states, "old": old}, protocol=5)


def seen_entries(seen: Any) -> list[tuple[str, int, int]]:
    """(messageId, time, fingerprint) from a snapshot's or journal's ``seen`` (old form: fingerprint 0)."""
    if isinstance(seen, dict):
        return [(m, t, 0) for m, t in seen.items()]
    return [e if len(e) == 3 else (e[0], e[1], 0) for e in seen]
