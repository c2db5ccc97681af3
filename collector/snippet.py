"""Serving the built tracker (``collector/static/t.js``) at ``collector.snippet_path``.

The file is read when it changes (checked by stat on each request, so a fresh
build is served without a restart) and answered with a strong ETag (one per
representation: the gzipped bytes have their own), a
``Cache-Control`` max-age, ``304`` for a matching ``If-None-Match`` and a
pre-gzipped body for clients that accept it. A missing file is a 404 JSON that
names the path, so a forgotten build step is obvious.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from starlette.types import Receive, Scope, Send

from . import metrics
from .body import header
from .errors import CollectorError
from .http import respond, respond_error

PACKAGED = Path(__file__).parent / "static" / "t.js"


class SnippetEndpoint:
    def __init__(self, path: Path, max_age_s: int) -> None:
        self.path = path
        self.max_age = max_age_s
        self._stamp: tuple[int, int] | None = None
        self._plain = b""
        self._gzipped = b""
        self._etags = (b"", b"")  # (plain, gzip): a strong ETag names one representation
        self.metrics = metrics.RouteMetrics("snippet")

    def _load(self) -> bool:
        try:
            st = self.path.stat()
        except OSError:
            return False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            data = self.path.read_bytes()
            self._plain = data
            self._gzipped = gzip.compress(data, 9, mtime=0)
            tag = hashlib.sha256(data).hexdigest()[:32].encode()
            self._etags = (b'"' + tag + b'"', b'"' + tag + b'-gzip"')
            self._stamp = stamp
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._load():
            self.metrics.count(404)
            error = CollectorError(404, "snippet_not_built", f"tracker file '{self.path}' does not exist; build js-snippet first", field="snippet_file")
            return await respond_error(send, error)
        gzipped = b"gzip" in (header(scope, b"accept-encoding") or b"").lower()
        etag = self._etags[gzipped]
        headers = [
            (b"etag", etag),
            (b"cache-control", f"public, max-age={self.max_age}".encode()),
            (b"vary", b"Accept-Encoding"),
            (b"access-control-allow-origin", b"*"),
        ]
        match = header(scope, b"if-none-match")
        if match is not None and (match.strip() == b"*" or etag in [m.strip().removeprefix(b"W/") for m in match.split(b",")]):
            self.metrics.count(304)
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers.append((b"content-type", b"text/javascript; charset=utf-8"))
        body = self._plain
        if gzipped:
            body = self._gzipped
            headers.append((b"content-encoding", b"gzip"))
        self.metrics.count(200)
        if scope["method"] == "HEAD":
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await respond(send, 200, body, headers)
