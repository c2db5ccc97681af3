"""Who may use the console: a token beyond loopback, loopback host names without one, CSRF for the one write.

* With ``[console] token`` every request must carry it: ``Authorization: Bearer <token>``, or HTTP
  Basic with the token as the password (any user name; browsers ask for it themselves). It is
  compared in constant time (:func:`hmac.compare_digest`).
* Without a token the console listens on loopback only (:meth:`ConsoleConfig.check_exposure`) and
  answers only requests whose ``Host`` is a loopback name: a page on another site that points its
  own name at 127.0.0.1 (DNS rebinding) gets a 421, not people's events.
* Forms that change something (replaying a webhook, starting a backtest) carry a CSRF token that only
  pages of this console hold (:class:`Csrf`); a request from another origin is refused as well.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import is_loopback


def host_name(host_header: str) -> str:
    """The name in a Host header, without the port (``[::1]:8090`` -> ``::1``)."""
    host = host_header.strip()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def token_matches(authorization: str | None, token: str) -> bool:
    if not authorization or not token:
        return False
    scheme, _, value = authorization.partition(" ")
    given = ""
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    return hmac.compare_digest(given.encode(), token.encode())


class Guard:
    """ASGI middleware: the token, or loopback Host names when there is none; security headers on every answer."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.token:
            if not token_matches(headers.get("authorization"), self.token):
                response = PlainTextResponse(
                    "This console needs its token: the password of HTTP Basic auth (any user name), or "
                    "Authorization: Bearer <token>.", 401,
                    headers={"WWW-Authenticate": 'Basic realm="Tripwire console", charset="UTF-8"'})
                await response(scope, receive, send)
                return
        elif not is_loopback(host_name(headers.get("host", ""))):
            response = PlainTextResponse(
                "This console answers loopback host names only (127.0.0.1, localhost, [::1]); "
                "set [console] token to serve it under another name.", 421)
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"x-frame-options", b"DENY"), (b"cache-control", b"no-store")]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Csrf:
    """A per-process secret; the form token is derived from it, so only pages of this console hold it."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def token(self) -> str:
        return hmac.new(self._secret, b"tripwire-console-form", hashlib.sha256).hexdigest()

    def check(self, given: str | None, headers: Headers) -> str | None:
        """None when the form may act; otherwise why not (for a 403)."""
        origin = headers.get("origin")
        if origin and origin != "null":
            name = origin.split("://", 1)[-1]
            if name.lower() != headers.get("host", "").lower():
                return f"a form from another origin ({origin}) cannot act on this console"
        if not given or not hmac.compare_digest(given.encode(), self.token().encode()):
            return "the form's CSRF token is missing or wrong: reload the page and try again"
        return None


def nonce() -> str:
    """A fresh value for the Content-Security-Policy's inline-script allowance (one per page)."""
    return secrets.token_urlsafe(16)


def csp(script_nonce: str) -> str:
    return (f"default-src 'none'; script-src 'nonce-{script_nonce}'; style-src 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
