"""The Parquet sink: the events topic to a Hive-partitioned lake on local disk or S3.

Layout of a lake (``sink.lake_url``, default ``<data_dir>/lake``)::

    <lake>/date=2026-11-29/part-events-p000-o00000000000000001200.parquet
    <lake>/date=2026-11-29/compact-2026-11-29-<hash>-000.parquet      (tripwire lake compact)
    <lake>/date=2026-11-28/part-events-p003-o00000000000000001187.parquet   (late events)
    <lake>/_tripwire_sink/...   state, message-id segments, schema registry, journals

``duckdb.read_parquet('<lake>/**/*.parquet', hive_partitioning=true)`` reads it
with a typed ``date`` column (and ``hour`` with ``partitioning = "date/hour"``).
See :mod:`sinks.writer` for the flush protocol and :mod:`sinks.state` for what
makes it exactly-once.
"""

from __future__ import annotations

from .config import SinkConfig, sink_config
from .errors import CatalogError, LakeError, SinkError, StateError
from .lake import Lake, open_lake

__all__ = ["CatalogError", "Lake", "LakeError", "SinkConfig", "SinkError", "StateError", "open_lake", "sink_config"]
