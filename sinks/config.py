"""The ``[sink]`` section.

Example::

    [sink]
    lake_url = "s3://analytics/tripwire"   # default: <data_dir>/lake
    partitioning = "date"                  # or "date/hour"
    max_file_age_s = 300                   # a quiet site's data is readable within 5 minutes
    s3_endpoint_url = "http://127.0.0.1:9000"   # else $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL

    [sink.promote]                         # typed columns the catalog does not declare, typed by hand
    price = "number"

S3 credentials come from ``s3_key`` / ``s3_secret`` / ``s3_region`` when set,
else from the standard ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN`` / ``AWS_REGION`` (``AWS_DEFAULT_REGION``) variables, else
from botocore's usual chain (profile, instance role). Every key can be
overridden with ``TRIPWIRE_SINK__<KEY>``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from tripwire.config import Config, ConfigError
from tripwire.lake_layout import KINDS as JSON_TYPES
from tripwire.lake_layout import PARTITIONINGS


@dataclass(frozen=True)
class SinkConfig:
    enabled: bool = True
    group: str = "sink"  # consumer group on the events topic
    lake_url: str = ""  # directory or s3://bucket/prefix; empty = <data_dir>/lake
    partitioning: str = "date"
    # Rotation: a file is cut at whichever limit comes first.
    max_file_rows: int = 1_000_000
    max_file_bytes: int = 256 * 1024 * 1024  # Arrow bytes buffered for one file
    max_file_span_s: int = 86_400  # event-time span within one file
    max_file_age_s: float = 300.0  # wall clock: freshness on a quiet site
    max_late_file_age_s: float = 3600.0  # same, for files of past dates (late events): fewer tiny files
    max_open_files: int = 64  # buckets being filled across the sink; rows beyond wait in an overflow per partition
    max_buffer_bytes: int = 512 * 1024 * 1024  # Arrow bytes held in open files, in total
    row_group_rows: int = 131_072
    compression: str = "zstd"
    compression_level: int = 3
    dedup_window_s: int = 86_400
    dedup_max_ids: int = 500_000  # per log partition; beyond it the oldest ids are forgotten first
    poll_max_records: int = 5000
    catalog: str = ""  # event catalog JSON; empty = collector.catalog
    promote: dict[str, str] = field(default_factory=dict)  # property -> JSON type
    infer_columns: bool = True  # typed columns for properties the catalog does not declare, from their values
    max_typed_columns: int = 500  # in the lake; beyond, newly seen properties stay in the JSON columns
    invalid_table: bool = True  # the invalid topic into <lake>/_invalid/
    compact_min_age_s: int = 7200  # a date partition is closed this long after its day ended
    compact_max_file_rows: int = 5_000_000
    s3_endpoint_url: str = ""
    s3_key: str = ""
    s3_secret: str = ""
    s3_region: str = ""

    def __post_init__(self) -> None:
        if self.partitioning not in PARTITIONINGS:
            raise ConfigError(
                f"Config 'sink.partitioning' has value {self.partitioning!r}. Expected one of {', '.join(PARTITIONINGS)}."
            )
        for name in ("max_file_rows", "max_file_bytes", "max_file_span_s", "max_open_files", "max_buffer_bytes",
                     "row_group_rows", "dedup_max_ids", "poll_max_records", "compact_max_file_rows",
                     "max_typed_columns"):
            if getattr(self, name) < 1:
                raise ConfigError(f"Config 'sink.{name}' has value {getattr(self, name)!r}. Must be >= 1.")
        for name in ("max_file_age_s", "max_late_file_age_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"Config 'sink.{name}' has value {getattr(self, name)!r}. Must be > 0.")
        if self.compression not in ("zstd", "snappy", "gzip", "lz4", "none"):
            raise ConfigError(f"Config 'sink.compression' has value {self.compression!r}. Not a Parquet codec.")
        for prop, kind in self.promote.items():
            if kind not in JSON_TYPES:
                raise ConfigError(
                    f"Config 'sink.promote.{prop}' has value {kind!r}. Expected one of {', '.join(JSON_TYPES)}."
                )

    @property
    def is_s3(self) -> bool:
        return self.lake_url.startswith("s3://")

    def storage_options(self, environ: Mapping[str, str] | None = None) -> dict[str, object]:
        """s3fs keyword arguments: config first, then the standard AWS variables."""
        env = os.environ if environ is None else environ
        opts: dict[str, object] = {}
        endpoint = self.s3_endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        key = self.s3_key or env.get("AWS_ACCESS_KEY_ID")
        secret = self.s3_secret or env.get("AWS_SECRET_ACCESS_KEY")
        region = self.s3_region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if key and secret:
            opts["key"], opts["secret"] = key, secret
            token = env.get("AWS_SESSION_TOKEN")
            if token and not self.s3_key:
                opts["token"] = token
        client: dict[str, str] = {}
        if endpoint:
            client["endpoint_url"] = endpoint
        if region:
            client["region_name"] = region
        if client:
            opts["client_kwargs"] = client
        return opts


def sink_config(config: Config) -> SinkConfig:
    """The ``[sink]`` section with the lake URL and catalog path resolved."""
    cfg = config.section("sink", SinkConfig)
    lake = cfg.lake_url
    if not lake:
        lake = str((config.data_dir / "lake").resolve())
    elif "://" not in lake:
        lake = str(config.resolve(lake).resolve())
    elif lake.startswith("file://"):
        lake = str(Path(lake[len("file://") :]).resolve())
    elif not lake.startswith(("s3://", "memory://")):
        raise ConfigError(f"Config 'sink.lake_url' has value {cfg.lake_url!r}. Use a directory or s3://bucket/prefix.")
    catalog = cfg.catalog or str(config.table("collector").get("catalog", "") or "")
    if catalog:
        catalog = str(config.resolve(catalog))
    return replace(cfg, lake_url=lake.rstrip("/") if lake != "/" else lake, catalog=catalog)
