"""Assembling the collector's Starlette app from config and an event log.

``create_app(config, log)`` does not start or stop the log: its owner (the
:mod:`collector.service`, ``tripwire run``, a test) does. ``own_log=True`` makes
the app's lifespan start and stop it instead (one log per uvicorn worker).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tripwire.config import Config
from tripwire.log import EventLog, LogError
from tripwire.metrics import READINESS, exposition

from . import metrics
from .api import SINGLE_TYPES, TrackingEndpoint
from .catalog import Catalog, resolve_salt
from .config import CollectorConfig, load_sources
from .cors import CorsPolicy
from .enrich import IpPolicy
from .intake import Intake
from .openapi import build_openapi
from .pixel import PixelEndpoint
from .snippet import PACKAGED, SnippetEndpoint

logger = logging.getLogger(__name__)

_STATUS_CODES = {404: "not_found", 405: "method_not_allowed"}


class _CollectorApp(Starlette):
    """Starlette, with POST/OPTIONS on the tracking routes handed straight to their endpoint.

    The endpoints answer every outcome themselves (4xx JSON, 503, and a JSON 500 for
    a bug), so the middleware stack and the router's matching are skipped on the hot
    path; everything else (other methods, other paths, lifespan) goes through Starlette.
    """

    fast: Mapping[str, ASGIApp] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "OPTIONS"):
            endpoint = self.fast.get(scope["path"])
            if endpoint is not None:
                return await endpoint(scope, receive, send)
        await super().__call__(scope, receive, send)


def create_app(config: Config, log: EventLog, *, own_log: bool = False) -> Starlette:
    settings = config.section("collector", CollectorConfig)
    sources = load_sources(config)
    if not sources:
        logger.warning(
            "no [sources.<name>] configured: accepting every write key from any origin as source 'dev'; "
            "declare sources with write_key and origins before exposing the collector"
        )
    catalog = None
    if settings.catalog:
        path = config.resolve(settings.catalog)
        catalog = Catalog.load(path, strict=settings.strict, salt=resolve_salt(settings.pii_salt, config.data_dir))
        logger.info("event catalog %s: %d events, strict=%s", path, len(catalog.event_names), settings.strict)
    ip_policy = IpPolicy(settings.trusted_proxies, settings.ip_truncate, settings.ipv4_prefix, settings.ipv6_prefix)
    intake = Intake(log, sources, catalog=catalog, ip_policy=ip_policy, max_event_bytes=settings.max_event_bytes,
                    max_future_s=settings.max_future_s, max_age_days=settings.max_age_days)
    metrics.watch_log(log)

    api_cors = CorsPolicy(sources.values(), intake.open_mode, settings.cors_max_age_s, "POST")
    routes: list[Route] = []
    fast: dict[str, TrackingEndpoint] = {}
    for kind in (*SINGLE_TYPES, "batch"):
        endpoint = TrackingEndpoint(
            intake, api_cors, kind=kind,
            max_body_bytes=settings.max_batch_bytes if kind == "batch" else settings.max_event_bytes,
            max_decompressed_bytes=settings.max_decompressed_bytes,
        )
        # Segment's browser SDK (analytics.js) posts to one-letter paths: /v1/t, /v1/p, ..., /v1/b.
        for route_path in (f"/v1/{kind}", f"/v1/{kind[0]}"):
            routes.append(Route(route_path, endpoint, methods=["POST", "OPTIONS"]))
            fast[route_path] = endpoint
    pixel = PixelEndpoint(intake, settings.max_event_bytes)
    routes.append(Route(settings.pixel_path, pixel, methods=["GET"]))
    routes.append(Route(settings.pixel_path + "/{type}", pixel, methods=["GET"]))
    snippet_file = config.resolve(settings.snippet_file) if settings.snippet_file else PACKAGED
    routes.append(Route(settings.snippet_path, SnippetEndpoint(Path(snippet_file), settings.snippet_max_age_s), methods=["GET"]))

    openapi = orjson.dumps(
        build_openapi(settings.pixel_path, settings.snippet_path, settings.max_event_bytes, settings.max_batch_bytes)
    )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            ready = await log.ready()
        except Exception:  # a probe must answer, whatever the backend raised
            logger.exception("event log readiness check failed")
            ready = False
        if not ready:
            return JSONResponse({"status": "unavailable", "message": "the event log is not reachable"}, 503, {"Retry-After": "5"})
        # Under `tripwire run` the engine, dispatcher and sink share this process: not ready if one died.
        down = [name for name, ok in (await READINESS.check("service:")).items() if not ok]
        if down:
            return JSONResponse({"status": "unavailable", "message": f"not running: {', '.join(sorted(down))}"}, 503, {"Retry-After": "5"})
        return JSONResponse({"status": "ready"})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(await exposition(), media_type=CONTENT_TYPE_LATEST)  # with `tripwire run`'s child processes

    async def openapi_endpoint(request: Request) -> Response:
        return Response(openapi, media_type="application/json")

    routes += [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        metrics.REQUESTS.labels("other", str(exc.status_code)).inc()
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path[:200]} is not served here" if exc.status_code in (404, 405) else exc.detail
        return JSONResponse({"success": False, "error": code, "message": message}, exc.status_code, exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        metrics.REQUESTS.labels("other", "500").inc()
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"success": False, "error": "internal_error", "message": "internal error"}, 500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if own_log:
            await log.start()
        try:
            # Kafka: read the identity links other collectors learned before the first request needs them.
            await log.links(())
        except LogError as exc:
            logger.warning("identity links not read yet (%s): events with only a userId are keyed by it until "
                           "they are", exc)
        try:
            yield
        finally:
            if own_log:
                await log.stop()

    app = _CollectorApp(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.fast = fast
    app.state.intake = intake
    app.state.settings = settings
    return app
