"""Small ASGI helpers shared by the collector's hand-written endpoints.

The API endpoints speak raw ASGI instead of building Starlette Request/Response
objects: the hot path is a few microseconds per request leaner, and headers are
prebuilt once.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Send

from .errors import CollectorError

Headers = list[tuple[bytes, bytes]]

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
SUCCESS_BODY = b'{"success": true}'
# The ASGI messages of the commonest answer, built once (servers only read them).
SUCCESS_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": JSON_HEADERS + [(b"content-length", str(len(SUCCESS_BODY)).encode())],
}
SUCCESS_END = {"type": "http.response.body", "body": SUCCESS_BODY}


async def respond(send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]]) -> None:
    hdrs = list(headers)
    hdrs.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def respond_error(send: Send, error: CollectorError, extra: Headers | None = None) -> None:
    headers = JSON_HEADERS + [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    if extra:
        headers += extra
    await respond(send, error.status, error.body(), headers)
