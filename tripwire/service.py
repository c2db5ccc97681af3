"""Long-running services (collector, engine, dispatcher, sink) and how they run together.

A service has an explicit lifecycle: ``start()`` returns once it is serving,
``stop()`` drains and returns once it has stopped (safe to call twice, also
after a failed ``start()``). A service whose background task dies sets
``failed`` (and ``error``, the exception, when it has one).

The services downstream of the log (engine, sink, dispatcher) run under a
:class:`Supervisor`, which restarts a failed one with backoff, so a failure
downstream never stops the collector next to it from acknowledging into the log:
the log is the buffer. An unsupervised service that fails (the collector) stops
the process (:func:`run_services`), for the process supervisor to restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from tripwire.config import ConfigError
from tripwire.log.base import GroupTaken

logger = logging.getLogger(__name__)

# Errors that a restart cannot mend, raised when a service first starts: the process exits naming them.
# GroupTaken: another process already runs this role's consumer group on the embedded log.
FATAL: tuple[type[BaseException], ...] = (ConfigError, GroupTaken)
_STOP_FAILED_S = 60.0  # bound on stopping a failed instance before its replacement starts


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Supervisor:
    """Keeps one downstream service running: when it fails, a new instance takes over after a delay.

    ``factory()`` builds an instance for each restart; ``first`` is one built
    already (so a configuration error shows before anything starts). An instance
    fails when its ``start()`` raises or, once running, when its ``failed`` turns
    true. It is then stopped (a failed consumer saves nothing on the way out: see
    :mod:`tripwire.log.consume`) and a new one started, after 1 s, then 2, 4 ...
    up to 60 s while restarts keep failing; back to 1 s once an instance has run
    for a healthy minute. A new instance resumes from the durable state, as after
    a kill -9.

    Only an error of :data:`FATAL` (or of the service's own ``fatal_errors``) at
    the very first start is not retried: ``start()`` raises it, so a
    misconfiguration exits at once. Any later error is retried, whatever it is.

    ``ready()`` is false while the service is down; ``tripwire_service_up{service}``
    and ``tripwire_service_restarts_total{service}`` say the same in /metrics.
    """

    failed = False  # a supervised service never stops the process

    def __init__(self, factory: Callable[[], Service], first: Service | None = None, *,
                 delays_s: tuple[float, float] = (1.0, 60.0), healthy_s: float = 60.0, poll_s: float = 0.5) -> None:
        self._factory = factory
        self.service: Service = first if first is not None else factory()
        self.name = self.service.name
        self.up = False
        self.restarts = 0
        self._delays_s = delays_s
        self._delay_s = delays_s[0]
        self._healthy_s = healthy_s
        self._poll_s = poll_s
        self._since = 0.0
        self._stopping: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is not None:
            return
        from tripwire.metrics import SERVICE_RESTARTS

        self._stopping = asyncio.Event()
        SERVICE_RESTARTS.labels(self.name)  # the series exists (0) before the first restart
        try:
            await self.service.start()
        except Exception as exc:
            if isinstance(exc, FATAL + tuple(getattr(self.service, "fatal_errors", ()))):
                await _quietly_stop(self.service)
                raise
            await self._down(exc, "could not start")
        else:
            self._set_up(True)
        self._task = asyncio.create_task(self._supervise(), name=f"tripwire-supervise-{self.name}")

    def signal_stop(self) -> None:
        """Ask a child process to stop without waiting for it (see :func:`run_services`); no restart follows."""
        hook = getattr(self.service, "signal_stop", None)
        if hook is not None:
            hook()

    async def stop(self) -> None:
        if self._stopping is None or self._stopping.is_set():
            return
        self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self.up:
            self._set_up(False)
            await self.service.stop()

    async def ready(self) -> bool:
        if not self.up or getattr(self.service, "failed", False):
            return False
        ready = getattr(self.service, "ready", None)
        return bool(await ready()) if callable(ready) else True

    def _set_up(self, up: bool) -> None:
        from tripwire.metrics import SERVICE_UP

        self.up = up
        SERVICE_UP.labels(self.name).set(1 if up else 0)
        if up:
            self._since = time.monotonic()

    async def _down(self, error: BaseException | None, what: str) -> None:
        """Mark the service down and stop the instance (bounded: its replacement must not wait for ever)."""
        self._set_up(False)
        reason = f"{type(error).__name__}: {error}" if error is not None else "its task ended"
        logger.error("%s %s (%s); restarting it in %g s", self.name, what, reason, self._delay_s)
        try:
            await asyncio.wait_for(_quietly_stop(self.service), _STOP_FAILED_S)
        except TimeoutError:
            logger.warning("%s: the failed instance did not stop within %.0f s; starting another anyway",
                           self.name, _STOP_FAILED_S)

    async def _supervise(self) -> None:
        from tripwire.metrics import SERVICE_RESTARTS

        assert self._stopping is not None
        while not self._stopping.is_set():
            if self.up:
                if not await self._until_failed():
                    return  # stopping
                if time.monotonic() - self._since >= self._healthy_s:
                    self._delay_s = self._delays_s[0]
                await self._down(getattr(self.service, "error", None), "failed")
            if await self._stopped_within(self._delay_s):
                return
            self._delay_s = min(self._delay_s * 2, self._delays_s[1])
            self.restarts += 1
            SERVICE_RESTARTS.labels(self.name).inc()
            try:
                self.service = self._factory()
                await self.service.start()
            except Exception as exc:  # noqa: BLE001 - whatever it is, the next try may succeed
                await self._down(exc, f"could not restart (restart #{self.restarts})")
                continue
            if self._stopping.is_set():
                await self.service.stop()
                return
            self._set_up(True)
            logger.info("%s restarted (restart #%d)", self.name, self.restarts)

    async def _until_failed(self) -> bool:
        """True once the running instance has failed; False when the supervisor is stopping."""
        while not await self._stopped_within(self._poll_s):
            if getattr(self.service, "failed", False):
                return True
        return False

    async def _stopped_within(self, seconds: float) -> bool:
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True


async def _quietly_stop(service: Service) -> None:
    try:
        await service.stop()
    except Exception:  # noqa: BLE001 - it failed already; the reason is logged
        logger.warning("%s: stopping the failed instance raised", service.name, exc_info=True)


async def run_services(services: Sequence[Service], stop: asyncio.Event | None = None, poll_s: float = 1.0) -> int:
    """Start ``services`` in order, run until SIGTERM/SIGINT (or ``stop``), stop them in reverse; a second
    signal while they stop exits at once (status 130).

    Returns the process's exit status: 0 after a signal; 1 when a service ``failed`` (its
    background task died): the others are stopped then too, so a process supervisor restarts
    the process instead of leaving it up with a dead collector behind a 200 /healthz. A
    :class:`Supervisor` never fails: it restarts its service in the process instead.
    """
    from tripwire.metrics import READINESS

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    READINESS.bind_loop(loop)

    def on_signal() -> None:
        if stop.is_set():
            # A second Ctrl-C (or SIGTERM) while stopping: leave now. Nothing acknowledged is lost
            # (appends are durable before they are acknowledged; every role resumes from what it committed).
            logger.warning("second signal while stopping: exiting now")
            os._exit(130)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    failed: list[str] = []  # seen while running (a service may look "failed" once stopped)

    async def watch() -> None:
        while not stop.is_set():
            failed[:] = [s.name for s in services if getattr(s, "failed", False)]
            if failed:
                logger.error("stopping: %s failed (see the error above)", ", ".join(failed))
                stop.set()
                return
            await asyncio.sleep(poll_s)

    started: list[Service] = []
    watcher = None

    async def starting() -> bool:
        return False

    READINESS.add_check("starting", starting)  # not ready before every service has started
    try:
        for service in services:
            await service.start()
            started.append(service)
            _watch_readiness(service)
            logger.info("%s started", service.name)
        READINESS.remove("starting")
        watcher = asyncio.create_task(watch(), name="tripwire-watch")
        await stop.wait()
        logger.info("stopping")
    finally:
        READINESS.remove("starting")
        if watcher is not None:
            watcher.cancel()
        signalled = False
        for i, service in enumerate(reversed(started)):
            READINESS.remove(f"service:{service.name}")
            if not signalled and hasattr(service, "signal_stop"):
                # Child processes (`tripwire run`'s engines and sinks) drain side by side: ask them all now.
                signalled = True
                for other in list(reversed(started))[i:]:
                    if hasattr(other, "signal_stop"):
                        other.signal_stop()
            try:
                await service.stop()
                logger.info("%s stopped", service.name)
            except Exception:
                logger.exception("%s failed to stop cleanly", service.name)
    return 1 if failed else 0


def _watch_readiness(service: Service) -> None:
    """Readiness (tripwire.metrics) follows the service: its own ``ready()`` if any, else not ``failed``."""
    from tripwire.metrics import READINESS

    ready = getattr(service, "ready", None)

    async def check() -> bool:
        if getattr(service, "failed", False):
            return False
        return bool(await ready()) if callable(ready) else True

    READINESS.add_check(f"service:{service.name}", check)
