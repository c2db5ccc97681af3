"""The tracking pixel: ``GET <pixel_path>[/<type>]`` answers a 1x1 GIF for email opens and no-JS pages.

The event travels in the query string, either Segment-style as
``?data=<base64 JSON event>`` (URL-safe or standard alphabet, padding optional)
or as plain parameters for hand-written email templates::

    /v1/pixel/track?writeKey=KEY&event=Email%20Opened&userId=42&properties.campaign=spring

Parameters ``properties.x``, ``traits.x`` and ``context.x`` fill those objects;
other parameters are top-level fields. The type comes from the path, else the
``type`` field, else ``track``. Bad input gets the same 4xx JSON as the API
(an image tag shows it as a broken image, which is what a developer wants to
notice); success gets the GIF with caching off so every open is counted.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import Receive, Scope, Send

from tripwire.envelope import TYPES
from tripwire.log import LogError, LogUnavailable

from . import metrics
from .body import header
from .errors import CollectorError
from .http import respond, respond_error
from .intake import Intake

logger = logging.getLogger(__name__)

GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
_GIF_HEADERS = [
    (b"content-type", b"image/gif"),
    (b"cache-control", b"no-store, no-cache, must-revalidate, max-age=0"),
    (b"pragma", b"no-cache"),
]
_LIBRARY = {"name": "pixel", "version": "1"}
_NESTED = ("properties", "traits", "context")


def event_from_query(query: bytes, max_bytes: int) -> dict[str, Any]:
    if len(query) > max_bytes:
        raise CollectorError(414, "uri_too_long", f"query string exceeds max_event_bytes={max_bytes} bytes", limit="max_event_bytes")
    try:
        pairs = parse_qsl(query.decode("ascii"), keep_blank_values=True, strict_parsing=False, errors="strict")
    except UnicodeDecodeError:
        raise CollectorError(400, "invalid_query", "query string is not valid percent-encoded UTF-8", field="query") from None
    params = dict(pairs)
    if "data" in params:
        data = params.pop("data")
        try:
            raw = base64.b64decode(data + "=" * (-len(data) % 4), altchars=b"-_" if ("-" in data or "_" in data) else None)
        except (binascii.Error, ValueError):
            raise CollectorError(400, "invalid_query", "data is not valid base64", field="data") from None
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CollectorError(400, "invalid_json", f"data is not valid base64 JSON: {exc}", field="data") from None
        if not isinstance(decoded, dict):
            raise CollectorError(400, "invalid_event", "data must encode a JSON object", field="data")
        for k, v in params.items():  # a writeKey beside data is fine
            decoded.setdefault(k, v)
        return decoded
    event: dict[str, Any] = {}
    for name, value in params.items():
        head, dot, rest = name.partition(".")
        if dot and head in _NESTED and rest:
            if head in params:
                raise CollectorError(
                    400, "invalid_query",
                    f"{head}={params[head][:40]!r} and {name}=... cannot be combined: {head} is filled from {head}.<key>=value",
                    field=head,
                )
            event.setdefault(head, {})[rest] = value
        else:
            event[name] = value
    return event


class PixelEndpoint:
    def __init__(self, intake: Intake, max_event_bytes: int) -> None:
        self.intake = intake
        self.max_event_bytes = max_event_bytes
        self.metrics = metrics.RouteMetrics("pixel")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            event = event_from_query(scope.get("query_string", b""), self.max_event_bytes)
            kind = scope.get("path_params", {}).get("type") or event.get("type") or "track"
            if not isinstance(kind, str) or kind not in TYPES:  # a `data` event's type may be any JSON
                raise CollectorError(404, "unknown_type", f"type must be one of {', '.join(sorted(TYPES))}", field="type")
            event["type"] = kind
            source = self.intake.source_for(event.pop("writeKey", None))
            client = scope.get("client")
            peer = self.intake.ip_policy.client_ip(client[0] if client else None, header(scope, b"x-forwarded-for"))
            ua = header(scope, b"user-agent")
            prepared = self.intake.prepare(
                [event],
                source=source.name,
                historical=source.historical,
                trusted=source.trusted,
                identity_secret=source.identity_key,
                default_type=kind,
                client_ip=peer,
                user_agent=ua.decode("utf-8", "replace") if ua is not None else None,
                library=_LIBRARY,
            )
            await self.intake.write(prepared)
        except CollectorError as exc:
            metrics.EVENTS_REJECTED.labels(exc.limit or exc.code).inc()
            self.metrics.count(exc.status)
            return await respond_error(send, exc)
        except LogError as exc:
            logger.warning("event log refused a pixel append: %s", exc)
            metrics.EVENTS_REJECTED.labels("log_unavailable").inc()
            self.metrics.count(503)
            retry = exc.retry_after_s if isinstance(exc, LogUnavailable) else 5
            error = CollectorError(503, "log_unavailable", "the event log cannot take events right now; retry later", headers={"Retry-After": str(retry)})
            return await respond_error(send, error)
        self.metrics.count(200)
        await respond(send, 200, GIF, _GIF_HEADERS)
