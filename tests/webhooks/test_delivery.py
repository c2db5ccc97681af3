"""Delivery against real receivers on loopback, fed through the real SQLite event log."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest
from prometheus_client import REGISTRY
from standardwebhooks import Webhook

from tripwire.webhooks.store import DEAD, DELIVERED, PENDING
from tripwire.log import TRIGGERS, TopicPartition

from .helpers import dispatcher, endpoint, make_trigger, new_secret, publish, state_of
from .receiver import Received, Reply, bind_port, wait_until


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_success_on_first_try_signed_and_shaped(log, receivers, tmp_path):
    secret = new_secret()
    rx = receivers()
    d = dispatcher(log, tmp_path, {"crm": endpoint(rx.url, secret, headers={"X-Team": "growth"})})
    before = metric("tripwire_webhook_deliveries_total", endpoint="crm", outcome="delivered")
    trigger = make_trigger("crm")
    await d.start()
    try:
        await publish(log, [trigger])
        await wait_until(lambda: state_of(d, trigger.id) == DELIVERED)
    finally:
        await d.stop()
    (req,) = rx.requests
    assert req.path == "/hook"
    assert req.headers["webhook-id"] == trigger.id
    assert req.headers["content-type"] == "application/json"
    assert req.headers["x-team"] == "growth"
    assert abs(int(req.headers["webhook-timestamp"]) - time.time()) < 60
    payload = Webhook(secret).verify(req.body, req.headers)  # independent implementation
    assert payload == orjson.loads(req.body)
    assert payload["type"] == "trigger.fired"
    assert payload["timestamp"] == trigger.fired_at
    data = payload["data"]
    assert data["id"] == trigger.id and data["rule"] == trigger.rule and data["key"] == trigger.key
    assert data["events"] == trigger.events and data["payload"] == trigger.payload
    assert metric("tripwire_webhook_deliveries_total", endpoint="crm", outcome="delivered") == before + 1
    assert metric("tripwire_webhook_attempt_duration_seconds_count", endpoint="crm") >= 1
    # the offset was committed: the group resumes after the record
    committed = [await log.committed_offset("webhooks", TopicPartition(TRIGGERS, p)) for p in range(2)]
    assert sum(c or 0 for c in committed) == 1


async def test_500_then_200_same_id_new_timestamp_valid_signatures(log, receivers, tmp_path):
    secret = new_secret()

    def handler(req: Received, n: int) -> Reply:
        return Reply(500, body=b"boom") if n == 1 else Reply(200)

    rx = receivers(handler)
    # webhook-timestamp has whole seconds: wait over a second so the retry's must differ
    d = dispatcher(log, tmp_path, {"crm": endpoint(rx.url, secret)}, retry_schedule_s=[0, 1.2, 1.2])
    trigger = make_trigger("crm")
    await d.start()
    try:
        await publish(log, [trigger])
        await wait_until(lambda: len(rx.requests) >= 2 and state_of(d, trigger.id) == DELIVERED)
    finally:
        await d.stop()
    first, second = rx.requests
    assert first.id == second.id == trigger.id
    assert first.body == second.body
    assert int(second.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
    for req in (first, second):
        Webhook(secret).verify(req.body, req.headers)
    from tripwire.webhooks import Store

    store = Store(tmp_path / "webhooks.db")
    attempts = store.attempts(trigger.id)
    assert [(a[2], a[3]) for a in attempts] == [(500, "http_error"), (200, "success")]
    assert "boom" in (attempts[0][4] or "")
    store.close()


async def test_429_retry_after_is_honoured(log, receivers, tmp_path):
    def handler(req: Received, n: int) -> Reply:
        return Reply(429, {"Retry-After": "2"}) if n == 1 else Reply(200)

    rx = receivers(handler)
    d = dispatcher(log, tmp_path, {"crm": endpoint(rx.url, new_secret())}, retry_schedule_s=[0, 0.05, 0.05])
    trigger = make_trigger("crm")
    await d.start()
    try:
        await publish(log, [trigger])
        await wait_until(lambda: len(rx.requests) >= 2, timeout_s=15)
    finally:
        await d.stop()
    first, second = rx.requests
    assert second.at - first.at >= 1.9  # the schedule alone would have retried after 0.05 s


async def test_503_retry_after_http_date(log, receivers, tmp_path):
    from email.utils import formatdate

    def handler(req: Received, n: int) -> Reply:
        return Reply(503, {"Retry-After": formatdate(time.time() + 2, usegmt=True)}) if n == 1 else Reply(200)

    rx = receivers(handler)
    d = dispatcher(log, tmp_path, {"crm": endpoint(rx.url, new_secret())}, retry_schedule_s=[0, 0.05, 0.05])
    await d.start()
    try:
        await publish(log, [make_trigger("crm")])
        await wait_until(lambda: len(rx.requests) >= 2, timeout_s=15)
    finally:
        await d.stop()
    first, second = rx.requests
    assert second.at - first.at >= 0.9  # HTTP-date has whole seconds


async def test_timeout_counts_as_failure_then_retry_succeeds(log, receivers, tmp_path):
    def handler(req: Received, n: int) -> Reply:
        return Reply(200, delay_s=5) if n == 1 else Reply(200)

    rx = receivers(handler)
    d = dispatcher(log, tmp_path, {"crm": endpoint(rx.url, new_secret())}, attempt_timeout_s=0.5)
    trigger = make_trigger("crm")
    before = metric("tripwire_webhook_attempts_total", endpoint="crm", outcome="timeout")
    await d.start()
    try:
        await publish(log, [trigger])
        await wait_until(lambda: state_of(d, trigger.id) == DELIVERED)
        assert [a[3] for a in d.store.attempts(trigger.id)] == ["timeout", "success"]
        assert "timed out" in d.store.attempts(trigger.id)[0][4]
    finally:
        await d.stop()
    assert metric("tripwire_webhook_attempts_total", endpoint="crm", outcome="timeout") == before + 1
    assert len(rx.by_id(trigger.id)) == 2


async def test_redirect_is_a_failure_and_never_followed(log, receivers, tmp_path):
    def handler(req: Received, n: int) -> Reply:
        return Reply(307, {"Location": "/elsewhere"}) if req.path == "/hook" else Reply(200)

    rx = receivers(handler)
    d = dispatcher(log, tmp_path, {"crm": endpoint(rx.url, new_secret())}, retry_schedule_s=[0, 0.05])
    trigger = make_trigger("crm")
    await d.start()
    try:
        await publish(log, [trigger])
        await wait_until(lambda: state_of(d, trigger.id) == DEAD)
        assert [a[3] for a in d.store.attempts(trigger.id)] == ["redirect", "redirect"]
    finally:
        await d.stop()
    assert {r.path for r in rx.requests} == {"/hook"}


async def test_410_disables_endpoint_until_enabled(log, receivers, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tripwire.webhooks.dispatcher")
    gone = True

    def handler(req: Received, n: int) -> Reply:
        return Reply(410) if gone else Reply(200)

    rx, witness = receivers(handler), receivers()
    d = dispatcher(log, tmp_path, {"crm": endpoint(rx.url, new_secret()), "ops": endpoint(witness.url, new_secret())})
    t1, t2, w = make_trigger("crm", 1), make_trigger("crm", 2), make_trigger("ops", 3)
    await d.start()
    try:
        await publish(log, [t1])
        await wait_until(lambda: "crm" in d.store.endpoint_states() and d.store.endpoint_states()["crm"].disabled_reason)
        assert "410" in d.store.endpoint_states()["crm"].disabled_reason
        assert metric("tripwire_webhook_endpoint_disabled", endpoint="crm") == 1
        said = [r.getMessage() for r in caplog.records if t1.id in r.getMessage()]
        assert said and not any("next in" in m for m in said), said  # it waits for `enable`, not 2 s
        await publish(log, [t2, w])
        # The claim that took w for the healthy endpoint was made in the same transaction as any
        # claim for crm (every lane with room, at once): once w is delivered, t2 was passed over.
        await wait_until(lambda: state_of(d, w.id) == DELIVERED, what="the witness endpoint's delivery")
        # disabled: nothing more is sent, deliveries wait
        assert d.store.get(t2.id).attempts == 0 and rx.ids() == [t1.id]
        assert state_of(d, t1.id) == PENDING and state_of(d, t2.id) == PENDING
        gone = False
        assert d.store.enable("crm")  # what `tripwire webhooks enable crm` does
        await wait_until(lambda: state_of(d, t1.id) == DELIVERED and state_of(d, t2.id) == DELIVERED)
    finally:
        await d.stop()
    assert sorted(rx.ids()) == sorted([t1.id, t1.id, t2.id])


async def test_failing_continuously_disables_and_reports(log, receivers, tmp_path, caplog):
    rx, witness = receivers(lambda req, n: Reply(500)), receivers()
    d = dispatcher(
        log, tmp_path, {"crm": endpoint(rx.url, new_secret()), "ops": endpoint(witness.url, new_secret())},
        retry_schedule_s=[0] + [0.1] * 50, disable_after_s=0.6,
    )
    trigger, w = make_trigger("crm"), make_trigger("ops", 2)
    await d.start()
    try:
        await publish(log, [trigger])
        await wait_until(lambda: (d.store.endpoint_states().get("crm") or None) is not None
                         and d.store.endpoint_states()["crm"].disabled_reason is not None)
        count = len(rx.requests)
        row = d.store.get(trigger.id)
        # Past the moment its next attempt would have been due, a delivery to a healthy endpoint is
        # claimed in the same transaction as any claim for crm: once it is delivered, crm was passed over.
        await wait_until(lambda: time.time() * 1000 > row.next_attempt_ms, what="the retry's due time")
        await publish(log, [w])
        await wait_until(lambda: state_of(d, w.id) == DELIVERED, what="the witness endpoint's delivery")
        assert len(rx.requests) == count and d.store.get(trigger.id).attempts == row.attempts  # none after disabling
    finally:
        await d.stop()
    assert "failing continuously since" in d_reason(tmp_path)
    assert any("disabled" in r.getMessage() and "crm" in r.getMessage() for r in caplog.records)
    # Disabled once failing for disable_after_s (0.6 s) and not before; attempts went on until then
    # (a failure recorded past it disables at once, so only the last can be that late), none after.
    attempts, state = attempts_of(tmp_path, trigger.id)
    assert len(attempts) == count and state.disabled_ms is not None
    first = attempts[0][1]
    assert state.disabled_ms - first >= 600, (state.disabled_ms - first, attempts)
    assert all(at_ms - first < 600 for _, at_ms, *_ in attempts[:-1]), attempts
    assert all(at_ms <= state.disabled_ms for _, at_ms, *_ in attempts), (state.disabled_ms, attempts)


def attempts_of(tmp_path, delivery_id: str):  # type: ignore[no-untyped-def]
    from tripwire.webhooks import Store

    store = Store(tmp_path / "webhooks.db")
    try:
        return store.attempts(delivery_id), store.endpoint_states()["crm"]
    finally:
        store.close()


def d_reason(tmp_path) -> str:
    from tripwire.webhooks import Store

    store = Store(tmp_path / "webhooks.db")
    try:
        return store.endpoint_states()["crm"].disabled_reason or ""
    finally:
        store.close()


async def test_dead_letter_after_last_attempt_then_replay(log, receivers, tmp_path):
    ok = False
    rx = receivers(lambda req, n: Reply(200) if ok else Reply(502))
    d = dispatcher(log, tmp_path, {"crm": endpoint(rx.url, new_secret())}, retry_schedule_s=[0, 0.05, 0.05])
    trigger = make_trigger("crm")
    before = metric("tripwire_webhook_deliveries_total", endpoint="crm", outcome="dead_letter")
    await d.start()
    try:
        await publish(log, [trigger])
        await wait_until(lambda: state_of(d, trigger.id) == DEAD)
        assert len(rx.requests) == 3
        assert d.store.get(trigger.id).attempts == 3
        # counted right after the row is written
        await wait_until(lambda: metric("tripwire_webhook_deliveries_total", endpoint="crm", outcome="dead_letter")
                         == before + 1, 10, "dead-letter counter")
        await wait_until(lambda: metric("tripwire_webhook_dead_letters", endpoint="crm") == 1
                         and metric("tripwire_webhook_pending", endpoint="crm") == 0, 10, "gauges")
        ok = True
        assert d.store.replay(trigger.id)
        await wait_until(lambda: state_of(d, trigger.id) == DELIVERED)
        await wait_until(lambda: metric("tripwire_webhook_dead_letters", endpoint="crm") == 0, 10, "gauges")
    finally:
        await d.stop()
    assert set(rx.ids()) == {trigger.id} and len(rx.requests) == 4


async def test_endpoint_down_for_a_while_then_back(log, receivers, tmp_path):
    sock = bind_port()  # bound, not listening: connections are refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    d = dispatcher(log, tmp_path, {"crm": endpoint(url, new_secret())}, retry_schedule_s=[0] + [0.2] * 40)
    triggers = [make_trigger("crm", i) for i in range(3)]
    await d.start()
    try:
        await publish(log, triggers)
        await wait_until(lambda: all((d.store.get(t.id) or None) and d.store.get(t.id).attempts >= 2 for t in triggers))
        assert all(a[3] == "network" for a in d.store.attempts(triggers[0].id))
        rx = receivers(sock=sock)  # the endpoint comes back on the same port
        await wait_until(lambda: all(state_of(d, t.id) == DELIVERED for t in triggers))
    finally:
        await d.stop()
    assert sorted(rx.ids()) == sorted(t.id for t in triggers)


async def test_replayed_trigger_record_is_not_delivered_twice(log, receivers, tmp_path):
    rx = receivers()
    d = dispatcher(log, tmp_path, {"crm": endpoint(rx.url, new_secret())})
    trigger = make_trigger("crm")
    await d.start()
    try:
        await publish(log, [trigger, trigger])  # duplicate in one batch
        await wait_until(lambda: state_of(d, trigger.id) == DELIVERED)
        await publish(log, [trigger])  # the rules engine replays its input later
        other = make_trigger("crm", 2)
        await publish(log, [other])
        await wait_until(lambda: state_of(d, other.id) == DELIVERED)
        # the replayed record came before `other`: it was handled by now, and made no new attempt
        row = d.store.get(trigger.id)
        assert row.state == DELIVERED and row.attempts == 1
    finally:
        await d.stop()
    assert sorted(rx.ids()) == sorted([trigger.id, other.id])


async def test_unknown_endpoint_is_a_dead_letter_and_bad_records_are_skipped(log, receivers, tmp_path):
    rx = receivers()
    d = dispatcher(log, tmp_path, {"crm": endpoint(rx.url, new_secret())})
    stray, good = make_trigger("nowhere"), make_trigger("crm", 1)
    before = metric("tripwire_webhook_invalid_triggers_total")
    await d.start()
    try:
        await log.append(TRIGGERS, [(b"k", b"not json"), (b"k", b'{"id": 1}')])
        await publish(log, [stray, good])
        await wait_until(lambda: state_of(d, good.id) == DELIVERED)
        row = d.store.get(stray.id)
        assert row.state == DEAD and "not configured" in row.last_error
    finally:
        await d.stop()
    assert metric("tripwire_webhook_invalid_triggers_total") == before + 2
    assert rx.ids() == [good.id]


async def test_pending_retry_survives_a_clean_restart(log, receivers, tmp_path):
    up = False
    rx = receivers(lambda req, n: Reply(200) if up else Reply(500))
    eps = {"crm": endpoint(rx.url, new_secret())}
    trigger = make_trigger("crm")
    d = dispatcher(log, tmp_path, eps, retry_schedule_s=[0, 1.0, 1.0])
    await d.start()
    try:
        await publish(log, [trigger])
        await wait_until(lambda: len(rx.requests) == 1 and d.store.attempts(trigger.id))
    finally:
        await d.stop()
    up = True
    d2 = dispatcher(log, tmp_path, eps, retry_schedule_s=[0, 1.0, 1.0])
    await d2.start()
    try:
        await wait_until(lambda: state_of(d2, trigger.id) == DELIVERED)
    finally:
        await d2.stop()
    assert rx.ids() == [trigger.id, trigger.id]


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_per_endpoint_concurrency_limit(log, receivers, tmp_path, concurrency):
    import threading

    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    async def handler(req: Received, n: int) -> Reply:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.1)  # a slow endpoint: holds the request so the overlap shows (not a wait)
        with lock:
            state["now"] -= 1
        return Reply(200)

    rx = receivers(handler)
    d = dispatcher(log, tmp_path, {"crm": endpoint(rx.url, new_secret(), concurrency=concurrency)})
    triggers = [make_trigger("crm", i) for i in range(8)]
    await d.start()
    try:
        await publish(log, triggers)
        await wait_until(lambda: len(rx.requests) == 8 and all(state_of(d, t.id) == DELIVERED for t in triggers))
    finally:
        await d.stop()
    assert state["max"] == concurrency


def test_retry_delays_are_jittered_within_bounds(log, tmp_path):
    d = dispatcher(log, tmp_path, {}, retry_schedule_s=[0, 10, 100], retry_jitter=0.2)
    assert d._delay_ms(0) == 0
    delays = {d._delay_ms(1) for _ in range(200)}
    assert all(8_000 <= x <= 12_000 for x in delays) and len(delays) > 50
    assert all(80_000 <= d._delay_ms(2) <= 120_000 for _ in range(50))


async def test_a_second_dispatcher_of_the_group_on_the_embedded_log_stops(log, receivers, tmp_path):
    # Two dispatchers of one group on one SQLite log would both read every trigger. The second one's
    # consumer is refused (GroupTaken) at start; under a supervisor too: a restart cannot mend it, so the
    # process exits naming it instead of retrying for ever.
    from tripwire.log import GroupTaken
    from tripwire.log.sqlite import SqliteLog
    from tripwire.service import Supervisor

    rx = receivers()
    eps = {"crm": endpoint(rx.url, new_secret())}
    first = dispatcher(log, tmp_path / "a", eps)
    await first.start()
    other = SqliteLog(tmp_path / "log.db", partitions=2)  # another process's handle on the same file
    await other.start()
    second = dispatcher(other, tmp_path / "b", eps)
    try:
        with pytest.raises(GroupTaken, match="consumer group 'webhooks' is already reading"):
            await second.start()
        supervised = Supervisor(lambda: dispatcher(other, tmp_path / "c", eps))
        with pytest.raises(GroupTaken):
            await supervised.start()
        assert await first.ready() and not first.failed
    finally:
        await second.stop()
        await first.stop()
        await other.stop()


async def test_an_idle_dispatcher_asks_its_store_once_a_scan_interval(log, receivers, tmp_path, monkeypatch):
    # With nothing pending for an endpoint, the claim found nothing and no next due time: the lane must
    # wait for new work or the next scan, not ask again at once (it did: `tripwire run` idle burnt a core,
    # and the fault suite's dispatcher used 600 CPU-seconds). Counted per scan, not per second: a loaded
    # machine makes the scans slower, not the count per scan larger.
    from tripwire.webhooks.store import Store

    rx = receivers()
    d = dispatcher(log, tmp_path, {"crm": endpoint(rx.url, new_secret())}, scan_interval_s=0.5)
    trigger = make_trigger("crm")
    await d.start()
    try:
        await publish(log, [trigger])
        await wait_until(lambda: state_of(d, trigger.id) == DELIVERED)
        store, transactions, scans = d.store, [], []
        real, read_states = store.transaction, Store.endpoint_states_in
        store.transaction = lambda ops, durable=True: transactions.append(len(ops)) or real(ops, durable)  # type: ignore[method-assign]
        monkeypatch.setattr(Store, "endpoint_states_in", staticmethod(lambda conn: scans.append(1) or read_states(conn)))
        await wait_until(lambda: len(scans) >= 4, what="four scans of the store with nothing to do")
        seen, during = len(scans), len(transactions)
    finally:
        await d.stop()
    # per scan at most a claim-and-states cycle, a prune step and a gauge read; one scan more at the edges
    assert during <= 3 * (seen + 1), f"{during} store transactions in {seen} scans with nothing to do"
