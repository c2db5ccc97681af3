"""The Parquet lake's layout: what its writer (the sink) and its readers (backtests, the CLI) agree on.

Paths, relative to the lake root (``sink.lake_url``)::

    date=2026-11-29/part-events-p000-o00000000000000001200.parquet   the events table
    date=0001-01-01/0-lake-columns.parquet        no rows: every column of the events table, typed
    _invalid/date=2026-11-29/part-invalid-p000-o00000000000000000042.parq   the invalid table
    _tripwire_sink/schema.json                    the column registry (:class:`ColumnRegistry`)
    _tripwire_sink/...                            the sink's state and maintenance journals

Two tables share the root and never mix, because of how readers pick files:
``read_parquet('<lake>/**/*.parquet')`` (DuckDB, which descends into every
folder) matches only the events table's ``.parquet`` files, and pyarrow's
dataset discovery (``pandas.read_parquet(lake)``) skips folders starting with
``_``. The invalid table's files therefore end in ``.parq`` (a Parquet file all
the same) and live under ``_invalid/``.

Partitions are Hive style, by the UTC date of the event time (``date=...``,
plus ``hour=H`` unpadded with ``partitioning = "date/hour"``); the invalid
table by the date the collector received the event.

The *column file* is for readers that take a glob's schema from its first file
(pyarrow, hence pandas): it sorts first (year 1), holds no row, and carries the
union of every file's columns with their current types, so files written before
a column existed read as null there. DuckDB needs ``union_by_name=true``
instead: it refuses a file lacking a column it was asked for.
"""

from __future__ import annotations

import re
import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson

from tripwire.log import EVENTS, INVALID
from tripwire.times import format_time_ms

SINK_DIR = "_tripwire_sink"  # state, ids, journals; '_' so Hive/Athena/Spark/pyarrow skip it
REGISTRY_PATH = f"{SINK_DIR}/schema.json"
PARTITIONINGS = ("date", "date/hour")
KINDS = ("string", "integer", "number", "boolean", "date-time")  # typed columns: JSON Schema names
COLUMNS_DATE = "0001-01-01"
COLUMNS_FILE = "0-lake-columns.parquet"  # '0' sorts before 'compact-' and 'part-'


@dataclass(frozen=True, slots=True)
class Table:
    """One table of the lake: the log topic it comes from, where its files live, how they end."""

    topic: str
    prefix: str  # folder under the root ("" for the events table)
    suffix: str

    def file_name(self, partition: int, first: int) -> str:
        """A data file: the log partition and the first offset its rows came from."""
        return f"part-{self.topic}-p{partition:03d}-o{first:020d}{self.suffix}"

    def file_prefix(self, partition: int) -> str:
        return f"part-{self.topic}-p{partition:03d}-"

    def owns(self, path: str) -> bool:
        """True for a data file of this table (the column file excluded)."""
        if not path.endswith(self.suffix) or path.rsplit("/", 1)[-1] == COLUMNS_FILE:
            return False
        if self.prefix:
            return path.startswith(self.prefix)
        return not path.startswith("_") and "/" in path


EVENTS_TABLE = Table(EVENTS, "", ".parquet")
INVALID_TABLE = Table(INVALID, "_invalid/", ".parq")
TABLES = {t.topic: t for t in (EVENTS_TABLE, INVALID_TABLE)}


def file_name(topic: str, partition: int, first: int) -> str:
    """A data file of the table fed by ``topic`` (a replay writes the same name)."""
    return TABLES[topic].file_name(partition, first)


def file_prefix(topic: str, partition: int) -> str:
    return TABLES[topic].file_prefix(partition)


def table_of(path: str) -> Table | None:
    """The table a data file belongs to, or None."""
    for t in TABLES.values():
        if t.owns(path):
            return t
    return None


# -- partitions ---------------------------------------------------------------------


def directory_of(iso: str, partitioning: str) -> str:
    """The partition folder of a normal envelope time (``YYYY-MM-DDTHH:MM:SS.mmmZ``)."""
    if partitioning == "date":
        return f"date={iso[:10]}"
    return f"date={iso[:10]}/hour={int(iso[11:13])}"  # unpadded: DuckDB types it BIGINT


def directory_of_ms(ms: int, partitioning: str) -> str:
    return directory_of(format_time_ms(ms), partitioning)


def date_of(directory: str) -> str | None:
    """``YYYY-MM-DD`` of a partition folder (``[_invalid/]date=.../[hour=...]``), else None."""
    for part in directory.split("/"):
        if part.startswith("date="):
            return part[5:]
    return None


def columns_path(partitioning: str) -> str:
    """Where the column file of a lake with ``partitioning`` is."""
    return f"{directory_of(COLUMNS_DATE + 'T00', partitioning)}/{COLUMNS_FILE}"


# -- columns of the events table ------------------------------------------------------

# (column, envelope field): strings copied from the top of the envelope
TOP_COLUMNS = (("message_id", "messageId"), ("type", "type"), ("event", "event"), ("name", "name"),
               ("category", "category"), ("anonymous_id", "anonymousId"), ("user_id", "userId"),
               ("previous_id", "previousId"), ("group_id", "groupId"))
# timestamp[ms, UTC]; "timestamp" is the corrected event time that also picks the partition
TIME_COLUMNS = (("timestamp", "timestamp"), ("original_timestamp", "originalTimestamp"), ("sent_at", "sentAt"),
                ("received_at", "receivedAt"))
SOURCE_COLUMNS = (("source", "source"), ("channel", "channel"))
# (column, context key, key below it or None)
CONTEXT_COLUMNS = (("context_page_url", "page", "url"), ("context_page_path", "page", "path"),
                   ("context_page_referrer", "page", "referrer"), ("context_page_title", "page", "title"),
                   ("context_page_search", "page", "search"), ("context_user_agent", "userAgent", None),
                   ("context_ip", "ip", None), ("context_locale", "locale", None),
                   ("context_campaign_name", "campaign", "name"), ("context_campaign_source", "campaign", "source"),
                   ("context_campaign_medium", "campaign", "medium"), ("context_campaign_term", "campaign", "term"),
                   ("context_campaign_content", "campaign", "content"),
                   ("context_library_name", "library", "name"), ("context_library_version", "library", "version"))
# JSON text: what has no column of its own ("properties"/"traits": an object, "{}" when empty)
JSON_COLUMNS = ("properties", "traits", "context", "extra")

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


# -- the invalid table ------------------------------------------------------------------

# (column, kind), in file order: when and why the collector refused it (``field``: the schema path
# that failed), who sent it, and the event itself (``raw_event``: the envelope as logged, JSON text)
INVALID_COLUMNS = (("received_at", "date-time"), ("reason", "string"), ("field", "string"), ("message", "string"),
                   ("source", "string"), ("message_id", "string"), ("type", "string"), ("event", "string"),
                   ("anonymous_id", "string"), ("user_id", "string"), ("timestamp", "date-time"),
                   ("raw_event", "string"))


# -- the column registry ----------------------------------------------------------------


@dataclass(slots=True)
class TypedColumn:
    """A property (or trait) with a column of its own."""

    column: str  # properties_price
    field: str  # properties | traits
    key: str  # price
    kind: str  # one of KINDS
    origin: str = "catalog"  # catalog | promote | inferred
    first_seen: str | None = None  # the earliest event date (partition) with a value, YYYY-MM-DD
    widened: str | None = None  # date it went from integer to number
    events: list[str] = dataclasses.field(default_factory=list)  # event names seen with it (bounded)


@dataclass(slots=True)
class Conflict:
    """Values of a property that stay in the JSON column, and why: the first of each kind."""

    column: str
    field: str
    key: str
    event: str  # event name (track) or type
    kind: str  # what the value was: one of KINDS, "object", "array", or "integer" beyond 64 bits
    why: str  # type (not the column's type) | name (another key has the column) | limit (max_columns)
    first_seen: str | None = None


@dataclass
class ColumnRegistry:
    """``_tripwire_sink/schema.json``: the events table's typed columns, fixed as they are first written.

    A column never changes type, except ``integer`` widening to ``number``;
    ``revision`` grows with every change. Format 2::

        {"format": 2, "revision": 7, "partitioning": "date",
         "columns": [{"column": "properties_price", "field": "properties", "key": "price",
                      "kind": "number", "origin": "inferred", "first_seen": "2026-11-29",
                      "widened": "2026-11-30", "events": ["Product Added"]}, ...],
         "conflicts": [{"column": "properties_price", "field": "properties", "key": "price",
                        "event": "Signup", "kind": "string", "why": "type", "first_seen": "2026-11-30"}]}

    Format 1 (``{"columns": [[column, field, key, kind], ...], "partitioning": ...}``)
    reads as catalog columns with no dates.
    """

    partitioning: str | None = None
    revision: int = 0
    columns: list[TypedColumn] = dataclasses.field(default_factory=list)
    conflicts: list[Conflict] = dataclasses.field(default_factory=list)

    def column(self, name: str) -> TypedColumn | None:
        for c in self.columns:
            if c.column == name:
                return c
        return None

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "format": 2, "revision": self.revision, "partitioning": self.partitioning,
            "columns": [_drop_none({s: getattr(c, s) for s in TypedColumn.__slots__}) for c in self.columns],
            "conflicts": [_drop_none({s: getattr(c, s) for s in Conflict.__slots__}) for c in self.conflicts],
        }, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> ColumnRegistry:
        """Raises ValueError naming ``where`` when the document is not a registry."""
        try:
            doc = orjson.loads(data)
            if not isinstance(doc, dict):
                raise TypeError("not an object")
            columns = doc.get("columns", [])
            if doc.get("format", 1) == 1:
                return cls(doc.get("partitioning"), 0,
                           [TypedColumn(str(c), str(f), str(k), str(kind)) for c, f, k, kind in columns])
            if doc["format"] != 2:
                raise ValueError(f"format {doc['format']!r} is newer than this version reads")
            return cls(doc.get("partitioning"), int(doc.get("revision", 0)),
                       [TypedColumn(**_known(c, TypedColumn.__slots__)) for c in columns],
                       [Conflict(**_known(c, Conflict.__slots__)) for c in doc.get("conflicts", [])])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"lake column registry {where} is unreadable: {exc}") from exc


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and v != []}


def _known(d: Any, names: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise TypeError(f"expected an object, got {d!r}")
    return {k: (list(v) if k == "events" else v) for k, v in d.items() if k in names}
