"""Webhook delivery: Standard Webhooks signatures, durable retries with a stable id, SSRF guard.

Reads :class:`tripwire.triggers.Trigger` records from the ``triggers`` topic and
POSTs each to its ``[endpoints.<name>]``; settings in ``[webhooks]``
(:class:`WebhooksConfig`). See :mod:`tripwire.webhooks.dispatcher` for the flow,
:mod:`tripwire.webhooks.store` for the durability contract and
:mod:`tripwire.webhooks.ssrf` for what may be reached.
"""

from __future__ import annotations

from .config import WebhooksConfig
from .dispatcher import Dispatcher
from .endpoint import build_body
from .errors import DeliveryNotFound, DestinationRefused, WebhookConfigError, WebhookError
from .service import create_service
from .signing import parse_secrets, sign
from .ssrf import Guard, refusal_reason
from .store import AttemptStats, Store

__all__ = [
    "AttemptStats", "DeliveryNotFound", "DestinationRefused", "Dispatcher", "Guard", "Store", "WebhookConfigError",
    "WebhookError", "WebhooksConfig", "build_body", "create_service", "parse_secrets", "refusal_reason", "sign",
]
