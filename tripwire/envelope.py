"""The event envelope (Segment spec) and its normalisation.

An envelope is a plain ``dict`` with Segment's field names, so official Segment
SDKs work unchanged and every room reads the same shape. ``normalize`` checks
the shape and adds what the server owns:

* ``messageId``: kept when the client sent one (it is the dedup key across
  retries), otherwise a random UUID;
* ``receivedAt``: when the collector got the request;
* ``originalTimestamp``: the client's ``timestamp`` as sent;
* ``timestamp``: the event time corrected for client clock skew, as Segment
  does: ``receivedAt - (sentAt - originalTimestamp)`` when ``sentAt`` is
  present (clamped into years 1..9999), else the client's timestamp, else
  ``receivedAt``;
* ``source``: the name of the write key's source.

The collector then adds ``keyedBy`` to every event that carries a userId (a
client's ``keyedBy`` is dropped here): which log key the event was given and
why, ``{"key", "via": "anonymousId"|"userId"|"link", "trust":
"trusted"|"claimed"}`` (see :mod:`tripwire.identity`). Segment's spec has no
field of that name.

All times are ISO 8601 strings in UTC with milliseconds (``...T12:00:00.000Z``,
see :mod:`tripwire.times`).
The log key is ``anonymousId``, or else ``userId``: stable per browser, so all of
one visitor's events share a partition. An event with only a ``userId`` whose
person is linked to an anonymousId (:mod:`tripwire.identity`) is keyed by that
anonymousId instead, so a person's server and browser events meet.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from tripwire.identity import KEYED_BY
from tripwire.times import PARSED as _PARSED
from tripwire.times import format_time_ms as format_time_ms  # re-exported: the envelope's time format
from tripwire.times import parse_iso_ms

TYPES = frozenset({"track", "page", "screen", "identify", "alias", "group"})
MAX_ID_CHARS = 256
MAX_EVENT_NAME_CHARS = 256
_OBJECT_FIELDS = ("properties", "traits", "context", "integrations")


class EnvelopeError(ValueError):
    """An event does not fit the envelope; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


_MIN_MS = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the times an ISO string can hold


def parse_time_ms(value: Any, field: str) -> int:
    """Milliseconds since the epoch from an ISO 8601 string (naive means UTC)."""
    ms = parse_iso_ms(value)
    if ms is None:
        if not isinstance(value, str):
            raise EnvelopeError(field, "must be an ISO 8601 date-time string")
        raise EnvelopeError(field, f"{value[:40]!r} is not an ISO 8601 date-time")
    return ms


class _RandomPool:
    """Random UUID4 strings from a buffer of ``os.urandom``: one syscall per 256 ids, not per id
    (getrandom is slow on some VMs and sits on the collector's hot path)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buf = b""
        self._pos = 0
        os.register_at_fork(after_in_child=self._reset)  # never share random bytes with a child

    def _reset(self) -> None:
        self._buf, self._pos = b"", 0

    def uuid4(self) -> str:
        with self._lock:
            if self._pos + 16 > len(self._buf):
                self._buf, self._pos = os.urandom(4096), 0
            raw = bytearray(self._buf[self._pos : self._pos + 16])
            self._pos += 16
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        h = raw.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


new_message_id = _RandomPool().uuid4


def log_key(envelope: Mapping[str, Any]) -> str:
    key: str = envelope.get("anonymousId") or envelope["userId"]
    return key


def _id(raw: Mapping[str, Any], field: str) -> str | None:
    value = raw.get(field)
    if value is None or value == "":
        return None
    if type(value) is float and value.is_integer() and abs(value) <= 2**53:
        # JSON has one number type: 1613.0 is the integer 1613 (JSON Schema agrees). Beyond 2**53 a float
        # is not an exact integer (orjson reads integers past 64 bits as floats): not an id.
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EnvelopeError(field, "must be a string")
    value = str(value)
    if len(value) > MAX_ID_CHARS:
        raise EnvelopeError(field, f"longer than {MAX_ID_CHARS} characters")
    return value


def _normalize_id(env: dict[str, Any], field: str) -> str | None:
    """``_id`` that also rewrites ``env[field]`` (ints become strings, empty ones go)."""
    value = env.get(field)
    if type(value) is str and 0 < len(value) <= MAX_ID_CHARS:
        return value  # the common case, already normal
    normal = _id(env, field)
    if normal is None:
        env.pop(field, None)
    else:
        env[field] = normal
    return normal


def normalize(
    raw: Any,
    *,
    received_at_ms: int,
    source: str,
    default_type: str | None = None,
    received_at: str | None = None,
    in_place: bool = False,
) -> dict[str, Any]:
    """Check ``raw`` against the envelope and return the normalised copy (see :func:`normalize_timed`)."""
    return normalize_timed(raw, received_at_ms=received_at_ms, source=source, default_type=default_type,
                           received_at=received_at, in_place=in_place)[0]


def normalize_timed(
    raw: Any,
    *,
    received_at_ms: int,
    source: str,
    default_type: str | None = None,
    received_at: str | None = None,
    in_place: bool = False,
) -> tuple[dict[str, Any], int]:
    """Check ``raw`` against the envelope; the normalised copy and its corrected event time (ms).

    The time is what ``timestamp`` now says, returned so that a caller on the hot path
    need not parse the string back.

    ``default_type`` is the type implied by the route (``/v1/track``); inside a
    batch each event names its own ``type``. A caller normalising many events
    of one request may pass ``received_at`` (``format_time_ms(received_at_ms)``,
    computed once) and ``in_place=True`` to normalise ``raw`` itself instead of
    a copy (it is then returned); the result is the same either way.
    """
    if not isinstance(raw, dict):
        raise EnvelopeError("event", "must be a JSON object")
    env = raw if in_place else dict(raw)
    kind = env.get("type") or default_type
    if not isinstance(kind, str) or kind not in TYPES:
        raise EnvelopeError("type", f"must be one of {', '.join(sorted(TYPES))}")
    env["type"] = kind

    if KEYED_BY in env:
        del env[KEYED_BY]  # the collector's to set: a client must not choose its key or its trust
    for name in _OBJECT_FIELDS:
        if name in env:
            value = env[name]
            if value is None:
                del env[name]
            elif not isinstance(value, dict):
                raise EnvelopeError(name, "must be a JSON object")

    # Ids: the common case (a short non-empty string, or absent) is checked inline;
    # anything else goes through _normalize_id, which rewrites or refuses it.
    anonymous_id = env.get("anonymousId")
    if type(anonymous_id) is not str or not 0 < len(anonymous_id) <= MAX_ID_CHARS:
        anonymous_id = _normalize_id(env, "anonymousId") if "anonymousId" in env else None
    user_id = env.get("userId")
    if type(user_id) is not str or not 0 < len(user_id) <= MAX_ID_CHARS:
        user_id = _normalize_id(env, "userId") if "userId" in env else None
    if anonymous_id is None and user_id is None:
        raise EnvelopeError("anonymousId", "either anonymousId or userId is required")

    if kind == "track":
        event = env.get("event")
        if not isinstance(event, str) or not event or event.isspace():
            raise EnvelopeError("event", "track calls need a non-empty event name")
        if len(event) > MAX_EVENT_NAME_CHARS:
            raise EnvelopeError("event", f"longer than {MAX_EVENT_NAME_CHARS} characters")
    elif kind in ("page", "screen"):
        page_name = env.get("name")
        if page_name is not None and not isinstance(page_name, str):
            raise EnvelopeError("name", "must be a string")
    elif kind == "alias":
        if _normalize_id(env, "previousId") is None:  # an id like userId (a string): it becomes a link's key
            raise EnvelopeError("previousId", "alias calls need previousId")
    elif kind == "group":
        if _id(env, "groupId") is None:
            raise EnvelopeError("groupId", "group calls need groupId")
    if "previousId" in env or "groupId" in env:  # an id is an id on every call: the same bounds
        for name in ("previousId", "groupId"):
            if name in env and (kind != "alias" or name != "previousId") and (kind != "group" or name != "groupId"):
                _id(env, name)

    message_id = env.get("messageId")
    if type(message_id) is not str or not 0 < len(message_id) <= MAX_ID_CHARS:
        if "messageId" not in env or _normalize_id(env, "messageId") is None:
            env["messageId"] = new_message_id()

    client_ts = env.get("timestamp")
    sent_at = env.get("sentAt")
    ts_ms = (_PARSED.get(client_ts) if type(client_ts) is str else None) if client_ts is not None else None
    if ts_ms is None and client_ts is not None:
        ts_ms = parse_time_ms(client_ts, "timestamp")
    sent_ms = (_PARSED.get(sent_at) if type(sent_at) is str else None) if sent_at is not None else None
    if sent_ms is None and sent_at is not None:
        sent_ms = parse_time_ms(sent_at, "sentAt")
    if ts_ms is None:
        event_ms = received_at_ms
    elif sent_ms is None:
        event_ms = ts_ms
    else:
        event_ms = received_at_ms - (sent_ms - ts_ms)
        if not _MIN_MS <= event_ms <= _MAX_MS:
            # A clock off by millennia: the corrected time is clamped into years 1..9999, where the
            # collector's own rules judge it (a future time becomes receivedAt, an old one is too old).
            event_ms = _MIN_MS if event_ms < _MIN_MS else _MAX_MS
    if ts_ms is not None:
        env["originalTimestamp"] = client_ts
    env["timestamp"] = format_time_ms(event_ms)
    env["receivedAt"] = received_at if received_at is not None else format_time_ms(received_at_ms)
    env["source"] = source
    return env, event_ms
