"""The collector's errors. Each becomes a 4xx JSON answer naming the problem.

Exceptions::

    CollectorError            status, error code, message, optional field / limit
     ├── CatalogError         the event catalog file is unusable (raised at start); also a
     │                        tripwire.catalog.CatalogError, as every catalog problem is
     └── (instances only)     bad requests: see the helpers below

The JSON body is ``{"success": false, "error": code, "message": ..., "field": ...,
"limit": ...}``; ``field`` and ``limit`` appear when they apply.
"""

from __future__ import annotations

from typing import Any

import orjson

from tripwire import catalog


class CollectorError(Exception):
    """A request the collector refuses (or a start-up problem for subclasses)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        limit: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.limit = limit
        self.headers = headers or {}

    def body(self) -> bytes:
        doc: dict[str, Any] = {"success": False, "error": self.code, "message": self.message}
        if self.field is not None:
            doc["field"] = self.field
        if self.limit is not None:
            doc["limit"] = self.limit
        return orjson.dumps(doc)


class CatalogError(CollectorError, catalog.CatalogError):
    """The event catalog cannot be loaded; names the file and the entry."""

    def __init__(self, message: str) -> None:
        super().__init__(500, "catalog_error", message)


def too_large(limit_name: str, limit: int, what: str) -> CollectorError:
    return CollectorError(
        413, "payload_too_large", f"{what} exceeds {limit_name}={limit} bytes", limit=limit_name
    )
