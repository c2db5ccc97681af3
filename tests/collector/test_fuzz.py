"""Property-based fuzzing of the whole HTTP surface in-process: whatever arrives, never a 5xx.

Thousands of generated requests mix well-formed Segment events with wrong
types, junk bytes, broken gzip, odd headers, methods and paths. Every answer
must be < 500 and, when the collector refused it, a JSON body naming the error.
Bounded to 2,000 examples (~15 s on an idle 2-core machine).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import string
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tripwire.collector import create_app
from tripwire.config import from_dict
from tripwire.log.sqlite import SqliteLog

from .conftest import SOURCES, WRITE_KEY

EXAMPLES = 2000
TYPES = ["track", "page", "screen", "identify", "alias", "group"]
HEADER_TEXT = st.text(alphabet=string.printable.strip("\r\n\t\x0b\x0c"), max_size=30)

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12
)
times = (
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(lambda d: d.isoformat() + "Z")
    | st.text(max_size=25)
    | json_values
)
ids = st.text(max_size=10) | st.integers() | st.text(min_size=250, max_size=300) | json_values
events = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from([*TYPES, "bogus", ""]) | json_values,
        "event": st.text(max_size=30) | json_values,
        "userId": ids,
        "anonymousId": ids,
        "messageId": ids,
        "previousId": ids,
        "groupId": ids,
        "name": st.text(max_size=10) | json_values,
        "timestamp": times,
        "sentAt": times,
        "properties": st.dictionaries(st.text(max_size=10), json_values, max_size=5) | json_values,
        "traits": st.dictionaries(st.sampled_from(["email", "plan", "x"]), json_values, max_size=3) | json_values,
        "context": st.dictionaries(st.sampled_from(["ip", "userAgent", "library", "locale"]), json_values | st.ip_addresses().map(str), max_size=3) | json_values,
        "integrations": json_values,
        "writeKey": st.sampled_from([WRITE_KEY, "nope", ""]) | json_values,
    },
)
batches = st.fixed_dictionaries(
    {"batch": st.lists(events | json_values, max_size=6) | json_values},
    optional={"writeKey": st.sampled_from([WRITE_KEY, "nope"]), "sentAt": times, "context": json_values},
)


@st.composite
def bodies(draw: Any) -> bytes:
    doc = draw(events | batches | json_values)
    raw = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    how = draw(st.sampled_from(["plain", "plain", "mutate", "truncate", "binary", "utf8-breaker"]))
    if how == "mutate" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + draw(st.binary(min_size=1, max_size=4)) + raw[i + 1 :]
    elif how == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif how == "binary":
        raw = draw(st.binary(max_size=300))
    elif how == "utf8-breaker":
        raw = raw.replace(b'"', b'"\xc3', 1)
    return raw


@st.composite
def requests(draw: Any) -> dict[str, Any]:
    method = draw(st.sampled_from(["POST"] * 8 + ["GET", "OPTIONS", "PUT", "DELETE", "HEAD", "PATCH"]))
    path = draw(
        st.sampled_from([f"/v1/{t}" for t in [*TYPES, "batch"]] + ["/v1/pixel", "/v1/pixel/track", "/v1/pixel/nope", "/t.js", "/metrics", "/readyz"])
        | st.from_regex(r"/([a-z0-9._-][a-z0-9/._-]{0,19})?", fullmatch=True)  # no "//": httpx refuses it
    )
    headers: dict[str, str] = {}
    content_type = draw(st.sampled_from([None, "application/json", "text/plain;charset=UTF-8", "application/xml", "multipart/form-data"]) | HEADER_TEXT)
    if content_type is not None:
        headers["Content-Type"] = content_type
    body = draw(bodies())
    encoding = draw(st.sampled_from([None, None, "gzip", "gzip-broken", "br", "identity"]) | HEADER_TEXT)
    if encoding == "gzip":
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    elif encoding == "gzip-broken":
        body = gzip.compress(body)[: max(1, len(body) // 2)]
        headers["Content-Encoding"] = "gzip"
    elif encoding is not None:
        headers["Content-Encoding"] = encoding
    auth = draw(st.sampled_from([None, "valid", "unknown", "bearer"]) | HEADER_TEXT)
    if auth == "valid":
        headers["Authorization"] = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    elif auth == "unknown":
        headers["Authorization"] = "Basic " + base64.b64encode(draw(st.binary(max_size=20))).decode()
    elif auth == "bearer":
        headers["Authorization"] = "Bearer abc"
    elif auth is not None:
        headers["Authorization"] = auth
    origin = draw(st.sampled_from([None, "https://shop.example", "https://evil.example"]) | HEADER_TEXT)
    if origin is not None:
        headers["Origin"] = origin
    if method == "OPTIONS" and draw(st.booleans()):
        headers["Access-Control-Request-Method"] = draw(st.sampled_from(["POST", "GET"]) | HEADER_TEXT)
    for name in ("X-Forwarded-For", "If-None-Match", "User-Agent"):
        if draw(st.booleans()):
            headers[name] = draw(HEADER_TEXT)
    query = draw(st.none() | st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass").hex()) | HEADER_TEXT)
    params: dict[str, str] | None = None
    if query is not None and path.startswith("/v1/pixel"):
        params = draw(st.dictionaries(st.sampled_from(["event", "userId", "writeKey", "data", "properties.a", "type", "context.ip"]), HEADER_TEXT, max_size=5))
    return {"method": method, "url": path, "headers": headers, "content": body if method not in ("GET", "HEAD") else None, "params": params}


def test_no_request_gets_a_5xx(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text('{"events": {"A": {"schema": {"type": "object", "properties": {"n": {"type": "integer"}}}, "pii": ["email"]}},'
                       ' "traits": {"pii": ["email"]}}')
    config = from_dict({"data_dir": str(tmp_path), "sources": SOURCES,
                        "collector": {"catalog": str(catalog), "strict": True, "pii_salt": "s", "trusted_proxies": ["203.0.113.0/24"]}})
    seen: dict[int, int] = {}
    with asyncio.Runner() as runner:
        log = SqliteLog(tmp_path / "log.db", 4)
        runner.run(log.start())
        app = create_app(config, log)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("203.0.113.5", 1234), raise_app_exceptions=False),
            base_url="http://collector.test",
        )

        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(req=requests())
        def check(req: dict[str, Any]) -> None:
            r = runner.run(client.request(**req))
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (req, r.status_code, r.text)
            if r.status_code >= 400 and req["method"] != "HEAD":
                doc = r.json()
                assert doc.get("error") or doc.get("status"), doc

        try:
            check()
        finally:
            runner.run(client.aclose())
            runner.run(log.stop())
    # The generator reached both sides: accepted events and refusals.
    assert seen.get(200, 0) > 0 and sum(n for s, n in seen.items() if 400 <= s < 500) > EXAMPLES // 4, seen
