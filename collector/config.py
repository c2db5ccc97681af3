"""The collector's settings: the ``[collector]`` section and the ``[sources.<name>]`` tables.

A *source* is one website or backend sending events: it owns a write key and
the browser origins allowed to send with it (CORS). ``origins = ["*"]`` allows
every origin; an empty list allows none, which suits a server-side source
(requests without an ``Origin`` header are never refused on that ground).
``historical = true`` marks a source that imports history: its events are not
held to ``collector.max_age_days``.

Identity (:mod:`collector.identity`): a source without origins is server-side,
so it is *trusted* for the userIds it sends (its write key is a secret); a
browser source's identify is a *claim*, unless ``identity_secret`` is set and
the event carries a valid ``context.userHash``.

With no sources configured the collector runs in *open mode*: every write key
(or none) is accepted as source ``dev`` from any origin, and a warning is
logged at start. That lets ``tripwire run`` work for a newcomer with no file;
production configs declare their sources and then unknown keys get a 401.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tripwire.config import Config, ConfigError, build

OPEN_SOURCE_NAME = "dev"


@dataclass(frozen=True)
class CollectorConfig:
    max_event_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    # Cap on what a gzip body may inflate to (the route's own limit applies too).
    max_decompressed_bytes: int = 1024 * 1024
    catalog: str = ""  # path to the event catalog (JSON); empty = accept every well-formed event
    strict: bool = False  # with a catalog: unknown event names go to the invalid topic
    pii_salt: str = ""  # salt for hashing PII properties; empty = generated once under data_dir
    ip_truncate: bool = True
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48
    trusted_proxies: list[str] = field(default_factory=list)  # CIDRs whose X-Forwarded-For is believed
    snippet_path: str = "/t.js"
    snippet_file: str = ""  # empty = the tracker built into the package (collector/static/t.js)
    snippet_max_age_s: int = 3600
    pixel_path: str = "/v1/pixel"
    cors_max_age_s: int = 86400
    # An event time more than this ahead of receivedAt (a clock far ahead, a local time sent without
    # its offset, an event "after" its sentAt) is replaced by receivedAt; originalTimestamp keeps it.
    max_future_s: int = 10
    # An event whose corrected time is older than this many days before receivedAt goes to the invalid
    # topic (timestamp_too_old), unless its source is historical; 0 = no bound.
    max_age_days: int = 30

    def __post_init__(self) -> None:
        for name in ("max_event_bytes", "max_batch_bytes", "max_decompressed_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"Config 'collector.{name}' has value {getattr(self, name)!r}. Must be >= 1.")
        if not 0 <= self.ipv4_prefix <= 32:
            raise ConfigError(f"Config 'collector.ipv4_prefix' has value {self.ipv4_prefix!r}. Must be 0..32.")
        if not 0 <= self.ipv6_prefix <= 128:
            raise ConfigError(f"Config 'collector.ipv6_prefix' has value {self.ipv6_prefix!r}. Must be 0..128.")
        for i, cidr in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(
                    f"Config 'collector.trusted_proxies[{i}]' has value {cidr!r}. Not an IP network (CIDR)."
                ) from None
        if self.max_future_s < 0:
            raise ConfigError(f"Config 'collector.max_future_s' has value {self.max_future_s!r}. Must be >= 0.")
        if self.max_age_days < 0:
            raise ConfigError(f"Config 'collector.max_age_days' has value {self.max_age_days!r}. Must be >= 0 (0: no bound).")
        for name in ("snippet_path", "pixel_path"):
            if not getattr(self, name).startswith("/"):
                raise ConfigError(f"Config 'collector.{name}' has value {getattr(self, name)!r}. Must start with '/'.")


@dataclass(frozen=True)
class SourceConfig:
    write_key: str = ""
    origins: list[str] = field(default_factory=list)
    name: str = ""
    historical: bool = False  # imports of history: its events are never too old (collector.max_age_days)
    # A browser source's key for context.userHash = hex HMAC-SHA256(identity_secret, userId): with it, an
    # identify with a valid hash is a trusted link, one without records no link.
    identity_secret: str = ""

    def allows_origin(self, origin: str) -> bool:
        return "*" in self.origins or origin.rstrip("/") in self.origins

    @property
    def trusted(self) -> bool:
        """Server-side (no browser origins): its write key is a secret, so it vouches for its userIds."""
        return not self.origins

    @property
    def identity_key(self) -> bytes | None:
        return self.identity_secret.encode() if self.identity_secret else None


def load_sources(config: Config) -> dict[str, SourceConfig]:
    """Sources by write key; empty means open mode. Errors name the offending table."""
    by_key: dict[str, SourceConfig] = {}
    for name, table in config.table("sources").items():
        where = f"sources.{name}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"Config '{where}' must be a table, got {type(table).__name__}.")
        source: SourceConfig = build(SourceConfig, {**_clean(table), "name": name}, where)
        if not source.write_key:
            raise ConfigError(f"Config '{where}.write_key' is missing or empty.")
        if source.write_key in by_key:
            raise ConfigError(
                f"Config '{where}.write_key' is also the write key of 'sources.{by_key[source.write_key].name}'."
            )
        origins = []
        for i, origin in enumerate(source.origins):
            scheme, sep, host = origin.rstrip("/").partition("://")
            if origin != "*" and (not sep or not scheme or not host or "/" in host):
                raise ConfigError(
                    f"Config '{where}.origins[{i}]' has value {origin!r}. Expected '*' or scheme://host[:port]."
                )
            # As browsers send it: scheme and host in lower case, no default port, no trailing slash.
            scheme, host = scheme.lower(), host.lower()
            host = host.removesuffix({"https": ":443", "http": ":80"}.get(scheme, "\0"))
            origins.append(origin if origin == "*" else f"{scheme}://{host}")
        if source.identity_secret and not origins:
            raise ConfigError(
                f"Config '{where}.identity_secret' is set on a server-side source (no origins): its userIds "
                "are trusted already. It is for browser sources; remove it, or list the browser origins."
            )
        by_key[source.write_key] = SourceConfig(source.write_key, origins, name, source.historical,
                                                source.identity_secret)
    return by_key


def _clean(table: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in table.items() if k != "name"}
