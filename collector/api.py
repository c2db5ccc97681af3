"""The Segment HTTP Tracking API: ``POST /v1/{track,page,screen,identify,alias,group,batch}``.

Answers exactly what Segment's API answers on success (``200 {"success": true}``)
so official SDKs work unchanged; every refusal is a 4xx JSON naming the problem,
``503`` + ``Retry-After`` when the log cannot take events durably.
"""

from __future__ import annotations

import logging

from starlette.types import Receive, Scope, Send

from tripwire.log import LogError, LogUnavailable

from . import metrics
from .body import check_content_type, decode, parse_json, read_body
from .cors import CorsPolicy
from .errors import CollectorError
from .http import JSON_HEADERS, SUCCESS_BODY, SUCCESS_END, SUCCESS_START, respond, respond_error
from .intake import Intake

logger = logging.getLogger(__name__)

SINGLE_TYPES = ("track", "page", "screen", "identify", "alias", "group")
_LIBRARY = {"name": "http", "version": "1"}


class TrackingEndpoint:
    """One ASGI endpoint of the API (POST, plus OPTIONS for CORS preflights)."""

    def __init__(
        self,
        intake: Intake,
        cors: CorsPolicy,
        *,
        kind: str,  # a Segment type, or "batch"
        max_body_bytes: int,
        max_decompressed_bytes: int,
    ) -> None:
        self.intake = intake
        self.cors = cors
        self.kind = kind
        self.batch = kind == "batch"
        self.limit = max_body_bytes
        self.limit_name = "max_batch_bytes" if self.batch else "max_event_bytes"
        self.max_inflated = max_decompressed_bytes
        self.metrics = metrics.RouteMetrics(f"/v1/{kind}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])  # one pass; a repeated header keeps its last value
        origin = headers.get(b"origin")
        if scope["method"] == "OPTIONS":
            return await self._preflight(headers, send, origin)
        cors = self.cors.headers(origin)
        try:
            check_content_type(headers.get(b"content-type"))
            body = await read_body(receive, headers.get(b"content-length"), self.limit, self.limit_name)
            body = decode(body, headers.get(b"content-encoding"), self.limit, self.limit_name, self.max_inflated)
            doc = parse_json(body)
            if not isinstance(doc, dict):
                raise CollectorError(400, "invalid_event", "body must be a JSON object", field="body")
            intake = self.intake
            key = intake.write_key_from_auth(headers.get(b"authorization"))
            if key is None:
                key = doc.pop("writeKey", None)
            source = intake.source_for(key)
            if origin is not None and not intake.open_mode and not source.allows_origin(origin.decode("latin-1")):
                raise CollectorError(
                    403, "origin_not_allowed",
                    f"origin {origin.decode('latin-1')[:200]!r} is not allowed for source '{source.name}'",
                    field="Origin",
                )
            if self.batch:
                events = doc.get("batch")
                if not isinstance(events, list):
                    raise CollectorError(400, "invalid_batch", "batch must be a JSON array of events", field="batch")
                if not events:
                    raise CollectorError(400, "invalid_batch", "batch is empty", field="batch")
                default_type = None
                batch = doc
            else:
                doc["type"] = self.kind  # the route names the type
                events = [doc]
                default_type = self.kind
                batch = None
            ua = headers.get(b"user-agent")
            client = scope.get("client")
            peer = intake.ip_policy.client_ip(client[0] if client else None, headers.get(b"x-forwarded-for"))
            prepared = intake.prepare(
                events,
                source=source.name,
                historical=source.historical,
                trusted=source.trusted,
                identity_secret=source.identity_key,
                default_type=default_type,
                client_ip=peer,
                user_agent=ua.decode("utf-8", "replace") if ua is not None else None,
                library=_LIBRARY,
                batch=batch,
            )
            # Only the serialised entries are needed from here on. Drop the parsed request
            # before waiting for the commit: its thousands of objects are then freed at once
            # instead of surviving into the GC's older generations, whose full collections
            # grow with every request in flight (about a fifth of the CPU per event under load).
            del doc, events, batch, body
            await intake.write(prepared)
        except CollectorError as exc:
            metrics.EVENTS_REJECTED.labels(exc.limit or exc.code).inc()
            self.metrics.count(exc.status)
            readable = self.cors.refusal(exc, origin)
            if readable is not None:
                return await respond_error(send, *readable)
            return await respond_error(send, exc, cors)
        except LogError as exc:
            await self._unavailable(send, exc, cors)
            return
        except Exception:  # a bug: answer as Starlette's ServerErrorMiddleware would (the fast path skips it)
            logger.exception("unhandled error on POST %s", self.metrics.route)
            self.metrics.count(500)
            error = CollectorError(500, "internal_error", "internal error")
            return await respond_error(send, error, cors)
        self.metrics.count(200)
        if cors:
            await respond(send, 200, SUCCESS_BODY, JSON_HEADERS + cors)
        else:
            await send(SUCCESS_START)
            await send(SUCCESS_END)

    async def _unavailable(self, send: Send, exc: LogError, cors: list[tuple[bytes, bytes]]) -> None:
        retry = exc.retry_after_s if isinstance(exc, LogUnavailable) else 5
        logger.warning("event log refused an append: %s", exc)
        metrics.EVENTS_REJECTED.labels("log_unavailable").inc()
        self.metrics.count(503)
        error = CollectorError(
            503, "log_unavailable", "the event log cannot take events right now; retry later",
            headers={"Retry-After": str(retry)},
        )
        await respond_error(send, error, cors)

    async def _preflight(self, request_headers: dict[bytes, bytes], send: Send, origin: bytes | None) -> None:
        try:
            headers = self.cors.preflight(origin, request_headers.get(b"access-control-request-method"))
        except CollectorError as exc:
            metrics.EVENTS_REJECTED.labels(exc.code).inc()
            self.metrics.count(exc.status)
            return await respond_error(send, exc)
        self.metrics.count(204)
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
