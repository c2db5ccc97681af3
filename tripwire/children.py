"""A role of ``tripwire run`` in a process of its own: the engines and the sinks use every core.

``tripwire run`` keeps the collector (and the webhook dispatcher and the console) in its
own process and starts each engine and sink as ``python -m tripwire <role>`` on the same
config and data_dir: they share the embedded log's partitions as members of their consumer
groups (:mod:`tripwire.log.sqlite_consumer`), so heavy ingest never starves matching and N
engines match on N cores. A :class:`ChildProcess` is a service (start / stop / ``failed`` /
``ready``) like the in-process ones, so the same :class:`~tripwire.service.Supervisor`
restarts it, with backoff, when it dies.

The child serves ``/metrics``, ``/healthz`` and ``/readyz`` on a loopback port of its own
(``--metrics-port``). Its readiness is the parent's check for it, and :func:`scrape`
gives the parent's ``/metrics`` every child's metrics (merged by
:func:`tripwire.metrics.exposition`, each sample labelled with its process). A child
dies with its parent (``PR_SET_PDEATHSIG``): a ``kill -9`` of ``tripwire run`` leaves no
orphan reading the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

_READY_TIMEOUT_S = 20.0
_STOP_GRACE_S = 30.0
_PR_SET_PDEATHSIG = 1


PARENT_ENV = "_TRIPWIRE_PARENT_PID"  # not TRIPWIRE_*: those are config overrides


def die_with_parent() -> None:
    """In a child (``PARENT_ENV`` set): SIGTERM when the parent dies, and exit now if it already has.
    Called first thing by the CLI; set there, not between fork and exec (the parent has threads)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if str(os.getppid()) != parent:
        sys.exit(1)  # the parent died before the signal was set up


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChildProcess:
    """``python -m tripwire <global args> --metrics-port P <role>``, as a service of the parent."""

    def __init__(self, role: str, name: str, global_args: Sequence[str] = ()) -> None:
        self.role = role
        self.name = name  # the service's name: "engine", "engine-2", "sink" ...
        self.global_args = list(global_args)
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def failed(self) -> bool:
        """The process ended without being asked to (the supervisor starts a new one)."""
        return self._proc is not None and self._proc.returncode is not None and not self._stopping

    async def start(self) -> None:
        self.port = _free_port()
        argv = [sys.executable, "-m", "tripwire", *self.global_args, "--metrics-port", str(self.port), self.role]
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        # A session of its own: a Ctrl-C to the terminal's group reaches the parent only, which stops the
        # children in order (the collector first); they still die with it (die_with_parent).
        self._proc = await asyncio.create_subprocess_exec(*argv, env=env, start_new_session=True)
        CHILDREN.append(self)
        import httpx

        deadline = time.monotonic() + _READY_TIMEOUT_S
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                if self._proc.returncode is not None:
                    raise RuntimeError(f"{self.name} (pid {self._proc.pid}) exited with status "
                                       f"{self._proc.returncode} while starting (its log is above)")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        break  # started: its consumer has its partitions
                if time.monotonic() > deadline:
                    # Up but not ready (a broker away, say): it goes on trying; so does the rest of the stack.
                    logger.warning("%s (pid %d) is not ready after %.0f s (%s/readyz); going on", self.name,
                                   self._proc.pid, _READY_TIMEOUT_S, self.url)
                    break
                await asyncio.sleep(0.05)
        logger.info("%s runs in process %d", self.name, self._proc.pid)

    def signal_stop(self) -> None:
        """Ask it to stop (SIGTERM, once: a second one tells a tripwire process to exit at once), without
        waiting: children stop side by side."""
        if self._stopping:
            return
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    async def stop(self) -> None:
        self.signal_stop()
        if self in CHILDREN:
            CHILDREN.remove(self)
        proc = self._proc
        if proc is None:
            return
        try:
            await asyncio.wait_for(proc.wait(), _STOP_GRACE_S)
        except TimeoutError:
            logger.warning("%s (pid %d) did not stop within %.0f s: killed (nothing acknowledged is lost)",
                           self.name, proc.pid, _STOP_GRACE_S)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def ready(self) -> bool:
        import httpx

        if self._proc is None or self._proc.returncode is not None:
            return False
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                return (await client.get(f"{self.url}/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def metrics(self, client: httpx.AsyncClient) -> str | None:
        """Its /metrics, or None while it is not answering."""
        import httpx

        if self._proc is None or self._proc.returncode is not None:
            return None
        try:
            reply = await client.get(f"{self.url}/metrics")
        except httpx.HTTPError:
            return None
        return reply.text if reply.status_code == 200 else None


CHILDREN: list[ChildProcess] = []  # the children of this process, for the parent's /metrics


async def scrape() -> list[tuple[str, str]]:
    """(child name, its /metrics text) of every child answering now."""
    if not CHILDREN:
        return []
    import httpx

    async with httpx.AsyncClient(timeout=2.0) as client:
        texts = await asyncio.gather(*(c.metrics(client) for c in CHILDREN))
    return [(c.name, t) for c, t in zip(CHILDREN, texts, strict=True) if t is not None]


def global_args(config_path: os.PathLike[str] | str | None, log_level: str | None, log_format: str | None) -> list[str]:
    """The options a child needs to read the same config and log alike (the environment it inherits)."""
    out = []
    if config_path is not None:
        out += ["--config", str(config_path)]
    if log_level:
        out += ["--log-level", log_level]
    if log_format:
        out += ["--log-format", log_format]
    return out
