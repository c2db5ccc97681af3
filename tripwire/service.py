"""Long-running services (collector, engine, dispatcher, sink) and how they run together.

A service has an explicit lifecycle: ``start()`` returns once it is serving,
``stop()`` drains and returns once it has stopped (safe to call twice). A
service whose background task dies sets ``failed`` so the runner can stop the
rest instead of limping on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from typing import Protocol

logger = logging.getLogger(__name__)


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def run_services(services: Sequence[Service], stop: asyncio.Event | None = None, poll_s: float = 1.0) -> int:
    """Start ``services`` in order, run until SIGTERM/SIGINT (or ``stop``), stop them in reverse; a second
    signal while they stop exits at once (status 130).

    Returns the process's exit status: 0 after a signal; 1 when a service ``failed`` (its
    background task died): the others are stopped then too, so a supervisor restarts the
    process instead of leaving it up with, say, a dead sink behind a 200 /healthz.
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
    try:
        for service in services:
            await service.start()
            started.append(service)
            _watch_readiness(service)
            logger.info("%s started", service.name)
        watcher = asyncio.create_task(watch(), name="tripwire-watch")
        await stop.wait()
        logger.info("stopping")
    finally:
        if watcher is not None:
            watcher.cancel()
        for service in reversed(started):
            READINESS.remove(f"service:{service.name}")
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
