"""The dispatcher: triggers topic -> durable store -> signed POSTs, retried, isolated per endpoint.

Three parts share one :class:`~tripwire.webhooks.group_commit.AsyncStore`:

* the *consumer* (the dispatcher is the handler of a
  :class:`~tripwire.log.consume.Runner`) reads ``Trigger`` records from the
  ``triggers`` topic, builds each body once, stores one delivery per trigger id
  (a no-op for an id already stored or delivered within the dedup window), and
  only then commits the topic offsets — a kill at any point loses nothing and a
  re-read record is never delivered twice;
* one :class:`~tripwire.webhooks.lane.Lane` per endpoint: ``concurrency``
  workers over the endpoint's own keep-alive connection pool, fed from a
  bounded window of claimed deliveries (4 x ``concurrency``), so a hanging
  endpoint only ever occupies its own slots and the backlog stays on disk;
* the *recorder* loop, which in one transaction records every attempt result
  reported since the last one, claims due deliveries for the lanes with room,
  and (every ``scan_interval_s``) reads the endpoints' state to see the CLI's
  re-enables. It wakes when results or triggers arrive, when a retry is due,
  and at least every ``scan_interval_s``; it also prunes the store in small
  steps (:mod:`tripwire.webhooks.retention`).

Attempt bookkeeping, dead letters and endpoint disabling (410 Gone, or
failing without a success for ``disable_after_s``) follow the store's
contract; see :mod:`tripwire.webhooks.store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import ssl
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tripwire.log import TRIGGERS, EventLog, TopicPartition
from tripwire.log.consume import Batch, Runner
from tripwire.triggers import EndpointConfig, Trigger

from . import metrics
from .attempt import Result, Sender
from .config import WebhooksConfig
from .endpoint import build_body, check_endpoints
from .errors import WebhookConfigError
from .group_commit import AsyncStore
from .lane import WINDOW_PER_SLOT, Lane
from .retention import Windows, op_prune_step
from .ssrf import Guard, Resolver, ip_literal, refusal_reason
from .store import DEAD, DELIVERED, PENDING, Claimed, EndpointState, NewDelivery, Outcome, Store, now_ms
from .transport import EndpointPool, make_ssl_context

logger = logging.getLogger(__name__)

_GAUGE_INTERVAL_MS = 5_000
_PRUNE_LIMIT = 2_000  # rows per pruning step


class Dispatcher:
    """Service ``dispatcher``: ``start()`` returns once consuming; ``stop()`` is safe twice.

    If a batch of triggers cannot be stored, or the recorder or a worker dies,
    ``failed`` is set (``error`` says why); a new instance resumes from the
    group's committed offsets and the store.
    """

    name = "dispatcher"
    max_records = 500
    read_ahead = False

    def __init__(
        self,
        log: EventLog,
        store_path: str | Path,
        settings: WebhooksConfig,
        endpoints: Mapping[str, EndpointConfig],
        *,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._log = log
        self._store_path = Path(store_path)
        self._settings = settings
        self._endpoints = check_endpoints(endpoints)
        self._guard = Guard(settings.hosts(), settings.networks(), resolver)
        self._ssl_context = ssl_context or _ssl_context(settings.ca_bundle)
        self._schedule = list(settings.retry_schedule_s)
        # a claim waits in its lane's window for at most WINDOW_PER_SLOT - 1 attempts before its own
        self._lease_ms = int(WINDOW_PER_SLOT * settings.attempt_timeout_s * 1000) + 2000
        self._scan_ms = int(settings.scan_interval_s * 1000)
        self._windows = Windows(
            history_ms=int(settings.delivered_history_s * 1000),
            dedup_ms=int(settings.dedup_window_s * 1000),
            dead_ms=int(settings.retention_days * 86_400_000),
        )
        self._store: AsyncStore | None = None
        self._lanes: dict[str, Lane] = {}
        self._outcomes: list[Outcome] = []  # reported, not yet recorded
        self._unclaims: list[Claimed] = []  # claims given back unstarted, not yet recorded
        self._disables: dict[str, str] = {}  # endpoint -> reason, not yet recorded
        self._wake = asyncio.Event()
        self._recorder: asyncio.Task[None] | None = None
        self._stopping = False
        self._started = False
        self._gauges_stale = True  # refresh pending/dead gauges soon
        self._next_gauges_ms = self._last_gauges_ms = self._next_prune_ms = self._next_states_ms = 0
        self._recorder_error: BaseException | None = None
        # One dispatcher per store: its deliveries are not partitioned (Kafka: one store per host).
        self.runner = Runner(log, settings.consumer_group, [TRIGGERS], self, exclusive=True)
        for ep in self._endpoints.values():
            literal = ip_literal(httpx.URL(ep.url).host)
            if literal is not None and refusal_reason(literal) and not self._guard.address_allowed(literal):
                logger.warning(
                    "webhook endpoint %s points at a %s address; its deliveries will be refused unless allow-listed",
                    ep.name, refusal_reason(literal),
                )

    @property
    def failed(self) -> bool:
        return self.runner.failed or self.error is not None

    @property
    def error(self) -> BaseException | None:
        return self.runner.error or self._recorder_error or next(
            (lane.error for lane in self._lanes.values() if lane.error is not None), None
        )

    @property
    def store(self) -> Store:
        assert self._store is not None, "dispatcher not started"
        return self._store.sync

    def connections(self, endpoint: str) -> int:
        """Connections open to ``endpoint`` now."""
        return self._lanes[endpoint].sender.pool.connections

    # lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._wake = asyncio.Event()
        self._store = AsyncStore(await asyncio.to_thread(Store, self._store_path))
        for ep in self._endpoints.values():
            pool = EndpointPool(self._guard, max_connections=ep.concurrency, ssl_context=self._ssl_context)
            sender = Sender(pool, ep.url, ep.keys, ep.headers, timeout_s=self._settings.attempt_timeout_s,
                            max_response_bytes=self._settings.max_response_bytes)
            self._lanes[ep.name] = lane = Lane(ep, sender, self._report)
            lane.start()
        await self.runner.start()  # the embedded log: GroupTaken when another dispatcher of the group runs
        self._recorder = asyncio.create_task(self._record_loop(), name="webhooks-recorder")
        self._recorder.add_done_callback(self._recorder_done)

    async def stop(self) -> None:
        if not self._started or self._stopping:
            return
        self._stopping = True
        self._wake.set()
        await self.runner.stop()
        if self._recorder is not None:
            await asyncio.gather(self._recorder, return_exceptions=True)  # ends after the cycle in hand
        unstarted, abandoned = list(self._unclaims), []
        self._unclaims.clear()
        closed = await asyncio.gather(*(lane.close(self._settings.stop_grace_s) for lane in self._lanes.values()))
        for queued, late in closed:
            unstarted += queued
            abandoned += late
        if self._store is None:
            return
        at = now_ms()
        ops: list[Callable[[sqlite3.Connection], object]] = [Store.op_outcomes(self._outcomes)] if self._outcomes else []
        ops += [Store.op_disable(name, reason, at) for name, reason in self._disables.items()]
        # given back due now, so a restart sends them at once instead of when their lease ends
        ops += [Store.op_unclaim(unstarted, at), Store.op_release(abandoned, at)]
        try:
            await self._store.write(lambda conn: [op(conn) for op in ops])
        except (sqlite3.Error, OSError):
            logger.exception("webhook dispatcher: recording the last attempts failed; they are sent again")
        await self._store.drain()
        self._store.sync.close()

    async def ready(self) -> bool:
        """Serving: started, not stopping, consuming, the recorder and every worker alive."""
        return (
            self._started and not self._stopping and not self.failed and await self.runner.ready()
            and self._recorder is not None and not self._recorder.done()
        )

    def _recorder_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        self._recorder_error = exc or RuntimeError(f"{task.get_name()} ended")
        logger.error("webhook dispatcher task %s died", task.get_name(), exc_info=exc)

    # the runner's handler: triggers topic -> store -------------------------

    def poll_timeout_ms(self) -> int:
        return 500

    async def on_assigned(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int | None]:
        return {}  # from the group's committed offsets

    async def on_revoked(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        return {}  # every batch handled was committed already

    async def handle(self, batch: Batch) -> None:
        if not batch.records:
            return
        assert self._store is not None
        at = now_ms()
        items: list[NewDelivery] = []
        offsets: dict[TopicPartition, int] = {}
        for record in batch.records:
            offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
            try:
                trigger = Trigger.from_json(record.value)
            except (TypeError, ValueError):
                metrics.INVALID_TRIGGERS.inc()
                logger.warning(
                    "skipping unreadable trigger record %s/%d@%d", record.topic, record.partition, record.offset
                )
                continue
            endpoint = self._endpoints.get(trigger.endpoint)
            body = build_body(trigger, self._settings.event_type, endpoint.events if endpoint is not None else "minimal")
            if trigger.endpoint not in self._endpoints:
                logger.warning("trigger %s names endpoint %s, which is not configured: dead letter", trigger.id, trigger.endpoint)
                items.append(NewDelivery(trigger.id, trigger.endpoint, body, at, DEAD, f"endpoint {trigger.endpoint!r} is not configured"))
                metrics.DELIVERIES.labels(trigger.endpoint, "dead_letter").inc()
            else:
                items.append(NewDelivery(trigger.id, trigger.endpoint, body, at + self._delay_ms(0)))
        if items:
            await self._store.write(Store.op_add(items, at))
            for item in items:
                lane = self._lanes.get(item.endpoint)
                if lane is not None:
                    lane.idle_until_ms = min(lane.idle_until_ms, item.due_ms)
        # Only now, with every delivery durable, may the log forget these records. Not committed (the
        # broker away, the group rebalanced): they are read again and deduplicated by trigger id.
        await batch.commit(offsets)
        self._gauges_stale = True
        self._wake.set()

    # attempts ----------------------------------------------------------------

    def _delay_ms(self, index: int) -> int:
        jitter = self._settings.retry_jitter
        return int(self._schedule[index] * random.uniform(1 - jitter, 1 + jitter) * 1000)

    def _report(self, lane: Lane, claimed: Claimed, result: Result) -> None:
        """A worker's attempt ended: decide what follows; the recorder writes it with the next batch."""
        metrics.ATTEMPTS.labels(lane.name, result.outcome).inc()
        at = now_ms()
        if result.ok:
            state, next_ms = DELIVERED, at
        elif claimed.attempt >= len(self._schedule):
            state, next_ms = DEAD, at
        else:
            delay_ms = self._delay_ms(claimed.attempt)
            if result.retry_after_s is not None:
                honoured = min(result.retry_after_s, self._settings.max_retry_after_s)
                delay_ms = max(delay_ms, int(honoured * 1000))
            state, next_ms = PENDING, at + delay_ms
            lane.idle_until_ms = min(lane.idle_until_ms, next_ms)
        self._outcomes.append(Outcome(claimed, at, result.status, result.outcome, result.error,
                                      int(result.duration_s * 1000), state, next_ms))
        self._wake.set()
        if state == DELIVERED:
            metrics.DELIVERIES.labels(lane.name, "delivered").inc()
            logger.debug("webhook %s delivered to %s (attempt %d)", claimed.id, lane.name, claimed.attempt)
            return
        self._gauges_stale = True
        if state == DEAD:
            metrics.DELIVERIES.labels(lane.name, "dead_letter").inc()
            logger.warning(
                "webhook %s to endpoint %s is a dead letter after %d attempts (%s)",
                claimed.id, lane.name, claimed.attempt, result.error,
            )
        elif result.outcome == "gone":  # no "next in 2 s": it waits for `webhooks enable` (logged below)
            logger.info("webhook %s to endpoint %s: attempt %d failed (%s)", claimed.id, lane.name, claimed.attempt,
                        result.error)
        else:
            logger.info(
                "webhook %s to endpoint %s: attempt %d failed (%s); next in %.1f s",
                claimed.id, lane.name, claimed.attempt, result.error, (next_ms - at) / 1000,
            )
        if result.outcome == "gone":
            self._disable(lane, "the endpoint answered 410 Gone")

    def _disable(self, lane: Lane, reason: str) -> None:
        if lane.endpoint.disabled_reason is not None:
            return
        lane.endpoint.disabled_reason = reason
        metrics.DISABLED.labels(lane.name).set(1)
        self._disables[lane.name] = reason
        self._unclaims += lane.take_queued()
        self._wake.set()
        logger.error(
            "webhook endpoint %s disabled: %s; its deliveries wait until `tripwire webhooks enable %s`",
            lane.name, reason, lane.name,
        )

    # recording and claiming ----------------------------------------------------

    async def _record_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                sleep_ms = await self._cycle()
            except asyncio.CancelledError:
                raise
            except Exception:
                # e.g. the store stayed locked by another process past busy_timeout: try again
                logger.exception("webhook dispatcher: the delivery store failed; retrying in 1 s")
                sleep_ms = 1000
            if self._stopping:
                return
            if sleep_ms > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), sleep_ms / 1000)
            else:
                await asyncio.sleep(0)

    async def _cycle(self) -> int:
        """Record what was reported, claim for lanes with room; return how long to sleep (ms) unless woken."""
        assert self._store is not None
        store = self._store
        at = now_ms()
        read_states = at >= self._next_states_ms
        if read_states:
            self._next_states_ms = at + self._scan_ms
        asking = [lane for lane in self._lanes.values() if lane.room() > 0 and lane.idle_until_ms <= at]
        outcomes, unclaims, disables = self._outcomes, self._unclaims, self._disables
        if outcomes or unclaims or disables or asking or read_states:
            self._outcomes, self._unclaims, self._disables = [], [], {}
            try:
                failing, states, claims = await store.write(
                    self._cycle_op(at, outcomes, unclaims, disables, asking, read_states), durable=bool(disables),
                )
            except BaseException:
                # not recorded: again with the next cycle (the store ignores an outcome already recorded)
                self._outcomes[:0], self._unclaims[:0] = outcomes, unclaims
                self._disables = {**disables, **self._disables}
                raise
            if states is not None:
                self._apply_states(states)
            for lane, (claimed, short, next_due) in zip(asking, claims, strict=True):
                lane.add(claimed)
                if short:  # fewer than asked for: nothing more is due before next_due (None: nothing pending)
                    lane.idle_until_ms = at + self._scan_ms if next_due is None or next_due <= at else min(next_due, at + self._scan_ms)
            self._check_failing(failing, at)
        if at >= self._next_gauges_ms or (self._gauges_stale and at >= self._last_gauges_ms + self._scan_ms):
            self._next_gauges_ms, self._last_gauges_ms = at + _GAUGE_INTERVAL_MS, at
            await self._update_gauges()
        if at >= self._next_prune_ms:
            handled = await store.write(op_prune_step(at, self._windows, _PRUNE_LIMIT), durable=False)
            self._next_prune_ms = at if handled >= _PRUNE_LIMIT else at + self._scan_ms
        if self._outcomes or self._unclaims or self._disables:
            return 0
        wake_at = [self._next_states_ms, self._next_prune_ms, self._next_gauges_ms]
        wake_at += [lane.idle_until_ms for lane in self._lanes.values() if lane.room() > 0]
        return max(0, min(wake_at) - now_ms())

    def _cycle_op(
        self, at: int, outcomes: list[Outcome], unclaims: list[Claimed], disables: dict[str, str],
        asking: list[Lane], read_states: bool,
    ) -> Any:
        recording = Store.op_outcomes(outcomes) if outcomes else None
        claims = [
            (Store.op_claim(lane.name, lane.room(), at, self._lease_ms, exclude=lane.holding()),
             Store.op_next_due(lane.name), lane.room())
            for lane in asking
        ]

        def op(conn: sqlite3.Connection) -> tuple[dict[str, int | None], dict[str, EndpointState] | None, list[Any]]:
            failing = recording(conn) if recording is not None else {}
            if unclaims:
                Store.op_unclaim(unclaims, at)(conn)
            for name, reason in disables.items():
                Store.op_disable(name, reason, at)(conn)
            states = Store.endpoint_states_in(conn) if read_states else None
            got = []
            for claim, next_due, room in claims:
                claimed = claim(conn)
                short = len(claimed) < room
                got.append((claimed, short, next_due(conn) if short else None))
            return failing, states, got

        return op

    def _apply_states(self, states: Mapping[str, EndpointState]) -> None:
        """The endpoints' state as stored (the CLI may have re-enabled one); ours wins while not yet written."""
        for lane in self._lanes.values():
            if lane.name in self._disables:
                continue
            state = states.get(lane.name)
            reason = state.disabled_reason if state else None
            was = lane.endpoint.disabled_reason
            lane.endpoint.disabled_reason = reason
            if was is not None and reason is None:
                lane.idle_until_ms = 0
                lane.wake()
            elif was is None and reason is not None:
                self._unclaims += lane.take_queued()

    def _check_failing(self, failing: Mapping[str, int | None], at: int) -> None:
        for name, since in failing.items():
            if since is not None and at - since >= self._settings.disable_after_s * 1000:
                started = datetime.fromtimestamp(since / 1000, UTC).isoformat(timespec="seconds")
                self._disable(self._lanes[name], f"failing continuously since {started}")

    async def _update_gauges(self) -> None:
        assert self._store is not None
        self._gauges_stale = False
        counts = await self._store.read(self._store.sync.backlog)
        for name in set(counts) | set(self._endpoints):
            c = counts.get(name, {})
            metrics.PENDING.labels(name).set(c.get(PENDING, 0))
            metrics.DEAD_LETTERS.labels(name).set(c.get(DEAD, 0))
        for ep in self._endpoints.values():
            metrics.DISABLED.labels(ep.name).set(0 if ep.active else 1)


def _ssl_context(ca_bundle: str) -> ssl.SSLContext:
    try:
        return make_ssl_context(ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise WebhookConfigError(f"Config 'webhooks.ca_bundle' has value {ca_bundle!r}: cannot load it ({exc}).") from exc
