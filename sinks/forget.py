"""``tripwire lake forget --user ID``: erase one person's rows from the lake (GDPR art. 17).

Every data file is scanned (only the id columns are decoded); each file holding
rows whose ``user_id``, ``anonymous_id`` or ``previous_id`` equals the id is
rewritten without them under the same name, or removed when nothing is left.
The changes of one directory go through :meth:`Lake.swap`: one atomic
directory exchange on local disk; on S3 each rewritten object is replaced by a
single PUT (atomic per object) and emptied ones are deleted. Every other row
stays exactly once. Running it again is harmless (and finishes an interrupted
run).

Not covered by a run: events still in the event log (kept ``log.retention_hours``)
or in files the sink has not written yet (at most ``sink.max_late_file_age_s``);
run it again after that long, or stop the sink first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .config import SinkConfig
from .lake import Lake, data_files
from .schema import encode_parquet
from .state import add_removed

logger = logging.getLogger(__name__)

ID_COLUMNS = ("user_id", "anonymous_id", "previous_id")


@dataclass
class Erasure:
    user: str
    files_scanned: int = 0
    rows_removed: int = 0
    rewritten: dict[str, int] = field(default_factory=dict)  # path -> rows removed
    deleted: dict[str, int] = field(default_factory=dict)


def _mask(table: pa.Table, user: str) -> pa.ChunkedArray | pa.Array:
    mask = None
    for col in ID_COLUMNS:
        if col in table.column_names:
            m = pc.fill_null(pc.equal(table.column(col), user), False)
            mask = m if mask is None else pc.or_(mask, m)
    return mask if mask is not None else pa.array([False] * table.num_rows)


def forget(lake: Lake, cfg: SinkConfig, user: str, *, dry_run: bool = False) -> Erasure:
    if not user:
        raise ValueError("forget needs a non-empty user id")
    report = Erasure(user)
    lake.cleanup_swaps()
    for directory, files in sorted(data_files(lake).items()):
        puts: dict[str, bytes] = {}
        deletes: list[str] = []
        for name in sorted(files):
            data = lake.read(f"{directory}/{name}")
            if data is None:
                continue  # compacted away meanwhile: its rows are in a file listed later or next run
            report.files_scanned += 1
            reader = pq.ParquetFile(pa.BufferReader(data))
            present = [c for c in ID_COLUMNS if c in reader.schema_arrow.names]
            hits = int(pc.sum(_mask(reader.read(columns=present), user)).as_py() or 0) if present else 0
            if not hits:
                continue
            table = reader.read()
            kept = table.filter(pc.invert(_mask(table, user)))
            path = f"{directory}/{name}"
            report.rows_removed += hits
            if kept.num_rows == 0:
                deletes.append(name)
                report.deleted[path] = hits
            else:
                meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
                puts[name] = encode_parquet(kept.replace_schema_metadata(None), compression=cfg.compression,
                                            compression_level=cfg.compression_level,
                                            row_group_rows=cfg.row_group_rows, metadata=meta)
                report.rewritten[path] = hits
        if (puts or deletes) and not dry_run:
            add_removed(lake, directory, set(deletes))
            with lake.lock(directory, exclusive=True):
                lake.swap(directory, puts, deletes)
            logger.info("erased %d row(s) from %s", sum(report.rewritten.get(f"{directory}/{n}", 0) for n in puts)
                        + sum(report.deleted.get(f"{directory}/{n}", 0) for n in deletes), directory)
    return report
