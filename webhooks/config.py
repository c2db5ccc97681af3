"""The ``[webhooks]`` config section: retries, timeouts, SSRF allow-list, store.

Defaults follow Svix: attempts immediately, then after 5 s, 5 min, 30 min, 2 h,
5 h, 10 h and 10 h (each delay ± ``retry_jitter``), 15 s per attempt, and an
endpoint failing without a single success for 5 days is disabled::

    [webhooks]
    retry_schedule_s = [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    attempt_timeout_s = 15
    disable_after_s = 432000
    allow_hosts = ["hooks.intranet.example"]     # may resolve to internal addresses
    allow_networks = ["10.20.0.0/16"]            # internal addresses that may be reached
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from .errors import WebhookConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SVIX_SCHEDULE_S = [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


@dataclass(frozen=True)
class WebhooksConfig:
    enabled: bool = True
    # Delay before each attempt: [0] before the first, [1] after the first failure, ...
    # Its length is the number of attempts; after the last one the delivery is a dead letter.
    retry_schedule_s: list[float] = field(default_factory=lambda: list(SVIX_SCHEDULE_S))
    retry_jitter: float = 0.2  # each delay is scaled by a random factor in [1 - j, 1 + j]
    attempt_timeout_s: float = 15.0  # whole attempt: connect, send, response head and body
    max_retry_after_s: float = 86_400.0  # cap on a receiver's Retry-After
    disable_after_s: float = 5 * 86_400.0  # continuous failure before the endpoint is disabled
    allow_hosts: list[str] = field(default_factory=list)  # "name" or "*.suffix": any address allowed
    allow_networks: list[str] = field(default_factory=list)  # CIDRs (or single IPs) re-enabled
    ca_bundle: str = ""  # extra CA certificates (PEM) trusted for https endpoints
    store_path: str = ""  # default: <data_dir>/webhooks.db
    consumer_group: str = "webhooks"
    event_type: str = "trigger.fired"  # the body's "type"
    max_response_bytes: int = 4096  # read at most this much of a receiver's answer
    retention_days: float = 30.0  # dead letters kept (for `webhooks failed` and replay)
    # A delivered trigger's id is remembered this long: read again within it, it is not sent again.
    dedup_window_s: float = 86_400.0
    delivered_history_s: float = 3_600.0  # a delivered row keeps its body and attempts this long (replay)
    scan_interval_s: float = 1.0  # re-read the store this often (replays/enables by the CLI)
    stop_grace_s: float = 5.0  # on stop, wait this long for attempts in flight

    def __post_init__(self) -> None:
        if not self.retry_schedule_s:
            raise WebhookConfigError("Config 'webhooks.retry_schedule_s' is empty. Give at least one delay (0 = immediately).")
        if any(d < 0 for d in self.retry_schedule_s):
            raise WebhookConfigError(f"Config 'webhooks.retry_schedule_s' has value {self.retry_schedule_s!r}. Delays must be >= 0.")
        if not 0 <= self.retry_jitter < 1:
            raise WebhookConfigError(f"Config 'webhooks.retry_jitter' has value {self.retry_jitter!r}. Must be in [0, 1).")
        for key in ("attempt_timeout_s", "scan_interval_s", "disable_after_s", "dedup_window_s"):
            if getattr(self, key) <= 0:
                raise WebhookConfigError(f"Config 'webhooks.{key}' has value {getattr(self, key)!r}. Must be > 0.")
        if self.delivered_history_s < 0:
            raise WebhookConfigError(
                f"Config 'webhooks.delivered_history_s' has value {self.delivered_history_s!r}. Must be >= 0."
            )
        self.networks()  # validate early, naming the bad entry

    def networks(self) -> list[IPNetwork]:
        out: list[IPNetwork] = []
        entries = list(self.allow_networks) + [h for h in self.allow_hosts if _is_ip(h)]
        for entry in entries:
            try:
                out.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError as exc:
                raise WebhookConfigError(
                    f"Config 'webhooks.allow_networks' has value {entry!r}. Not an IP network (e.g. 10.0.0.0/8)."
                ) from exc
        return out

    def hosts(self) -> list[str]:
        return [h.strip().lower().rstrip(".") for h in self.allow_hosts if not _is_ip(h)]

    def store_file(self, data_dir: Path) -> Path:
        return Path(self.store_path).expanduser() if self.store_path else data_dir / "webhooks.db"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return False
    return True
