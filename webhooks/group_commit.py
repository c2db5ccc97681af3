"""Group commit for the delivery store: concurrent writes share one transaction."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from .store import Store

T = TypeVar("T")


class AsyncStore:
    """The dispatcher's view: reads in a thread, writes group-committed in a thread.

    Writes submitted while a transaction is being written wait and go into the
    next one together. A transaction waits for the disk when any of its writes
    asked for that (``durable``; see :mod:`tripwire.webhooks.store` for which may not).
    """

    def __init__(self, store: Store) -> None:
        self.sync = store
        self._queue: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], bool]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, op: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future, durable))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        # shield: a cancelled caller must not cancel a transaction others wait on
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            durable = any(d for _, _, d in batch)
            try:
                results = await asyncio.to_thread(self.sync.transaction, [op for op, _, _ in batch], durable)
            except Exception as exc:
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future, _), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    async def drain(self) -> None:
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
