"""Client IP: the peer unless a trusted proxy forwards it; truncated by default."""

from __future__ import annotations

import pytest

from tripwire.collector.enrich import IpPolicy

from .conftest import MakeCollector

EVENT = {"event": "A", "userId": "u"}


async def stored_ip(make_collector: MakeCollector, config: dict, peer: str, headers: dict | None = None, event: dict = EVENT) -> str | None:
    c = await make_collector(config, peer=(peer, 40000))
    r = await c.client.post("/v1/track", json=event, headers=headers or {})
    assert r.status_code == 200
    (env,) = await c.records()
    return env["context"]["ip"]


async def test_ipv4_is_truncated_to_24_bits_by_default(make_collector: MakeCollector) -> None:
    assert await stored_ip(make_collector, {}, "198.51.100.213") == "198.51.100.0"


async def test_ipv6_is_truncated_to_48_bits_by_default(make_collector: MakeCollector) -> None:
    assert await stored_ip(make_collector, {}, "2001:db8:abcd:12:3456::1") == "2001:db8:abcd::"


async def test_truncation_can_be_switched_off_or_tuned(make_collector: MakeCollector) -> None:
    assert await stored_ip(make_collector, {"collector": {"ip_truncate": False}}, "198.51.100.213") == "198.51.100.213"
    assert await stored_ip(make_collector, {"collector": {"ipv4_prefix": 16}}, "198.51.100.213") == "198.51.0.0"


async def test_forwarded_for_is_ignored_from_untrusted_peers(make_collector: MakeCollector) -> None:
    ip = await stored_ip(make_collector, {}, "198.51.100.9", {"X-Forwarded-For": "1.2.3.4"})
    assert ip == "198.51.100.0"


async def test_forwarded_for_from_a_trusted_proxy_names_the_client(make_collector: MakeCollector) -> None:
    config = {"collector": {"trusted_proxies": ["10.0.0.0/8"]}}
    # client -> (spoofed hop) -> real client 203.0.113.50 -> proxy 10.1.1.1 -> proxy 10.0.0.2 -> collector
    headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.50, 10.1.1.1"}
    assert await stored_ip(make_collector, config, "10.0.0.2", headers) == "203.0.113.0"


async def test_all_trusted_chain_falls_back_to_the_leftmost(make_collector: MakeCollector) -> None:
    config = {"collector": {"trusted_proxies": ["10.0.0.0/8"], "ip_truncate": False}}
    assert await stored_ip(make_collector, config, "10.0.0.2", {"X-Forwarded-For": "10.9.9.9"}) == "10.9.9.9"


async def test_client_supplied_ip_is_kept_but_truncated(make_collector: MakeCollector) -> None:
    event = {**EVENT, "context": {"ip": "192.0.2.200"}}
    assert await stored_ip(make_collector, {}, "198.51.100.9", event=event) == "192.0.2.0"
    event = {**EVENT, "context": {"ip": "not-an-ip"}}
    assert await stored_ip(make_collector, {}, "198.51.100.9", event=event) == "198.51.100.0"


def test_ip_policy_unit() -> None:
    policy = IpPolicy(["192.168.0.0/16", "::1/128"], truncate=True)
    assert policy.client_ip("192.168.1.1", b"203.0.113.9") == "203.0.113.9"
    assert policy.client_ip("::1", b"2001:db8::1, 192.168.3.3") == "2001:db8::1"
    assert policy.client_ip("8.8.8.8", b"203.0.113.9") == "8.8.8.8"
    assert policy.client_ip(None, None) is None
    assert policy.anonymize("::ffff:198.51.100.7") == "198.51.100.0"
    assert policy.anonymize("garbage") is None


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "example.com"])
def test_trusted_proxies_config_errors_name_the_entry(bad: str) -> None:
    from tripwire.collector.config import CollectorConfig
    from tripwire.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match=r"collector.trusted_proxies\[1\]"):
        from_dict({"collector": {"trusted_proxies": ["10.0.0.0/8", bad]}}).section("collector", CollectorConfig)
