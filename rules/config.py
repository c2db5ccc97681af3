"""The ``[rules]`` config section.

::

    [rules]
    dir = "rules"                  # *.rules files (relative to the config file)
    allowed_lateness_ms = 5000     # watermark = highest event time - this
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

from tripwire.config import Config, ConfigError


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
    dedup_window_ms: int = 300_000

    def __post_init__(self) -> None:
        if self.allowed_lateness_ms < 0:
            raise ConfigError(f"Config 'rules.allowed_lateness_ms' has value {self.allowed_lateness_ms!r}. Must be >= 0.")
        if self.max_records < 1:
            raise ConfigError(f"Config 'rules.max_records' has value {self.max_records!r}. Must be >= 1.")


def rules_config(config: Config) -> RulesConfig:
    return config.section("rules", RulesConfig)


def rules_dir(config: Config, rc: RulesConfig) -> Path:
    return config.resolve(rc.dir)


def checkpoint_url(config: Config, rc: RulesConfig) -> str:
    return rc.checkpoint_url or str(config.data_dir / "rules-checkpoints")
