"""The rows of the delivery store, as its users see them (see :mod:`tripwire.webhooks.store`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class NewDelivery:
    id: str
    endpoint: str
    body: bytes
    due_ms: int
    state: str = PENDING
    error: str | None = None


@dataclass(frozen=True)
class Claimed:
    id: str
    endpoint: str
    body: bytes
    attempt: int  # 1-based number of this attempt


@dataclass(frozen=True)
class Outcome:
    """What one attempt of a claimed delivery came to, as the store records it."""

    claimed: Claimed
    at_ms: int
    status: int | None
    outcome: str  # attempt outcome: success, http_error, timeout, ...
    error: str | None
    duration_ms: int
    state: str  # the delivery's state after it: pending (retry at next_attempt_ms), delivered or dead
    next_attempt_ms: int


@dataclass(frozen=True)
class EndpointState:
    name: str
    disabled_reason: str | None
    disabled_ms: int | None
    failing_since_ms: int | None
    last_success_ms: int | None


@dataclass(frozen=True)
class DeliveryRow:
    id: str
    endpoint: str
    state: str
    attempts: int
    next_attempt_ms: int
    created_ms: int
    updated_ms: int
    last_status: int | None
    last_error: str | None


@dataclass(frozen=True)
class AttemptStats:
    """One endpoint's attempts over a period: how many, how many succeeded, and how long they took."""

    attempts: int
    successes: int
    p50_ms: int | None  # of every attempt's duration (None: no attempts)
    p95_ms: int | None

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.attempts if self.attempts else None
