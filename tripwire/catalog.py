"""The event catalog file: its format, read and checked once for every room.

The catalog is a JSON file (see ``examples/catalog.json``)::

    {
      "description": "...",
      "events": {
        "Product Added": {
          "description": "a product went into the cart",
          "schema": {"type": "object", "required": ["sku"], "properties": {...}},
          "pii": ["email", "shipping.phone"]
        }
      },
      "traits": {"schema": {...}, "pii": ["email", "phone"]}
    }

* ``events``: one entry per track event name; ``traits``: the entry for identify
  calls' traits. An entry may have a ``description``, a ``schema`` (a JSON Schema
  of the event's ``properties``, or of ``traits``) and ``pii`` (dotted property
  paths whose values are hashed).
* Top-level keys besides ``events`` and ``traits``: ``description``, ``$schema``,
  ``version``. Any other key, in the file or in an entry, is refused (a typo such
  as ``shcema`` must not silently switch a check off).

:func:`load_catalog` returns the file as a :class:`CatalogFile`; what a room does
with it is the room's: the collector compiles the schemas and hashes PII, the
sink turns scalar properties into typed columns. The JSON Schemas themselves are
checked by the collector, which compiles them.

Exceptions::

    CatalogError          the file is missing, not JSON, or not a catalog; the message
                          names the file and the entry ("event catalog 'c.json': 'events.A.pii' ...")

A room raising its own error for the catalog subclasses :class:`CatalogError`
(and its room's root), so ``except CatalogError`` catches every catalog problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

_FILE_KEYS = frozenset({"events", "traits", "description", "$schema", "version"})
_ENTRY_KEYS = frozenset({"schema", "pii", "description"})


class CatalogError(Exception):
    """The event catalog cannot be used; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One entry: ``events.<name>`` or ``traits``."""

    where: str  # "events.Product Added" or "traits", for messages
    schema: dict[str, Any] | bool | None  # the JSON Schema as written; None when the entry has none
    pii: tuple[str, ...]  # dotted paths, as written
    description: str | None = None


@dataclass(frozen=True, slots=True)
class CatalogFile:
    path: Path
    events: Mapping[str, CatalogEntry]
    traits: CatalogEntry | None

    def entries(self) -> list[CatalogEntry]:
        """Every entry: the events in file order, then traits."""
        return [*self.events.values(), *([self.traits] if self.traits is not None else [])]


def load_catalog(path: str | Path) -> CatalogFile:
    """Read and check the catalog at ``path``; raises :class:`CatalogError` naming what is wrong."""
    path = Path(path)
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise CatalogError(f"event catalog '{path}' does not exist") from None
    except IsADirectoryError:
        raise CatalogError(f"event catalog '{path}' is a directory, not a file") from None
    except PermissionError:
        raise CatalogError(f"event catalog '{path}' cannot be read (permission denied)") from None
    except orjson.JSONDecodeError as exc:
        raise CatalogError(f"event catalog '{path}' is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("events", {}), dict):
        raise CatalogError(f"event catalog '{path}': expected an object with an 'events' object")
    unknown = set(doc) - _FILE_KEYS
    if unknown:
        raise CatalogError(f"event catalog '{path}': unknown key(s) {', '.join(sorted(unknown))}")
    events = {name: _entry(path, f"events.{name}", spec) for name, spec in doc.get("events", {}).items()}
    traits = _entry(path, "traits", doc["traits"]) if "traits" in doc else None
    return CatalogFile(path, events, traits)


def _entry(path: Path, where: str, spec: Any) -> CatalogEntry:
    if not isinstance(spec, dict):
        raise CatalogError(f"event catalog '{path}': '{where}' must be an object")
    unknown = set(spec) - _ENTRY_KEYS
    if unknown:
        raise CatalogError(f"event catalog '{path}': '{where}' has unknown key(s) {', '.join(sorted(unknown))}")
    pii = spec.get("pii", [])
    if not isinstance(pii, list) or not all(isinstance(p, str) and p for p in pii):
        raise CatalogError(f"event catalog '{path}': '{where}.pii' must be a list of property paths")
    schema = spec.get("schema")
    if "schema" in spec and not isinstance(schema, (dict, bool)):
        raise CatalogError(f"event catalog '{path}': '{where}.schema' must be a JSON Schema (an object or true/false)")
    description = spec.get("description")
    return CatalogEntry(where, schema, tuple(pii), description if isinstance(description, str) else None)
