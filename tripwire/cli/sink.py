"""``tripwire sink``: the Parquet sink on its own (scale-out: one or more per consumer group).

Metrics and probes: ``tripwire --metrics-port PORT sink`` (see :mod:`tripwire.metrics`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from tripwire.cli.collector import ensure_data_dir
from tripwire.config import Config
from tripwire.log import open_log
from tripwire.service import Supervisor, run_services


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sink", help="consume the events topic into the Parquet lake (sink.lake_url)",
        description="Write the events topic into the Hive-partitioned Parquet lake (sink.lake_url, default "
                    "<data_dir>/lake; s3://bucket/prefix). Several sinks sharing sink.group split the partitions. "
                    "Metrics and probes: tripwire --metrics-port PORT sink.",
    )
    p.add_argument("--log", metavar="URL", help="kafka://host:port to read instead of the configured log")
    p.add_argument("--lake", metavar="URL", help="directory or s3://bucket/prefix (overrides sink.lake_url)")
    p.set_defaults(handler=lambda args, config: asyncio.run(sink_command(args, config)))


async def sink_command(args: argparse.Namespace, config: Config) -> int:
    from dataclasses import replace

    from tripwire.sinks.config import sink_config
    from tripwire.sinks.errors import SinkError
    from tripwire.sinks.service import SinkService
    from tripwire.cli.lake import lake_url_arg

    cfg = sink_config(config)
    if args.lake:
        cfg = replace(cfg, lake_url=lake_url_arg(args.lake))
    ensure_data_dir(config)
    log = open_log(config, url=args.log)
    await log.start()
    try:
        # Restarted in the process after any failure (the broker away, the lake refusing writes); only a
        # configuration error at the first start exits.
        return await run_services([Supervisor(lambda: SinkService(cfg, log), SinkService(cfg, log))])
    except SinkError as exc:  # the catalog cannot be used
        print(f"tripwire sink: {exc}", file=sys.stderr)
        return 1
    finally:
        await log.stop()
