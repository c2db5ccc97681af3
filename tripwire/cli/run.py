"""``tripwire run``: the whole stack in one process on embedded defaults."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from tripwire.cli.collector import ensure_data_dir, run_loop
from tripwire.config import Config
from tripwire.log import EventLog, open_log
from tripwire.service import Service, Supervisor, run_services

Factory = Callable[[Config, EventLog], "Service | None"]


def service_factories() -> list[Factory]:
    """Each room's ``create_service(config, log) -> Service | None`` (None when that part is switched off
    in config). Started in this order, stopped in reverse: the consumers are running before the
    collector takes its first request, and on SIGTERM the collector stops taking requests first (its
    in-flight appends complete), so the engine, dispatcher and sink still see every acknowledged event
    before they stop. Imported here, not at the top: ``tripwire rules check`` needs none of them."""
    from tripwire.collector import service as collector
    from tripwire.console import create_service as console
    from tripwire.rules import service as rules
    from tripwire.sinks import service as sinks
    from tripwire.webhooks import service as webhooks

    # The console first: an address it refuses (no token) stops start-up before anything runs.
    return [console, sinks.create_service, webhooks.create_service, rules.create_service, collector.create_service]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = sub.add_parser(
        "run", help="run collector, rules engine, webhooks and sink in one process (embedded log)",
        description="Run the whole stack in one process: the collector on server.host:server.port (also "
                    "/metrics, /healthz, /readyz), the rules engine, the webhook dispatcher, the Parquet sink and "
                    "the web console (console.host:console.port, loopback by default), on the log in <data_dir>. "
                    "Stops cleanly on SIGTERM/SIGINT.",
    )
    run.add_argument("--host", help="listen address (server.host)")
    run.add_argument("--port", type=int, help="listen port (server.port)")
    # uvloop when installed: the collector serves several times more requests on it.
    run.set_defaults(handler=lambda args, config: run_loop(run_command(args, config)))


def build_services(config: Config, log: EventLog, factories: Sequence[Factory] | None = None) -> list[Service]:
    services = []
    for factory in service_factories() if factories is None else factories:
        service = factory(config, log)
        if service is not None:
            services.append(service)
    return services


def supervised_services(config: Config, log: EventLog) -> list[Service]:
    """``build_services``, each service downstream of the log under a :class:`~tripwire.service.Supervisor`:
    whatever happens to the engine, the dispatcher or the sink, the collector keeps acknowledging into
    the log, the buffer they resume from. Only the collector's own death stops the process."""
    from tripwire.collector import service as collector

    services: list[Service] = []
    for factory in service_factories():
        first = factory(config, log)
        if first is None:
            continue
        if factory is collector.create_service:
            services.append(first)
        else:
            services.append(Supervisor(lambda factory=factory: _enabled(factory(config, log)), first))  # type: ignore[misc]
    return services


def _enabled(service: Service | None) -> Service:
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
    try:
        return await run_services(supervised_services(config, log))  # 1 when the collector died
    finally:
        await log.stop()
