"""``tripwire rules whynot RULE --person ID``: why a rule did (not) fire for one person, in the terminal.

The same answer as the console's person page: the person's events read back from the
log (their key's partition, and the ids seen next to them), then :func:`tripwire.rules.why_not`
per correlation key, with the wall clock and the engine's grace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import orjson

from tripwire.config import Config
from tripwire.log import LogError, open_log


def add_parser(rules_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    wn = rules_sub.add_parser(
        "whynot", help="why a rule did or did not fire for one person (its events from the log)",
        description="Read one person's events from the event log (by anonymousId or userId, and the ids seen "
                    "next to it) and say, per correlation key, where the rule stopped matching and why: the event "
                    "missing, the condition false with the field's value, outside the window, cancelled, cooldown. "
                    "Exit 1: no such rule, or no event log.")
    wn.add_argument("rule", metavar="RULE", help="the rule's name, as in its rule file")
    wn.add_argument("--person", required=True, metavar="ID", help="anonymousId or userId")
    wn.add_argument("--log", metavar="URL", help="kafka://host:port to read instead of the configured log")
    wn.add_argument("--json", action="store_true", help="print the answer as JSON")
    wn.set_defaults(handler=lambda args, config: asyncio.run(whynot_command(args, config)))


async def whynot_command(args: argparse.Namespace, config: Config) -> int:
    from tripwire.console.config import console_config
    from tripwire.console.person import journey
    from tripwire.console.rulefiles import load
    from tripwire.rules import rules_config

    files = load(config)
    rule = files.rule(args.rule)
    if rule is None:
        names = ", ".join(f'"{r.name}"' for r in files.plan.rules) or "none"
        print(f"tripwire: no rule \"{args.rule}\" in {files.directory} (rules: {names})", file=sys.stderr)
        return 1
    if args.log is None and config.log.backend == "sqlite" and not (config.data_dir / "log.db").exists():
        print(f"tripwire: no event log at {(config.data_dir / 'log.db').resolve()} (check --config)", file=sys.stderr)
        return 1
    rc = rules_config(config)
    log = open_log(config, url=args.log)
    try:
        await log.start()
        j = await journey(log, args.person, rules=[rule], deliveries=None,
                          limit=console_config(config).scan_max_records, wait_ms=rc.grace_ms + rc.allowed_lateness_ms)
    except LogError as exc:
        print(f"tripwire rules whynot: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(LogError):
            await log.stop()
    if args.json:
        out = [{"key": p.key, "verdict": p.why.verdict, "summary": p.why.summary,
                "steps": [{"step": s.index + 1, "text": s.text, "state": s.state, "reason": s.reason} for s in p.why.steps]}
               for p in j.progress]
        sys.stdout.buffer.write(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    print(f'rule "{rule.name}" for {args.person}: {len(j.events)} event(s) of {", ".join(j.ids)}')
    for p in j.progress:
        print(f"\nkey {p.key}: {p.why.verdict}\n  {p.why.summary}")
        for s in p.why.steps:
            print(f"  step {s.index + 1} [{s.state}] {s.text}" + (f"\n    {s.reason}" if s.reason else ""))
            for c in s.candidates:
                for k in c.checks:
                    print(f"    {c.message_id}: {k.words()}")
    return 0
