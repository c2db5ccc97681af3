"""``tripwire lake forget --user ID``: erase one person's rows from the lake (GDPR art. 17).

Every data file is scanned (only the id columns are decoded); each file holding
rows whose ``user_id``, ``anonymous_id`` or ``previous_id`` equals the id is
rewritten without them under the same name, or removed when nothing is left.

The person's history from before they were identified goes too: the anonymous
ids seen with the user id (``anonymous_id`` of its rows, ``previous_id`` of its
alias calls) are *linked*, and rows of a linked anonymous id that carry no user
id are erased as well (rows where another user id is set, e.g. someone else
logging in on the same browser, stay); rows whose ``user_id`` is an id the user
was aliased from go too. ``exact=True`` erases only the rows carrying the id.
The changes of one directory go through :meth:`Lake.swap`: one atomic
directory exchange on local disk; on S3 each rewritten object is replaced by a
single PUT (atomic per object) and emptied ones are deleted. Every other row
stays exactly once. Running it again is harmless (and finishes an interrupted
run).

Not covered by a run: events still in the event log (kept ``log.retention``)
or in files the sink has not written yet (at most ``sink.max_late_file_age_s``);
run it again after that long, or stop the sink first.
"""

from __future__ import annotations

import logging
from collections.abc import Set as AbstractSet
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
    linked: list[str] = field(default_factory=list)  # anonymous / previous ids seen with the user id
    files_scanned: int = 0
    rows_removed: int = 0
    rewritten: dict[str, int] = field(default_factory=dict)  # path -> rows removed
    deleted: dict[str, int] = field(default_factory=dict)


def _mask(table: pa.Table, user: str, linked: AbstractSet[str] = frozenset(),
          previous: AbstractSet[str] = frozenset()) -> pa.ChunkedArray | pa.Array:
    masks = []
    for col in ID_COLUMNS:
        if col in table.column_names:
            masks.append(pc.equal(table.column(col), user))
    names = table.column_names
    if previous and "user_id" in names:  # rows under an id the user was aliased from
        masks.append(pc.is_in(table.column("user_id"), pa.array(sorted(previous), pa.string())))
    if linked and "anonymous_id" in names:  # anonymous rows of a browser the user was seen on
        anonymous = pc.is_in(table.column("anonymous_id"), pa.array(sorted(linked), pa.string()))
        masks.append(pc.and_(anonymous, pc.is_null(table.column("user_id"))) if "user_id" in names else anonymous)
    mask = None
    for m in masks:
        m = pc.fill_null(m, False)
        mask = m if mask is None else pc.or_(mask, m)
    return mask if mask is not None else pa.array([False] * table.num_rows)


def linked_ids(lake: Lake, user: str) -> tuple[set[str], set[str]]:
    """The anonymous ids of the user's rows, and the previous ids of its alias calls."""
    anonymous: set[str] = set()
    previous: set[str] = set()
    for directory, files in sorted(data_files(lake).items()):
        for name in sorted(files):
            data = lake.read(f"{directory}/{name}")
            if data is None:
                continue
            reader = pq.ParquetFile(pa.BufferReader(data))
            present = [c for c in ID_COLUMNS if c in reader.schema_arrow.names]
            if "user_id" not in present:
                continue
            table = reader.read(columns=present)
            mine = table.filter(pc.fill_null(pc.equal(table.column("user_id"), user), False))
            for col, into in (("anonymous_id", anonymous), ("previous_id", previous)):
                if col in present:
                    into.update(v for v in mine.column(col).to_pylist() if v)
    anonymous.discard(user)
    previous.discard(user)
    return anonymous | previous, previous


def forget(lake: Lake, cfg: SinkConfig, user: str, *, dry_run: bool = False, exact: bool = False,
           also_linked: AbstractSet[str] = frozenset()) -> Erasure:
    """``also_linked``: anonymous ids linked to ``user`` elsewhere (the event log's identity links), erased
    like the ones the lake shows."""
    if not user:
        raise ValueError("forget needs a non-empty user id")
    report = Erasure(user)
    lake.cleanup_swaps()
    linked, previous = (set[str](), set[str]()) if exact else linked_ids(lake, user)
    if not exact:
        linked |= set(also_linked) - {user}
    report.linked = sorted(linked)
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
            hits = int(pc.sum(_mask(reader.read(columns=present), user, linked, previous)).as_py() or 0) if present else 0
            if not hits:
                continue
            table = reader.read()
            kept = table.filter(pc.invert(_mask(table, user, linked, previous)))
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
