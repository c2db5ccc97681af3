"""The event catalog as the rule checks need it: event names, and the schemas of their fields.

The file is read by the spine (:func:`tripwire.catalog.load_catalog`: one format, one
``CatalogError`` for every room). This module keeps each entry's schema as a plain dict
and answers two questions: which schema describes a field (:meth:`EventCatalog.field`)
and which JSON types a schema allows (:func:`json_types`). The collector validates the
schemas themselves; here a schema this reader does not understand only means fewer
warnings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tripwire.catalog import CatalogEntry, CatalogError, load_catalog
from tripwire.config import Config

from .errors import RulesError

__all__ = ["EventCatalog", "FieldLookup", "json_types", "rules_catalog"]


@dataclass(frozen=True)
class FieldLookup:
    """Where a field path leads in a schema: its schema, or the first key the schema does not list."""

    schema: Mapping[str, Any] | None  # None: the path leaves what the catalog describes (free-form, unknown)
    unknown: str | None = None  # the dotted path up to the first unlisted key
    known: tuple[str, ...] = ()  # the keys listed where ``unknown`` was looked for


@dataclass(frozen=True)
class EventCatalog:
    events: Mapping[str, Mapping[str, Any] | None]  # track event name -> schema of its properties (None: none)
    traits: Mapping[str, Any] | None = None  # schema of an identify call's traits

    @classmethod
    def load(cls, path: str | Path) -> EventCatalog:
        try:
            catalog = load_catalog(path)
        except CatalogError as exc:
            raise RulesError(str(exc)) from None
        return cls({name: _schema(e) for name, e in catalog.events.items()}, _schema(catalog.traits))

    def field(self, event: str, parts: tuple[str, ...]) -> FieldLookup | None:
        """The schema of ``properties.x.y`` of a track event (or ``traits.x`` of ``$identify``).

        None when the catalog says nothing about it: another envelope field, an event the
        catalog does not list, or one listed without a schema.
        """
        if parts[:1] == ("properties",) and not event.startswith("$"):
            schema = self.events.get(event)
        elif parts[:1] == ("traits",) and event == "$identify":
            schema = self.traits
        else:
            return None
        if schema is None:
            return None
        for i, key in enumerate(parts[1:], 1):
            listed = schema.get("properties")
            if not isinstance(listed, dict):
                return FieldLookup(None)  # a free-form object (or not an object): nothing to check
            child = listed.get(key)
            if child is None:
                return FieldLookup(None, ".".join(parts[1 : i + 1]), tuple(str(k) for k in listed))
            schema = child if isinstance(child, dict) else {}
        return FieldLookup(schema)


def _schema(entry: CatalogEntry | None) -> Mapping[str, Any] | None:
    schema = entry.schema if entry is not None else None
    return schema if isinstance(schema, dict) else None


_TYPES = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean", "array": "array",
          "object": "object", "null": "null"}


_JSON_TYPES: dict[type, str] = {str: "string", list: "array", dict: "object"}


def _type_of(value: Any) -> str | None:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return _JSON_TYPES.get(type(value))


def json_types(schema: Mapping[str, Any] | None) -> frozenset[str] | None:
    """The JSON types (integer counted as number) a schema allows, or None when it does not say."""
    if not isinstance(schema, Mapping):
        return None
    declared = schema.get("type")
    if isinstance(declared, str):
        declared = [declared]
    if isinstance(declared, list) and declared and all(t in _TYPES for t in declared):
        return frozenset(_TYPES[t] for t in declared)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        types = {_type_of(v) for v in schema["enum"]}
        return None if None in types else frozenset(t for t in types if t is not None)
    if "const" in schema:
        t = _type_of(schema["const"])
        return None if t is None else frozenset([t])
    branches = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(branches, list) and branches:
        found = [json_types(b) for b in branches]
        known = [t for t in found if t is not None]
        return None if len(known) < len(found) else frozenset().union(*known)
    return None


def rules_catalog(config: Config) -> EventCatalog | None:
    """The catalog ``[collector] catalog`` names (relative to the config file), or None without one.

    Raises :class:`~rules.errors.RulesError` when it cannot be read.
    """
    name = config.table("collector").get("catalog") or ""
    if not isinstance(name, str) or not name:
        return None
    return EventCatalog.load(config.resolve(name))
