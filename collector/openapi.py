"""The OpenAPI 3.1 description of the collector's HTTP API, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from tripwire import __version__

_ERROR = {
    "type": "object",
    "required": ["success", "error", "message"],
    "properties": {
        "success": {"const": False},
        "error": {"type": "string", "description": "machine-readable code, e.g. invalid_json, payload_too_large"},
        "message": {"type": "string"},
        "field": {"type": "string", "description": "the offending field or header"},
        "limit": {"type": "string", "description": "the config key of the limit that was exceeded"},
    },
}
_ID = {"type": ["string", "integer"], "maxLength": 256}
_EVENT = {
    "type": "object",
    "description": "A Segment event. anonymousId or userId is required.",
    "properties": {
        "type": {"enum": ["track", "page", "screen", "identify", "alias", "group"]},
        "event": {"type": "string", "maxLength": 256, "description": "track: the event name (required)"},
        "name": {"type": "string"},
        "anonymousId": _ID,
        "userId": _ID,
        "messageId": _ID,
        "previousId": _ID,
        "groupId": _ID,
        "timestamp": {"type": "string", "format": "date-time"},
        "sentAt": {"type": "string", "format": "date-time"},
        "properties": {"type": "object"},
        "traits": {"type": "object"},
        "context": {"type": "object"},
        "integrations": {"type": "object"},
        "writeKey": {"type": "string", "description": "instead of HTTP Basic auth"},
    },
}


def _responses(success: dict[str, Any]) -> dict[str, Any]:
    err = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        "200": success,
        "400": {"description": "malformed body or event", **err},
        "401": {"description": "missing or unknown write key", **err},
        "403": {"description": "origin not allowed for this source", **err},
        "413": {"description": "a size limit was exceeded", **err},
        "415": {"description": "unsupported Content-Type or Content-Encoding", **err},
        "503": {"description": "the event log is unavailable; see Retry-After", **err},
    }


def build_openapi(pixel_path: str, snippet_path: str, max_event_bytes: int, max_batch_bytes: int) -> dict[str, Any]:
    ok = {
        "description": "accepted and durable",
        "content": {"application/json": {"schema": {"type": "object", "properties": {"success": {"const": True}}}}},
    }
    body = {
        "required": True,
        "description": f"JSON (application/json, or text/plain from beacons), optionally gzip; at most {max_event_bytes} bytes",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Event"}},
            "text/plain": {"schema": {"$ref": "#/components/schemas/Event"}},
        },
    }
    paths: dict[str, Any] = {}
    for kind in ("track", "page", "screen", "identify", "alias", "group"):
        paths[f"/v1/{kind}"] = {
            "post": {"summary": f"Record a {kind} call", "operationId": kind, "security": [{"writeKey": []}, {}],
                     "requestBody": body, "responses": _responses(ok)}
        }
    paths["/v1/batch"] = {
        "post": {
            "summary": "Record several events",
            "operationId": "batch",
            "security": [{"writeKey": []}, {}],
            "requestBody": {
                "required": True,
                "description": f"at most {max_batch_bytes} bytes, each event at most {max_event_bytes} bytes",
                "content": {"application/json": {"schema": {
                    "type": "object", "required": ["batch"],
                    "properties": {"batch": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Event"}},
                                   "writeKey": {"type": "string"}, "sentAt": {"type": "string", "format": "date-time"},
                                   "context": {"type": "object"}, "integrations": {"type": "object"}}}}},
            },
            "responses": _responses(ok),
        }
    }
    gif = {"description": "a 1x1 transparent GIF", "content": {"image/gif": {}}}
    query = [
        {"name": "data", "in": "query", "required": False, "schema": {"type": "string"}, "description": "base64 JSON event"},
        {"name": "writeKey", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "event", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "userId", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "anonymousId", "in": "query", "required": False, "schema": {"type": "string"}},
    ]
    paths[pixel_path] = {"get": {"summary": "Tracking pixel (type track)", "operationId": "pixel", "parameters": query, "responses": _responses(gif)}}
    paths[pixel_path + "/{type}"] = {
        "get": {
            "summary": "Tracking pixel for any type",
            "operationId": "pixelType",
            "parameters": [{"name": "type", "in": "path", "required": True,
                            "schema": {"enum": ["track", "page", "screen", "identify", "alias", "group"]}}, *query],
            "responses": _responses(gif),
        }
    }
    paths[snippet_path] = {"get": {"summary": "The JavaScript tracker", "operationId": "snippet",
                                   "responses": {"200": {"description": "the tracker", "content": {"text/javascript": {}}},
                                                 "304": {"description": "not modified"},
                                                 "404": {"description": "tracker not built"}}}}
    paths["/healthz"] = {"get": {"summary": "Liveness", "operationId": "healthz", "responses": {"200": {"description": "alive"}}}}
    paths["/readyz"] = {"get": {"summary": "Readiness: the event log is reachable", "operationId": "readyz",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "log unreachable"}}}}
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics", "operationId": "metrics", "responses": {"200": {"description": "text format"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tripwire collector", "version": __version__,
                 "description": "Segment-compatible HTTP Tracking API of Tripwire. Every /v1/<type> route "
                                "also answers at /v1/<first letter> (/v1/t, /v1/p, /v1/s, /v1/i, /v1/a, "
                                "/v1/g, /v1/b) as Segment's analytics.js calls them."},
        "paths": paths,
        "components": {
            "schemas": {"Event": _EVENT, "Error": _ERROR},
            "securitySchemes": {"writeKey": {"type": "http", "scheme": "basic", "description": "the write key as user name, empty password"}},
        },
    }
