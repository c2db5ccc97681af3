"""Reading back from the event log for the console: one key's records, and the newest of a topic.

The log has no index by key, but a key's records all sit in one partition (the
partitioner of :mod:`tripwire.log.partition`), so a person's events and triggers
are found by reading that partition back from its end, at most
``scan_max_records`` records per partition (``[console] scan_max_records``): the
pages say how far back they looked. Works on any backend through
:meth:`EventLog.read`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import orjson

from tripwire.log import EventLog, Record
from tripwire.log.partition import partition_for

CHUNK = 5000


@dataclass
class Scan:
    """Records found, and how far back the partitions were read."""

    records: list[Record]
    scanned: int  # records read
    complete: bool  # every partition read back to its first record
    oldest_ms: int | None  # append time of the oldest record read


async def read_back(log: EventLog, topic: str, partition: int, limit: int,
                    keep: Callable[[Record], bool], stop_before_ms: int | None = None) -> Scan:
    """Records of one partition that ``keep`` accepts, reading back from its end: at most ``limit`` records,
    and none appended before ``stop_before_ms``."""
    ends = await log.end_offsets(topic)
    pos = ends.get(partition, 0)
    found: list[Record] = []
    scanned, complete, oldest = 0, False, None
    while True:
        if pos <= 0:
            complete = True
            break
        if scanned >= limit:
            break
        start = max(0, pos - min(CHUNK, limit - scanned))
        records = [r for r in await log.read(topic, partition, start, pos - start) if r.offset < pos]
        if not records:
            complete = True
            break
        scanned += len(records)
        oldest = records[0].timestamp_ms
        found.extend(r for r in records if keep(r))
        if stop_before_ms is not None and oldest < stop_before_ms:
            break
        if records[0].offset > start:  # retention took what was before
            complete = True
            break
        pos = start
    found.sort(key=lambda r: r.offset)
    return Scan(found, scanned, complete, oldest)


async def by_keys(log: EventLog, topic: str, keys: Collection[str], limit: int) -> Scan:
    """Every record of ``keys`` in ``topic`` (each key's partition read back), in append order per partition."""
    count = len(await log.partitions(topic))
    wanted: dict[int, set[bytes]] = {}
    for key in keys:
        raw = key.encode()
        wanted.setdefault(partition_for(raw, count), set()).add(raw)
    out = Scan([], 0, True, None)
    for partition, raw_keys in sorted(wanted.items()):
        scan = await read_back(log, topic, partition, limit, _key_in(raw_keys))
        out.records += scan.records
        out.scanned += scan.scanned
        out.complete = out.complete and scan.complete
        if scan.oldest_ms is not None:
            out.oldest_ms = scan.oldest_ms if out.oldest_ms is None else min(out.oldest_ms, scan.oldest_ms)
    return out


async def newest(log: EventLog, topic: str, since_ms: int, limit: int) -> Scan:
    """Every partition of ``topic`` read back to ``since_ms`` (append time), at most ``limit`` records each."""
    out = Scan([], 0, True, None)
    for partition in await log.partitions(topic):
        scan = await read_back(log, topic, partition, limit, lambda r: r.timestamp_ms >= since_ms, since_ms)
        out.records += scan.records
        out.scanned += scan.scanned
        out.complete = out.complete and (scan.complete or (scan.oldest_ms or 0) < since_ms)
    return out


def decode(record: Record) -> dict[str, Any] | None:
    try:
        value = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _key_in(keys: set[bytes]) -> Callable[[Record], bool]:
    return lambda r: r.key in keys
