"""SSRF guard: which addresses a webhook may reach, decided where the connection is made.

:class:`Guard` resolves a host once, refuses the whole answer if any address
in it is not publicly routable (unless allow-listed), and hands back the
checked addresses; the transport then connects to exactly those, so a DNS
answer that changes between check and connect (rebinding) cannot redirect
the request. Bare-IP hosts are checked the same way without resolving.

Refused classes: unspecified/this-network (0/8, ::), loopback (127/8, ::1),
private (10/8, 172.16/12, 192.168/16), link-local (169.254/16 incl. the cloud
metadata address 169.254.169.254, fe80::/10), shared CGNAT (100.64/10),
benchmark (198.18/15), multicast (224/4, ff00::/8), reserved (240/4,
255.255.255.255), documentation, IETF protocol assignments (192.0.0/24),
unique-local (fc00::/7), site-local (fec0::/10), IPv4-mapped (::ffff:0:0/96),
IPv4-compatible (::/96), NAT64 (64:ff9b::/96, 64:ff9b:1::/48), 6to4
(2002::/16, 192.88.99/24), Teredo (2001::/32) and anything else Python's
``ipaddress`` does not call global.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import Counter

from .errors import DestinationRefused

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> addresses (strings or ip_address objects), in preference order
Resolver = Callable[[str, int], Awaitable[Sequence[str | IPAddress]]]

REFUSED = Counter(
    "tripwire_webhook_ssrf_refused_total",
    "Webhook connections the SSRF guard refused, by address class",
    ["reason"],
)

_N = ipaddress.ip_network
# Checked in order; the first match names the reason.
_CLASSES: list[tuple[IPNetwork, str]] = [
    (_N("0.0.0.0/8"), "unspecified"),
    (_N("127.0.0.0/8"), "loopback"),
    (_N("10.0.0.0/8"), "private"),
    (_N("172.16.0.0/12"), "private"),
    (_N("192.168.0.0/16"), "private"),
    (_N("169.254.0.0/16"), "link-local"),
    (_N("100.64.0.0/10"), "cgnat"),
    (_N("198.18.0.0/15"), "benchmark"),
    (_N("192.0.0.0/24"), "ietf-protocol"),
    (_N("192.0.2.0/24"), "documentation"),
    (_N("198.51.100.0/24"), "documentation"),
    (_N("203.0.113.0/24"), "documentation"),
    (_N("192.88.99.0/24"), "6to4"),
    (_N("224.0.0.0/4"), "multicast"),
    (_N("255.255.255.255/32"), "broadcast"),
    (_N("240.0.0.0/4"), "reserved"),
    (_N("::/128"), "unspecified"),
    (_N("::1/128"), "loopback"),
    (_N("::ffff:0:0/96"), "ipv4-mapped"),
    (_N("::/96"), "ipv4-compatible"),
    (_N("64:ff9b::/96"), "nat64"),
    (_N("64:ff9b:1::/48"), "nat64"),
    (_N("2002::/16"), "6to4"),
    (_N("2001::/32"), "teredo"),
    (_N("2001:db8::/32"), "documentation"),
    (_N("fc00::/7"), "unique-local"),
    (_N("fe80::/10"), "link-local"),
    (_N("fec0::/10"), "site-local"),
    (_N("ff00::/8"), "multicast"),
]


def refusal_reason(ip: IPAddress) -> str | None:
    """The class that makes ``ip`` unreachable for webhooks, or None if it is public."""
    for net, reason in _CLASSES:
        if ip.version == net.version and ip in net:
            return reason
    # The properties catch what the table may miss (new IANA special-purpose blocks).
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if ip.is_unspecified:
        return "unspecified"
    if not ip.is_global:
        return "not-global"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]).split("%", 1)[0], None)
    return list(seen)


class Guard:
    """Resolve-and-check for one dispatcher; ``allow_*`` re-enable internal targets."""

    def __init__(
        self,
        allow_hosts: Sequence[str] = (),
        allow_networks: Sequence[IPNetwork] = (),
        resolver: Resolver | None = None,
    ) -> None:
        self._hosts = [h.lower().rstrip(".") for h in allow_hosts]
        self._networks = list(allow_networks)
        self._resolver = resolver or system_resolver

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for pattern in self._hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]):
                    return True
            elif host == pattern:
                return True
        return False

    def address_allowed(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(c.version == n.version and c in n for c in candidates for n in self._networks)

    def check(self, host: str, ip: IPAddress) -> None:
        """Raise :class:`DestinationRefused` unless ``ip`` may be reached for ``host``."""
        reason = refusal_reason(ip)
        if reason is None or self.host_allowed(host) or self.address_allowed(ip):
            return
        REFUSED.labels(reason).inc()
        # The host names the endpoint for the operator; neither the address nor the URL
        # (which may carry tokens) is logged.
        logger.warning("webhook connection to host %s refused: %s address", host, reason)
        raise DestinationRefused(host, reason)

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """The checked addresses to connect to for ``host`` (all of them pass, or none is returned)."""
        literal = ip_literal(host)
        if literal is not None:
            self.check(host, literal)
            return [literal]
        answers = await self._resolver(host, port)
        addresses = []
        for answer in answers:
            ip = answer if isinstance(answer, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ip_literal(str(answer))
            if ip is None:
                raise DestinationRefused(host, "unparseable")
            addresses.append(ip)
        if not addresses:
            raise OSError(f"host {host!r} resolved to no address")
        for ip in addresses:
            self.check(host, ip)
        return addresses


def ip_literal(host: str) -> IPAddress | None:
    text = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    # Legacy IPv4 spellings the C resolver accepts: 2130706433, 0x7f.1, 017700000001.
    try:
        packed = socket.inet_aton(text)
    except OSError:
        return None
    return ipaddress.IPv4Address(packed)
