"""Errors of webhook delivery.

::

    WebhookError
     ├── WebhookConfigError   a [webhooks] setting or an endpoint cannot be used (also a ConfigError)
     ├── DestinationRefused   SSRF guard: the endpoint's address is not publicly routable
     └── DeliveryNotFound     the store holds no delivery or endpoint of that name
"""

from __future__ import annotations

from tripwire.config import ConfigError


class WebhookError(Exception):
    """Root of the webhook dispatcher's errors."""


class WebhookConfigError(WebhookError, ConfigError):
    """A ``[webhooks]`` key or an ``[endpoints.<name>]`` table cannot be used."""


class DestinationRefused(WebhookError):
    """The SSRF guard refused to connect; ``reason`` is the address class (no address, no secret)."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"refused to connect to {host!r}: resolves to a {reason} address (not publicly routable)")
        self.host = host
        self.reason = reason


class DeliveryNotFound(WebhookError):
    """``replay`` or ``enable`` named something the store does not hold."""
