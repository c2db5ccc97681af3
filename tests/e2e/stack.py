"""Helpers for the end-to-end tests: an examples-like config, the receiver's record, the lake, events."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
from standardwebhooks.webhooks import Webhook

from tests.fixtures import waiting

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SECRET = "whsec_Y4PBOb53VF7OoWLmD0wZfsT9u0Rr2vhV"  # examples/tripwire.toml's endpoint secret
SHOP_KEY = "demo-shop-key"
BACKEND_KEY = "demo-backend-key"

T = TypeVar("T")


def example_config(dest: Path, *, abandon_after: str = "2s") -> Path:
    """Copy examples/ (config, catalog, rules) to ``dest``; the abandoned-cart window shortened."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLES / "tripwire.toml", dest / "tripwire.toml")
    shutil.copy(EXAMPLES / "catalog.json", dest / "catalog.json")
    shutil.copytree(EXAMPLES / "rules", dest / "rules", dirs_exist_ok=True)
    rules = dest / "rules" / "shop.rules"
    text = rules.read_text()
    assert "within 30s" in text
    rules.write_text(text.replace("within 30s", f"within {abandon_after}"))
    return dest / "tripwire.toml"


def fast_env(receiver_port: int, **extra: str) -> dict[str, str]:
    """Overrides that make the example stack quick to observe in a test."""
    return {
        "TRIPWIRE_ENDPOINTS__CRM__URL": f"http://127.0.0.1:{receiver_port}/hooks/tripwire",
        "TRIPWIRE_RULES__ALLOWED_LATENESS_MS": "1500",  # > the demo page's 500 ms flush interval + transit
        "TRIPWIRE_RULES__RELOAD_INTERVAL_MS": "200",
        "TRIPWIRE_RULES__GRACE": "1s",  # the test's events arrive at once: no SDK batching to wait for
        "TRIPWIRE_SINK__MAX_FILE_AGE_S": "1",
        "TRIPWIRE_WEBHOOKS__RETRY_SCHEDULE_S": "[0, 0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]",
        "TRIPWIRE_WEBHOOKS__RETRY_JITTER": "0",
        "TRIPWIRE_WEBHOOKS__SCAN_INTERVAL_S": "0.2",
        **extra,
    }


def wait_until(probe: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.1,
               detail: Callable[[], object] | None = None) -> T:
    return waiting.wait_until(probe, timeout_s, what, interval_s=interval_s, detail=detail)  # type: ignore[return-value]


_verified: set[str] = set()  # recorded lines whose signature was checked


def deliveries(out: Path) -> list[dict[str, Any]]:
    """What the receiver recorded (``tripwire webhooks receive --out``), each checked once with the reference
    library: its signature (``Webhook.sign`` over the recorded id, timestamp and body) and the timestamp's
    freshness *when received* (the library's 5-minute tolerance, judged at ``received_at``, so a test that
    reads its first deliveries late on a loaded machine judges them as the receiver did)."""
    if not out.exists():
        return []
    texts = [x for x in out.read_text().splitlines() if x.strip()]
    lines = [json.loads(x) for x in texts]
    hook = Webhook(SECRET)
    for text, line in zip(texts, lines):
        if text in _verified:
            continue
        headers = line["headers"]
        sent_at = int(headers["webhook-timestamp"])
        expected = hook.sign(headers["webhook-id"], datetime.fromtimestamp(sent_at, UTC), line["raw"])
        assert expected in headers["webhook-signature"].split(" "), f"bad signature on {headers['webhook-id']}"
        assert abs(line["received_at"] - sent_at) < 300, f"{headers['webhook-id']} signed {line['received_at'] - sent_at:.0f} s before it arrived"
        _verified.add(text)
    return lines


def lake_rows(lake: str, sql: str = "SELECT message_id, event, anonymous_id FROM t",
              storage: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows of the lake through DuckDB, the way an analyst reads it (S3: through s3fs)."""
    con = duckdb.connect()
    try:
        if storage is not None:
            import s3fs

            con.register_filesystem(s3fs.S3FileSystem(skip_instance_cache=True, **storage))
        glob = f"{lake.rstrip('/')}/**/*.parquet"
        try:
            con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{glob}', hive_partitioning = true, union_by_name = true)")
        except duckdb.IOException:
            return []  # no file yet
        return con.execute(sql).fetchall()
    finally:
        con.close()


def event(name: str, anonymous_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track", "event": name, "anonymousId": anonymous_id, "messageId": f"m-{uuid.uuid4().hex}",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "properties": properties,
    }


def by_rule(lines: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for line in lines:
        data = line["body"]["data"]
        out.setdefault((data["rule"], data["key"]), []).append(line)
    return out
