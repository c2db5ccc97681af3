"""The Parquet sink: the events topic to a Hive-partitioned lake on local disk or S3.

Layout of a lake (``sink.lake_url``, default ``<data_dir>/lake``; the spine's
:mod:`tripwire.lake_layout`)::

    <lake>/date=2026-11-29/part-events-p000-o00000000000000001200.parquet
    <lake>/date=2026-11-29/part-events-p003-o00000000000000000877.parquet
    <lake>/date=2026-11-26/part-events-p003-o00000000000000000912.parquet    late events
    <lake>/date=2026-11-20/compact-date2026-11-20-<digest>-000.parquet        tripwire lake compact
    <lake>/date=0001-01-01/0-lake-columns.parquet    no rows: every column (sinks.registry)
    <lake>/_invalid/date=2026-11-29/part-invalid-p000-o...parq   the invalid topic (sinks.invalid)
    <lake>/_tripwire_sink/state/events-003.json      resume offset, journaled cuts (sinks.state)
    <lake>/_tripwire_sink/dedup/events-003/*.bin     message ids of the last 24 h (sinks.dedup)
    <lake>/_tripwire_sink/schema.json                the column registry (sinks.registry)
    <lake>/_tripwire_sink/{removed,jobs,locks}/      maintenance bookkeeping

Reading it::

    duckdb.sql("SELECT * FROM read_parquet('<lake>/**/*.parquet', hive_partitioning=true, union_by_name=true)")
    pandas.read_parquet("<lake>")                 # or s3://..., storage_options=...

Typed property columns are learned from the data (:mod:`sinks.columns`) and
added in new files only, so files differ in their columns: DuckDB needs
``union_by_name=true``; pyarrow (pandas) takes the columns of the first file,
which is the column file. DuckDB types ``date`` as DATE (``hour`` as BIGINT
with ``partitioning = "date/hour"``); Athena/Glue/Spark see ``date`` as a
partition key. The sink's own folders start with ``_`` and hold no
``.parquet`` file, so every reader of the events table skips them.

Partitioning: by **UTC date of the corrected event time**, ``date=YYYY-MM-DD``,
by default. Analysts filter by day far more than by hour, and a day is the unit
that lets a small or medium site reach the row-group sizes DuckDB recommends
(>= 100k rows): hourly directories multiply the files by 24 and most of them
would be tiny. Sites with millions of events per hour can switch to
``partitioning = "date/hour"``. Event time, not arrival time, picks the
directory, so a late event (offline mobile app, queued retry) lands in its own
day; those buckets stay open up to ``max_late_file_age_s`` (1 h) so a trickle of
late events does not make a file every few minutes, and ``tripwire lake
compact`` merges what small files remain once a day is closed.

File names: ``part-<topic>-p<partition>-o<first offset>.parquet``, the first
offset of the log partition the rows came from, so a replay writes the same name
again and replaces the file instead of adding one. Files are zstd, one row
group per ``row_group_rows`` (128 Ki) rows, cut at ``max_file_rows``,
``max_file_bytes``, ``max_file_span_s`` of event time or their maximum age
(``max_file_age_s``: data is readable within 5 minutes on a quiet site).

Exactly-once (details in :mod:`sinks.state` and :mod:`sinks.writer`): every cut
is journaled in the lake *before* its file is written, files appear atomically
(tmp + ``os.replace``; one S3 PUT or an aborted multipart upload), the resume
offset moves only past durable files, and repeated ``messageId``s of one source
and visitor within 24 h are dropped with state that survives restarts.
Wall-clock rotation therefore replays identically after a crash, and partitions
move between sinks of one consumer group through the state in the lake.

Known limits: S3 has no multi-object switch, so a reader listing a directory in
the instant between a compaction's PUT and its DeleteObjects can see merged rows
twice (local disk swaps the directory atomically). Files written before a
column existed keep those values in the JSON column until ``tripwire lake
migrate`` fills the column in them.
"""

from __future__ import annotations

from .config import SinkConfig, sink_config
from .errors import CatalogError, LakeError, SinkError, StateError
from .lake import Lake, open_lake

__all__ = ["CatalogError", "Lake", "LakeError", "SinkConfig", "SinkError", "StateError", "open_lake", "sink_config"]
