"""Keep-alive connections to one endpoint, every new TCP connection through the SSRF guard.

httpcore (httpx's connection layer) asks its network backend to
``connect_tcp(host, port)`` with the URL's host; :class:`GuardedBackend`
resolves that host once through the :class:`~tripwire.webhooks.ssrf.Guard` and
opens the socket to one of the checked addresses. httpcore then starts TLS on
that socket with the URL's hostname as SNI and for certificate verification,
and the request keeps its ``Host`` header: the receiver sees a normal request
for its name, while the address actually reached is the one that was checked
(no second DNS lookup to rebind). The guard decides on every *connection*; a
connection it refused is never opened, so there is nothing to reuse. Proxies
from the environment are never used.

:class:`EndpointPool` holds at most ``max_connections`` HTTP/1.1 keep-alive
connections (the endpoint's concurrency) and sends a prepared POST straight to
them: httpx's client layer (cookies, auth flows, redirects, environment proxies)
does nothing a delivery needs, and costs more CPU than the request itself.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections.abc import AsyncIterable, Iterable, Sequence
from typing import Any, cast

import certifi
import httpcore

from .errors import DestinationRefused
from .ssrf import Guard

# An idle connection is closed after this long: below the 5 s idle timeout of common servers (uvicorn,
# Node), so a request is never sent on a connection the receiver is just closing.
KEEPALIVE_EXPIRY_S = 4.0

Headers = Sequence[tuple[bytes, bytes]]


class GuardedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await asyncio.wait_for(self._guard.resolve(host, port), timeout)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host!r} timed out") from None
        except OSError as exc:  # socket.gaierror and friends
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        last: Exception | None = None
        for ip in addresses:
            try:
                return _KeptSocketStream(await self._inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                ))
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise DestinationRefused(path, "unix-socket")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _KeptSocketStream(httpcore.AsyncNetworkStream):
    """anyio's stream, with the socket looked up once.

    Before every request the pool asks each kept-alive connection whether the
    server closed it (``is_readable``); anyio builds its table of stream
    attributes on every lookup, which cost more than the rest of the check.
    """

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _KeptSocketStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._socket
        if info == "is_readable":  # data or EOF waiting on an idle connection: the server closed it
            if self._socket is None or self._socket.fileno() < 0:
                return True
            poll = select.poll()
            poll.register(self._socket, select.POLLIN)
            return bool(poll.poll(0))
        return self._inner.get_extra_info(info)


class EndpointPool:
    """HTTP/1.1 keep-alive connection pool for one endpoint, over :class:`GuardedBackend`.

    ``post`` raises httpcore's errors (``httpcore.TimeoutException``, ``httpcore.NetworkError``,
    ``httpcore.ProtocolError``, ...) and :class:`DestinationRefused`.
    """

    def __init__(
        self, guard: Guard, *, max_connections: int, ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S,
    ) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or make_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry_s,
            http1=True,
            http2=False,
            network_backend=GuardedBackend(guard),
        )

    @property
    def connections(self) -> int:
        """Connections open now (idle or busy)."""
        return len(self._pool.connections)

    async def post(
        self, url: httpcore.URL, headers: Headers, body: bytes, *, timeout_s: float, max_response_bytes: int
    ) -> tuple[int, Headers, bytes]:
        """POST ``body``; the status, the headers and at most ``max_response_bytes`` of the answer.

        ``headers`` must hold ``host`` and ``content-length``. An answer read to its end leaves
        its connection in the pool for the next request; one cut short closes it.
        """
        timeouts = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
        request = httpcore.Request(b"POST", url, headers=list(headers), content=body, extensions={"timeout": timeouts})
        response = await self._pool.handle_async_request(request)
        data = b""
        try:
            async for chunk in cast(AsyncIterable[bytes], response.stream):  # an async pool's stream
                data += chunk
                if len(data) >= max_response_bytes:
                    break
        finally:
            await response.aclose()
        return response.status, response.headers, data[:max_response_bytes]

    async def aclose(self) -> None:
        await self._pool.aclose()


def make_ssl_context(ca_bundle: str = "") -> ssl.SSLContext:
    """Public CAs (certifi), plus ``ca_bundle`` (PEM file) for intranet receivers."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context
