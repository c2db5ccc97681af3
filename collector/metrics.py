"""Prometheus metrics of the collector (``tripwire_collector_*``) and of the log as it sees it.

Metrics live in the process-wide default registry so ``/metrics`` also shows the
process and Python collectors. Label children used on the hot path are bound
once (:class:`RouteMetrics`) instead of looked up per request.
"""

from __future__ import annotations

import weakref

from prometheus_client import Counter, Gauge, Histogram

from tripwire.log import EventLog

from .delay import EVENT_DELAY as EVENT_DELAY  # tripwire_collector_event_delay_seconds{source}

REQUESTS = Counter(
    "tripwire_collector_requests_total", "HTTP requests by route and status", ["route", "status"]
)
EVENTS_ACCEPTED = Counter("tripwire_collector_events_accepted_total", "Events written to the events topic")
EVENTS_INVALID = Counter(
    "tripwire_collector_events_invalid_total", "Events written to the invalid topic, by reason", ["reason"]
)
EVENTS_REJECTED = Counter(
    "tripwire_collector_events_rejected_total", "Requests refused with a 4xx/503, by reason", ["reason"]
)
EVENTS_FUTURE = Counter(
    "tripwire_collector_future_timestamps_total",
    "Events whose time was more than collector.max_future_s ahead of receivedAt (stored at receivedAt)",
)
APPEND_SECONDS = Histogram(
    "tripwire_log_append_seconds",
    "Time until the event log confirmed an append as durable, by topic",
    ["topic"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
SPILL_DEPTH = Gauge("tripwire_log_spill_depth", "Records waiting in the local spill buffer for the broker")

_logs: weakref.WeakSet[EventLog] = weakref.WeakSet()


def _spill_depth() -> float:
    return float(sum(log.spill_depth() for log in list(_logs)))


SPILL_DEPTH.set_function(_spill_depth)


def watch_log(log: EventLog) -> None:
    """Report ``log.spill_depth()`` through the spill gauge while the log lives."""
    _logs.add(log)


class RouteMetrics:
    """Bound counters for one route (status children are created on first use)."""

    __slots__ = ("route", "_by_status")

    def __init__(self, route: str) -> None:
        self.route = route
        self._by_status = {200: REQUESTS.labels(route, "200")}

    def count(self, status: int) -> None:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = REQUESTS.labels(self.route, str(status))
        child.inc()


APPEND_EVENTS = APPEND_SECONDS.labels("events")
APPEND_INVALID = APPEND_SECONDS.labels("invalid")
