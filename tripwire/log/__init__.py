"""The event log: one interface, embedded SQLite and Kafka backends, an in-memory twin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import (
    EVENTS,
    INVALID,
    TOPICS,
    TRIGGERS,
    Consumer,
    EventLog,
    LogClosed,
    LogError,
    LogUnavailable,
    RebalanceListener,
    Record,
    TopicPartition,
)
from .epoch import records_between

if TYPE_CHECKING:
    from tripwire.config import Config

__all__ = [
    "EVENTS", "INVALID", "TRIGGERS", "TOPICS", "Consumer", "EventLog", "LogClosed", "LogError",
    "LogUnavailable", "RebalanceListener", "Record", "TopicPartition", "open_log", "records_between",
]


def open_log(config: Config, *, url: str | None = None) -> EventLog:
    """The configured backend (not yet started). ``url`` (``kafka://host:port``) overrides it."""
    if url is not None and url.startswith("kafka://"):
        from dataclasses import replace

        config = replace(config, log=replace(config.log, backend="kafka", kafka_bootstrap=url[len("kafka://") :]))
    elif url is not None and url not in ("sqlite", "embedded"):
        from tripwire.config import ConfigError

        raise ConfigError(f"Log URL {url!r} is not understood. Use kafka://host:port or 'sqlite'.")
    from tripwire.metrics import READINESS

    log: EventLog
    if config.log.backend == "kafka":
        from .kafka import KafkaLog

        log = KafkaLog.from_config(config)
    else:
        from .sqlite import SqliteLog

        log = SqliteLog(
            config.data_dir / "log.db",
            config.log.partitions,
            max_batch_records=config.log.group_commit_max_records,
            retention_hours=config.log.retention_hours,
        )
    READINESS.add(f"log:{config.log.backend}", log)  # /readyz of `tripwire --metrics-port` (tripwire.metrics)
    return log
