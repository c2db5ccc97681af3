"""Enrichment: the client IP (trusted proxies only, truncated), user agent and library.

The client IP is the TCP peer, unless the peer is a configured trusted proxy: then
``X-Forwarded-For`` is walked from the right, skipping trusted proxies, and the
first untrusted address is the client (what nginx's ``real_ip_recursive`` does).
A header from an untrusted peer is ignored, so clients cannot forge their IP.
By default the stored IP is truncated (IPv4 /24, IPv6 /48): enough for
geolocation, not enough to single out a household.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class IpPolicy:
    def __init__(self, trusted: Sequence[str], truncate: bool, v4_prefix: int = 24, v6_prefix: int = 48) -> None:
        self._trusted: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in trusted)
        self._truncate = truncate
        self._v4 = v4_prefix
        self._v6 = v6_prefix
        # Per-instance caches: a few thousand distinct peers cover most traffic.
        self.anonymize = functools.lru_cache(maxsize=65536)(self._anonymize)
        self._is_trusted = functools.lru_cache(maxsize=4096)(self._trusted_uncached)

    def _trusted_uncached(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self._trusted)

    def _anonymize(self, ip: str) -> str | None:
        """The stored form of ``ip`` (truncated when configured); None when it is not an IP."""
        try:
            addr = ipaddress.ip_address(ip.strip())
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if not self._truncate:
            return str(addr)
        prefix = self._v4 if addr.version == 4 else self._v6
        return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)

    def client_ip(self, peer: str | None, forwarded_for: bytes | None) -> str | None:
        """The client's address as seen through trusted proxies (not yet truncated)."""
        if peer is None:
            return None
        if forwarded_for is None or not self._trusted or not self._is_trusted(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.decode("latin-1").split(",")]
        for hop in reversed(hops):
            if not hop:
                continue
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops and hops[0] else peer

