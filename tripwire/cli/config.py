"""``tripwire config show|check``: the effective configuration, every key with its value.

Secrets (write keys, webhook secrets, S3 credentials, the PII salt) are masked, and so are
every header value and the path and query of endpoint URLs (scheme and host are kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from tripwire.catalog import CatalogError
from tripwire.collector.config import CollectorConfig
from tripwire.console.config import ConsoleConfig
from tripwire.config import SECRET_WORDS, Config, ConfigError, LogConfig, ServerConfig, mask_url  # SECRET_WORDS: masked here
from tripwire.logs import LoggingConfig, redact
from tripwire.metrics import MetricsConfig
from tripwire.rules.config import RulesConfig
from tripwire.sinks.config import SinkConfig
from tripwire.webhooks.config import WebhooksConfig

# Section name -> its dataclass (read with Config.section).
SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "log": LogConfig,
    "logging": LoggingConfig,
    "metrics": MetricsConfig,
    "collector": CollectorConfig,
    "rules": RulesConfig,
    "webhooks": WebhooksConfig,
    "sink": SinkConfig,
    "console": ConsoleConfig,
}
TABLES = ("sources", "endpoints")  # tables keyed by user names


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = sub.add_parser("config", help="show or check the effective configuration")
    cmd_sub = cmd.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    show = cmd_sub.add_parser("show", help="print every key with its effective value as TOML (secrets masked)")
    show.set_defaults(handler=show_command)
    check = cmd_sub.add_parser("check", help="validate every section and the event catalog; exit 2 with the error otherwise")
    check.set_defaults(handler=check_command)


def sections(config: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        out[name] = config.section(name, cls)
    return out


def _mask(key: str, value: Any) -> Any:
    """``value`` with secrets masked: by its key's name (also inside tables such as storage
    options), and credentials or tokens inside strings (URLs)."""
    name = key.lower()
    if name == "headers":  # any header may carry a credential, whatever its name (X-Custom-Auth)
        return {k: "***" for k in value} if isinstance(value, dict) else "***"
    secret = any(w in name for w in (*SECRET_WORDS, "authorization")) and not name.endswith("_path")
    if isinstance(value, str):
        return "***" if secret and value else redact(value, ips=False)
    if isinstance(value, dict):
        return {k: _mask(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask(key, v) for v in value]
    return value


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else _toml(name)


def render(config: Config) -> str:
    lines = [f"data_dir = {_toml(str(config.data_dir))}", ""]
    for name, section in sections(config).items():
        lines.append(f"[{name}]")
        for f in dataclasses.fields(section):
            lines.append(f"{f.name} = {_toml(_mask(f.name, getattr(section, f.name)))}")
        lines.append("")
    from tripwire.triggers import endpoints

    endpoints(config)  # checked first: a malformed value is a config error (naming the key), never printed
    for table in TABLES:
        for name, values in config.table(table).items():
            lines.append(f"[{table}.{_key(name)}]")
            for k, v in dict(values).items():
                # an endpoint's URL path or query is often its token (Slack's /hooks/T000/B000/XXXX)
                shown = mask_url(v) if table == "endpoints" and k == "url" and isinstance(v, str) else _mask(k, v)
                lines.append(f"{k} = {_toml(shown)}")
            lines.append("")
    return "\n".join(lines)


def show_command(args: argparse.Namespace, config: Config) -> int:
    sys.stdout.write(render(config))
    return 0


def check_command(args: argparse.Namespace, config: Config) -> int:
    try:
        found = sections(config)
        from tripwire.collector.catalog import Catalog
        from tripwire.collector.config import load_sources
        from tripwire.sinks.config import sink_config
        from tripwire.sinks.catalog import wanted_columns
        from tripwire.webhooks.endpoint import check_endpoints
        from tripwire.webhooks.service import settings as webhooks_settings
        from tripwire.log import check_bootstrap
        from tripwire.triggers import endpoints

        if config.log.backend == "kafka":
            check_bootstrap(config.log.kafka_bootstrap)  # as open_log will
        load_sources(config)
        if webhooks_settings(config).enabled:
            check_endpoints(endpoints(config))  # URLs and signing secrets, as the dispatcher reads them
        else:
            endpoints(config)
        collector = found["collector"]
        if collector.catalog:  # as the collector and the sink will read it (no salt file is made)
            Catalog.load(config.resolve(collector.catalog), strict=collector.strict, salt=b"config check")
        sink = sink_config(config)
        wanted_columns(sink.catalog, sink.promote)
    except ConfigError as exc:
        print(f"tripwire: {config.locate(str(exc))}", file=sys.stderr)
        return 2
    except CatalogError as exc:  # the collector's and the sink's are both tripwire.catalog.CatalogError
        print(f"tripwire: {exc}", file=sys.stderr)
        return 2
    print(f"config ok ({config.source_path or 'defaults and environment'})")
    return 0
