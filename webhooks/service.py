"""``create_service(config, log)``: the dispatcher as a :class:`tripwire.service.Service`."""

from __future__ import annotations

from tripwire.config import Config
from tripwire.log import EventLog
from tripwire.triggers import endpoints

from .config import WebhooksConfig
from .dispatcher import Dispatcher


def settings(config: Config) -> WebhooksConfig:
    return config.section("webhooks", WebhooksConfig)


def create_service(config: Config, log: EventLog) -> Dispatcher | None:
    """The webhook dispatcher on ``log``, or None when ``webhooks.enabled = false``."""
    webhooks = settings(config)
    if not webhooks.enabled:
        return None
    return Dispatcher(log, webhooks.store_file(config.data_dir), webhooks, endpoints(config))
