"""``tripwire run``: the whole stack on one machine, on embedded defaults."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence

from tripwire.children import global_args
from tripwire.cli.args import whole_number
from tripwire.cli.collector import ensure_data_dir, run_loop
from tripwire.config import Config
from tripwire.log import EventLog, open_log
from tripwire.service import Service, Supervisor, run_services

Factory = Callable[[Config, EventLog], "Service | None"]


def service_factories() -> list[tuple[str, Factory]]:
    """Each part's role and its room's ``create_service(config, log) -> Service | None`` (None when that
    part is switched off in config). Started in this order, stopped in reverse: the consumers are running before the
    collector takes its first request, and on SIGTERM the collector stops taking requests first (its
    in-flight appends complete), so the engine, dispatcher and sink still see every acknowledged event
    before they stop. Imported here, not at the top: ``tripwire rules check`` needs none of them."""
    from tripwire.collector import service as collector
    from tripwire.console import create_service as console
    from tripwire.rules import service as rules
    from tripwire.sinks import service as sinks
    from tripwire.webhooks import service as webhooks

    # The console first: an address it refuses (no token) stops start-up before anything runs.
    return [("console", console), ("sink", sinks.create_service), ("dispatcher", webhooks.create_service),
            ("engine", rules.create_service), ("collector", collector.create_service)]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run", help="run collector, rules engine, webhooks and sink on one machine (embedded log)",
        description="Run the whole stack on one machine: the collector on server.host:server.port (also "
                    "/metrics, /healthz, /readyz for the whole stack), the webhook dispatcher and the web console "
                    "(console.host:console.port, loopback by default) in this process; the rules engine and the "
                    "Parquet sink in processes of their own (--engines, --sinks), which share the partitions of "
                    "the log in <data_dir>. Each part downstream of the log is restarted when it dies; the "
                    "collector keeps acknowledging meanwhile. Stops cleanly on SIGTERM/SIGINT.",
    )
    run.add_argument("--host", help="listen address (server.host)")
    run.add_argument("--port", type=int, help="listen port (server.port)")
    run.add_argument("--engines", type=whole_number(0, "a count of processes"), default=1, metavar="N",
                     help="rules engine processes (default 1; more use more cores; 0: in this process)")
    run.add_argument("--sinks", type=whole_number(0, "a count of processes"), default=1, metavar="N",
                     help="Parquet sink processes (default 1; 0: in this process)")
    # uvloop when installed: the collector serves several times more requests on it.
    run.set_defaults(handler=lambda args, config: run_loop(run_command(args, config)))


def supervised_services(config: Config, log: EventLog, engines: int = 0, sinks: int = 0,
                        child_args: Sequence[str] = ()) -> list[Service]:
    """The services the config enables, each downstream of the log under a :class:`~tripwire.service.Supervisor`:
    whatever happens to the engine, the dispatcher or the sink, the collector keeps acknowledging into
    the log, the buffer they resume from. Only the collector's own death stops the process.

    ``engines`` / ``sinks`` > 0: that many engine / sink processes of their own (:mod:`tripwire.children`)
    instead of one in this process; they share the partitions of their consumer group."""
    from tripwire.children import ChildProcess
    from tripwire.rules.config import rules_config
    from tripwire.sinks.config import sink_config

    services: list[Service] = []
    for role, factory in service_factories():
        # the roles that can run in processes of their own
        count = {"engine": engines, "sink": sinks}.get(role, 0)
        enabled = {"engine": rules_config(config).enabled, "sink": sink_config(config).enabled}.get(role, True)
        if count and enabled:
            for i in range(count):
                name = role if count == 1 else f"{role}-{i + 1}"
                services.append(Supervisor(functools.partial(ChildProcess, role, name, child_args)))
            continue
        first = factory(config, log)
        if first is None:
            continue
        if role == "collector":
            services.append(first)
        else:
            services.append(Supervisor(functools.partial(_enabled, factory, config, log), first))
    return services


def _enabled(factory: Factory, config: Config, log: EventLog) -> Service:
    service = factory(config, log)
    assert service is not None, "what the config enabled once stays enabled (the config does not change)"
    return service


async def run_command(args: argparse.Namespace, config: Config) -> int:
    from dataclasses import replace

    server = replace(
        config.server,
        host=args.host or config.server.host,
        port=args.port if args.port is not None else config.server.port,
    )
    config = replace(config, server=server)
    ensure_data_dir(config)
    log = open_log(config)
    await log.start()
    child_args = global_args(config.source_path, args.log_level, args.log_format)
    try:
        services = supervised_services(config, log, args.engines, args.sinks, child_args)
        return await run_services(services)  # 1 when the collector died
    finally:
        await log.stop()
