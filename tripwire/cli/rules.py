"""``tripwire rules check|explain|backtest``: the marketer's tools for rule files."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from tripwire.cli.args import whole_number
from tripwire.config import Config

if TYPE_CHECKING:  # the rules room is imported by the commands that use it
    from tripwire.rules.backtest import BacktestResult, Progress
    from tripwire.rules.plan import Plan, RulePlan


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rules = sub.add_parser("rules", help="check, explain and backtest trigger rule files",
                           description="Tools for trigger rule files (*.rules); the language: rules/LANGUAGE.md.")
    rules_sub = rules.add_subparsers(dest="rules_command", metavar="SUBCOMMAND", required=True)

    paths_help = "rule files, or directories whose *.rules files are read (as the engine does)"
    # also after the sub-command (`rules check --config tripwire.toml rules/`); SUPPRESS keeps the
    # global option's value when this one is not given
    config_help = "tripwire.toml to read: endpoints, and the event catalog ([collector] catalog) to check against"
    check = rules_sub.add_parser(
        "check", help="report every error as file:line:col (exit 1 on errors)",
        description="Parse and compile rule files the way the engine does. Each problem is printed as "
                    "file:line:col: message, with the line and a caret. A post to an endpoint missing from the "
                    "config is an error when a config file is in use (--config, $TRIPWIRE_CONFIG or "
                    "./tripwire.toml), a warning otherwise. With an event catalog in the config, events it "
                    "does not list, properties it does not list and comparisons its types rule out are "
                    "warnings. Exit 0: no errors; 1: errors.")
    check.add_argument("paths", nargs="+", metavar="PATH", help=paths_help)
    check.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=config_help)
    check.add_argument("--strict", action="store_true", help="treat warnings as errors")
    check.set_defaults(handler=check_command)

    explain = rules_sub.add_parser(
        "explain", help="each rule in plain English, with its matching semantics",
        description="Print each rule that compiles in plain English: its steps, key, time bounds, cap and "
                    "payload, and how it matches (see rules/LANGUAGE.md). Errors are printed as by check "
                    "(exit 1).")
    explain.add_argument("paths", nargs="+", metavar="PATH", help=paths_help)
    explain.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=config_help)
    explain.set_defaults(handler=explain_command)

    bt = rules_sub.add_parser(
        "backtest", help="replay history through the engine: triggers per rule per day",
        description="Replay recorded events through the same engine, in event-time order with no lateness, "
                    "and print per rule the triggers per day (UTC, of the trigger time) and sample matches "
                    "(--out: every trigger, with the id the live engine gives it). Nothing is posted. "
                    "Matches still waiting when history ends are reported, not fired. "
                    "Exit 1: the rules have errors; 2: bad options, or the events cannot be read.")
    bt.add_argument("paths", nargs="+", metavar="PATH", help=paths_help)
    source = bt.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", metavar="FILE.jsonl", help="Segment envelopes, one JSON object per line ('-' = stdin); each needs timestamp, messageId "
                             "and anonymousId or userId. Streamed: a file in time order is read as it is, another is "
                             "sorted first in temporary files ($TMPDIR)")
    source.add_argument("--lake", metavar="DIR|s3://...", help="the Parquet lake written by the sink (S3 credentials and endpoint: the usual AWS_* variables or [rules] storage_options)")
    bt.add_argument("--since", metavar="YYYY-MM-DD", type=_day,
                    help="first day (UTC, of the event time) to replay: the first lake partition read, or the "
                         "first day of --events kept")
    bt.add_argument("--until", metavar="YYYY-MM-DD", type=_day, help="last day to replay (inclusive), likewise")
    bt.add_argument("--samples", type=whole_number(0, "a count"), default=3, metavar="N",
                    help="sample matches to print per rule (default 3, 0 = none)")
    bt.add_argument("--json", action="store_true", help="print the report as JSON")
    bt.add_argument("--out", metavar="FILE.jsonl",
                    help="also write every trigger to FILE, one JSON object per line, as the live engine writes it: "
                         "id (the webhook-id), rule, key, fired_at, events (the matched messageIds) and payload")
    bt.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    bt.set_defaults(handler=backtest_command)

    from tripwire.cli.whynot import add_parser as add_whynot

    add_whynot(rules_sub)

    st = rules_sub.add_parser(
        "status", help="what the running engine does: each rule's state, late and refused events per source",
        description="Read the running engine's status (written every few seconds next to its state: "
                    "one per engine process: <data_dir>/rules-status/, or under rules.checkpoint_url on Kafka) and print "
                    "each rule: running or quarantined (with the error), pending partial matches, triggers, errors, "
                    "late cancels; rule files that do not compile; and per source the collector's delivery delay "
                    "(p50/p99, from its /metrics) next to the grace, and events refused as older than max lateness.")
    st.add_argument("--collector", metavar="URL",
                    help="the collector whose /metrics holds the delay histogram (default: http://server.host:server.port)")
    st.add_argument("--json", action="store_true", help="print the merged status as JSON")
    st.set_defaults(handler=status_command)


def _day(text: str) -> str:
    """YYYY-MM-DD, a real day (lake partitions and event days compare as these strings)."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        day = None
    if day is None or day.isoformat() != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day: write YYYY-MM-DD, e.g. 2026-11-29")
    return text


def rule_files(paths: list[str]) -> tuple[list[Path], list[str]]:
    files, missing = [], []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files.extend(sorted(x for x in p.glob("*.rules") if x.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            missing.append(raw)
    return files, missing


def _unread(paths: list[str]) -> list[str]:
    """Warnings about what the engine would not read: a directory without *.rules files, files
    in it named like rule files that do not end in .rules (cart.rule, shop.rules.txt)."""
    notes = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            if not any(x.is_file() for x in p.glob("*.rules")):
                notes.append(f"{p}: warning: no *.rules files in this directory")
            for x in sorted(p.iterdir()):
                if x.is_file() and x.suffix != ".rules" and "rule" in x.name.lower() and not x.name.startswith("."):
                    notes.append(f"{x}: warning: not read (the engine reads *.rules files only); rename it to *.rules")
        elif p.is_file() and p.suffix != ".rules":
            notes.append(f"{p}: warning: checked, but the engine reads *.rules files only")
    return notes


def _compile(paths: list[str], config: Config, strict: bool = False) -> tuple[Plan, int, int]:
    """Compile everything, print diagnostics to stderr; (plan, errors, warnings)."""
    from tripwire.rules.catalog import rules_catalog
    from tripwire.rules.compiler import build_plan, compile_text
    from tripwire.rules.errors import Diagnostic, RulesError
    from tripwire.rules.parser import decode_rules
    from tripwire.rules.service import endpoint_policy

    files, missing = rule_files(paths)
    errors = warnings = 0
    for m in missing:
        print(f"{m}: no such file or directory", file=sys.stderr)
        errors += 1
    for note in _unread(paths):
        print(note, file=sys.stderr)
        if strict:
            errors += 1
        else:
            warnings += 1
    names, severity = endpoint_policy(config)
    catalog = None
    try:
        catalog = rules_catalog(config)
    except RulesError as exc:
        print(f"tripwire: warning: {exc}; catalog checks skipped", file=sys.stderr)
        errors, warnings = (errors + 1, warnings) if strict else (errors, warnings + 1)
    compiled: list[list[RulePlan]] = []
    for f in files:
        try:
            text, bad = decode_rules(f.read_bytes(), str(f))
        except OSError as exc:
            print(f"{f}:1:1: cannot read the file: {exc.strerror or exc}", file=sys.stderr)
            errors += 1
            continue
        if text is None:
            assert bad is not None
            print(bad.format(), file=sys.stderr)
            errors += 1
            continue
        plans, diagnostics = compile_text(text, str(f), endpoints=names, endpoint_severity=severity, catalog=catalog)
        compiled.append(plans)
        if not plans and not diagnostics:
            diagnostics = [Diagnostic(str(f), 1, 1, "the file defines no rules (it is empty or only comments)", "warning")]
        for d in diagnostics:
            print(d.format(), file=sys.stderr)
            if d.severity == "error" or strict:
                errors += 1
            else:
                warnings += 1
    plan, dups = build_plan(compiled)
    for d in dups:
        print(d.format(), file=sys.stderr)
        errors += 1
    return plan, errors, warnings


def check_command(args: argparse.Namespace, config: Config) -> int:
    plan, errors, warnings = _compile(args.paths, config, args.strict)
    n = len(plan.rules)
    summary = f"{n} rule(s) ok" if not errors else f"{errors} error(s)"
    if warnings:
        summary += f", {warnings} warning(s)"
    print(summary, file=sys.stderr if errors else sys.stdout)
    return 1 if errors else 0


def explain_command(args: argparse.Namespace, config: Config) -> int:
    from tripwire.rules.explain import explain

    plan, errors, _ = _compile(args.paths, config)
    for rule in plan.rules:
        print(explain(rule))
        print()
    return 1 if errors else 0


def backtest_command(args: argparse.Namespace, config: Config) -> int:
    from tripwire.rules.backtest import Progress, backtest, format_report
    from tripwire.rules.errors import RulesError

    if args.since and args.until and args.since > args.until:
        print(f"tripwire: --since {args.since} is after --until {args.until}", file=sys.stderr)
        return 2
    plan, errors, _ = _compile(args.paths, config)
    if errors:
        return 1
    bar = None if args.no_progress else Progress()
    out = None
    if args.out is not None:
        try:
            out = open(args.out, "wb")  # noqa: SIM115 - closed below, also when reading fails
        except OSError as exc:
            print(f"tripwire: cannot write --out {args.out}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    on_trigger = None if out is None else _line_writer(out)
    try:
        if args.events is not None:
            result = _backtest_jsonl(args, plan, bar, out, on_trigger)
        else:
            from tripwire.rules.config import rules_config
            from tripwire.rules.fields import fields_read
            from tripwire.rules.lake import LakeReader

            reader = LakeReader(args.lake, rules_config(config).storage_options or None)
            days = reader.days(args.since, args.until)
            if not days:
                span = f" from {args.since or 'the start'} to {args.until or 'the end'}" if args.since or args.until else ""
                print(f"tripwire: no date=YYYY-MM-DD partitions with Parquet files in {args.lake}{span}",
                      file=sys.stderr)
            if bar is not None:
                bar.phase("backtest", total=reader.count(days))
            result = backtest(plan, reader.envelopes(days, fields_read(plan)),
                              samples=args.samples, progress=bar.update if bar else None, on_trigger=on_trigger)
        if bar is not None:
            bar.close(result.events)
    except _OutFailed as exc:
        print(f"tripwire: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tripwire: cannot read events: {exc}", file=sys.stderr)
        return 2
    except RulesError as exc:
        print(f"tripwire: {exc}", file=sys.stderr)
        return 2
    finally:
        if out is not None:
            out.close()
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(format_report(result))
    return 0


def _backtest_jsonl(args: argparse.Namespace, plan: Plan, bar: Progress | None, out: BinaryIO | None,
                    on_trigger: Callable[[dict[str, Any]], None] | None) -> BacktestResult:
    """Replay ``--events``: as the file has them while they are in time order (the common case); if they
    are not, start over on the file sorted out of core. Starting over needs a file that can be read
    again and an ``--out`` that can be emptied; without them, sort from the start."""
    from tripwire.rules.backtest import backtest
    from tripwire.rules.history import JsonlHistory, NotInOrder

    history = JsonlHistory(args.events, args.since, args.until, progress=bar)

    def replay(events: Iterator[tuple[int, dict[str, Any]]]) -> BacktestResult:
        result = backtest(plan, events, samples=args.samples, progress=bar.update if bar else None,
                          on_trigger=on_trigger)
        result.skipped += history.skipped
        return result

    if history.rereadable and (out is None or out.seekable()):
        try:
            return replay(history.in_file_order())
        except NotInOrder as exc:
            if bar is not None:
                bar.end_line()
            print(f"tripwire: {exc}: sorting the events first", file=sys.stderr)
            if out is not None:
                out.seek(0)
                out.truncate()
    return replay(history.in_time_order())


class _OutFailed(Exception):
    """Writing ``--out`` failed (told apart from reading the events)."""


def _line_writer(out: BinaryIO) -> Callable[[dict[str, Any]], None]:
    def write(record: dict[str, Any]) -> None:
        try:
            out.write(orjson.dumps(record) + b"\n")
        except OSError as exc:
            raise _OutFailed(f"cannot write --out {out.name}: {exc.strerror or exc}") from exc
    return write


def status_command(args: argparse.Namespace, config: Config) -> int:
    import httpx

    from tripwire.rules.status import delays_from_metrics, engine_status, format_status

    view = engine_status(config)
    host = config.server.host if config.server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    url = (args.collector or f"http://{host if ':' not in host else f'[{host}]'}:{config.server.port}").rstrip("/") + "/metrics"
    delays, note = None, ""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its one INFO line per request is noise here
    try:
        reply = httpx.get(url, timeout=3.0)
        reply.raise_for_status()
        delays = delays_from_metrics(reply.text)
    except (httpx.HTTPError, ValueError) as exc:
        note = f"event delay: the collector's metrics at {url} are not readable ({type(exc).__name__}); pass --collector URL"
    if args.json:
        sys.stdout.buffer.write(orjson.dumps({**view, "delays": delays}, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(format_status(view, delays, note))
    return 0 if view["instances"] else 1
