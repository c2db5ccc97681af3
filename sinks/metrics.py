"""Prometheus metrics of the sink (``tripwire_sink_*``), in the process-wide default registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ROWS = Counter("tripwire_sink_rows_written", "Rows written to Parquet files in the lake")
BYTES = Counter("tripwire_sink_bytes_written", "Parquet bytes written to the lake")
FILES = Counter("tripwire_sink_files_written", "Parquet files written to the lake")
DUPLICATES = Counter("tripwire_sink_duplicates_dropped", "Events dropped as repeats of a messageId")
INVALID = Counter("tripwire_sink_invalid_records", "Records of the events topic that were not envelopes")
CONFLICTS = Counter("tripwire_sink_type_conflicts", "Property values kept in the JSON column: not their column's type")
OPEN_FILES = Gauge("tripwire_sink_files_open", "Files being filled (open buckets)")
BUFFERED = Gauge("tripwire_sink_buffered_bytes", "Arrow bytes held in open files")
LAG = Gauge("tripwire_sink_consumer_lag", "Records of the events topic not yet read by the sink", ["partition"])
