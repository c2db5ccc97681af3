"""A real webhook receiver for tests: uvicorn + Starlette on 127.0.0.1 in its own thread.

Every request is recorded (headers, body, arrival time) before the scripted
handler decides the answer, so tests see attempts that hang or time out too.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.requests import Request
from starlette.responses import Response

from tests.fixtures.waiting import until


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()
    peer: str = ""  # the client's "host:port": one per connection

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay_s: float = 0.0  # wait this long before answering (hang)


Handler = Callable[[Received, int], Awaitable[Reply] | Reply]  # (request, n-th request with this id, 1-based)


async def always_ok(req: Received, n: int) -> Reply:
    return Reply()


class Receiver:
    def __init__(
        self,
        handler: Handler = always_ok,
        *,
        sock: socket.socket | None = None,
        certfile: Path | None = None,
    ) -> None:
        self.handler = handler
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._sock = sock
        self._certfile = certfile
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    # recording -------------------------------------------------------------

    def by_id(self, msg_id: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.id == msg_id]

    def ids(self) -> list[str]:
        with self._lock:
            return [r.id for r in self.requests]

    async def _app(self, scope: dict, receive: Callable, send: Callable) -> None:  # type: ignore[type-arg]
        request = Request(scope, receive)
        body = await request.body()
        client = scope.get("client") or ("", 0)
        received = Received(request.url.path, {k.lower(): v for k, v in request.headers.items()}, body, time.monotonic(),
                            f"{client[0]}:{client[1]}")
        with self._lock:
            self.requests.append(received)
            n = sum(1 for r in self.requests if r.id == received.id)
        reply = self.handler(received, n)
        if not isinstance(reply, Reply):
            reply = await reply
        deadline = time.monotonic() + reply.delay_s
        while time.monotonic() < deadline and not self._closing.is_set():  # a hang ends when we stop
            await asyncio.sleep(min(0.05, deadline - time.monotonic()))
        await Response(reply.body, reply.status, reply.headers)(scope, receive, send)

    # lifecycle -------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "https" if self._certfile else "http"
        return f"{scheme}://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        self._closing.clear()
        if self._sock is None:
            self._sock = bind_port()
        self._sock.listen(128)
        kwargs: dict[str, object] = {}
        if self._certfile is not None:
            kwargs = {"ssl_certfile": str(self._certfile), "ssl_keyfile": str(self._certfile)}
        config = uvicorn.Config(
            self._app, interface="asgi3", log_level="warning", lifespan="off", ws="none", http="h11",
            timeout_graceful_shutdown=1, access_log=False, **kwargs,  # type: ignore[arg-type]
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test receiver did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._closing.set()
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None
        if self._sock is not None:
            self._sock.close()


def bind_port() -> socket.socket:
    """A socket bound to a free loopback port, not listening yet (connections are refused)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition") -> None:
    await until(predicate, timeout_s, what)
