"""The Parquet lake's layout: what its writer (the sink) and its readers (backtests, the CLI) agree on.

Paths, relative to the lake root (``sink.lake_url``)::

    date=2026-11-29/part-events-p000-o00000000000000001200.parquet   the events table
    _tripwire_sink/schema.json                    the typed property columns (:class:`ColumnRegistry`)
    _tripwire_sink/...                            the sink's state and maintenance journals

Partitions are Hive style, by the UTC date of the event time (``date=...``,
plus ``hour=H`` unpadded with ``partitioning = "date/hour"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import orjson

from tripwire.times import format_time_ms

SINK_DIR = "_tripwire_sink"  # state, ids, journals; '_' so Hive/Athena/Spark/pyarrow skip it
REGISTRY_PATH = f"{SINK_DIR}/schema.json"
PARTITIONINGS = ("date", "date/hour")
KINDS = ("string", "integer", "number", "boolean", "date-time")  # typed columns: JSON Schema names


# -- partitions ---------------------------------------------------------------------


def directory_of(iso: str, partitioning: str) -> str:
    """The partition folder of a normal envelope time (``YYYY-MM-DDTHH:MM:SS.mmmZ``)."""
    if partitioning == "date":
        return f"date={iso[:10]}"
    return f"date={iso[:10]}/hour={int(iso[11:13])}"  # unpadded: DuckDB types it BIGINT


def directory_of_ms(ms: int, partitioning: str) -> str:
    return directory_of(format_time_ms(ms), partitioning)


def date_of(directory: str) -> str | None:
    """``YYYY-MM-DD`` of a partition folder (``date=.../[hour=...]``), else None."""
    for part in directory.split("/"):
        if part.startswith("date="):
            return part[5:]
    return None


def file_name(topic: str, partition: int, first: int) -> str:
    """A data file: the log partition and the first offset its rows came from (a replay writes the same name)."""
    return f"part-{topic}-p{partition:03d}-o{first:020d}.parquet"


def file_prefix(topic: str, partition: int) -> str:
    return f"part-{topic}-p{partition:03d}-"


# -- columns of the events table ------------------------------------------------------

# (column, envelope field): strings copied from the top of the envelope
TOP_COLUMNS = (("message_id", "messageId"), ("type", "type"), ("event", "event"), ("name", "name"),
               ("anonymous_id", "anonymousId"), ("user_id", "userId"),
               ("previous_id", "previousId"), ("group_id", "groupId"))
# timestamp[ms, UTC]; "timestamp" is the corrected event time that also picks the partition
TIME_COLUMNS = (("timestamp", "timestamp"), ("original_timestamp", "originalTimestamp"), ("sent_at", "sentAt"),
                ("received_at", "receivedAt"))
SOURCE_COLUMNS = (("source", "source"),)
# (column, context key, key below it or None)
CONTEXT_COLUMNS = (("context_page_url", "page", "url"), ("context_page_path", "page", "path"),
                   ("context_page_referrer", "page", "referrer"), ("context_page_title", "page", "title"),
                   ("context_page_search", "page", "search"), ("context_user_agent", "userAgent", None),
                   ("context_ip", "ip", None), ("context_locale", "locale", None),
                   ("context_campaign_name", "campaign", "name"), ("context_campaign_source", "campaign", "source"),
                   ("context_campaign_medium", "campaign", "medium"), ("context_campaign_term", "campaign", "term"),
                   ("context_campaign_content", "campaign", "content"),
                   ("context_library_name", "library", "name"), ("context_library_version", "library", "version"))
# JSON text: what has no column of its own
JSON_COLUMNS = ("properties", "traits", "context", "extra")
TYPED_FIELDS = ("properties", "traits")

_UNSAFE = re.compile(r"[^a-z0-9_]+")


def base_columns() -> list[tuple[str, str]]:
    """``(column, kind)`` of every events-table column that is not a typed property, in file order."""
    out = [(c, "string") for c, _ in TOP_COLUMNS]
    out += [(c, "date-time") for c, _ in TIME_COLUMNS]
    out += [(c, "string") for c, _ in SOURCE_COLUMNS]
    out += [(c, "string") for c, _, _ in CONTEXT_COLUMNS]
    out += [(c, "string") for c in JSON_COLUMNS]
    return out


def column_name(field: str, key: str) -> str:
    """The typed column of ``properties.<key>`` or ``traits.<key>``: ``properties_<key>``, snake_case."""
    return f"{field}_" + (_UNSAFE.sub("_", key.lower()).strip("_") or "x")


# -- the column registry ----------------------------------------------------------------


@dataclass(slots=True)
class TypedColumn:
    """A property (or trait) with a column of its own."""

    column: str  # properties_price
    field: str  # properties | traits
    key: str  # price
    kind: str  # one of KINDS


@dataclass
class ColumnRegistry:
    """``_tripwire_sink/schema.json``: the events table's typed columns, fixed by the lake's first writer::

        {"columns": [["properties_price", "properties", "price", "number"], ...], "partitioning": "date"}
    """

    partitioning: str | None = None
    columns: list[TypedColumn] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        return orjson.dumps({"columns": [[c.column, c.field, c.key, c.kind] for c in self.columns],
                             "partitioning": self.partitioning}, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> ColumnRegistry:
        """Raises ValueError naming ``where`` when the document is not a registry."""
        try:
            doc = orjson.loads(data)
            return cls(doc.get("partitioning"),
                       [TypedColumn(str(c), str(f), str(k), str(kind)) for c, f, k, kind in doc["columns"]])
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"lake column registry {where} is unreadable: {exc}") from exc
