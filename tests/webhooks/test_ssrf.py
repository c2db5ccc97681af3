"""SSRF guard: every non-public class refused (by name and as a bare IP), allowed once allow-listed.

No test here ever connects anywhere but 127.0.0.1: refused addresses are refused
before any socket is opened, and allow-listed non-loopback classes are checked
at the guard only.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence

import pytest
import trustme
from prometheus_client import REGISTRY
from standardwebhooks import Webhook

from tripwire.webhooks import DestinationRefused, Dispatcher, Guard, refusal_reason
from tripwire.webhooks.store import DELIVERED

from .helpers import endpoint, make_trigger, new_secret, publish, settings, state_of
from .receiver import Received, Reply, wait_until

# one address per refused class, with the reason the guard gives
CLASSES = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("169.254.0.1", "link-local"),
    ("100.64.0.1", "cgnat"),
    ("100.127.255.254", "cgnat"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("198.18.0.1", "benchmark"),
    ("198.19.255.254", "benchmark"),
    ("192.0.0.8", "ietf-protocol"),
    ("192.0.2.1", "documentation"),
    ("203.0.113.7", "documentation"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fe80::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "ipv4-mapped"),
    ("::ffff:8.8.8.8", "ipv4-mapped"),
    ("::ffff:169.254.169.254", "ipv4-mapped"),
    ("::127.0.0.1", "ipv4-compatible"),
    ("64:ff9b::a9fe:a9fe", "nat64"),  # NAT64 of 169.254.169.254
    ("64:ff9b:1::1", "nat64"),
    ("2002:7f00:1::1", "6to4"),  # 6to4 of 127.0.0.1
    ("2002:0808:0808::1", "6to4"),
    ("192.88.99.1", "6to4"),
    ("2001::1", "teredo"),
    ("2001:db8::1", "documentation"),
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"]


class StubResolver:
    """Answers from a table; each call takes the next answer for the host (the last one repeats)."""

    def __init__(self, answers: dict[str, Sequence[Sequence[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        seq = self.answers[host]
        n = sum(1 for h in self.calls if h == host)
        return list(seq[min(n, len(seq)) - 1])


@pytest.mark.parametrize(("address", "reason"), CLASSES)
def test_every_class_has_a_reason(address: str, reason: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("address", "reason"), CLASSES)
async def test_refused_by_name_and_as_bare_ip_then_allowed_when_listed(address: str, reason: str) -> None:
    before = REGISTRY.get_sample_value("tripwire_webhook_ssrf_refused_total", {"reason": reason}) or 0
    resolver = StubResolver({"hooks.example.com": [[address]]})
    guard = Guard(resolver=resolver)
    with pytest.raises(DestinationRefused) as err:
        await guard.resolve("hooks.example.com", 443)
    assert err.value.reason == reason and address not in str(err.value)
    with pytest.raises(DestinationRefused):
        await guard.resolve(address, 443)  # a bare-IP URL
    after = REGISTRY.get_sample_value("tripwire_webhook_ssrf_refused_total", {"reason": reason})
    assert after == before + 2

    ip = ipaddress.ip_address(address)
    net = ipaddress.ip_network(f"{address}/{ip.max_prefixlen}")
    by_net = Guard(allow_networks=[net], resolver=resolver)
    assert await by_net.resolve("hooks.example.com", 443) == [ip]
    assert await by_net.resolve(address, 443) == [ip]
    by_host = Guard(allow_hosts=["hooks.example.com"], resolver=resolver)
    assert await by_host.resolve("hooks.example.com", 443) == [ip]
    wildcard = Guard(allow_hosts=["*.example.com"], resolver=resolver)
    assert await wildcard.resolve("hooks.example.com", 443) == [ip]


async def test_any_internal_address_in_the_answer_refuses_the_host() -> None:
    guard = Guard(resolver=StubResolver({"mixed.example.com": [["8.8.8.8", "10.0.0.5"]]}))
    with pytest.raises(DestinationRefused):
        await guard.resolve("mixed.example.com", 443)
    ok = Guard(resolver=StubResolver({"dual.example.com": [["8.8.8.8", "2606:4700:4700::1111"]]}))
    assert len(await ok.resolve("dual.example.com", 443)) == 2


@pytest.mark.parametrize("spelling", ["2130706433", "0x7f000001", "017700000001", "127.1", "[::1]", "[::ffff:7f00:1]"])
async def test_odd_spellings_of_loopback_are_refused(spelling: str) -> None:
    guard = Guard(resolver=StubResolver({}))  # never consulted: these are literals
    with pytest.raises(DestinationRefused):
        await guard.resolve(spelling, 80)


def _dispatcher(log, tmp_path, url, secret, resolver=None, **overrides) -> Dispatcher:
    return Dispatcher(
        log, tmp_path / "webhooks.db", settings(**overrides), {"crm": endpoint(url, secret)}, resolver=resolver
    )


async def test_dispatcher_refuses_internal_targets_without_connecting(log, receivers, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="tripwire.webhooks")
    rx = receivers()
    secret = new_secret()
    # the receiver is on loopback, but nothing allow-lists it: the dispatcher must not reach it
    resolver = StubResolver({"hooks.example.com": [["127.0.0.1"]]})
    url = f"http://hooks.example.com:{rx.port}/hook?token=s3cret-token"
    d = _dispatcher(log, tmp_path, url, secret, resolver, allow_networks=[], retry_schedule_s=[0, 0.05])
    trigger = make_trigger("crm")
    await d.start()
    try:
        await publish(log, [trigger])
        await wait_until(lambda: state_of(d, trigger.id) == "dead")
        assert [a[3] for a in d.store.attempts(trigger.id)] == ["refused", "refused"]
    finally:
        await d.stop()
    assert rx.requests == []
    text = caplog.text
    assert "refused" in text and "loopback" in text
    assert "s3cret-token" not in text and secret not in text and "127.0.0.1" not in text


async def test_bare_loopback_ip_refused_then_allowed_when_listed(log, receivers, tmp_path):
    rx = receivers()
    d = _dispatcher(log, tmp_path / "a", rx.url, new_secret(), allow_networks=[], retry_schedule_s=[0])
    t1 = make_trigger("crm", 1)
    await d.start()
    try:
        await publish(log, [t1])
        await wait_until(lambda: state_of(d, t1.id) == "dead")
    finally:
        await d.stop()
    assert rx.requests == []
    allowed = _dispatcher(
        log, tmp_path / "b", rx.url, new_secret(), allow_networks=["127.0.0.0/8"], consumer_group="other"
    )
    await allowed.start()
    try:
        await wait_until(lambda: state_of(allowed, t1.id) == DELIVERED)
    finally:
        await allowed.stop()
    assert rx.ids() == [t1.id]


async def test_dns_rebinding_cannot_swap_the_checked_address(log, receivers, tmp_path):
    """First answer allowed (loopback is listed), later answers point at metadata: never used."""
    rx = receivers()
    resolver = StubResolver({"rebind.example.com": [["127.0.0.1"], ["169.254.169.254"]]})
    url = f"http://rebind.example.com:{rx.port}/hook"
    secret = new_secret()
    d = _dispatcher(log, tmp_path, url, secret, resolver, allow_networks=["127.0.0.1/32"])
    triggers = [make_trigger("crm", i) for i in range(3)]
    await d.start()
    try:
        await publish(log, triggers)
        await wait_until(lambda: all(state_of(d, t.id) == DELIVERED for t in triggers))
    finally:
        await d.stop()
    # one resolution per new connection, and the connection went to the checked address
    assert resolver.calls.count("rebind.example.com") <= 4  # endpoint concurrency
    assert len(rx.requests) == 3
    for req in rx.requests:
        assert req.headers["host"] == f"rebind.example.com:{rx.port}"
        Webhook(secret).verify(req.body, req.headers)


async def test_rebinding_to_an_internal_address_on_a_new_connection_is_refused(log, receivers, tmp_path):
    rx = receivers()
    resolver = StubResolver({"rebind.example.com": [["127.0.0.1"], ["10.0.0.7"]]})
    url = f"http://rebind.example.com:{rx.port}/hook"
    d = _dispatcher(log, tmp_path, url, new_secret(), resolver, allow_networks=["127.0.0.1/32"], retry_schedule_s=[0])
    guard = d._guard
    assert await guard.resolve("rebind.example.com", rx.port) == [ipaddress.ip_address("127.0.0.1")]
    with pytest.raises(DestinationRefused):
        await guard.resolve("rebind.example.com", rx.port)


async def test_https_keeps_hostname_for_sni_and_verification(log, receivers, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("hooks.example.test")
    pem = tmp_path / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    rx = receivers(certfile=pem)
    resolver = StubResolver({"hooks.example.test": [["127.0.0.1"]], "other.example.test": [["127.0.0.1"]]})
    good = f"https://hooks.example.test:{rx.port}/hook"
    bad = f"https://other.example.test:{rx.port}/hook"  # certificate does not name it
    secret = new_secret()
    d = Dispatcher(
        log, tmp_path / "webhooks.db",
        settings(ca_bundle=str(ca_file), retry_schedule_s=[0]),
        {"good": endpoint(good, secret), "bad": endpoint(bad, secret)},
        resolver=resolver,
    )
    t_good, t_bad = make_trigger("good", 1), make_trigger("bad", 2)
    await d.start()
    try:
        await publish(log, [t_good, t_bad])
        await wait_until(lambda: state_of(d, t_good.id) == DELIVERED and state_of(d, t_bad.id) == "dead")
        (bad_attempt,) = d.store.attempts(t_bad.id)
        assert bad_attempt[3] == "network" and "CERTIFICATE" in (bad_attempt[4] or "").upper()
    finally:
        await d.stop()
    (req,) = rx.requests
    assert req.id == t_good.id and req.headers["host"] == f"hooks.example.test:{rx.port}"


async def test_system_resolver_refuses_localhost_by_default() -> None:
    with pytest.raises(DestinationRefused) as err:
        await Guard().resolve("localhost", 80)
    assert err.value.reason == "loopback"
    assert await Guard(allow_hosts=["localhost"]).resolve("localhost", 80)


async def test_unresolvable_host_is_a_network_failure(log, tmp_path):
    async def fails(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    d = _dispatcher(log, tmp_path, "https://nowhere.example.com/hook", new_secret(), fails, retry_schedule_s=[0])
    trigger = make_trigger("crm")
    await d.start()
    try:
        await publish(log, [trigger])
        await wait_until(lambda: state_of(d, trigger.id) == "dead")
        ((_, _, status, outcome, error, _),) = d.store.attempts(trigger.id)
    finally:
        await d.stop()
    assert status is None and outcome == "network" and "cannot resolve" in error
