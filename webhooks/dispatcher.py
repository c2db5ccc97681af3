"""The dispatcher: triggers topic -> durable store -> signed POSTs, retried, isolated per endpoint.

Two loops share one :class:`~tripwire.webhooks.group_commit.AsyncStore`:

* the *consumer* (the dispatcher is the handler of a
  :class:`~tripwire.log.consume.Runner`) reads ``Trigger`` records from the
  ``triggers`` topic, stores one delivery per trigger id (a no-op for an id
  already stored), and only then commits the topic offsets — a kill at any
  point loses nothing and a re-read record is never delivered twice;
* the *scheduler* claims due deliveries per endpoint up to that endpoint's
  ``concurrency`` and runs each attempt as its own task with its own HTTP
  client and connection pool, so a hanging endpoint only ever occupies its own
  slots. It wakes when triggers arrive or attempts finish, when the next retry
  is due, and at least every ``scan_interval_s`` (to see the CLI's replays
  and re-enables).

Attempt bookkeeping, dead letters and endpoint disabling (410 Gone, or
failing without a success for ``disable_after_s``) follow the store's
contract; see :mod:`tripwire.webhooks.store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tripwire.log import TRIGGERS, EventLog, TopicPartition
from tripwire.log.consume import Batch, Runner
from tripwire.triggers import EndpointConfig, Trigger

from . import metrics
from .attempt import attempt
from .config import WebhooksConfig
from .endpoint import Endpoint, Tasks, build_body, check_endpoints
from .errors import WebhookConfigError
from .group_commit import AsyncStore
from .ssrf import Guard, Resolver, ip_literal, refusal_reason
from .store import DEAD, DELIVERED, PENDING, Claimed, NewDelivery, Store, now_ms
from .transport import GuardedTransport, make_ssl_context

logger = logging.getLogger(__name__)

_GAUGE_INTERVAL_MS = 5_000
_PRUNE_INTERVAL_MS = 3_600_000


class Dispatcher:
    """Service ``dispatcher``: ``start()`` returns once consuming; ``stop()`` is safe twice.

    If a batch of triggers cannot be stored, or the scheduler dies, ``failed`` is
    set (``error`` says why); a new instance resumes from the group's committed
    offsets and the store.
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
        self._lease_ms = int(settings.attempt_timeout_s * 1000) + 2000
        self._store: AsyncStore | None = None
        self._tasks = Tasks()
        self._inflight: dict[str, Claimed] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._started = False
        self._gauges_stale = True  # refresh pending/dead gauges on the next scan
        self._next_gauges_ms = self._last_gauges_ms = self._next_prune_ms = 0
        self._disabling: set[str] = set()  # endpoints whose disable is being written
        self._states_version = 0  # bumped after each such write
        self._scheduler_error: BaseException | None = None
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
        return self.runner.failed or self._scheduler_error is not None

    @property
    def error(self) -> BaseException | None:
        return self.runner.error or self._scheduler_error

    @property
    def store(self) -> Store:
        assert self._store is not None, "dispatcher not started"
        return self._store.sync

    # lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._wake = asyncio.Event()
        # httpx logs every request's full URL at INFO; webhook URLs often carry tokens.
        httpx_logger = logging.getLogger("httpx")
        if httpx_logger.level == logging.NOTSET:
            httpx_logger.setLevel(logging.WARNING)
        self._store = AsyncStore(await asyncio.to_thread(Store, self._store_path))
        timeout = httpx.Timeout(self._settings.attempt_timeout_s)
        for ep in self._endpoints.values():
            ep.client = httpx.AsyncClient(
                transport=GuardedTransport(self._guard, max_connections=ep.concurrency, ssl_context=self._ssl_context),
                follow_redirects=False,
                timeout=timeout,
                trust_env=False,
            )
        await self.runner.start()  # the embedded log: GroupTaken when another dispatcher of the group runs
        task = asyncio.create_task(self._schedule_loop(), name="webhooks-scheduler")
        task.add_done_callback(self._background_done)
        self._tasks.background.append(task)

    async def stop(self) -> None:
        if not self._started or self._stopping:
            return
        self._stopping = True
        self._wake.set()
        await self.runner.stop()
        for task in self._tasks.background:
            task.cancel()
        await asyncio.gather(*self._tasks.background, return_exceptions=True)
        if self._tasks.attempts:
            _, late = await asyncio.wait(set(self._tasks.attempts), timeout=self._settings.stop_grace_s)
            abandoned = list(self._inflight.values())
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            if abandoned:  # due again at once on restart, instead of when their lease ends
                assert self._store is not None
                await self._store.write(Store.op_release(abandoned, now_ms()))
        for ep in self._endpoints.values():
            if ep.client is not None:
                await ep.client.aclose()
        if self._store is not None:
            await self._store.drain()
            self._store.sync.close()

    async def ready(self) -> bool:
        """Serving: started, not stopping, consuming, the scheduler alive."""
        return (
            self._started and not self._stopping and not self.failed and await self.runner.ready()
            and all(not t.done() for t in self._tasks.background)
        )

    def _background_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        self._scheduler_error = exc or RuntimeError(f"{task.get_name()} ended")
        logger.error("webhook dispatcher task %s died", task.get_name(), exc_info=exc)

    # consuming ---------------------------------------------------------------

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
        # Only now, with every delivery durable, may the log forget these records. Not committed (the
        # broker away, the group rebalanced): they are read again and deduplicated by trigger id.
        await batch.commit(offsets)
        self._gauges_stale = True
        self._wake.set()

    # scheduling --------------------------------------------------------------

    def _delay_ms(self, index: int) -> int:
        jitter = self._settings.retry_jitter
        return int(self._schedule[index] * random.uniform(1 - jitter, 1 + jitter) * 1000)

    async def _schedule_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                sleep_ms = await self._scan()
            except asyncio.CancelledError:
                raise
            except Exception:
                # e.g. the store stayed locked by another process past busy_timeout: try again
                logger.exception("webhook scheduler: the delivery store failed; retrying in 1 s")
                sleep_ms = 1000
            if sleep_ms > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), sleep_ms / 1000)
            else:
                await asyncio.sleep(0)

    async def _scan(self) -> int:
        """Claim and launch what is due; return how long to sleep (ms) unless woken."""
        assert self._store is not None
        store = self._store
        at = now_ms()
        scan_ms = int(self._settings.scan_interval_s * 1000)
        version = self._states_version
        states = await store.read(store.sync.endpoint_states)
        sleep_ms = scan_ms
        # A read that overlapped one of our own disables may predate it: keep what we know then.
        if version == self._states_version:
            for ep in self._endpoints.values():
                if ep.name not in self._disabling:
                    state = states.get(ep.name)
                    ep.disabled_reason = state.disabled_reason if state else None
        ready = [ep for ep in self._endpoints.values() if ep.active and ep.inflight < ep.concurrency]
        due = await store.read(store.sync.next_due_ms, [ep.name for ep in ready]) if ready else {}
        claiming = []
        for ep in ready:
            if ep.name not in due:
                continue
            if due[ep.name] > at:
                sleep_ms = min(sleep_ms, due[ep.name] - at)
                continue
            free = ep.concurrency - ep.inflight
            claiming.append((ep, Store.op_claim(ep.name, free, at, self._lease_ms, exclude=set(self._inflight))))
        if claiming:
            # submitted together, so the claims of every endpoint share one transaction
            results = await asyncio.gather(*(store.write(op) for _, op in claiming))
            for (ep, _), claimed in zip(claiming, results, strict=True):
                for c in claimed:
                    self._launch(ep, c)
            sleep_ms = 0  # look again: more may be due, or the next one's time changed
        # gauges at most once per scan interval while things change, else every few seconds
        if at >= self._next_gauges_ms or (self._gauges_stale and at >= self._last_gauges_ms + scan_ms):
            self._next_gauges_ms, self._last_gauges_ms = at + _GAUGE_INTERVAL_MS, at
            await self._update_gauges()
        if at >= self._next_prune_ms:
            self._next_prune_ms = at + _PRUNE_INTERVAL_MS
            await store.write(Store.op_prune(at - int(self._settings.retention_days * 86_400_000)))
        return sleep_ms

    def _launch(self, ep: Endpoint, claimed: Claimed) -> None:
        ep.inflight += 1
        metrics.INFLIGHT.labels(ep.name).inc()
        task = asyncio.create_task(self._deliver(ep, claimed))
        self._tasks.attempts.add(task)
        # An attempt that outlives its lease (a stalled loop) must not be claimed again here.
        self._inflight[claimed.id] = claimed

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.attempts.discard(t)
            self._inflight.pop(claimed.id, None)
            ep.inflight -= 1
            metrics.INFLIGHT.labels(ep.name).dec()
            self._wake.set()

        task.add_done_callback(done)

    async def _deliver(self, ep: Endpoint, claimed: Claimed) -> None:
        assert self._store is not None and ep.client is not None
        try:
            result = await attempt(
                ep.client, ep.url, claimed.id, claimed.body, ep.keys, ep.headers,
                timeout_s=self._settings.attempt_timeout_s,
                max_response_bytes=self._settings.max_response_bytes,
            )
            metrics.ATTEMPTS.labels(ep.name, result.outcome).inc()
            metrics.ATTEMPT_SECONDS.labels(ep.name).observe(result.duration_s)
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
            failing_since = await self._store.write(
                Store.op_outcome(
                    claimed, at_ms=at, status=result.status, outcome=result.outcome, error=result.error,
                    duration_ms=int(result.duration_s * 1000), state=state, next_attempt_ms=next_ms,
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("webhook %s to endpoint %s: recording the attempt failed", claimed.id, ep.name)
            return
        self._gauges_stale = True
        if state == DELIVERED:
            metrics.DELIVERIES.labels(ep.name, "delivered").inc()
            logger.debug("webhook %s delivered to %s (attempt %d)", claimed.id, ep.name, claimed.attempt)
            return
        if state == DEAD:
            metrics.DELIVERIES.labels(ep.name, "dead_letter").inc()
            logger.warning(
                "webhook %s to endpoint %s is a dead letter after %d attempts (%s)",
                claimed.id, ep.name, claimed.attempt, result.error,
            )
        elif result.outcome == "gone":  # no "next in 2 s": it waits for `webhooks enable` (logged below)
            logger.info("webhook %s to endpoint %s: attempt %d failed (%s)", claimed.id, ep.name, claimed.attempt,
                        result.error)
        else:
            logger.info(
                "webhook %s to endpoint %s: attempt %d failed (%s); next in %.1f s",
                claimed.id, ep.name, claimed.attempt, result.error, (next_ms - at) / 1000,
            )
        if result.outcome == "gone":
            await self._disable(ep, "the endpoint answered 410 Gone")
        elif failing_since is not None and at - failing_since >= self._settings.disable_after_s * 1000:
            since = datetime.fromtimestamp(failing_since / 1000, UTC).isoformat(timespec="seconds")
            await self._disable(ep, f"failing continuously since {since}")

    async def _disable(self, ep: Endpoint, reason: str) -> None:
        assert self._store is not None
        if ep.disabled_reason is not None:
            return
        ep.disabled_reason = reason
        metrics.DISABLED.labels(ep.name).set(1)
        self._disabling.add(ep.name)
        try:
            await self._store.write(Store.op_disable(ep.name, reason, now_ms()))
        finally:
            self._disabling.discard(ep.name)
            self._states_version += 1
        logger.error(
            "webhook endpoint %s disabled: %s; its deliveries wait until `tripwire webhooks enable %s`",
            ep.name, reason, ep.name,
        )

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
