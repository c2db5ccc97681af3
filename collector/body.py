"""Reading a request body within limits: size caps, gzip with an inflation cap, JSON.

Every failure is a :class:`CollectorError` naming the limit or the problem, so a
hostile body (huge, a gzip bomb, not UTF-8, not JSON) costs at most ``limit``
bytes of memory and never reaches the handlers as an exception they don't know.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from starlette.types import Receive, Scope

from .errors import CollectorError, too_large

JSON_TYPES = frozenset({"", "application/json", "text/plain"})
_INFLATE_CHUNK = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
# Content-Type values as clients send them, accepted without parsing.
_ACCEPTED = frozenset({
    b"application/json", b"application/json; charset=utf-8", b"application/json;charset=UTF-8",
    b"text/plain", b"text/plain;charset=UTF-8", b"text/plain; charset=utf-8",
})


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def check_content_type(raw: bytes | None) -> None:
    """JSON bodies come as application/json, or text/plain from beacons (no CORS preflight)."""
    if raw is None or raw in _ACCEPTED:
        return
    mime = raw.split(b";", 1)[0].strip().lower().decode("latin-1")
    if mime not in JSON_TYPES:
        raise CollectorError(
            415,
            "unsupported_media_type",
            f"Content-Type {mime!r} is not accepted; send application/json or text/plain",
            field="Content-Type",
        )


async def read_body(receive: Receive, length: bytes | None, limit: int, limit_name: str) -> bytes:
    """The raw body, refusing more than ``limit`` bytes before reading them (``length``: Content-Length)."""
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise CollectorError(400, "bad_request", "Content-Length is not a number", field="Content-Length") from None
        if declared > limit:
            raise too_large(limit_name, limit, "request body")
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # client went away
            raise CollectorError(400, "bad_request", "client disconnected before sending the body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise too_large(limit_name, limit, "request body")
            chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decode(body: bytes, encoding: bytes | None, limit: int, limit_name: str, max_inflated: int) -> bytes:
    """Undo ``Content-Encoding`` (identity or gzip), inflating at most the smaller cap + 1 byte.

    A gzip body may hold several members (RFC 1952 2.2: ``cat a.gz b.gz``); every one is
    inflated, under one cap for all. Bytes after the last member that do not start another
    one, a member cut short, or a corrupt one refuse the request: nothing is dropped silently.
    """
    if encoding is None:
        return body
    name = encoding.strip().lower()
    if name in (b"", b"identity"):
        return body
    if name not in (b"gzip", b"x-gzip"):
        raise CollectorError(
            415,
            "unsupported_encoding",
            f"Content-Encoding {name.decode('latin-1')!r} is not supported; use gzip",
            field="Content-Encoding",
        )
    cap, cap_name = (limit, limit_name) if limit <= max_inflated else (max_inflated, "max_decompressed_bytes")
    out: list[bytes] = []
    size = 0
    data = body
    member = 0
    try:
        while True:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while data:
                piece = inflater.decompress(data, _INFLATE_CHUNK)
                size += len(piece)
                if size > cap:
                    raise too_large(cap_name, cap, "gzip body inflated")
                out.append(piece)
                data = inflater.unconsumed_tail
                if inflater.eof:
                    break
            tail = inflater.flush(_INFLATE_CHUNK)
            size += len(tail)
            if size > cap:
                raise too_large(cap_name, cap, "gzip body inflated")
            out.append(tail)
            if not inflater.eof:
                raise CollectorError(400, "invalid_gzip", _where(member, "is truncated"), field="Content-Encoding")
            data = inflater.unused_data
            if not data:
                break
            member += 1
            if not data.startswith(_GZIP_MAGIC):
                raise CollectorError(
                    400, "invalid_gzip",
                    f"{len(data)} byte(s) after the end of the gzip data are not another gzip member",
                    field="Content-Encoding",
                )
    except zlib.error as exc:
        raise CollectorError(400, "invalid_gzip", _where(member, f"is not valid gzip: {exc}"), field="Content-Encoding") from None
    return b"".join(out)


def _where(member: int, problem: str) -> str:
    return f"gzip body {problem}" if member == 0 else f"gzip member {member + 1} of the body {problem}"


def parse_json(body: bytes) -> Any:
    if not body:
        raise CollectorError(400, "invalid_json", "request body is empty; expected a JSON object", field="body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if body.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (.NET, PowerShell): RFC 8259 lets us ignore it
            return parse_json(body[3:])
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as uexc:
            raise CollectorError(
                400, "invalid_utf8", f"body is not valid UTF-8 (byte {uexc.start})", field="body"
            ) from None
        raise CollectorError(400, "invalid_json", f"body is not valid JSON: {exc}", field="body") from None
