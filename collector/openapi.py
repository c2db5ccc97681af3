"""The OpenAPI 3.1 description of the collector's HTTP API, served at ``/openapi.json``.

It says what the server does, both ways: every request the schemas allow is
accepted (unless a size limit or the write key says otherwise), and every one
they forbid is refused with the documented 4xx. ``tests/collector/test_openapi.py``
holds the two to each other with schemathesis. What JSON Schema cannot say (the
byte limits, the nesting limit, what the pixel's base64 ``data`` holds, event
times out of the representable range) is in the descriptions and the 4xx answers.
"""

from __future__ import annotations

from typing import Any

from tripwire import __version__
from tripwire.envelope import MAX_EVENT_NAME_CHARS, MAX_ID_CHARS, TYPES

from .nesting import MAX_DEPTH

_KINDS = sorted(TYPES)
_ERROR = {
    "type": "object",
    "required": ["success", "error", "message"],
    "properties": {
        "success": {"const": False},
        "error": {"type": "string", "description": "machine-readable code, e.g. invalid_json, payload_too_large"},
        "message": {"type": "string"},
        "field": {"type": "string", "description": "the offending field or header, e.g. batch[2].timestamp"},
        "limit": {"type": "string", "description": "the config key of the limit that was exceeded"},
    },
}
# orjson reads integers in this range as integers (larger ones become floats, which are not ids).
_INT_ID = {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1}
_ID = {"anyOf": [{"type": "string", "maxLength": MAX_ID_CHARS}, _INT_ID, {"type": "null"}],
       "description": "a string (an empty one counts as absent) or an integer (stored as a string; 7.0 is 7)"}
_REQUIRED_ID = {"anyOf": [{"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}, _INT_ID]}
# str.isspace(): a name made only of these is empty.
_SPACE = "\\t\\n\\x0b\\x0c\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
_EVENT_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_EVENT_NAME_CHARS, "pattern": f"[^{_SPACE}]",
               "description": "the event name: not empty, not only white space"}
_TIME = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}
_OBJECT = {"anyOf": [{"type": "object"}, {"type": "null"}],
           "description": f"a JSON object; values nest at most {MAX_DEPTH} levels (deeper: 400, limit max_nesting_depth)"}
_COMMON: dict[str, Any] = {
    "anonymousId": _ID,
    "userId": _ID,
    "messageId": {**_ID, "description": "the dedup key across retries; generated when absent"},
    "timestamp": {**_TIME, "description": "when the event happened (ISO 8601); corrected by receivedAt - sentAt"},
    "sentAt": {**_TIME, "description": "when the client sent it; with timestamp, corrects the client's clock skew"},
    "properties": _OBJECT,
    "traits": _OBJECT,
    "context": _OBJECT,
    "integrations": _OBJECT,
    "writeKey": {"description": "the write key, when not sent as the HTTP Basic user name"},
}
_BY_KIND: dict[str, tuple[dict[str, Any], list[str]]] = {
    "track": ({"event": _EVENT_NAME}, ["event"]),
    "page": ({"name": {"type": ["string", "null"]}}, []),
    "screen": ({"name": {"type": ["string", "null"]}}, []),
    "identify": ({}, []),
    "alias": ({"previousId": _REQUIRED_ID}, ["previousId"]),
    "group": ({"groupId": _REQUIRED_ID}, ["groupId"]),
}


def event_schema(kind: str, *, in_batch: bool) -> dict[str, Any]:
    """One event of ``kind``: its own route's body, or an item of a batch (which names its type)."""
    extra, required = _BY_KIND[kind]
    props = {**_COMMON, **extra}
    if in_batch:
        props["type"] = {"const": kind}
        required = ["type", *required]
    else:
        props["type"] = {"description": f"ignored: this route records a {kind} call"}
    return {
        "type": "object",
        "description": f"A Segment {kind} call. anonymousId or userId is required.",
        "properties": props,
        "required": required,
        "anyOf": [{"required": ["anonymousId"], "properties": {"anonymousId": _REQUIRED_ID}},
                  {"required": ["userId"], "properties": {"userId": _REQUIRED_ID}}],
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    what = {
        400: "malformed body, event or query; `field` names it (the nesting limit: `limit` is max_nesting_depth)",
        401: "missing or unknown write key, or an Authorization header that is not HTTP Basic",
        403: "the browser origin is not allowed for this source",
        404: "unknown_type: the pixel's type is not one of the six Segment types; snippet_not_built",
        413: "a size limit was exceeded; `limit` names it (max_event_bytes, max_batch_bytes, max_decompressed_bytes)",
        414: "the pixel's query string is longer than max_event_bytes",
        415: "unsupported Content-Type or Content-Encoding",
        503: "the event log cannot take events now; retry after Retry-After seconds",
    }
    err = _json({"$ref": "#/components/schemas/Error"})
    return {str(s): {"description": what[s], **err} for s in statuses}


def build_openapi(pixel_path: str, snippet_path: str, max_event_bytes: int, max_batch_bytes: int) -> dict[str, Any]:
    ok = {"description": "accepted and durable",
          **_json({"type": "object", "required": ["success"], "properties": {"success": {"const": True}}})}
    post_errors = _errors(400, 401, 403, 413, 415, 503)
    schemas: dict[str, Any] = {"Error": _ERROR}
    paths: dict[str, Any] = {}
    for kind in _KINDS:
        name = kind.capitalize() + "Event"
        schemas[name] = event_schema(kind, in_batch=False)
        schemas["Batch" + name] = event_schema(kind, in_batch=True)
        body = {"$ref": f"#/components/schemas/{name}"}
        paths[f"/v1/{kind}"] = {"post": {
            "summary": f"Record a {kind} call", "operationId": kind, "security": [{"writeKey": []}, {}],
            "requestBody": {
                "required": True,
                "description": f"JSON (application/json, or text/plain from beacons), optionally gzip; "
                               f"at most {max_event_bytes} bytes",
                "content": {"application/json": {"schema": body}, "text/plain": {"schema": body}},
            },
            "responses": {"200": ok, **post_errors},
        }}
    batch = {
        "type": "object", "required": ["batch"],
        "properties": {
            "batch": {"type": "array", "minItems": 1, "items": {"oneOf": [
                {"$ref": f"#/components/schemas/Batch{kind.capitalize()}Event"} for kind in _KINDS]}},
            "writeKey": _COMMON["writeKey"],
            "sentAt": {**_TIME, "description": "applies to every event without its own"},
            "context": {**_OBJECT, "description": "merged into every event's context (the event's keys win)"},
            "integrations": {**_OBJECT, "description": "applies to every event without its own"},
        },
    }
    paths["/v1/batch"] = {"post": {
        "summary": "Record several events, all or none",
        "operationId": "batch",
        "security": [{"writeKey": []}, {}],
        "requestBody": {
            "required": True,
            "description": f"at most {max_batch_bytes} bytes, each event at most {max_event_bytes} bytes as stored; "
                           "one bad event refuses the batch (400 naming batch[i])",
            "content": {"application/json": {"schema": batch}, "text/plain": {"schema": batch}},
        },
        "responses": {"200": ok, **post_errors},
    }}
    paths.update(_pixel_paths(pixel_path, max_event_bytes))
    paths[snippet_path] = {"get": {
        "summary": "The JavaScript tracker", "operationId": "snippet",
        "responses": {"200": {"description": "the tracker", "content": {"text/javascript": {"schema": {"type": "string"}}}},
                      "304": {"description": "not modified (If-None-Match)"},
                      **_errors(404)},
    }}
    status = _json({"type": "object", "required": ["status"], "properties": {"status": {"type": "string"},
                                                                              "message": {"type": "string"}}})
    paths["/healthz"] = {"get": {"summary": "Liveness", "operationId": "healthz",
                                 "responses": {"200": {"description": "alive", **status}}}}
    paths["/readyz"] = {"get": {"summary": "Readiness: the event log is reachable and every service runs", "operationId": "readyz",
                                "responses": {"200": {"description": "ready", **status},
                                              "503": {"description": "not ready; see message", **status}}}}
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics", "operationId": "metrics",
                                 "responses": {"200": {"description": "Prometheus text format",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tripwire collector", "version": __version__,
                 "description": "Segment-compatible HTTP Tracking API of Tripwire. Every /v1/<type> route "
                                "also answers at /v1/<first letter> (/v1/t, /v1/p, /v1/s, /v1/i, /v1/a, "
                                "/v1/g, /v1/b) as Segment's analytics.js calls them."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"writeKey": {"type": "http", "scheme": "basic",
                                             "description": "the write key as user name, empty password"}},
        },
    }


def _pixel_paths(pixel_path: str, max_event_bytes: int) -> dict[str, Any]:
    gif = {"description": "recorded: a 1x1 GIF, not cached", "content": {"image/gif": {"schema": {"type": "string"}}}}
    described: dict[str, Any] = {
        "writeKey": {"type": "string", "description": "the source's write key"},
        "data": {"type": "string", "minLength": 1,
                 "description": "Segment's form: the whole event as base64 (standard or URL-safe) JSON, "
                                "checked as a request body is; the other parameters only fill what it lacks"},
        "event": {"type": "string", "description": "the event name of a track call (other calls keep it as is)"},
        "userId": {"type": "string", "maxLength": MAX_ID_CHARS},
        "anonymousId": {"type": "string", "maxLength": MAX_ID_CHARS},
        "messageId": {"type": "string", "maxLength": MAX_ID_CHARS},
        "previousId": {"type": "string", "maxLength": MAX_ID_CHARS},
        "groupId": {"type": "string", "maxLength": MAX_ID_CHARS},
        "timestamp": {"type": "string", "format": "date-time"},
        "sentAt": {"type": "string", "format": "date-time"},
        # Objects are filled key by key (properties.<key>=value); given whole, they are refused.
        **{name: False for name in ("properties", "traits", "context", "integrations")},
    }
    needs = {"track": ["event"], "alias": ["previousId"], "group": ["groupId"]}

    def query(kind: str | None) -> dict[str, Any]:
        """The query as one exploded object: its parameters depend on each other."""
        props = dict(described)
        rules: list[dict[str, Any]] = [{"anyOf": [
            {"required": ["data"]},
            {"required": ["userId"], "properties": {"userId": {"minLength": 1}}},
            {"required": ["anonymousId"], "properties": {"anonymousId": {"minLength": 1}}},
        ]}]
        for k, fields in needs.items():
            then: dict[str, Any] = {"anyOf": [{"required": ["data"]},
                              {"required": fields, "properties": {f: _EVENT_NAME if f == "event" else {"minLength": 1}
                                                                  for f in fields}}]}
            if kind is not None:
                if k == kind:
                    rules.append(then)
                continue
            # Without a type in the path, ?type= names it; absent or empty means track.
            named: dict[str, Any] = {"required": ["type"], "properties": {"type": {"const": k}}}
            if k == "track":
                named = {"anyOf": [{"not": {"required": ["type"]}}, {"properties": {"type": {"enum": ["track", ""]}}}]}
            rules.append({"if": named, "then": then})
        if kind is None:
            props["type"] = {"enum": [*_KINDS, ""], "description": "the type; absent or empty: track (404 for others)"}
        else:
            props["type"] = {"type": "string", "description": f"ignored: the path says {kind}"}
        return {
            "name": "event", "in": "query", "required": True, "style": "form", "explode": True,
            "description": "the event as parameters: properties.<key>, traits.<key> and context.<key> fill those "
                           f"objects, any other name is a top-level field; at most {max_event_bytes} bytes (414)",
            "schema": {"type": "object", "properties": props, "additionalProperties": {"type": "string"},
                       "allOf": rules},
        }

    recorded = {"200": gif, **_errors(400, 401, 414, 503)}
    paths: dict[str, Any] = {
        pixel_path: {"get": {"summary": "Tracking pixel (type track, or ?type=)", "operationId": "pixel",
                             "parameters": [query(None)], "responses": {**recorded, **_errors(404)}}},
    }
    for kind in _KINDS:
        paths[f"{pixel_path}/{kind}"] = {"get": {"summary": f"Tracking pixel for a {kind} call",
                                                 "operationId": f"pixel{kind.capitalize()}",
                                                 "parameters": [query(kind)], "responses": recorded}}
    paths[pixel_path + "/{type}"] = {"get": {
        "summary": "Any other type in the path is not found", "operationId": "pixelUnknownType",
        "parameters": [{"name": "type", "in": "path", "required": True,
                        "schema": {"type": "string", "minLength": 1, "pattern": "^[^/]*$", "not": {"enum": _KINDS}}}],
        # 404 for such a type; a request that strays onto one of the six routes gets what they answer.
        "responses": _errors(400, 401, 404),
    }}
    return paths
