"""Reading the Parquet lake back as Segment envelopes, day by day in event-time order (backtests).

Layout written by the sink: ``<root>/date=YYYY-MM-DD[/hour=HH]/*.parquet`` with
Segment-envelope columns in snake_case (see the sink's schema module), the
non-promoted ``properties``/``traits``/``context``/``extra`` as JSON strings, and
promoted catalog properties as typed columns listed in
``_tripwire_sink/schema.json``. This module only reads that layout; it does not
import the sink.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from .errors import RulesError

_TOP = {"message_id": "messageId", "type": "type", "event": "event", "name": "name", "anonymous_id": "anonymousId",
        "user_id": "userId", "previous_id": "previousId", "group_id": "groupId", "source": "source"}
_TIMES = {"timestamp": "timestamp", "original_timestamp": "originalTimestamp", "sent_at": "sentAt", "received_at": "receivedAt"}
_CONTEXT = {"context_page_url": ("page", "url"), "context_page_path": ("page", "path"),
            "context_page_referrer": ("page", "referrer"), "context_page_title": ("page", "title"),
            "context_page_search": ("page", "search"), "context_user_agent": ("userAgent", None),
            "context_ip": ("ip", None), "context_locale": ("locale", None),
            "context_campaign_name": ("campaign", "name"), "context_campaign_source": ("campaign", "source"),
            "context_campaign_medium": ("campaign", "medium"), "context_campaign_term": ("campaign", "term"),
            "context_campaign_content": ("campaign", "content"), "context_library_name": ("library", "name"),
            "context_library_version": ("library", "version")}


class LakeReadError(RulesError):
    pass


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        ms = int(value.timestamp() * 1000)
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return value


def _json(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def row_to_envelope(row: Mapping[str, Any], promoted: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    env: dict[str, Any] = {}
    for col, key in _TOP.items():
        if row.get(col) is not None:
            env[key] = row[col]
    for col, key in _TIMES.items():
        if row.get(col) is not None:
            env[key] = _iso(row[col])
    props = _json(row.get("properties")) or {}
    traits = _json(row.get("traits")) or {}
    for col, (field, key) in promoted.items():
        value = row.get(col)
        if value is not None:
            if type(value) is float and value.is_integer() and abs(value) < 2**53:
                value = int(value)  # a "number" column is float64; the event said 150, not 150.0 (payloads)
            (props if field == "properties" else traits)[key] = _iso(value)
    if props or env.get("type") in ("track", "page", "screen"):
        env["properties"] = props
    if traits:
        env["traits"] = traits
    ctx = _json(row.get("context")) or {}
    for col, (group, key) in _CONTEXT.items():
        value = row.get(col)
        if value is None:
            continue
        if key is None:
            ctx[group] = value
        else:
            ctx.setdefault(group, {})[key] = value
    if ctx:
        env["context"] = ctx
    extra = _json(row.get("extra"))
    if isinstance(extra, dict):
        for k, v in extra.items():
            env.setdefault(k, v)
    return env


class LakeReader:
    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **dict(storage_options or {}))
        except Exception as exc:  # noqa: BLE001 - any fsspec/s3fs failure names the lake
            raise LakeReadError(f"lake {url} cannot be opened: {exc}") from exc
        self.root = self.root.rstrip("/")
        self.promoted = self._promoted()

    def _promoted(self) -> dict[str, tuple[str, str]]:
        try:
            data = self.fs.cat_file(f"{self.root}/_tripwire_sink/schema.json")
        except (FileNotFoundError, OSError):
            return {}
        columns = (_json(data.decode()) or {}).get("columns", [])
        return {c[0]: (c[1], c[2]) for c in columns if isinstance(c, list) and len(c) == 4}

    def days(self, since: str | None = None, until: str | None = None) -> list[tuple[str, list[str]]]:
        """``[(date, [parquet files])]`` in date order, ``since <= date <= until``."""
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError as exc:
            raise LakeReadError(f"lake {self.url} does not exist") from exc
        out = []
        for entry in sorted(entries):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if not name.startswith("date="):
                continue
            day = name[5:]
            if (since and day < since) or (until and day > until):
                continue
            files = sorted(f for f in self.fs.find(entry) if f.endswith(".parquet") and "/." not in f)
            if files:
                out.append((day, files))
        return out

    def count(self, days: list[tuple[str, list[str]]]) -> int:
        import pyarrow.parquet as pq

        total = 0
        for _, files in days:
            for f in files:
                with self.fs.open(f, "rb") as fh:
                    total += pq.ParquetFile(fh).metadata.num_rows
        return total

    def envelopes(self, days: list[tuple[str, list[str]]]) -> Iterator[dict[str, Any]]:
        """Every event of ``days``, each day sorted by event time (days never overlap in time)."""
        import pyarrow.parquet as pq

        for day, files in days:
            rows: list[dict[str, Any]] = []
            for f in files:
                try:
                    with self.fs.open(f, "rb") as fh:
                        table = pq.read_table(fh)
                except Exception as exc:  # noqa: BLE001
                    raise LakeReadError(f"lake file {f} cannot be read: {exc}") from exc
                rows.extend(row_to_envelope(r, self.promoted) for r in table.to_pylist())
            rows.sort(key=lambda e: e.get("timestamp") or "")
            yield from rows
