"""The collector as a :class:`~tripwire.service.Service`: uvicorn serving the app on server.host:port.

``start()`` binds the socket itself (so a taken port is a clear error, and
port 0 works: read :attr:`CollectorService.port`) and returns once uvicorn
accepts connections. ``stop()`` stops accepting, lets in-flight requests finish
(their appends complete, so nothing acknowledged is lost) and returns; it is
safe to call twice. Signals are left to the runner (:func:`tripwire.service.run_services`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

from tripwire.config import Config
from tripwire.log import EventLog

from .app import create_app
from .errors import CollectorError

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 30
DRAIN_TIMEOUT_S = 15
# The interpreter's switch interval is left at its default (5 ms). The embedded log's
# writer thread retakes the GIL a fixed few times per group commit, so a shorter
# interval only makes commits smaller and more frequent, and forces the event loop
# off the GIL more often: measured on one core, 0.5 ms cost ~12% CPU per /v1/track
# request and did not speed /v1/batch up.


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the service runner owns SIGTERM/SIGINT


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) else "not a port (0-65535)"
        raise CollectorError(500, "bind_failed", f"Config 'server.port': cannot listen on {host}:{port}: {reason}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def listen_url(host: str, port: int) -> str:
    """``http://host:port``, with an IPv6 address in brackets (``http://[::1]:8080``)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_config(app: Any, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan="on",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # X-Forwarded-For is judged by collector.trusted_proxies, not by uvicorn
        log_config=None,
        timeout_graceful_shutdown=DRAIN_TIMEOUT_S,
        **kwargs,
    )


class CollectorService:
    name = "collector"

    def __init__(self, config: Config, log: EventLog) -> None:
        self.config = config
        self.log = log
        self.app = create_app(config, log)
        self.host = config.server.host
        self.port = config.server.port
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is not None:
            return
        sock = bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = _Server(uvicorn_config(self.app))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="collector-uvicorn")
        deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what uvicorn raised
                raise CollectorError(500, "start_failed", "the collector's server stopped while starting")
            if asyncio.get_running_loop().time() > deadline:
                raise CollectorError(500, "start_failed", f"the collector did not start within {STARTUP_TIMEOUT_S}s")
            await asyncio.sleep(0.01)
        logger.info("collector listening on %s", listen_url(self.host, self.port))

    async def stop(self) -> None:
        if self._task is None or self._server is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._task = None

    async def ready(self) -> bool:
        return self._server is not None and self._server.started and not self.failed

    @property
    def failed(self) -> bool:
        return self._task is not None and self._task.done()


def create_service(config: Config, log: EventLog) -> CollectorService:
    return CollectorService(config, log)


def worker_app() -> object:
    """uvicorn factory for ``tripwire collector --workers N``: one app and log per worker process."""
    from tripwire import logs
    from tripwire.config import load_config
    from tripwire.log import open_log

    config = load_config()
    settings = logs.logging_config(config)  # the parent passes --log-format/--log-level as TRIPWIRE_LOGGING__*
    logs.setup(settings.format, settings.level, service="collector", redact_ips=settings.redact_ips)
    return create_app(config, open_log(config), own_log=True)
