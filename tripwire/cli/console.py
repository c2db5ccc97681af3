"""``tripwire console``: the web console alone, on the configured log (the scale-out stack's role)."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import replace

from tripwire.config import Config
from tripwire.log import open_log
from tripwire.service import run_services


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "console", help="run the web console alone (live events, rules, people, backtests, deliveries)",
        description="Serve the web console on console.host:console.port (loopback by default; any other address "
                    "needs console.token). It reads the configured log (or --log), the rules directory, the "
                    "engine's status, the lake and the webhook store in data_dir; see console/README.md.")
    p.add_argument("--log", metavar="URL", help="kafka://host:port to read instead of the configured log")
    p.add_argument("--host", help="listen address (console.host)")
    p.add_argument("--port", type=int, help="listen port (console.port; 0 = any free port)")
    p.set_defaults(handler=lambda args, config: asyncio.run(console_command(args, config)))


async def console_command(args: argparse.Namespace, config: Config) -> int:
    from tripwire.console import ConsoleService

    section = dict(config.raw.get("console", {}))
    if args.host:
        section["host"] = args.host
    if args.port is not None:
        section["port"] = args.port
    config = replace(config, raw={**config.raw, "console": section})
    service = ConsoleService(config, open_log(config, url=args.log), port_set=True)  # refuses an open address first
    log = service.console.log
    await log.start()
    try:
        return await run_services([service])
    finally:
        await log.stop()
