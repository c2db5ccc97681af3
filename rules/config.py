"""The ``[rules]`` config section.

::

    [rules]
    dir = "rules"                  # *.rules files (relative to the config file)
    allowed_lateness_ms = 5000     # watermark = highest event time (or the wall clock, caught up) - this
    grace = "30s"                  # absences fire and waits expire once the watermark is this far past them
    max_lateness = "24h"           # older events are not matched (at most dedup_window_ms)
    dedup_window_ms = 86400000     # messageIds remembered this long (at most dedup_max_ids per partition)
    max_pending = 1000000          # partial matches held per partition; at it, new ones do not start (counted)
    group = "tripwire-rules"       # consumer group (Kafka: instances of `tripwire engine` share it)
    checkpoint_url = ""            # Kafka mode: local dir or s3://bucket/prefix (default <data_dir>/rules-checkpoints)
    checkpoint_interval_ms = 1000
    reload_interval_ms = 1000      # how often the rules directory is re-scanned
    commit_interval_ms = 200       # embedded: state without new triggers is committed at most this often
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tripwire.config import Config, ConfigError, duration_ms


@dataclass(frozen=True)
class RulesConfig:
    enabled: bool = True
    dir: str = "rules"
    allowed_lateness_ms: int = 5000
    group: str = "tripwire-rules"
    max_records: int = 1000
    commit_interval_ms: int = 200  # embedded: batches without triggers are committed at most this often
    checkpoint_url: str = ""
    checkpoint_interval_ms: int = 1000
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for checkpoint_url
    reload_interval_ms: int = 1000
    grace: str = "30s"
    max_lateness: str = "24h"
    dedup_window_ms: int = 86_400_000
    dedup_max_ids: int = 4_000_000  # per partition, 8 bytes each beyond the rules' longest window
    max_pending: int = 1_000_000  # partial matches held per partition (about 300 bytes each); beyond: not started

    def __post_init__(self) -> None:
        if self.allowed_lateness_ms < 0:
            raise ConfigError(f"Config 'rules.allowed_lateness_ms' has value {self.allowed_lateness_ms!r}. Must be >= 0.")
        if self.max_records < 1:
            raise ConfigError(f"Config 'rules.max_records' has value {self.max_records!r}. Must be >= 1.")
        if self.dedup_window_ms < 60_000:
            raise ConfigError(f"Config 'rules.dedup_window_ms' has value {self.dedup_window_ms!r}. Must be >= 60000.")
        if self.max_pending < 1:
            raise ConfigError(f"Config 'rules.max_pending' has value {self.max_pending!r}. Must be >= 1.")
        if self.dedup_max_ids < 1000:
            raise ConfigError(f"Config 'rules.dedup_max_ids' has value {self.dedup_max_ids!r}. Must be >= 1000.")
        if self.max_lateness_ms > self.dedup_window_ms:
            raise ConfigError(
                f"Config 'rules.max_lateness' has value {self.max_lateness!r}. Must be at most rules.dedup_window_ms "
                f"({self.dedup_window_ms} ms): an older event's messageId is forgotten, so a retry could fire twice.")
        self.grace_ms  # noqa: B018 - checked here, at start-up

    @property
    def grace_ms(self) -> int:
        return duration_ms("rules.grace", self.grace)

    @property
    def max_lateness_ms(self) -> int:
        return duration_ms("rules.max_lateness", self.max_lateness)


def rules_config(config: Config) -> RulesConfig:
    return config.section("rules", RulesConfig)


def rules_dir(config: Config, rc: RulesConfig) -> Path:
    return config.resolve(rc.dir)


def checkpoint_url(config: Config, rc: RulesConfig) -> str:
    return rc.checkpoint_url or str(config.data_dir / "rules-checkpoints")
