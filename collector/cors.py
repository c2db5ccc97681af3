"""CORS for the tracking endpoints, driven by each source's origin allow-list.

A preflight carries no write key, so it is answered for any origin some source
allows; the real request is then checked against its own source's list. No
cookies are used, so credentials are never allowed.

A refusal of the origin or of the write key (403 ``origin_not_allowed``, 401
``unknown_write_key`` / ``missing_write_key``) is readable by a page on any
origin: hidden, the browser reports it as a network error, and a tracker would
keep the events and retry them for ever. What the page reads is the status and
the error code with a fixed message: never the origin, the source's name or
anything of the request. The code tells a foreign page whether a write key it
tries exists, which anyone learns with curl anyway: write keys are public (they
sit in every tracked page). Other answers stay hidden from refused origins.
"""

from __future__ import annotations

from collections.abc import Iterable

from .config import SourceConfig
from .errors import CollectorError
from .http import Headers

ALLOWED_HEADERS = b"Authorization, Content-Type, Content-Encoding"

# The refusals any page may read, and the message it reads (fixed: no data of the request).
_READABLE_REFUSALS = {
    "origin_not_allowed": "the page's origin is not allowed for this write key",
    "unknown_write_key": "the write key is not known to this collector",
    "missing_write_key": "no write key",
}
_ANY_ORIGIN: Headers = [(b"access-control-allow-origin", b"*"), (b"vary", b"Origin")]


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

    def refusal(self, error: CollectorError, origin: bytes | None) -> tuple[CollectorError, Headers] | None:
        """``error`` as a browser page on any origin may read it, or None if it is no such refusal.

        Only for requests with an ``Origin``: server-side callers keep the full message.
        """
        message = _READABLE_REFUSALS.get(error.code)
        if origin is None or message is None:
            return None
        return CollectorError(error.status, error.code, message, field=error.field), _ANY_ORIGIN

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
