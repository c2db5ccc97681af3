"""The console as a :class:`~tripwire.service.Service`: uvicorn serving the app on console.host:port.

``start()`` checks the address (beyond loopback only with a token: one line, and
``tripwire run`` does not start), binds the socket itself (port 0 works: read
:attr:`ConsoleService.port`), starts the live tailer and returns once uvicorn
accepts connections. A taken port stops start-up when ``console.port`` was set;
the default port being taken (another Tripwire on this machine) only costs the
console: a warning, and the rest of the stack runs. ``stop()`` ends the live
streams, stops the server and is safe to call twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Generator

import uvicorn

from tripwire.config import Config
from tripwire.log import EventLog

from .app import Console, create_app
from .config import console_config
from .errors import ConsoleConfigError

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 30
STOP_TIMEOUT_S = 5


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the service runner owns SIGTERM/SIGINT


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    return sock


def listen_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ConsoleService:
    name = "console"

    def __init__(self, config: Config, log: EventLog, *, port_set: bool | None = None) -> None:
        self.settings = console_config(config)
        self.settings.check_exposure()
        self.console = Console(config, log)
        self.app = create_app(config, log, self.console)
        self.host = self.settings.host
        self.port = self.settings.port
        # was console.port chosen (file, environment, --console-port)? then a taken port is an error
        self.port_set = port_set if port_set is not None else ("console.port" in (config.file_keys or ())
                                                               or "console.port" in config.env_keys)
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.serving = False

    async def start(self) -> None:
        if self._task is not None:
            return
        try:
            sock = _bind(self.host, self.port)
        except (OSError, OverflowError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not a port"
            if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE and not self.port_set:
                logger.warning("console not started: %s is in use (set [console] port, or enabled = false)",
                               listen_url(self.host, self.port))
                return
            raise ConsoleConfigError(f"Config 'console.port': cannot listen on {self.host}:{self.port}: {reason}") from None
        self.port = sock.getsockname()[1]
        await self.console.start()
        config = uvicorn.Config(self.app, lifespan="off", access_log=False, server_header=False, proxy_headers=False,
                                log_config=None, timeout_graceful_shutdown=STOP_TIMEOUT_S)
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="console-uvicorn")
        self._task.add_done_callback(self._ended)
        deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise ConsoleConfigError("the console's server stopped while starting")
            if asyncio.get_running_loop().time() > deadline:
                raise ConsoleConfigError(f"the console did not start within {STARTUP_TIMEOUT_S}s")
            await asyncio.sleep(0.01)
        self.serving = True
        auth = "token required" if self.settings.token else "loopback only, no token"
        # "at", not "listening on": scripts and tests take the first "listening on" line for the collector
        logger.info("console at %s (%s)", listen_url(self.host, self.port), auth)

    async def stop(self) -> None:
        await self.console.stop()  # ends the live streams, so the server need not wait for them
        if self._task is None or self._server is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._task = None
            self.serving = False

    def _ended(self, task: asyncio.Task[None]) -> None:
        # No `failed` flag: the console is not on the data path, so its end must not stop the stack.
        if not task.cancelled() and task.exception() is not None:
            logger.error("console stopped: %s; the rest of the stack runs on", task.exception())


def create_service(config: Config, log: EventLog) -> ConsoleService | None:
    """The console on ``log``, or None when ``console.enabled = false``. Raises :class:`ConsoleConfigError`
    (before anything starts) for an address beyond loopback without a token."""
    if not console_config(config).enabled:
        return None
    return ConsoleService(config, log)
