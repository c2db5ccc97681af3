"""Which property goes to which typed column: learned from the data, per sink, agreed through the lake.

Without a catalog, the sink types each property (and identify/group trait) from
the first value it sees, as Segment's and RudderStack's warehouse loaders do:

==================================================  ==========================
first value                                         column (Parquet / Arrow)
==================================================  ==========================
``true`` / ``false``                                ``boolean``: bool
a whole number (64 bits)                            ``integer``: int64
any other number                                    ``number``: float64
a string in ISO 8601 date-time form (with ``T``)    ``date-time``: timestamp[ms, UTC]
any other string                                    ``string``
an object, an array, ``null``                       no column: stays in the JSON
==================================================  ==========================

Later values: an ``integer`` column widens to ``number`` at the first
fractional value (files written before keep int64; readers widen them). A
value of another type keeps its place in the JSON column (``properties`` or
``traits``) and is recorded once per column, event and type as a *conflict*
(so are a property whose name maps to another property's column, and a new
property beyond ``sink.max_typed_columns``). A column never changes type
otherwise, and a catalog column (or ``sink.promote``) never widens: the catalog
wins.

:class:`Columns` holds the lake's registry (:class:`tripwire.lake_layout.ColumnRegistry`)
plus what this sink decided since it last published (:mod:`sinks.registry`
merges that into the lake's registry before any file using it is written).
Two sinks may decide differently for a property they both see first: the
registry keeps whichever was published first, and the other sink's values move
to the JSON column when its files are written (:func:`sinks.schema.conform`).
"""

from __future__ import annotations

import re
import dataclasses
from dataclasses import dataclass
from typing import Any

from tripwire.lake_layout import ColumnRegistry, Conflict, TypedColumn, column_name
from tripwire.times import parse_iso_ms

from . import metrics

MAX_EVENTS_PER_COLUMN = 50  # event names recorded with a column
MAX_CONFLICTS = 1000  # conflicts recorded in the registry
MAX_KEY_CHARS = 128  # a longer property name has no column
_MAX_REMEMBERED = 10_000  # keys per field remembered as "stays JSON" (random keys must not grow memory)
_INT64 = (-(2**63), 2**63)
_ISO_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


class _NotFitting:
    def __repr__(self) -> str:
        return "NOT_FITTING"


NOT_FITTING: Any = _NotFitting()  # the value stays in the JSON column


@dataclass(eq=False, slots=True)
class Slot:
    """A typed column as the builders use it (its ``kind`` may widen while they run)."""

    column: str
    field: str
    key: str
    kind: str
    origin: str
    order: int  # position in the registry: files list typed columns in this order
    events: set[str] = dataclasses.field(default_factory=set)
    first_seen: str | None = None  # the earliest date a row with it was written for


@dataclass
class Proposal:
    """What one sink decided since it last published (see :func:`sinks.registry.merge`)."""

    new: list[TypedColumn]
    widened: dict[str, str | None]  # column -> date
    events: dict[str, set[str]]  # column -> event names
    first_seen: dict[str, str]  # column -> an earlier date than the registry's
    conflicts: list[Conflict]


def value_kind(value: Any) -> str | None:
    """The kind a first ``value`` gives a new column; None when it gives none (object, array, null)."""
    t = type(value)
    if t is bool:
        return "boolean"
    if t is int:
        return "integer" if _INT64[0] <= value < _INT64[1] else None
    if t is float:
        return "number"
    if t is str:
        return "date-time" if _ISO_DATE_TIME.match(value) and parse_iso_ms(value) is not None else "string"
    return None


def describe(value: Any) -> str:
    """What a value is, for a conflict record."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if type(value) is int and not _INT64[0] <= value < _INT64[1]:
        return "integer beyond 64 bits"
    return value_kind(value) or type(value).__name__


def fit(kind: str, value: Any) -> Any:
    """``value`` as a column of ``kind`` holds it, or ``NOT_FITTING``."""
    t = type(value)
    if kind == "string":
        return value if t is str else NOT_FITTING
    if kind == "number":
        if t is float:
            return value
        if t is int:
            try:
                return float(value)
            except OverflowError:
                return NOT_FITTING
        return NOT_FITTING
    if kind == "integer":
        if t is float and value.is_integer():
            value, t = int(value), int
        return value if t is int and _INT64[0] <= value < _INT64[1] else NOT_FITTING
    if kind == "boolean":
        return value if t is bool else NOT_FITTING
    ms = parse_iso_ms(value) if t is str else None
    return NOT_FITTING if ms is None else ms


class Columns:
    """The typed columns of this sink's files: the lake's registry, then this sink's decisions.

    ``slots[field]`` maps a key to its :class:`Slot`, or to None when the key
    stays in JSON (its first value was an object or an array, another key has
    the column, the name is too long, the limit is reached, or inference is
    off). Keys not in the map are new. Single-threaded: the sink's writer
    thread routes and builds; builders are empty whenever :meth:`adopt` runs
    (at a flush), and files are conformed to the registry after it.
    """

    def __init__(self, registry: ColumnRegistry, *, infer: bool = True, max_columns: int = 500) -> None:
        self.infer = infer
        self.max_columns = max_columns
        self.slots: dict[str, dict[str, Slot | None]] = {"properties": {}, "traits": {}}
        self.by_column: dict[str, Slot] = {}
        self.registry = ColumnRegistry(registry.partitioning)
        self._new: list[Slot] = []
        self._widened: dict[str, str | None] = {}
        self._events: dict[str, set[str]] = {}
        self._conflicts: dict[tuple[str, str, str, str], Conflict] = {}
        self._recorded: set[tuple[str, str, str, str]] = set()
        self._first_seen: dict[str, str | None] = {}
        self._sources: dict[str, tuple[str, str]] = {}  # every column decided here or in the lake
        self.adopt(registry)

    # decisions, on the hot path's slow branches ----------------------------------

    def discover(self, field: str, key: str, value: Any, event: str, day: str | None) -> Slot | None:
        """The slot for a key seen for the first time (None: the value stays in JSON)."""
        if not self.infer:
            self._stays_json(field, key)
            return None
        kind = value_kind(value)
        if kind is None:
            if isinstance(value, (dict, list)):
                self._stays_json(field, key)  # an object or an array stays JSON, as its first value was
            return None  # null (or an integer past 64 bits): decided by the next value
        name = column_name(field, key)
        taken = self.by_column.get(name)
        if taken is not None or len(key) > MAX_KEY_CHARS:  # e.g. "Price" after "price"
            self._stays_json(field, key)
            self.conflict(field, key, name[:200], event, describe(value), "name", day)
            return None
        if len(self.by_column) >= self.max_columns:
            self._stays_json(field, key)
            self.conflict(field, key, name, event, describe(value), "limit", day)
            return None
        slot = Slot(name, field, key, kind, "inferred", len(self.by_column), {event}, day)
        self.slots[field][key] = slot
        self.by_column[name] = slot
        self._sources[name] = (field, key)
        self._new.append(slot)
        return slot

    def _stays_json(self, field: str, key: str) -> None:
        slots = self.slots[field]
        if len(slots) < _MAX_REMEMBERED:
            slots[key] = None

    def misfit(self, slot: Slot, value: Any, event: str, day: str | None) -> Any:
        """``value`` did not fit ``slot``: widen an inferred integer column to number, else record a conflict."""
        if slot.kind == "integer" and slot.origin == "inferred" and type(value) is float:
            slot.kind = "number"
            self._widened[slot.column] = day
            return value
        self.conflict(slot.field, slot.key, slot.column, event, describe(value), "type", day)
        metrics.CONFLICTS.inc()
        return NOT_FITTING

    def seen_on(self, slot: Slot, day: str) -> None:
        """A row with ``slot`` was written for ``day``, earlier than its first seen date."""
        slot.first_seen = day
        self._first_seen[slot.column] = day

    def seen_with(self, slot: Slot, event: str) -> None:
        if len(slot.events) < MAX_EVENTS_PER_COLUMN:
            slot.events.add(event)
            self._events.setdefault(slot.column, set()).add(event)

    def conflict(self, field: str, key: str, column: str, event: str, kind: str, why: str, day: str | None) -> None:
        token = (column, event, kind, why)
        if token in self._recorded or len(self._recorded) >= MAX_CONFLICTS:
            return
        self._recorded.add(token)
        self._conflicts[token] = Conflict(column, field, key[:MAX_KEY_CHARS], event, kind, why, day)

    # publishing ------------------------------------------------------------------

    @property
    def changed(self) -> bool:
        """True when this sink decided something the lake's registry does not say yet."""
        return bool(self._new or self._widened or self._events or self._conflicts or self._first_seen)

    def proposal(self) -> Proposal:
        """What this sink decided since the last :meth:`adopt`."""
        new = [TypedColumn(s.column, s.field, s.key, s.kind, s.origin, s.first_seen,
                           self._widened.get(s.column) if s.kind == "number" else None, sorted(s.events))
               for s in self._new]
        first_seen = {c: d for c, d in self._first_seen.items() if d is not None}
        return Proposal(new, dict(self._widened), {c: set(e) for c, e in self._events.items()}, first_seen,
                        list(self._conflicts.values()))

    def adopt(self, registry: ColumnRegistry) -> None:
        """Take the lake's registry as it is now (after a publish); local decisions are forgotten."""
        self.registry = registry
        live: dict[str, Slot] = {}
        for order, c in enumerate(registry.columns):
            slot = self.by_column.get(c.column)
            if slot is not None and (slot.field, slot.key) == (c.field, c.key):
                slot.kind, slot.origin, slot.order = c.kind, c.origin, order
                slot.events, slot.first_seen = set(c.events), c.first_seen
            else:
                slot = Slot(c.column, c.field, c.key, c.kind, c.origin, order, set(c.events), c.first_seen)
            live[c.column] = slot
            self._sources.setdefault(c.column, (c.field, c.key))
        for name, slot in self.by_column.items():
            if name not in live and self.slots[slot.field].get(slot.key) is slot:
                self.slots[slot.field][slot.key] = None  # lost to another sink's column of that name, or the limit
        for slot in live.values():
            self.slots.setdefault(slot.field, {})[slot.key] = slot
        self.by_column = live
        self._new, self._widened, self._events, self._conflicts, self._first_seen = [], {}, {}, {}, {}
        self._recorded = {(c.column, c.event, c.kind, c.why) for c in registry.conflicts}

    def source_of(self, column: str) -> tuple[str, str] | None:
        """``(field, key)`` of a column this sink decided, even one it lost to another sink."""
        return self._sources.get(column)

    def ordered(self) -> list[Slot]:
        """The typed columns in file order."""
        return sorted(self.by_column.values(), key=lambda s: s.order)
