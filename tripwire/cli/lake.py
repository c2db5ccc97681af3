"""``tripwire lake schema|compact|migrate|forget``: the Parquet lake's columns, and its maintenance.

Each refuses (exit 1) a lake URL where no Tripwire lake is: a typo in ``--lake`` or a
forgotten ``--config`` must not read as "0 row(s) removed", nor create a lake there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date as Date
from pathlib import Path
from typing import TYPE_CHECKING

from tripwire.cli.args import whole_number
from tripwire.config import Config

if TYPE_CHECKING:  # the sink room is imported by the commands that use it
    from tripwire.sinks.config import SinkConfig
    from tripwire.sinks.forget import Erasure
    from tripwire.sinks.lake import Lake


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lake = sub.add_parser("lake", help="the Parquet lake: its columns, compaction, erasure, typed columns for old files")
    lake_sub = lake.add_subparsers(dest="lake_command", metavar="SUBCOMMAND", required=True)
    s = lake_sub.add_parser("schema", help="typed columns, their types, first-seen dates and conflicts",
                            description="Print the lake's typed property columns (learned from the data or "
                                        "declared by the catalog): type, the earliest event date with a value, "
                                        "the events seen with it, and the values kept in the JSON columns "
                                        "because they did not fit (conflicts).")
    s.add_argument("--json", action="store_true", help="the column registry as JSON")
    s.add_argument("--lake", metavar="URL", help="directory or s3://bucket/prefix (overrides sink.lake_url)")
    s.set_defaults(handler=schema_command)
    c = lake_sub.add_parser("compact", help="merge the small files of closed date partitions",
                            description="Merge the small files of each date partition whose day ended more than "
                                        "sink.compact_min_age_s ago (or of --date), atomically per directory.")
    c.add_argument("--date", metavar="YYYY-MM-DD", help="compact this day (default: every closed day)")
    c.add_argument("--target-mb", type=whole_number(1, "a size in MB"), default=64, metavar="MB", help="files below this size are merged (default 64)")
    c.add_argument("--lake", metavar="URL", help="directory or s3://bucket/prefix (overrides sink.lake_url)")
    c.set_defaults(handler=compact_command)
    m = lake_sub.add_parser("migrate", help="declare the catalog's columns and fill typed columns in files written "
                                            "before them, from their JSON columns")
    m.add_argument("--lake", metavar="URL", help="directory or s3://bucket/prefix (overrides sink.lake_url)")
    m.set_defaults(handler=migrate_command)
    f = lake_sub.add_parser("forget", help="erase every row of one user (userId or anonymousId), their identity "
                                           "links and the rules engine's state of them",
                            description="Rewrite every file holding rows whose userId, anonymousId or previousId "
                                        "is ID, without them, and the rows without a userId of the anonymous ids "
                                        "seen with it or linked to it in the event log (the history from before "
                                        "login). Then delete its identity links from the event log and tell the "
                                        "rules engine to drop its state of ID and of those anonymous ids. Covers "
                                        "what is in the lake: run it again after sink.max_late_file_age_s, or stop "
                                        "the sink first.")
    f.add_argument("--user", required=True, metavar="ID", help="the userId or anonymousId to erase")
    f.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    f.add_argument("--exact", action="store_true",
                   help="only rows carrying ID, not the anonymous history linked to it (see sinks/README.md)")
    f.add_argument("--lake", metavar="URL", help="directory or s3://bucket/prefix (overrides sink.lake_url)")
    f.set_defaults(handler=forget_command)


def lake_url_arg(url: str) -> str:
    """A ``--lake`` argument as ``sink.lake_url`` would be resolved (paths: from the working directory)."""
    if "://" in url and not url.startswith("file://"):
        return url.rstrip("/")
    return str(Path(url.removeprefix("file://")).expanduser().resolve())


def _open(args: argparse.Namespace, config: Config) -> tuple[SinkConfig, Lake]:
    from dataclasses import replace

    from tripwire.sinks.config import sink_config
    from tripwire.sinks.lake import open_lake

    cfg = sink_config(config)
    if args.lake:
        cfg = replace(cfg, lake_url=lake_url_arg(args.lake))
    return cfg, open_lake(cfg.lake_url, cfg.storage_options() if cfg.is_s3 else None)


def _missing(command: str, lake: Lake) -> bool:
    """True (and says so) when ``lake`` holds neither the sink's registry nor a data file."""
    from tripwire.sinks.errors import SinkError
    from tripwire.sinks.lake import data_files
    from tripwire.sinks.registry import SCHEMA_PATH

    try:
        if lake.exists(SCHEMA_PATH) or data_files(lake):
            return False
    except SinkError as exc:  # unreachable (S3 down, bad credentials): one line, as the command's own errors
        print(f"tripwire lake {command}: {exc}", file=sys.stderr)
        return True
    print(f"tripwire lake {command}: no Tripwire lake at {lake.url} (no {SCHEMA_PATH}, no data files); "
          "check --lake, sink.lake_url and --config", file=sys.stderr)
    return True


_SQL_TYPES = {"string": "VARCHAR", "integer": "BIGINT", "number": "DOUBLE", "boolean": "BOOLEAN",
              "date-time": "TIMESTAMPTZ"}
_WHY = {"type": "not the column's type", "name": "another property has this column's name",
        "limit": "over sink.max_typed_columns", "range": "out of range"}


def schema_command(args: argparse.Namespace, config: Config) -> int:
    from tripwire.sinks.errors import SinkError
    from tripwire.sinks.registry import read_registry

    cfg, lake = _open(args, config)
    if _missing("schema", lake):
        return 1
    try:
        registry = read_registry(lake)
    except SinkError as exc:
        print(f"tripwire lake schema: {exc}", file=sys.stderr)
        return 1
    if registry is None:
        print(f"tripwire lake schema: {lake.url} has data files but no column registry yet; start a sink on it",
              file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.buffer.write(registry.to_bytes() + b"\n")
        return 0
    print(f"lake {lake.url}: partitioned by {registry.partitioning or cfg.partitioning}, "
          f"{len(registry.columns)} typed column(s), revision {registry.revision}")
    if registry.columns:
        rows = [("column", "type", "from", "first seen", "events")]
        for c in registry.columns:
            kind = _SQL_TYPES.get(c.kind, c.kind)
            if c.widened:
                kind += f" (BIGINT until {c.widened})"
            rows.append((c.column, kind, c.origin, c.first_seen or "-", ", ".join(c.events) or "-"))
        _table(rows)
    if registry.conflicts:
        print(f"\n{len(registry.conflicts)} conflict(s): values kept in the JSON column (first of each kind)")
        rows = [("column", "event", "value", "first seen", "why")]
        rows += [(c.column, c.event, c.kind, c.first_seen or "-", _WHY.get(c.why, c.why)) for c in registry.conflicts]
        _table(rows)
    return 0


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1])


def compact_command(args: argparse.Namespace, config: Config) -> int:
    from tripwire.sinks.compact import compact
    from tripwire.sinks.errors import SinkError

    if args.date is not None:
        try:
            Date.fromisoformat(args.date)
            if len(args.date) != 10:
                raise ValueError(args.date)
        except ValueError:
            print(f"tripwire lake compact: --date {args.date!r} is not YYYY-MM-DD (a calendar date)", file=sys.stderr)
            return 2
    cfg, lake = _open(args, config)
    if _missing("compact", lake):
        return 1
    try:
        done = compact(lake, cfg, date=args.date, target_bytes=args.target_mb * 1024 * 1024)
    except SinkError as exc:
        print(f"tripwire lake compact: {exc}", file=sys.stderr)
        return 1
    for job in done:
        print(f"{job.directory}: {len(job.inputs)} files -> {len(job.outputs)} ({job.rows} rows, "
              f"{job.bytes_before} -> {job.bytes_after} bytes)")
    if not done:
        where = f"date={args.date}" if args.date else (
            f"days that ended over {cfg.compact_min_age_s}s ago (sink.compact_min_age_s; --date D for another)")
        print(f"nothing to compact in {where}: no directory has two files under {args.target_mb} MB")
    return 0


def forget_command(args: argparse.Namespace, config: Config) -> int:
    from tripwire.sinks.forget import forget

    cfg, lake = _open(args, config)
    if _missing("forget", lake):
        return 1

    def erase_lake(also_linked: set[str]) -> Erasure:
        return forget(lake, cfg, args.user, dry_run=args.dry_run, exact=args.exact, also_linked=also_linked)

    if config.log.backend == "kafka" or (config.data_dir / "log.db").exists():
        return asyncio.run(_forget_everywhere(args, config, erase_lake))
    from tripwire.sinks.errors import SinkError

    print(f"no event log at {(config.data_dir / 'log.db').resolve()}: no identity links to follow, "
          "no engine state to erase (check --config)")
    try:
        report = erase_lake(set())
    except (SinkError, ValueError) as exc:
        print(f"tripwire lake forget: {exc}", file=sys.stderr)
        return 1
    _print_erasure(args, report, [])
    return 0


async def _forget_everywhere(args: argparse.Namespace, config: Config, erase_lake: Callable[[set[str]], Erasure]) -> int:
    """The lake, then the event log (tripwire.erasure): the identity links of the user, and the engine's state
    of every key erased. The links are read first: they name anonymous ids the lake may not show."""
    from tripwire.erasure import erase, linked_ids
    from tripwire.log import LogError, open_log
    from tripwire.sinks.errors import SinkError

    log = open_log(config)
    in_log: list[str] = []
    log_error: Exception | None = None
    try:
        try:
            await log.start()
            if not await log.ready():
                raise LogError("not reachable")
            in_log = await linked_ids(log, args.user)
        except LogError as exc:
            log_error = exc
        try:
            report = await asyncio.to_thread(erase_lake, set(in_log))
        except (SinkError, ValueError) as exc:
            print(f"tripwire lake forget: {exc}", file=sys.stderr)
            return 1
        _print_erasure(args, report, in_log)
        if args.dry_run or log_error is not None:
            if log_error is not None:
                print(f"tripwire lake forget: the event log: {log_error}; the lake is done, run it again to erase "
                      "the identity links and the rules engine's state", file=sys.stderr)
                return 1
            return 0
        keys = [] if args.exact else sorted(set(in_log) | set(report.linked))
        try:
            links = await erase(log, args.user, keys, int(time.time() * 1000))
        except LogError as exc:
            print(f"tripwire lake forget: the event log: {exc}; run it again to erase the identity links and the "
                  "rules engine's state", file=sys.stderr)
            return 1
        print(f"event log: {len(links)} identity link(s) of {args.user} deleted; the rules engine forgets "
              f"{1 + len(keys)} key(s) ({', '.join([args.user, *keys])})")
        return 0
    finally:
        with contextlib.suppress(LogError):
            await log.stop()


def _print_erasure(args: argparse.Namespace, report: Erasure, in_log: list[str]) -> None:
    verb = "would remove" if args.dry_run else "removed"
    rewrote, deleted = ("would rewrite", "would delete") if args.dry_run else ("rewrote", "deleted")
    for path, n in sorted(report.rewritten.items()):
        print(f"{rewrote} {path}: {verb} {n} row(s)")
    for path, n in sorted(report.deleted.items()):
        print(f"{deleted} {path}: {verb} {n} row(s), none left")
    linked = f" with the anonymous ids seen with it: {', '.join(report.linked)}" if report.linked else ""
    print(f"{report.files_scanned} files scanned, {verb} {report.rows_removed} row(s) of {args.user}{linked} "
          f"in {len(report.rewritten) + len(report.deleted)} file(s)")
    if in_log and not args.exact:
        print(f"identity links in the event log: {', '.join(in_log)}")


def migrate_command(args: argparse.Namespace, config: Config) -> int:
    from tripwire.sinks.errors import SinkError
    from tripwire.sinks.migrate import migrate

    cfg, lake = _open(args, config)
    if _missing("migrate", lake):
        return 1
    try:
        report = migrate(lake, cfg)
    except SinkError as exc:
        print(f"tripwire lake migrate: {exc}", file=sys.stderr)
        return 1
    new = f"new columns: {', '.join(report.columns)}; " if report.columns else ""
    print(f"{new}{report.values} value(s) moved out of the JSON columns into typed columns, "
          f"{report.files} file(s) rewritten")
    return 0
