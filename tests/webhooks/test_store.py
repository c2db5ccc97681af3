"""The delivery store's contract: dedup by id, leased claims, guarded outcomes, pruning."""

from __future__ import annotations

import threading
import time

from tripwire.webhooks.store import DEAD, DELIVERED, PENDING, NewDelivery, Outcome, Store

from .helpers import dispatcher, endpoint, make_trigger, new_secret, publish, state_of
from .receiver import Reply, wait_until

T0 = 1_000_000_000_000
LEASE = 10_000


def _outcome(store: Store, claimed, state: str, at: int, next_ms: int | None = None) -> None:
    store.write(Store.op_outcomes([Outcome(
        claimed, at_ms=at, status=500, outcome="http_error", error="HTTP 500", duration_ms=1,
        state=state, next_attempt_ms=next_ms if next_ms is not None else at,
    )]))


def test_insert_is_idempotent_by_id(tmp_path):
    store = Store(tmp_path / "w.db")
    d = NewDelivery("trg_1", "crm", b"{}", T0)
    assert store.write(Store.op_add([d, d], T0)) == 1
    assert store.write(Store.op_add([d, NewDelivery("trg_2", "crm", b"{}", T0)], T0)) == 1
    (claimed,) = store.write(Store.op_claim("crm", 1, T0, LEASE))
    store.write(Store.op_outcomes([Outcome(
        claimed, at_ms=T0, status=200, outcome="success", error=None, duration_ms=1, state=DELIVERED, next_attempt_ms=T0,
    )]))
    assert store.write(Store.op_add([d], T0 + 1)) == 0  # a replayed record after delivery: nothing new
    assert store.get("trg_1").state == DELIVERED
    store.close()


def test_claims_are_counted_leased_and_exclusive(tmp_path):
    store = Store(tmp_path / "w.db")
    store.write(Store.op_add([NewDelivery(f"trg_{i}", "crm", b"{}", T0) for i in range(3)], T0))
    first = store.write(Store.op_claim("crm", 2, T0, LEASE))
    assert [c.attempt for c in first] == [1, 1]
    second = store.write(Store.op_claim("crm", 5, T0, LEASE))
    assert len(second) == 1 and second[0].id not in {c.id for c in first}
    assert store.write(Store.op_claim("crm", 5, T0 + LEASE - 1, LEASE)) == []
    # the process died: the leases end and the same rows come back, attempt counted
    again = store.write(Store.op_claim("crm", 5, T0 + LEASE, LEASE))
    assert sorted(c.id for c in again) == sorted(c.id for c in first + second)
    assert {c.attempt for c in again} == {2}
    store.close()


def test_exclude_skips_attempts_still_in_flight(tmp_path):
    store = Store(tmp_path / "w.db")
    store.write(Store.op_add([NewDelivery(f"trg_{i}", "crm", b"{}", T0) for i in range(2)], T0))
    claimed = store.write(Store.op_claim("crm", 1, T0, LEASE, exclude={"trg_0"}))
    assert [c.id for c in claimed] == ["trg_1"]
    store.close()


def test_stale_outcome_is_ignored_after_a_reclaim(tmp_path):
    store = Store(tmp_path / "w.db")
    store.write(Store.op_add([NewDelivery("trg_1", "crm", b"{}", T0)], T0))
    (old,) = store.write(Store.op_claim("crm", 1, T0, LEASE))
    (new,) = store.write(Store.op_claim("crm", 1, T0 + LEASE, LEASE))
    _outcome(store, old, DEAD, T0 + LEASE + 1)  # the first attempt reports late: ignored
    assert store.get("trg_1").state == PENDING and store.get("trg_1").attempts == 2
    _outcome(store, new, PENDING, T0 + LEASE + 2, T0 + LEASE + 100)
    assert store.get("trg_1").next_attempt_ms == T0 + LEASE + 100
    store.close()


def test_enable_makes_waiting_rows_due_but_not_leased_ones(tmp_path):
    store = Store(tmp_path / "w.db")
    far = 4_000_000_000_000
    store.write(Store.op_add([NewDelivery("trg_wait", "crm", b"{}", far), NewDelivery("trg_fly", "crm", b"{}", 0)], 0))
    now = int(time.time() * 1000)
    (flying,) = store.write(Store.op_claim("crm", 1, now, 3_600_000))
    assert flying.id == "trg_fly"
    store.write(Store.op_disable("crm", "the endpoint answered 410 Gone", now))
    assert store.endpoint_states()["crm"].disabled_reason
    assert store.enable("crm")
    assert not store.enable("crm")  # not disabled any more
    assert store.get("trg_wait").next_attempt_ms <= int(time.time() * 1000)
    assert store.get("trg_fly").next_attempt_ms == now + 3_600_000
    store.close()


def test_two_stores_on_one_file_never_claim_the_same_row(tmp_path):
    path = tmp_path / "w.db"
    setup = Store(path)
    setup.write(Store.op_add([NewDelivery(f"trg_{i}", "crm", b"{}", T0) for i in range(200)], T0))
    setup.close()
    got: list[list[str]] = [[], []]

    def worker(i: int) -> None:
        store = Store(path)  # its own connection, like another process
        try:
            while True:
                claimed = store.write(Store.op_claim("crm", 7, T0, LEASE))
                if not claimed:
                    return
                got[i].extend(c.id for c in claimed)
        finally:
            store.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not set(got[0]) & set(got[1])
    assert len(got[0]) + len(got[1]) == 200


async def test_stop_releases_attempts_still_in_flight(log, receivers, tmp_path):
    rx = receivers(lambda req, n: Reply(200, delay_s=30) if n == 1 else Reply(200))
    eps = {"crm": endpoint(rx.url, new_secret())}
    trigger = make_trigger("crm")
    d = dispatcher(log, tmp_path, eps, attempt_timeout_s=60, stop_grace_s=0.2)
    await d.start()
    await publish(log, [trigger])
    await wait_until(lambda: len(rx.requests) == 1)
    await d.stop()
    store = Store(tmp_path / "webhooks.db")
    row = store.get(trigger.id)
    assert row.state == PENDING and row.attempts == 1 and row.next_attempt_ms <= time.time() * 1000
    store.close()
    # a restart delivers it at once, not after the 60 s lease
    d2 = dispatcher(log, tmp_path, eps, attempt_timeout_s=60)
    await d2.start()
    try:
        await wait_until(lambda: state_of(d2, trigger.id) == DELIVERED, 10)
    finally:
        await d2.stop()
    assert rx.ids() == [trigger.id, trigger.id]


def test_attempt_stats_count_successes_and_durations_per_endpoint_since_a_time(tmp_path):
    store = Store(tmp_path / "w.db")
    store.write(Store.op_add([NewDelivery(f"trg_{i}", "crm" if i < 4 else "ads", b"{}", T0) for i in range(5)], T0))
    for i, c in enumerate(store.write(Store.op_claim("crm", 4, T0, LEASE))):
        ok = i < 3
        store.write(Store.op_outcomes([Outcome(
            c, at_ms=T0 + i, status=200 if ok else 500, outcome="success" if ok else "http_error",
            error=None if ok else "HTTP 500", duration_ms=10 * (i + 1), state=DELIVERED if ok else PENDING,
            next_attempt_ms=T0,
        )]))
    (old,) = store.write(Store.op_claim("ads", 1, T0, LEASE))
    store.write(Store.op_outcomes([Outcome(old, at_ms=T0 - 5, status=200, outcome="success", error=None, duration_ms=7,
                                 state=DELIVERED, next_attempt_ms=T0)]))
    stats = store.attempt_stats(T0)
    assert set(stats) == {"crm"}  # the ads attempt is older than the period
    crm = stats["crm"]
    assert (crm.attempts, crm.successes, crm.p50_ms, crm.p95_ms) == (4, 3, 20, 40)
    assert crm.success_rate == 0.75
    assert store.attempt_stats(T0 - 10)["ads"].attempts == 1
    store.close()
