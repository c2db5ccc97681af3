"""The webhook dispatcher's delivery store as the console reads it (and its one write: a replay).

The store is the dispatcher's SQLite file (``[webhooks] store_path``, default
``<data_dir>/webhooks.db``); the console opens it only once it exists (it never
creates one: an empty store would hide a wrong data_dir) and may share it with a
running dispatcher, which sees a replay within ``scan_interval_s``. Endpoint URLs
are shown as scheme and host only, and error texts are passed through the log
redaction (no secret, no full IP).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tripwire.config import Config, mask_url
from tripwire.logs import redact
from tripwire.triggers import EndpointConfig, endpoints
from tripwire.webhooks import AttemptStats, Store, WebhooksConfig

DAY_MS = 86_400_000
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def clean(text: str | None) -> str:
    """An error text fit for a page: secrets and IPs redacted as in logs, every URL cut to scheme and host
    (an endpoint's path or query is often its credential)."""
    return _URL.sub(lambda m: mask_url(m.group(0)), redact(text or ""))


@dataclass
class Attempt:
    n: int
    at_ms: int
    status: int | None
    outcome: str
    error: str
    duration_ms: int


class Deliveries:
    """Lazily opened, shared by the console's requests (the store serialises them)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.section("webhooks", WebhooksConfig)
        self.path: Path = self.settings.store_file(config.data_dir)
        self.endpoints: dict[str, EndpointConfig] = endpoints(config)
        self._store: Store | None = None
        self._lock = threading.Lock()

    def store(self) -> Store | None:
        with self._lock:
            if self._store is None and self.path.exists():
                self._store = Store(self.path)
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # reads ---------------------------------------------------------------------------------

    def endpoint_rows(self) -> list[dict[str, Any]]:
        """Per endpoint (configured or seen): URL (scheme and host), state, counts, the last day's attempts."""
        store = self.store()
        counts = store.counts() if store else {}
        states = store.endpoint_states() if store else {}
        stats: dict[str, AttemptStats] = store.attempt_stats(int(time.time() * 1000) - DAY_MS) if store else {}
        rows = []
        for name in sorted(set(self.endpoints) | set(counts) | set(states)):
            ep = self.endpoints.get(name)
            st = states.get(name)
            c = counts.get(name, {})
            s = stats.get(name)
            if ep is None:
                state = "not configured"
            elif not ep.enabled:
                state = "disabled in config"
            elif st is not None and st.disabled_reason:
                state = f"disabled: {clean(st.disabled_reason)}"
            elif st is not None and st.failing_since_ms:
                state = "failing"
            else:
                state = "enabled"
            rows.append({
                "name": name, "url": mask_url(ep.url) if ep else "", "state": state,
                "delivered": c.get("delivered", 0), "pending": c.get("pending", 0), "failing": c.get("failing", 0),
                "dead": c.get("dead", 0), "attempts": s.attempts if s else 0,
                "success_rate": s.success_rate if s else None, "p50_ms": s.p50_ms if s else None,
                "p95_ms": s.p95_ms if s else None,
                "failing_since_ms": st.failing_since_ms if st else None,
                "last_success_ms": st.last_success_ms if st else None,
            })
        return rows

    def letters(self, state: str, limit: int = 50) -> list[dict[str, Any]]:
        """Deliveries in ``state`` (dead, or pending after a failed attempt), newest first, with their rule and key."""
        store = self.store()
        if store is None:
            return []
        rows = store.rows(state, None, limit if state == "dead" else limit * 4)
        if state == "pending":
            rows = [r for r in rows if r.attempts > 0][:limit]
        out = []
        for r in rows:
            data = _data(store.body(r.id))
            out.append({"id": r.id, "endpoint": r.endpoint, "state": r.state, "attempts": r.attempts,
                        "updated_ms": r.updated_ms, "next_ms": r.next_attempt_ms, "status": r.last_status,
                        "error": clean(r.last_error), "rule": str(data.get("rule") or ""),
                        "key": str(data.get("key") or "")})
        return out

    def delivery(self, trigger_id: str) -> tuple[Any, list[Attempt]] | None:
        """A delivery row and its attempts, or None when the store holds none for that trigger."""
        store = self.store()
        if store is None:
            return None
        row = store.get(trigger_id)
        if row is None:
            return None
        attempts = [Attempt(n, at, status, outcome, clean(error), duration)
                    for n, at, status, outcome, error, duration in store.attempts(trigger_id)]
        return row, attempts

    # the write -------------------------------------------------------------------------------

    def replay(self, trigger_id: str) -> str:
        """Deliver a dead (or delivered) trigger again with the same webhook-id; what happened, in words."""
        store = self.store()
        if store is None:
            return "no delivery store yet: nothing to replay"
        row = store.get(trigger_id)
        if row is None:
            return f"no delivery {trigger_id}"
        if row.state == "pending":
            return f"{trigger_id} is already pending ({row.attempts} attempt(s) so far)"
        store.replay(trigger_id)
        return f"replaying {trigger_id} to {row.endpoint}: the dispatcher sends it again within seconds"


def _data(body: bytes | None) -> dict[str, Any]:
    try:
        doc = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        return {}
    data = doc.get("data") if isinstance(doc, dict) else None
    return data if isinstance(data, dict) else {}
