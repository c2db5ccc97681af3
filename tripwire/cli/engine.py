"""``tripwire engine``: the rules engine alone, joining a consumer group (scale-out with Kafka)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from tripwire.config import Config
from tripwire.log import open_log
from tripwire.service import Supervisor, run_services

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    engine = sub.add_parser(
        "engine",
        help="run the rules engine alone; with Kafka, instances sharing rules.group split the partitions",
        description="Evaluate the rules (rules.dir) on the events topic and write triggers. With Kafka, engines "
                    "sharing rules.group split the partitions; they must share rules.checkpoint_url (s3://...) so a "
                    "partition's state moves with it. Metrics and probes: tripwire --metrics-port PORT engine.",
    )
    engine.add_argument("--log", metavar="URL", help="kafka://host:port (default: the configured log)")
    engine.add_argument("--rules", metavar="DIR", help="rules directory (rules.dir)")
    engine.add_argument("--group", help="consumer group (rules.group)")
    engine.add_argument("--checkpoint-url", metavar="DIR|s3://...", help="Kafka mode: where partition checkpoints go, shared by the group (rules.checkpoint_url)")
    engine.set_defaults(handler=lambda args, config: asyncio.run(engine_command(args, config)))


async def engine_command(args: argparse.Namespace, config: Config) -> int:
    from dataclasses import replace

    from tripwire.rules.service import build_service

    section = dict(config.raw.get("rules", {}))
    if args.rules:
        section["dir"] = str(config.resolve(args.rules))
    if args.group:
        section["group"] = args.group
    if args.checkpoint_url:
        section["checkpoint_url"] = args.checkpoint_url
    config = replace(config, raw={**config.raw, "rules": section})
    log = open_log(config, url=args.log)
    if args.log is not None and args.log.startswith("kafka://"):  # the engine's state follows the log it reads
        config = replace(config, log=replace(config.log, backend="kafka", kafka_bootstrap=args.log[len("kafka://"):]))
    await log.start()
    try:
        # Restarted in the process after any failure (the broker away, the checkpoint store down); only a
        # configuration error at the first start exits.
        return await run_services([Supervisor(lambda: build_service(config, log), build_service(config, log))])
    finally:
        await log.stop()
