"""``tripwire_collector_event_delay_seconds{source}``: how late events arrive.

The delay of an event is ``receivedAt`` minus its corrected event time (0 when the
client's clock put it ahead). SDKs batch (analytics-node flushes every 10 s, the
mobile SDKs every 30 s), browsers come back online hours later: the buckets run
from 0.1 s to a day so the rules' ``grace`` can be sized from the p99.

prometheus_client's ``Histogram.observe`` takes a lock and searches the buckets
once per call, about a microsecond, which the batch path cannot pay per event.
So the intake keeps a request's delays in a list (an append each) and, once they
are durable, :meth:`DelayHistogram.add` buckets them all at once in C
(``map(bisect_left, ...)`` into a ``Counter``; when the smallest and the largest
fall in one bucket, as a batch's usually do, that bucket gets them all) and adds
them under one lock.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Mapping
from itertools import repeat

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import REGISTRY, Collector

NAME = "tripwire_collector_event_delay_seconds"
HELP = "Delivery delay of events (receivedAt minus the corrected event time), by source"
BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0,
             1800.0, 3600.0, 3 * 3600.0, 6 * 3600.0, 12 * 3600.0, 86400.0)
_BOUNDS_MS = tuple(int(b * 1000) for b in BUCKETS_S)


class _Counts:
    """One source's histogram: per bucket (not cumulative; the last slot is +Inf), sum, count."""

    __slots__ = ("counts", "total_ms", "n")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS_MS) + 1)
        self.total_ms = 0
        self.n = 0


class DelayHistogram(Collector):
    """The histogram, per source, fed a request at a time (:meth:`add`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # a scrape may run on another thread (tripwire --metrics-port)
        self._by_source: dict[str, _Counts] = {}

    def add(self, source: str, delays_ms: list[int]) -> None:
        """Observe one request's delays (ms; a negative one, from a clock ahead, counts as 0)."""
        if not delays_ms:
            return
        lo, hi = min(delays_ms), max(delays_ms)
        first = bisect_left(_BOUNDS_MS, lo)  # bucket i: delays <= bound i
        if first == bisect_left(_BOUNDS_MS, hi):  # all in one bucket (a batch flushed at once): no per-delay work
            per_bucket: Mapping[int, int] = {first: len(delays_ms)}
        else:
            per_bucket = Counter(map(bisect_left, repeat(_BOUNDS_MS), delays_ms))
        total_ms = sum(delays_ms) if lo >= 0 else sum(filter((0).__lt__, delays_ms))
        with self._lock:
            mine = self._by_source.get(source)
            if mine is None:
                mine = self._by_source[source] = _Counts()
            counts = mine.counts
            for i, n in per_bucket.items():
                counts[i] += n
            mine.total_ms += total_ms
            mine.n += len(delays_ms)

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(NAME, HELP, labels=["source"])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(NAME, HELP, labels=["source"])
        with self._lock:
            for source, c in sorted(self._by_source.items()):
                cumulative, buckets = 0, []
                for bound, n in zip((*(str(b) for b in BUCKETS_S), "+Inf"), c.counts):
                    cumulative += n
                    buckets.append((bound, cumulative))
                family.add_metric([source], buckets, sum_value=c.total_ms / 1000)
        yield family


EVENT_DELAY = DelayHistogram()
REGISTRY.register(EVENT_DELAY)
