"""Typed columns for catalog properties: read the event catalog, fix each column's type once.

The catalog is the collector's JSON file (``{"events": {name: {"schema": <JSON
Schema of properties>}}, "traits": {"schema": ...}}``), read and checked by
:mod:`tripwire.catalog`. Top-level properties with one scalar JSON type become
columns ``properties_<name>`` (``traits_<name>`` for identify traits), typed:

==============================  ==========================
JSON Schema                     Parquet / Arrow
==============================  ==========================
``string``                      string
``string`` + ``date-time``      timestamp (ms, UTC)
``integer``                     int64
``number``                      float64 (``integer`` + ``number`` across events too)
``boolean``                     bool
==============================  ==========================

A schema with no ``type`` but an ``enum`` or ``const`` is typed by its values
(``{"enum": ["free", "pro"]}`` is a string column).

Objects, arrays and properties whose events disagree on the type stay in the
``properties`` JSON column. ``sink.promote`` adds columns by hand.

These columns are *declared*: the sink gives them the catalog's type instead of
inferring one from the data (:mod:`sinks.columns`); an existing column keeps
its type, except that ``integer`` widens to ``number`` (:mod:`sinks.registry`).
A value that does not fit its column stays in the JSON column instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tripwire.catalog import CatalogError as FileError
from tripwire.catalog import load_catalog

from tripwire.lake_layout import column_name

from .errors import CatalogError

logger = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class Promoted:
    column: str  # e.g. properties_price
    field: str  # "properties" or "traits"
    key: str  # the property name in the envelope
    kind: str  # string | integer | number | boolean | date-time

    def to_json(self) -> list[str]:
        return [self.column, self.field, self.key, self.kind]

    @classmethod
    def from_json(cls, value: Any) -> Promoted:
        column, field, key, kind = value
        return cls(str(column), str(field), str(key), str(kind))


def _value_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None  # objects, arrays; null is dropped before


def _kind(schema: Any) -> str | None:
    if not isinstance(schema, Mapping):
        return None
    t = schema.get("type")
    if t is None and ("enum" in schema or "const" in schema):  # {"enum": ["free", "pro"]}: typed by its values
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        t = sorted({_value_type(v) or "?" for v in values if v is not None}) if isinstance(values, list) else []
    types = [t] if isinstance(t, str) else [x for x in t if isinstance(x, str)] if isinstance(t, list) else []
    types = [x for x in types if x != "null"]
    if set(types) == {"integer", "number"}:
        return "number"
    if len(types) != 1 or types[0] not in ("string", "integer", "number", "boolean"):
        return None
    if types[0] == "string" and schema.get("format") == "date-time":
        return "date-time"
    return types[0]


def _merge(a: str, b: str) -> str | None:
    if a == b:
        return a
    if {a, b} == {"integer", "number"}:
        return "number"
    return None


def read_catalog(path: str | Path) -> list[Promoted]:
    """The promotable properties declared in the catalog file at ``path``."""
    try:
        catalog = load_catalog(path)
    except FileError as exc:
        raise CatalogError(str(exc)) from None
    found: dict[tuple[str, str], str | None] = {}
    nested: set[tuple[str, str]] = set()  # declared as objects or arrays: JSON by design, nothing to report

    def collect(field: str, schema: Any) -> None:
        props = schema.get("properties") if isinstance(schema, Mapping) else None
        if not isinstance(props, Mapping):
            return
        for key, sub in props.items():
            kind = _kind(sub)
            slot = (field, str(key))
            if isinstance(sub, Mapping) and sub.get("type") in ("object", "array"):
                nested.add(slot)
            if slot in found:
                old = found[slot]
                found[slot] = None if old is None or kind is None else _merge(old, kind)
            else:
                found[slot] = kind

    for entry in catalog.events.values():
        collect("properties", entry.schema)
    if catalog.traits is not None:
        collect("traits", catalog.traits.schema)
    out = []
    for (field, key), kind in sorted(found.items()):
        if kind is None:
            logger.log(logging.DEBUG if (field, key) in nested else logging.INFO,
                       "catalog property %s.%s has no single scalar type; it stays in the JSON column", field, key)
            continue
        out.append(Promoted(column_name(field, key), field, key, kind))
    return out


def wanted_columns(catalog_path: str, promote: Mapping[str, str]) -> list[Promoted]:
    """Catalog properties plus the ``promote`` mapping (which wins on conflicts)."""
    cols = {(p.field, p.key): p for p in (read_catalog(catalog_path) if catalog_path else [])}
    for key, kind in promote.items():
        field, _, rest = key.partition(".")
        if field in ("properties", "traits") and rest:
            cols[(field, rest)] = Promoted(column_name(field, rest), field, rest, kind)
        else:
            cols[("properties", key)] = Promoted(column_name("properties", key), "properties", key, kind)
    return list(cols.values())
