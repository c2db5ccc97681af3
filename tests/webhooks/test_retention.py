"""Delivered rows leave the store after their window; their ids stay for the dedup window."""

from __future__ import annotations

import time

from tripwire.webhooks.retention import Windows, op_prune_step
from tripwire.webhooks.store import DEAD, DELIVERED, NewDelivery, Outcome, Store

from .helpers import dispatcher, endpoint, make_trigger, new_secret, publish, state_of
from .receiver import wait_until

T0 = 1_000_000_000_000
WINDOWS = Windows(history_ms=100, dedup_ms=1_000, dead_ms=500)


def _deliver(store: Store, delivery_id: str, at: int) -> None:
    store.write(Store.op_add([NewDelivery(delivery_id, "crm", b"{}", at)], at))
    (claimed,) = store.write(Store.op_claim("crm", 1, at, 10_000))
    store.write(Store.op_outcomes([Outcome(claimed, at_ms=at, status=200, outcome="success", error=None, duration_ms=1,
                                 state=DELIVERED, next_attempt_ms=at)]))


def test_a_delivered_row_leaves_its_id_stays_for_the_dedup_window(tmp_path):
    store = Store(tmp_path / "w.db")
    _deliver(store, "trg_old", T0)
    store.write(Store.op_add([NewDelivery("trg_pending", "crm", b"{}", T0 + 10**9),
                              NewDelivery("trg_dead", "crm", b"{}", T0, DEAD, "x")], T0))
    assert store.write(op_prune_step(T0 + 50, WINDOWS)) == 0  # nothing older than a window yet
    assert store.write(op_prune_step(T0 + 101, WINDOWS)) == 1
    assert store.get("trg_old") is None and store.attempts("trg_old") == []
    assert store.delivered_ms("trg_old") == T0
    # read again within the dedup window: not stored, so not sent again
    assert store.write(Store.op_add([NewDelivery("trg_old", "crm", b"{}", T0 + 200)], T0 + 200)) == 0
    assert store.write(op_prune_step(T0 + 501, WINDOWS)) == 1  # the dead letter's turn
    assert store.get("trg_dead") is None
    assert store.write(op_prune_step(T0 + 1_001, WINDOWS)) == 1  # the id's window has passed
    assert store.delivered_ms("trg_old") is None
    assert store.write(Store.op_add([NewDelivery("trg_old", "crm", b"{}", T0 + 1_002)], T0 + 1_002)) == 1
    assert store.get("trg_pending") is not None  # pending rows never leave
    store.close()


def test_a_step_is_bounded(tmp_path):
    store = Store(tmp_path / "w.db")
    for i in range(25):
        _deliver(store, f"trg_{i:02d}", T0 + i)
    assert store.write(op_prune_step(T0 + 1_000, WINDOWS, limit=10)) == 10
    assert store.get("trg_09") is None and store.get("trg_10") is not None  # oldest first
    assert store.write(op_prune_step(T0 + 1_000, WINDOWS, limit=10)) == 10
    assert store.write(op_prune_step(T0 + 1_000, WINDOWS, limit=10)) == 5
    store.close()


def test_with_no_longer_dedup_than_history_rows_simply_leave(tmp_path):
    store = Store(tmp_path / "w.db")
    _deliver(store, "trg_1", T0)
    assert store.write(op_prune_step(T0 + 101, Windows(history_ms=200, dedup_ms=100, dead_ms=500))) == 1
    assert store.get("trg_1") is None and store.delivered_ms("trg_1") is None
    store.close()


async def test_the_running_dispatcher_prunes_and_still_deduplicates(log, receivers, tmp_path):
    rx = receivers()
    d = dispatcher(log, tmp_path, {"crm": endpoint(rx.url, new_secret())},
                   delivered_history_s=0.2, dedup_window_s=1.5)
    first = [make_trigger("crm", i) for i in range(5)]
    await d.start()
    try:
        await publish(log, first)
        await wait_until(lambda: all(state_of(d, t.id) == DELIVERED for t in first), what="first deliveries")
        delivered_at = time.monotonic()
        # while the dispatcher runs, the rows leave once their history window has passed
        await wait_until(lambda: all(d.store.get(t.id) is None for t in first), 10, "delivered rows pruned")
        assert all(d.store.delivered_ms(t.id) is not None for t in first)
        await publish(log, first)  # read again within the dedup window: not sent twice
        marker = make_trigger("crm", 99)
        await publish(log, [marker])
        await wait_until(lambda: marker.id in rx.ids(), what="a later trigger delivered")
        assert time.monotonic() - delivered_at < 1.5, "the machine was too slow to test inside the window"
        assert sorted(rx.ids()) == sorted([t.id for t in first] + [marker.id])
        # after the dedup window the ids are forgotten too: the store does not grow without bound
        await wait_until(lambda: all(d.store.delivered_ms(t.id) is None for t in first), 10, "ids forgotten")
    finally:
        await d.stop()
