"""The collector room: Segment-compatible HTTP intake writing to the event log.

Public names: :func:`create_app`, :class:`CollectorConfig`, :class:`SourceConfig`,
:class:`CollectorError`. The service wrapper for ``tripwire run`` is
:mod:`collector.service`.
"""

from __future__ import annotations

from .app import create_app
from .config import CollectorConfig, SourceConfig
from .errors import CollectorError

__all__ = ["CollectorConfig", "CollectorError", "SourceConfig", "create_app"]
