"""``tripwire events tail``: print what arrived in a topic as JSON lines."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import orjson

from tripwire.cli.args import whole_number
from tripwire.config import Config
from tripwire.log import TOPICS, EventLog, LogError, open_log


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    events = sub.add_parser("events", help="inspect the event log")
    events_sub = events.add_subparsers(dest="events_command", metavar="SUBCOMMAND", required=True)
    tail = events_sub.add_parser("tail", help="print the last records of a topic as JSON lines")
    tail.add_argument("--topic", choices=TOPICS, default="events",
                      help="events (accepted), invalid (acknowledged but refused by the catalog) or triggers")
    tail.add_argument("-n", type=whole_number(0, "a count"), default=10, metavar="N", help="how many records (default 10)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    tail.add_argument("--log", metavar="URL", help="kafka://host:port to read instead of the configured log")
    tail.set_defaults(handler=lambda args, config: asyncio.run(tail_command(args, config)))


def _print(value: bytes) -> None:
    try:
        line = orjson.dumps(orjson.loads(value))
    except orjson.JSONDecodeError:
        line = orjson.dumps({"raw": value.decode("utf-8", "replace")})
    sys.stdout.buffer.write(line + b"\n")
    sys.stdout.flush()


async def tail(log: EventLog, topic: str, n: int) -> tuple[list[bytes], dict[int, int]]:
    """The last ``n`` values of ``topic`` (in append-time order) and the end offsets."""
    ends = await log.end_offsets(topic)
    records = []
    for partition, end in ends.items():
        records.extend(await log.read(topic, partition, max(0, end - n), n))
    records.sort(key=lambda r: (r.timestamp_ms, r.partition, r.offset))
    return [r.value for r in records[-n:]] if n > 0 else [], ends


async def tail_command(args: argparse.Namespace, config: Config) -> int:
    embedded = args.log in ("sqlite", "embedded") or (args.log is None and config.log.backend == "sqlite")
    if embedded and not (config.data_dir / "log.db").exists():
        # Opening it would create an empty log and print nothing: say why there is nothing to see.
        print(f"tripwire events tail: no event log at {(config.data_dir / 'log.db').resolve()} "
              "(nothing was collected with this data_dir; check --config)", file=sys.stderr)
        return 1
    log = open_log(config, url=args.log)
    try:
        await log.start()
        values, ends = await tail(log, args.topic, args.n)
        for value in values:
            _print(value)
        while args.follow:
            idle = True
            for partition, pos in ends.items():
                records = await log.read(args.topic, partition, pos, 1000)
                for record in records:
                    _print(record.value)
                if records:
                    ends[partition] = records[-1].offset + 1
                    idle = False
            if idle:
                await asyncio.sleep(0.2)
    except LogError as exc:  # the broker is away: say so in one line
        print(f"tripwire events tail: {exc}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(LogError):
            await log.stop()
    return 0
