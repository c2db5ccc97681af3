"""``tripwire lake compact``: merge the small files of closed date partitions.

A directory ``date=D`` (with ``hour=H`` below it under hourly partitioning) is
*closed* once day ``D`` ended more than ``sink.compact_min_age_s`` ago; late
events may still add files to it later and a later run merges those too.
``--date D`` compacts that day whatever its age.

In each directory (of the events table and of the invalid table) the files
smaller than ``target_bytes`` (two at least) are read, merged across their
column sets (files written before a column existed read as null there; an
``integer`` column the registry has since widened to ``number`` is cast),
sorted by event time and written as ``compact-<dir>-<digest>-<n>.parquet``
(``.parq`` for the invalid table) files of at most ``compact_max_file_rows`` rows. The switch from inputs to
outputs goes through :meth:`Lake.swap`: one directory exchange on local disk,
so a reader sees the old files or the new ones and never both; on S3 the
outputs are PUT and then the inputs deleted in one call. A journal
``_tripwire_sink/jobs/compact-<digest>.json`` is written first, so a run that
dies half-way is rolled forward (or back) by the next one, and the inputs are
recorded as removed so a sink replaying a journaled cut does not bring one back.
Row counts are checked before the switch.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from tripwire.lake_layout import EVENTS_TABLE, ColumnRegistry, date_of, table_of

from .config import SinkConfig
from .errors import SinkError
from tripwire.lake_layout import SINK_DIR

from .lake import Lake, data_files
from .registry import read_registry
from .schema import concat, conform, decode_parquet, encode_parquet
from .state import add_removed

logger = logging.getLogger(__name__)

JOBS = f"{SINK_DIR}/jobs"


@dataclass
class Compaction:
    directory: str
    inputs: list[str]
    outputs: list[str] = field(default_factory=list)
    rows: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


def closed_directories(directories: list[str], min_age_s: int, now_s: float | None = None) -> list[str]:
    now_s = time.time() if now_s is None else now_s
    out = []
    for d in directories:
        day = _day(d)
        if day is not None and day.timestamp() + 86_400 + min_age_s <= now_s:
            out.append(d)
    return out


def _day(directory: str) -> datetime | None:
    day = date_of(directory)
    if day is None:
        return None
    try:
        return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None


def recover(lake: Lake) -> int:
    """Finish or undo compactions a crash interrupted; returns how many were found."""
    lake.cleanup_swaps()
    jobs = lake.list(JOBS, ".json")
    for path in jobs:
        data = lake.read(path)
        if data is None:
            continue
        job = orjson.loads(data)
        d = job["directory"]
        outputs_there = all(lake.exists(f"{d}/{n}") for n in job["outputs"])
        if outputs_there:
            lake.delete([f"{d}/{n}" for n in job["inputs"]])
            logger.info("compaction of %s finished after an interruption", d)
        else:
            lake.delete([f"{d}/{n}" for n in job["outputs"]])
            logger.info("compaction of %s undone after an interruption", d)
        lake.delete([path])
    return len(jobs)


def compact(lake: Lake, cfg: SinkConfig, *, date: str | None = None, target_bytes: int = 64 * 1024 * 1024,
            now_s: float | None = None) -> list[Compaction]:
    """Compact the closed directories (or every directory of ``date``); returns what was merged."""
    recover(lake)
    files = data_files(lake)
    if date is not None:
        dirs = [d for d in files if date_of(d) == date]
    else:
        dirs = closed_directories(sorted(files), cfg.compact_min_age_s, now_s)
    registry = read_registry(lake) or ColumnRegistry()
    done = []
    for directory in sorted(dirs):
        small = sorted(n for n, size in files[directory].items() if size < target_bytes)
        if len(small) < 2:
            continue
        done.append(_compact_directory(lake, cfg, directory, small, files[directory], registry))
    return done


def _compact_directory(lake: Lake, cfg: SinkConfig, directory: str, inputs: list[str], sizes: dict[str, int],
                       registry: ColumnRegistry) -> Compaction:
    job = Compaction(directory, inputs, bytes_before=sum(sizes[n] for n in inputs))
    table_kind = table_of(f"{directory}/{inputs[0]}") or EVENTS_TABLE
    tables = []
    for name in inputs:
        data = lake.read(f"{directory}/{name}")
        if data is None:
            raise SinkError(f"{lake.full(directory + '/' + name)} vanished during compaction; run it again")
        t = decode_parquet(data).replace_schema_metadata(None)
        tables.append(conform(t, registry) if table_kind is EVENTS_TABLE else t)
    table = concat(tables)
    if table_kind is EVENTS_TABLE:
        table = conform(table, registry)
    job.rows = table.num_rows
    table = table.sort_by([("timestamp", "ascending"), ("message_id", "ascending")])
    digest = hashlib.sha256("\n".join(inputs).encode()).hexdigest()[:16]
    stem = directory.replace("/", "-").replace("=", "")
    step = cfg.compact_max_file_rows
    puts = {}
    for i, start in enumerate(range(0, max(table.num_rows, 1), step)):
        chunk = table.slice(start, step)
        name = f"compact-{stem}-{digest}-{i:03d}{table_kind.suffix}"
        puts[name] = encode_parquet(chunk, compression=cfg.compression, compression_level=cfg.compression_level,
                                    row_group_rows=cfg.row_group_rows, metadata={"tripwire.compacted_from": str(len(inputs))})
    check = sum(decode_parquet(b).num_rows for b in puts.values())
    if check != job.rows:
        raise SinkError(f"compaction of {directory} would write {check} rows for {job.rows}; nothing changed")
    job.outputs = sorted(puts)
    job.bytes_after = sum(len(b) for b in puts.values())
    journal = f"{JOBS}/compact-{digest}.json"
    lake.write(journal, orjson.dumps({"directory": directory, "inputs": inputs, "outputs": job.outputs}))
    add_removed(lake, directory, set(inputs) - set(puts))
    with lake.lock(directory, exclusive=True):
        lake.swap(directory, puts, inputs)
    lake.delete([journal])
    logger.info("compacted %d files of %s into %d (%d rows)", len(inputs), directory, len(puts), job.rows)
    return job
