"""``tripwire collector``: the HTTP collector alone, writing to the configured log (or ``--log``).

With ``--workers N`` (N > 1) uvicorn runs N worker processes on one socket;
each opens its own connection to the log (SQLite serialises the writers of one
file; with Kafka each worker has its own producer and claims its own slot of
the spill buffer under ``<data_dir>/spill``). The config reaches the workers
through ``TRIPWIRE_CONFIG`` and ``TRIPWIRE_*`` overrides.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from tripwire.config import Config, ConfigError
from tripwire.log import check_bootstrap, open_log
from tripwire.service import run_services

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "collector",
        help="run only the HTTP collector (scale-out: --log kafka://host:port)",
        description="Serve the Segment-compatible tracking API and write events to the event log.",
    )
    p.add_argument("--log", metavar="URL", help="kafka://host:port, or 'sqlite' (default: log.backend from config)")
    p.add_argument("--host", help="listen address (server.host)")
    p.add_argument("--port", type=int, help="listen port (server.port)")
    p.add_argument("--workers", type=int, help="worker processes (server.workers)")
    p.set_defaults(handler=collector_command)


def _log_overrides(url: str | None) -> dict[str, str]:
    if url is None:
        return {}
    if url.startswith("kafka://"):
        return {"TRIPWIRE_LOG__BACKEND": "kafka", "TRIPWIRE_LOG__KAFKA_BOOTSTRAP": url[len("kafka://") :]}
    if url in ("sqlite", "embedded"):
        return {"TRIPWIRE_LOG__BACKEND": "sqlite"}
    raise ConfigError(f"Log URL {url!r} is not understood. Use kafka://host:port or 'sqlite'.")


def collector_command(args: argparse.Namespace, config: Config) -> int:
    overrides = _log_overrides(args.log)
    server = replace(
        config.server,
        host=args.host or config.server.host,
        port=args.port if args.port is not None else config.server.port,
        workers=args.workers if args.workers is not None else config.server.workers,
    )
    ensure_data_dir(config)
    if server.workers == 1:
        config = replace(config, server=server)
        return run_loop(_run_single(config, args.log))
    from tripwire.collector.errors import CollectorError
    from tripwire.collector.service import bind, listen_url, uvicorn_config

    # What the workers would each refuse at start (uvicorn respawning them, a traceback each time): once, here.
    if overrides.get("TRIPWIRE_LOG__BACKEND", config.log.backend) == "kafka":
        check_bootstrap(overrides.get("TRIPWIRE_LOG__KAFKA_BOOTSTRAP", config.log.kafka_bootstrap))
    os.environ.update(overrides)
    for option, key in (("log_format", "FORMAT"), ("log_level", "LEVEL")):  # the workers set up logging alike
        if getattr(args, option, None):
            os.environ[f"TRIPWIRE_LOGGING__{key}"] = getattr(args, option)
    if config.source_path is not None:
        os.environ["TRIPWIRE_CONFIG"] = str(config.source_path.resolve())
    cfg = uvicorn_config("tripwire.collector.service:worker_app", factory=True, host=server.host, port=server.port, workers=server.workers)
    from uvicorn.supervisors import Multiprocess

    try:
        sock = bind(server.host, server.port)
    except CollectorError as exc:
        print(f"tripwire: {exc}", file=sys.stderr)
        return 1
    logger.info("collector listening on %s (%d workers)", listen_url(server.host, sock.getsockname()[1]), server.workers)
    Multiprocess(cfg, sockets=[sock]).run()
    return 0


def ensure_data_dir(config: Config) -> None:
    """Create ``data_dir`` (log, spill, state live there) or say in one line why it cannot be used:
    a file in the way, or a volume this user may not write (a container's non-root user)."""
    path = config.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Config 'data_dir' has value '{path}': cannot create it ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"Config 'data_dir' has value '{path}': this user (uid {os.getuid()}) cannot write there")


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when installed (as uvicorn would): the standard loop serves the
    collector several times slower (measured 4x with the SQLite log's cross-thread wake-ups).

    A collector that cannot start (its port taken) is one line on stderr and exit status 1,
    after the services already started have stopped."""
    from tripwire.collector.errors import CollectorError

    run: Callable[[Coroutine[Any, Any, int]], int] = asyncio.run
    try:
        import uvloop
    except ImportError:
        pass
    else:
        run = uvloop.run
    try:
        return run(main)
    except CollectorError as exc:
        print(f"tripwire: {exc}", file=sys.stderr)
        return 1


async def _run_single(config: Config, url: str | None) -> int:
    from tripwire.collector.service import create_service

    log = open_log(config, url=url)
    await log.start()
    try:
        return await run_services([create_service(config, log)])  # 1 when it died
    finally:
        await log.stop()


