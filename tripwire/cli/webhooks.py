"""``tripwire webhooks status|failed|replay|enable`` and ``tripwire dispatcher``.

The ``webhooks`` commands work on the dispatcher's delivery store in the data
dir (they may run while the dispatcher does; it sees replays and re-enables
within ``webhooks.scan_interval_s``). ``tripwire dispatcher`` runs the
dispatcher alone on the configured log (e.g. Kafka, for the scale-out setup);
``tripwire --metrics-port PORT dispatcher`` serves its metrics and probes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from tripwire.cli.args import whole_number
from tripwire.config import Config
from tripwire.log import open_log
from tripwire.service import Service, Supervisor, run_services
from tripwire.triggers import endpoints


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hooks = sub.add_parser("webhooks", help="inspect and steer webhook delivery (status, dead letters, replay)")
    cmds = hooks.add_subparsers(dest="webhooks_command", metavar="SUBCOMMAND", required=True)

    status = cmds.add_parser("status", help="per endpoint: delivered, failing, pending, dead, disabled")
    status.add_argument("--json", action="store_true", help="one JSON object per endpoint")
    status.set_defaults(handler=status_command)

    failed = cmds.add_parser("failed", help="list dead letters (deliveries that exhausted their attempts)")
    failed.add_argument("--endpoint", metavar="NAME", help="only this endpoint's dead letters")
    failed.add_argument("-n", type=whole_number(1, "a count"), default=50, metavar="N", help="at most N, newest first (default 50)")
    failed.add_argument("--json", action="store_true", help="one JSON object per dead letter")
    failed.set_defaults(handler=failed_command)

    replay = cmds.add_parser(
        "replay", help="deliver again (same webhook-id), from the first attempt",
        description="Deliver a dead letter (or an already delivered trigger) again with the same webhook-id, "
                    "starting the retry schedule over. The running dispatcher picks it up within scan_interval_s.")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="a delivery (trigger) id, e.g. trg_... (see `webhooks failed`)")
    which.add_argument("--all", action="store_true", help="every dead letter (of --endpoint, if given)")
    replay.add_argument("--endpoint", metavar="NAME", help="with --all: only this endpoint's dead letters")
    replay.set_defaults(handler=replay_command)

    enable = cmds.add_parser("enable", help="re-enable a disabled endpoint; its waiting deliveries go out")
    enable.add_argument("name", metavar="NAME", help="the endpoint, as in [endpoints.NAME]")
    enable.set_defaults(handler=enable_command)

    dispatcher = sub.add_parser(
        "dispatcher", help="run the webhook dispatcher alone on the configured log",
        description="Deliver the triggers topic to the configured endpoints (signed, retried); pending deliveries "
                    "live in <data_dir>, which `tripwire webhooks status|failed|replay` read. Metrics and probes: "
                    "tripwire --metrics-port PORT dispatcher.")
    dispatcher.add_argument("--log", metavar="URL", help="kafka://host:port to read instead of the configured log")
    dispatcher.set_defaults(handler=lambda args, config: asyncio.run(dispatcher_command(args, config)))


def _store_file(config: Config) -> Path:
    from tripwire.webhooks.service import settings

    return settings(config).store_file(config.data_dir)


def _store(config: Config) -> Any:
    """The delivery store, or None when there is none yet. These commands only read and steer what
    a dispatcher stored: creating an empty store (a data dir where none should be, after a wrong
    --config or working directory) would hide the mistake behind "no dead letters"."""
    from tripwire.webhooks import Store

    path = _store_file(config)
    if not path.exists():
        print(f"tripwire: no webhook delivery store at {path} (nothing delivered yet with this config; "
              "check --config and data_dir)", file=sys.stderr)
        return None
    return Store(path)


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def status_command(args: argparse.Namespace, config: Config) -> int:
    configured = endpoints(config)
    store = _store(config)
    counts: dict[str, dict[str, int]] = {}
    states: dict[str, Any] = {}
    if store is not None:
        try:
            counts = store.counts()
            states = store.endpoint_states()
        finally:
            store.close()
    names = sorted(set(configured) | set(counts) | set(states))
    rows = []
    for name in names:
        c = counts.get(name, {})
        st = states.get(name)
        if name not in configured:
            disabled = "not configured"
        elif not configured[name].enabled:
            disabled = "disabled in config"
        else:
            disabled = st.disabled_reason if st and st.disabled_reason else ""
        rows.append({
            "endpoint": name,
            "delivered": c.get("delivered", 0),
            "pending": c.get("pending", 0),
            "failing": c.get("failing", 0),
            "dead": c.get("dead", 0),
            "disabled": disabled or None,
            "failing_since": _time(st.failing_since_ms) if st and st.failing_since_ms else None,
            "last_success": _time(st.last_success_ms) if st and st.last_success_ms else None,
        })
    if args.json:
        for row in rows:
            _out(orjson.dumps(row).decode())
        return 0
    if not rows:
        _out("no endpoints configured and no deliveries stored")
        return 0
    _out(f"{'ENDPOINT':<20} {'DELIVERED':>9} {'PENDING':>7} {'FAILING':>7} {'DEAD':>5}  STATE")
    for row in rows:
        state = f"DISABLED: {row['disabled']}" if row["disabled"] else "enabled"
        if row["failing_since"] and not row["disabled"]:
            state += f", failing since {row['failing_since']}"
        _out(f"{row['endpoint']:<20} {row['delivered']:>9} {row['pending']:>7} {row['failing']:>7} {row['dead']:>5}  {state}")
    return 0


def failed_command(args: argparse.Namespace, config: Config) -> int:
    store = _store(config)
    rows: list[Any] = []
    if store is not None:
        try:
            rows = store.rows("dead", args.endpoint, args.n)
        finally:
            store.close()
    for row in rows:
        if args.json:
            _out(orjson.dumps({
                "id": row.id, "endpoint": row.endpoint, "attempts": row.attempts, "created": _time(row.created_ms),
                "failed": _time(row.updated_ms), "last_status": row.last_status, "last_error": row.last_error,
            }).decode())
        else:
            _out(f"{row.id}  {row.endpoint}  attempts={row.attempts}  failed={_time(row.updated_ms)}  {row.last_error or ''}")
    if not rows and not args.json:
        _out("no dead letters")
    return 0


def replay_command(args: argparse.Namespace, config: Config) -> int:
    if args.endpoint and not args.all:
        print("tripwire: --endpoint goes with --all (a delivery id already names its endpoint)", file=sys.stderr)
        return 2
    store = _store(config)
    if store is None:
        return 1
    try:
        if args.all:
            n = store.replay_dead(args.endpoint)
            _out(f"replaying {n} dead letter(s)")
            return 0
        row = store.get(args.id)
        if row is None:
            delivered_ms = store.delivered_ms(args.id)
            if delivered_ms is not None:
                print(f"tripwire: {args.id} was delivered at {_time(delivered_ms)}; its body is no longer kept "
                      "(webhooks.delivered_history_s), so it cannot be sent again", file=sys.stderr)
            else:
                print(f"tripwire: no delivery with id {args.id!r}", file=sys.stderr)
            return 1
        if row.state == "pending":
            _out(f"{args.id} is already pending ({row.attempts} attempt(s) so far)")
            return 0
        store.replay(args.id)
        _out(f"replaying {args.id} to {row.endpoint}")
        return 0
    finally:
        store.close()


def enable_command(args: argparse.Namespace, config: Config) -> int:
    configured = endpoints(config)
    if args.name not in configured:
        print(f"tripwire: endpoint {args.name!r} is not configured ([endpoints.{args.name}])", file=sys.stderr)
        return 1
    store = _store(config) if _store_file(config).exists() else None  # no store: nothing was disabled
    was_disabled = False
    if store is not None:
        try:
            was_disabled = store.enable(args.name)
        finally:
            store.close()
    if not configured[args.name].enabled:
        _out(f"{args.name} is disabled in config (endpoints.{args.name}.enabled = false); change it there")
        return 1
    _out(f"{args.name} enabled" if was_disabled else f"{args.name} was not disabled")
    return 0


async def dispatcher_command(args: argparse.Namespace, config: Config) -> int:
    from tripwire.webhooks.service import create_service

    # Metrics and probes: `tripwire --metrics-port PORT dispatcher` (tripwire.metrics).
    log = open_log(config, url=args.log)
    await log.start()
    try:
        service = create_service(config, log)
        if service is None:
            print("tripwire: webhooks.enabled is false; nothing to run", file=sys.stderr)
            return 1
        # Restarted in the process after any failure; only a configuration error at the first start exits.
        def restart() -> Service:
            again = create_service(config, log)
            assert again is not None, "webhooks.enabled does not change while the dispatcher runs"
            return again

        return await run_services([Supervisor(restart, service)])
    finally:
        await log.stop()
