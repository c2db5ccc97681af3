"""CORS for the tracking endpoints, driven by each source's origin allow-list.

A preflight carries no write key, so it is answered for any origin some source
allows; the real request is then checked against its own source's list. A
refused origin gets a 403 JSON and no ``Access-Control-Allow-Origin``, so the
browser also hides the answer from the page. No cookies are used, so
credentials are never allowed.
"""

from __future__ import annotations

from collections.abc import Iterable

from .config import SourceConfig
from .errors import CollectorError
from .http import Headers

ALLOWED_HEADERS = b"Authorization, Content-Type, Content-Encoding"


class CorsPolicy:
    def __init__(self, sources: Iterable[SourceConfig], open_mode: bool, max_age_s: int, methods: str) -> None:
        origins: set[str] = set()
        self._any = open_mode
        for source in sources:
            if "*" in source.origins:
                self._any = True
            origins.update(source.origins)
        self._origins = frozenset(origins)
        self._methods = methods.encode()
        self._max_age = str(max_age_s).encode()
        self._allowed_methods = frozenset(m.strip() for m in methods.split(","))

    def allows(self, origin: str) -> bool:
        return self._any or origin.rstrip("/") in self._origins

    def headers(self, origin: bytes | None) -> Headers:
        """Headers for a simple (non-preflight) response to ``origin``; empty if it is refused."""
        if origin is None:
            return []
        if not self.allows(origin.decode("latin-1")):
            return []
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]

    def preflight(self, origin: bytes | None, method: bytes | None) -> Headers:
        """Headers answering a preflight, or a CollectorError naming what was refused."""
        if origin is None or method is None:
            raise CollectorError(
                400, "bad_preflight", "OPTIONS needs Origin and Access-Control-Request-Method headers",
                field="Origin" if origin is None else "Access-Control-Request-Method",
            )
        text = origin.decode("latin-1")
        if not self.allows(text):
            raise CollectorError(403, "origin_not_allowed", f"origin {text[:200]!r} is not allowed", field="Origin")
        if method.decode("latin-1").upper() not in self._allowed_methods:
            raise CollectorError(
                403, "method_not_allowed", f"method {method.decode('latin-1')[:20]!r} is not allowed here",
                field="Access-Control-Request-Method",
            )
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", self._methods),
            (b"access-control-allow-headers", ALLOWED_HEADERS),
            (b"access-control-max-age", self._max_age),
            (b"vary", b"Origin"),
        ]
