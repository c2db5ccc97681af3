"""Entry point: ``tripwire [--config FILE] COMMAND ...``.

Each command lives in its own module of this package exposing
``register(subparsers)``; the handler it sets receives the parsed args and the
loaded :class:`~tripwire.config.Config` and returns the exit status.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from tripwire import __version__, logs, metrics
from tripwire.children import die_with_parent
from tripwire.config import ConfigError, load_config
from tripwire.cli import collector, console, engine, events, lake, receiver, rules, run, sink, webhooks
from tripwire.cli import config as config_command
from tripwire.log import LogError

# Modules of tripwire.cli that contribute sub-commands, in --help order.
COMMAND_MODULES = [run, collector, events, webhooks, sink, lake, config_command, rules, engine, receiver, console]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tripwire",
        allow_abbrev=False,  # else a sub-command option like `--log` is read as an abbreviation of ours
        description="Self-hosted event tracking collector and real-time trigger rules engine.",
        epilog="Every config key can be overridden with TRIPWIRE_<SECTION>__<KEY>; see the README.",
    )
    parser.add_argument("--version", action="version", version=f"tripwire {__version__}")
    parser.add_argument("--config", metavar="FILE", help="tripwire.toml to read (default: $TRIPWIRE_CONFIG or ./tripwire.toml)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: logging.level or info")
    parser.add_argument("--log-format", choices=["text", "json"], help="text, or one JSON object per line (logging.format)")
    parser.add_argument(
        "--metrics-port", dest="global_metrics_port", type=int, metavar="PORT",
        help="serve /metrics, /healthz, /readyz on this port next to any command (metrics.port; 0 = any free port)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def known_sections() -> set[str]:
    return set(config_command.SECTIONS) | set(config_command.TABLES)


def main(argv: Sequence[str] | None = None) -> int:
    die_with_parent()  # a process of `tripwire run` goes when it goes
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=(args.log_level or "info").upper(), format=logs.TEXT_FORMAT)
    config = None
    try:
        config = load_config(args.config)
        config.check_sections(known_sections())
        settings = logs.logging_config(config)
        logs.setup(args.log_format or settings.format, args.log_level or settings.level,
                   service=args.command, redact_ips=settings.redact_ips)
        metrics_settings = metrics.metrics_config(config)
        port = args.global_metrics_port if args.global_metrics_port is not None else (metrics_settings.port or None)
        if port is not None:
            metrics.serve(metrics_settings.host, port)
        return int(args.handler(args, config) or 0)
    except ConfigError as exc:
        print(f"tripwire: {config.locate(str(exc)) if config is not None else exc}", file=sys.stderr)
        return 2
    except LogError as exc:  # e.g. GroupTaken: one line naming the problem, not a traceback
        print(f"tripwire {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`tripwire rules explain ... | head`): stop quietly, as Unix tools do.
        # Whatever is still buffered must not raise again when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
