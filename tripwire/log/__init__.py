"""The event log: one interface, embedded SQLite and Kafka backends, an in-memory twin."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import (
    EVENTS,
    IDENTITIES,
    INVALID,
    TOPICS,
    TRIGGERS,
    Consumer,
    EventLog,
    GroupTaken,
    LogClosed,
    LogError,
    LogUnavailable,
    RebalanceListener,
    Record,
    TopicPartition,
    records_between,
)

if TYPE_CHECKING:
    from tripwire.config import Config

__all__ = [
    "EVENTS", "IDENTITIES", "INVALID", "TRIGGERS", "TOPICS", "Consumer", "EventLog", "GroupTaken", "LogClosed", "LogError",
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

        check_bootstrap(config.log.kafka_bootstrap)

        log = KafkaLog.from_config(config)
    else:
        from .sqlite import SqliteLog

        log = SqliteLog(
            config.data_dir / "log.db",
            config.log.partitions,
            max_batch_records=config.log.group_commit_max_records,
            retention_s=config.log.retention_s,
        )
    READINESS.add(f"log:{config.log.backend}", log)  # /readyz of `tripwire --metrics-port` (tripwire.metrics)
    return log


def check_bootstrap(value: str) -> None:
    """Refuse a ``log.kafka_bootstrap`` that no broker can match: empty, or written as a URL. Given
    ``kafka://host:port`` (the form ``--log`` takes), aiokafka looks for a host named ``kafka`` and
    every role reported an unreachable broker (the collector spilling, answering 200)."""
    from tripwire.config import ConfigError

    servers = [s.strip() for s in value.split(",")]
    if not all(servers):
        raise ConfigError(f"'log.kafka_bootstrap' is {value!r}: give the brokers as host:port[,host:port...]")
    for server in servers:
        if "://" in server:
            raise ConfigError(
                f"'log.kafka_bootstrap' is {value!r}: write host:port without {server.split('://')[0]}:// "
                "(kafka://host:port is the form of the --log option)"
            )
