"""The lake's typed property columns and partitioning, fixed by its first writer.

``_tripwire_sink/schema.json``::

    {"columns": [["properties_price", "properties", "price", "number"], ...],
     "partitioning": "date"}

Every file of a lake has the same columns, because DuckDB and pyarrow read a
glob with the first file's schema (and DuckDB fails on a later file lacking one
of its columns). Catalog properties added later are promoted by ``tripwire lake
migrate`` (see :mod:`sinks.migrate`); until then they stay in the JSON column.
"""

from __future__ import annotations

import logging

import orjson

from tripwire.lake_layout import REGISTRY_PATH

from .catalog import Promoted, merge_registry, wanted_columns
from .config import SinkConfig
from .errors import SinkError
from .lake import Lake

logger = logging.getLogger(__name__)

SCHEMA_PATH = REGISTRY_PATH


def _registry(lake: Lake) -> dict[str, object] | None:
    data = lake.read(SCHEMA_PATH)
    return None if data is None else orjson.loads(data)


def read_registry(lake: Lake) -> list[Promoted] | None:
    doc = _registry(lake)
    return None if doc is None else [Promoted.from_json(c) for c in doc["columns"]]  # type: ignore[attr-defined]


def write_registry(lake: Lake, columns: list[Promoted], partitioning: str | None = None) -> None:
    doc = _registry(lake) or {}
    doc["columns"] = [p.to_json() for p in columns]
    if partitioning is not None:
        doc["partitioning"] = partitioning
    lake.write(SCHEMA_PATH, orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def load_promoted(lake: Lake, cfg: SinkConfig) -> list[Promoted]:
    """The lake's columns (the catalog's, for a new lake); refuses another partitioning."""
    doc = _registry(lake)
    wanted = wanted_columns(cfg.catalog, cfg.promote)
    if doc is None:
        registered = merge_registry([], wanted)
        write_registry(lake, registered, cfg.partitioning)
        return registered
    written = doc.get("partitioning", cfg.partitioning)
    if written != cfg.partitioning:
        raise SinkError(
            f"lake {lake.url} is partitioned by {written!r}, config 'sink.partitioning' says {cfg.partitioning!r}; "
            "use a new lake_url to change it"
        )
    registered = [Promoted.from_json(c) for c in doc["columns"]]  # type: ignore[attr-defined]
    waiting = merge_registry(registered, wanted)[len(registered) :]
    if waiting:
        logger.warning(
            "%d catalog propert%s not yet typed columns in the lake (%s); run 'tripwire lake migrate'",
            len(waiting), "y is" if len(waiting) == 1 else "ies are", ", ".join(p.column for p in waiting[:5]),
        )
    return registered
