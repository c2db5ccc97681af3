"""A hanging endpoint never delays the others."""

from __future__ import annotations

from tripwire.webhooks.store import DELIVERED

from .helpers import dispatcher, endpoint, make_trigger, new_secret, publish, state_of
from .receiver import Reply, wait_until


async def test_hanging_endpoint_does_not_delay_another(log, receivers, tmp_path):
    slow = receivers(lambda req, n: Reply(200, delay_s=120))  # accepts, never answers in time
    fast = receivers()
    d = dispatcher(
        log, tmp_path,
        {"slow": endpoint(slow.url, new_secret(), concurrency=2), "fast": endpoint(fast.url, new_secret(), concurrency=2)},
        attempt_timeout_s=90,
    )
    await d.start()
    try:
        # the hanging endpoint gets its triggers first and fills every slot it has
        stuck = [make_trigger("slow", i) for i in range(6)]
        await publish(log, stuck)
        await wait_until(lambda: len(slow.requests) == 2, 20, "slow endpoint saturated")
        for wave in range(3):  # the other keeps receiving, wave after wave
            batch = [make_trigger("fast", 100 + 10 * wave + i) for i in range(10)]
            await publish(log, batch)
            await wait_until(lambda: all(state_of(d, t.id) == DELIVERED for t in batch), 15, f"wave {wave}")
        # ... all while the slow endpoint's attempts are still hanging, none finished
        assert len(slow.requests) == 2
        assert all(d.store.attempts(t.id) == [] for t in stuck)
        assert len(fast.requests) == 30
    finally:
        await d.stop()


async def test_failing_endpoint_retries_do_not_block_another(log, receivers, tmp_path):
    bad = receivers(lambda req, n: Reply(500))
    good = receivers()
    d = dispatcher(
        log, tmp_path,
        {"bad": endpoint(bad.url, new_secret(), concurrency=1), "good": endpoint(good.url, new_secret(), concurrency=1)},
        retry_schedule_s=[0] + [0.05] * 30,
    )
    await d.start()
    try:
        await publish(log, [make_trigger("bad", i) for i in range(20)])
        fine = [make_trigger("good", 100 + i) for i in range(20)]
        await publish(log, fine)
        await wait_until(lambda: all(state_of(d, t.id) == DELIVERED for t in fine), 15, "good endpoint drained")
    finally:
        await d.stop()
    assert len(good.requests) == 20


