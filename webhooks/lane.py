"""One endpoint's deliveries in a dispatcher: a bounded window of claimed rows and its workers.

The lane holds at most ``window`` (:data:`WINDOW_PER_SLOT` times the endpoint's
``concurrency``) claimed deliveries: up to ``concurrency`` in flight, one worker
each, and the rest queued for the next free worker, so a worker does not wait
for the store between two attempts (claims come in batches, one transaction
at a time). Everything else waits in the store, on disk. The last queued
delivery starts after at most ``WINDOW_PER_SLOT - 1`` attempts of each worker,
which is why a claim's lease covers ``WINDOW_PER_SLOT`` attempts.

Workers report each result to the dispatcher (``report``) and go on at once;
the dispatcher records results in batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from . import metrics
from .attempt import Result, Sender
from .endpoint import Endpoint
from .store import Claimed

logger = logging.getLogger(__name__)

WINDOW_PER_SLOT = 4


class Lane:
    def __init__(self, endpoint: Endpoint, sender: Sender, report: Callable[[Lane, Claimed, Result], None]) -> None:
        self.endpoint = endpoint
        self.sender = sender
        self.window = WINDOW_PER_SLOT * endpoint.concurrency
        self.queue: deque[Claimed] = deque()
        self.inflight: dict[str, Claimed] = {}
        self.idle_until_ms = 0  # the store had nothing due for this lane before then (0: ask it)
        self.error: BaseException | None = None  # a worker died of it
        self._report = report
        self._ready = asyncio.Event()
        self._closing = False
        self._workers: list[asyncio.Task[None]] = []
        self._inflight_gauge = metrics.INFLIGHT.labels(endpoint.name)
        self._seconds = metrics.ATTEMPT_SECONDS.labels(endpoint.name)

    @property
    def name(self) -> str:
        return self.endpoint.name

    def room(self) -> int:
        """How many more deliveries the lane may claim now."""
        if self._closing or not self.endpoint.active:
            return 0
        return self.window - len(self.queue) - len(self.inflight)

    def holding(self) -> set[str]:
        """Ids claimed by this lane and not finished."""
        return {c.id for c in self.queue} | set(self.inflight)

    def start(self) -> None:
        for i in range(self.endpoint.concurrency):
            task = asyncio.create_task(self._work(), name=f"webhooks-{self.name}-{i}")
            task.add_done_callback(self._worker_done)
            self._workers.append(task)

    def add(self, claims: list[Claimed]) -> None:
        self.queue.extend(claims)
        self._ready.set()

    def wake(self) -> None:
        """Workers look again (the endpoint was re-enabled)."""
        self._ready.set()

    def take_queued(self) -> list[Claimed]:
        """Give back the claims no worker has started (the endpoint was disabled, or we stop)."""
        queued = list(self.queue)
        self.queue.clear()
        return queued

    async def close(self, grace_s: float) -> tuple[list[Claimed], list[Claimed]]:
        """Stop: attempts in flight get ``grace_s`` to finish. Returns (never started, abandoned mid-attempt)."""
        self._closing = True
        self._ready.set()
        queued = self.take_queued()
        if self._workers:
            _, late = await asyncio.wait(self._workers, timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        abandoned = list(self.inflight.values())
        self.inflight.clear()
        await self.sender.aclose()
        return queued, abandoned

    async def _work(self) -> None:
        queue, inflight = self.queue, self.inflight
        while True:
            while not (queue and self.endpoint.active) or self._closing:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
            claimed = queue.popleft()
            inflight[claimed.id] = claimed
            self._inflight_gauge.inc()
            try:
                result = await self.sender.send(claimed.id, claimed.body)
            finally:
                self._inflight_gauge.dec()
            # Cancelled mid-attempt, the claim stays in ``inflight``: close() reports it abandoned.
            del inflight[claimed.id]
            self._seconds.observe(result.duration_s)
            self._report(self, claimed, result)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.error = task.exception()
        logger.error("webhook worker %s died", task.get_name(), exc_info=self.error)
