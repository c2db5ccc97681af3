"""The sink's exceptions.

::

    SinkError
     ├── LakeError        the lake filesystem (local dir or S3) refused a read or write
     ├── CatalogError     the event catalog or the ``promote`` mapping cannot be used
     │                    (also a tripwire.catalog.CatalogError, as every catalog problem is)
     └── StateError       a state file in the lake is unreadable or from another layout
"""

from __future__ import annotations

from tripwire import catalog


class SinkError(Exception):
    """Root of the Parquet sink's errors."""


class LakeError(SinkError):
    """A lake operation failed; the message names the path."""


class CatalogError(SinkError, catalog.CatalogError):
    """The event catalog (or ``sink.promote``) is not usable for typed columns."""


class StateError(SinkError):
    """A sink state file in the lake cannot be read."""
