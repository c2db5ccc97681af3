"""Prometheus metrics of webhook delivery (default registry, ``tripwire_webhook_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES = Counter(
    "tripwire_webhook_deliveries_total",
    "Deliveries finished, by endpoint and outcome (delivered, dead_letter)",
    ["endpoint", "outcome"],
)
ATTEMPTS = Counter(
    "tripwire_webhook_attempts_total",
    "Delivery attempts by endpoint and outcome (success, http_error, redirect, throttled, gone, timeout, network, refused)",
    ["endpoint", "outcome"],
)
ATTEMPT_SECONDS = Histogram(
    "tripwire_webhook_attempt_duration_seconds",
    "Duration of one delivery attempt, by endpoint",
    ["endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
)
PENDING = Gauge("tripwire_webhook_pending", "Deliveries waiting for an attempt or a retry, by endpoint", ["endpoint"])
DEAD_LETTERS = Gauge("tripwire_webhook_dead_letters", "Deliveries that exhausted their attempts, by endpoint", ["endpoint"])
DISABLED = Gauge("tripwire_webhook_endpoint_disabled", "1 when an endpoint is disabled (410, failing too long, config)", ["endpoint"])
INFLIGHT = Gauge("tripwire_webhook_inflight", "Attempts in flight, by endpoint", ["endpoint"])
INVALID_TRIGGERS = Counter("tripwire_webhook_invalid_triggers_total", "Trigger records that could not be read")
