"""Keep-alive connections per endpoint, and the SSRF guard deciding on every new one."""

from __future__ import annotations

from standardwebhooks import Webhook

from tripwire.webhooks.store import DEAD, DELIVERED

from .helpers import dispatcher, endpoint, make_trigger, new_secret, publish, state_of
from .receiver import Received, Reply, wait_until
from .test_ssrf import StubResolver


async def test_deliveries_reuse_the_endpoints_connections(log, receivers, tmp_path):
    rx = receivers()
    resolver = StubResolver({"hooks.example.com": [["127.0.0.1"]]})
    secret = new_secret()
    url = f"http://hooks.example.com:{rx.port}/hook"
    d = dispatcher(log, tmp_path, {"crm": endpoint(url, secret, concurrency=2)}, resolver)
    triggers = [make_trigger("crm", i) for i in range(40)]
    await d.start()
    try:
        await publish(log, triggers)
        await wait_until(lambda: all(state_of(d, t.id) == DELIVERED for t in triggers), what="40 deliveries")
        assert d.connections("crm") <= 2
    finally:
        await d.stop()
    assert sorted(rx.ids()) == sorted(t.id for t in triggers)
    peers = {r.peer for r in rx.requests}
    # one connection per slot at most, each resolved and checked once when it was opened
    assert 1 <= len(peers) <= 2, peers
    assert len(resolver.calls) == len(peers)
    for req in rx.requests:
        Webhook(secret).verify(req.body, req.headers)


async def test_a_new_connection_after_a_rebinding_is_refused(log, receivers, tmp_path):
    """The first connection was checked (loopback allow-listed); the receiver closes it; the name now
    points at a private address: the next delivery's new connection is refused, never opened."""

    def close_after_answering(req: Received, n: int) -> Reply:
        return Reply(200, headers={"connection": "close"})

    rx = receivers(close_after_answering)
    resolver = StubResolver({"rebind.example.com": [["127.0.0.1"], ["10.0.0.7"]]})
    url = f"http://rebind.example.com:{rx.port}/hook"
    d = dispatcher(log, tmp_path, {"crm": endpoint(url, new_secret(), concurrency=1)}, resolver,
                   retry_schedule_s=[0])
    first, second = make_trigger("crm", 1), make_trigger("crm", 2)
    await d.start()
    try:
        await publish(log, [first])
        await wait_until(lambda: state_of(d, first.id) == DELIVERED, what="the first delivery")
        await publish(log, [second])
        await wait_until(lambda: state_of(d, second.id) == DEAD, what="the second delivery refused")
        ((_, _, status, outcome, error, _),) = d.store.attempts(second.id)
    finally:
        await d.stop()
    assert (status, outcome) == (None, "refused") and "private" in (error or "")
    assert rx.ids() == [first.id]
    assert resolver.calls == ["rebind.example.com", "rebind.example.com"]
