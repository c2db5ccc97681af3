"""Configuration: one TOML file, ``TRIPWIRE_*`` environment overrides, defaults for all.

Every key has a default, so ``tripwire run`` works with no file. Nested keys are
overridden with ``__`` between levels, e.g. ``TRIPWIRE_LOG__BACKEND=kafka`` or
``TRIPWIRE_SOURCES__WEB__WRITE_KEY=...``. An override's value is read as a TOML
value when it parses as one (``8``, ``true``, ``["a", "b"]``) and as a plain
string otherwise; a key that wants a string keeps the text as written
(``TRIPWIRE_SINK__GROUP=2024`` is ``"2024"``, a numeric write key stays one).

Each room declares its own section as a dataclass and reads it with
:func:`Config.section`; the spine only owns the top-level keys and the
``server`` and ``log`` sections. Errors name the key and the bad value, except
where the value may be a secret: a key named like one (:data:`SECRET_WORDS`), a
webhook endpoint's URL (its path or query may be the token, as in Slack's
``/hooks/T000/B000/XXXX``: :func:`mask_url` keeps scheme and host), any header value,
and any string, table or list that came from a ``TRIPWIRE_*`` variable
(:meth:`Config.locate` replaces it by ``<not shown>``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ENV_PREFIX = "TRIPWIRE_"
DEFAULT_FILE = "tripwire.toml"

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is missing, unknown or has a value of the wrong kind."""


# Durations are written as in the rule language: a whole number and a unit.
DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d)\Z")


def duration_ms(key: str, value: object) -> int:
    """``value`` ("500ms", "30s", "10m", "24h", "7d") in milliseconds; a ConfigError naming ``key`` otherwise."""
    m = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ConfigError(f"Config '{key}' has value {value!r}. Not a duration: write a whole number and a unit, "
                          "ms, s, m, h or d (\"30s\", \"24h\").")
    return int(m.group(1)) * DURATION_UNITS_MS[m.group(2)]


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"Config 'server.port' has value {self.port!r}. Must be 0-65535 (0 = any free port).")
        if self.workers < 1:
            raise ConfigError(f"Config 'server.workers' has value {self.workers!r}. Must be >= 1.")


@dataclass(frozen=True)
class LogConfig:
    backend: str = "sqlite"  # "sqlite" or "kafka"
    partitions: int = 4  # per topic; Kafka: used when creating missing topics (existing ones keep theirs)
    group_commit_max_records: int = 10_000
    # Embedded backend: records older than this are deleted while the log runs ("0": kept for ever).
    retention: str = "7d"
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "tripwire"
    kafka_idempotent: bool = False  # the test broker (tansu) lacks it
    kafka_replication_factor: int = 1  # for topics the log creates; use 3 on a real cluster
    kafka_linger_ms: int = 0  # the Kafka log's writer batches (group commit); a linger only adds latency
    kafka_request_timeout_ms: int = 10_000
    spill_max_bytes: int = 512 * 1024 * 1024
    spill_retry_after_s: int = 5

    def __post_init__(self) -> None:
        if self.backend not in ("sqlite", "kafka"):
            raise ConfigError(f"Config 'log.backend' has value {self.backend!r}. Expected 'sqlite' or 'kafka'.")
        if self.partitions < 1:
            raise ConfigError(f"Config 'log.partitions' has value {self.partitions!r}. Must be >= 1.")
        if self.retention.strip() != "0":
            try:
                duration_ms("log.retention", self.retention)
            except ConfigError:
                raise ConfigError(
                    f"Config 'log.retention' has value {self.retention!r}. Not a duration such as '7d', '90m' "
                    "or '30s' ('0' keeps records for ever)."
                ) from None

    @property
    def retention_s(self) -> float:
        return 0.0 if self.retention.strip() == "0" else duration_ms("log.retention", self.retention) / 1000


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path("data")
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    raw: Mapping[str, Any] = field(default_factory=dict)  # every section, for the rooms
    source_path: Path | None = None  # the file read, if any
    env_keys: Mapping[str, str] = field(default_factory=dict)  # dotted key -> the TRIPWIRE_* variable that set it
    file_keys: frozenset[str] | None = None  # dotted keys (lower case) the file sets; None = not known
    # TRIPWIRE_* variable -> its text, only so that no error quotes it (see locate)
    env_values: Mapping[str, str] = field(default_factory=dict, repr=False)

    def section(self, name: str, cls: type[T]) -> T:
        """Build a room's settings dataclass from section ``name`` (defaults if absent)."""
        value = self.raw.get(name, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"Config '{name}' must be a table, got {type(value).__name__}.")
        return build(cls, value, name)

    def table(self, name: str) -> Mapping[str, Any]:
        """A section as a plain mapping (for tables keyed by user names, e.g. sources)."""
        value = self.raw.get(name, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"Config '{name}' must be a table, got {type(value).__name__}.")
        return value

    def locate(self, message: str) -> str:
        """``message`` (a :class:`ConfigError`'s) plus where the key it quotes was set:
        ``(set by TRIPWIRE_SERVER__PORT)`` or ``(in tripwire.toml)``; the variable's value, if the
        message quotes it, is replaced by ``<not shown>``."""
        return _locate(message, self.env_keys, self.source_path, self.file_keys, self.env_values)

    def check_sections(self, known: Collection[str]) -> None:
        """Refuse a table that is no known section (a typo such as ``[colector]`` would be ignored)."""
        for name, value in self.raw.items():
            if isinstance(value, Mapping) and name not in known:
                close = difflib.get_close_matches(name, list(known), n=1)
                hint = f" (did you mean [{close[0]}]?)" if close else ""
                raise ConfigError(f"Unknown config section '[{name}]'{hint}. Known sections: {', '.join(sorted(known))}.")

    def resolve(self, path: str | Path) -> Path:
        """A path from config: relative ones are relative to the config file's folder."""
        p = Path(path).expanduser()
        if p.is_absolute() or self.source_path is None:
            return p
        return self.source_path.parent / p


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (or ``$TRIPWIRE_CONFIG``, or ``./tripwire.toml`` if present) plus overrides."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source: Path | None = None
    if path is None:
        path = environ.get(ENV_PREFIX + "CONFIG") or (DEFAULT_FILE if Path(DEFAULT_FILE).exists() else None)
    if path is not None:
        source = Path(path)
        try:
            with source.open("rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError as exc:
            raise ConfigError(f"Config file '{source}' does not exist.") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"Config file '{source}' is not valid TOML: {exc}") from exc
    file_keys = frozenset(_dotted(data))
    env_keys = apply_env(data, environ)
    env_values = {name: environ[name] for name in env_keys.values()}
    try:
        return dataclasses.replace(from_dict(data, source, env_keys), file_keys=file_keys, env_values=env_values)
    except ConfigError as exc:
        raise ConfigError(_locate(str(exc), env_keys, source, file_keys, env_values)) from None


def _dotted(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in data.items():
        key = f"{prefix}{str(k).lower()}"
        out.append(key)
        if isinstance(v, Mapping):
            out += _dotted(v, key + ".")
    return out


def from_dict(data: Mapping[str, Any], source: Path | None = None, env_keys: Mapping[str, str] | None = None) -> Config:
    top = {k: v for k, v in data.items() if not isinstance(v, Mapping)}
    unknown = sorted(set(top) - {"data_dir"})
    if unknown:
        raise ConfigError(
            f"Unknown config key '{unknown[0]}'. The only top-level key is data_dir; "
            f"settings go in sections such as [{unknown[0]}] (TRIPWIRE_{unknown[0].upper()}__<KEY>)."
        )
    data_dir = Path(_coerce(top.get("data_dir", "data"), str, "data_dir")).expanduser()
    if source is not None and not data_dir.is_absolute():
        data_dir = source.parent / data_dir
    cfg = Config(data_dir=data_dir, raw=dict(data), source_path=source, env_keys=dict(env_keys or {}))
    return dataclasses.replace(
        cfg, server=cfg.section("server", ServerConfig), log=cfg.section("log", LogConfig)
    )


_QUOTED_KEY = re.compile(r"'\[?([A-Za-z_][\w.\-]*)")


def _locate(message: str, env_keys: Mapping[str, str], source: Path | None,
            file_keys: frozenset[str] | None = None, env_values: Mapping[str, str] | None = None) -> str:
    if message.endswith(")") and (" (set by TRIPWIRE_" in message or " (in " in message):
        return message  # already located
    keys = [m.group(1).lower() for m in _QUOTED_KEY.finditer(message)]
    for key in keys:
        parts = key.split(".")
        for n in range(len(parts), 0, -1):  # the key itself, else the table an override replaced
            name = env_keys.get(".".join(parts[:n]))
            if name is not None:
                return f"{_unquote(message, [name], env_values)} (set by {name})"
    for key in keys[:1]:  # a table the overrides created ([sinks] from TRIPWIRE_SINKS__LAKE_URL)
        names = [v for k, v in sorted(env_keys.items()) if k.startswith(key + ".")]
        if names:
            return f"{_unquote(message, names, env_values)} (set by {', '.join(names)})"
    if source is None or (file_keys is not None and not any(k in file_keys for k in keys)):
        return message  # a default, or a command-line option (--port): no file to point at
    return f"{message} (in {source})"


def _unquote(message: str, names: list[str], env_values: Mapping[str, str] | None) -> str:
    """``message`` without the values of the variables ``names`` where it quotes them (any room's
    check may quote the value it refuses; the environment is where deployments keep secrets).
    Numbers and booleans are left alone: they are not quoted, and cannot be told from the text."""
    for name in names:
        text = (env_values or {}).get(name, "")
        value = _env_value(text)
        if not text.strip() or isinstance(value, (bool, int, float)):
            continue
        for form in {repr(text), repr(text.strip()), repr(value), f"'{text}'", f'"{text}"'}:
            message = message.replace(form, "<not shown>")
    return message


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Apply ``TRIPWIRE_*`` overrides to ``data``; returns which variable set which dotted key."""
    keys: dict[str, str] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            continue
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"Environment variable {name} overrides '{part}', which is not a table.")
            node = child
        node[path[-1]] = _env_value(text)
        keys[".".join(path)] = name
    return keys


class _EnvInt(int):
    """A number from the environment that remembers its text, for a key that wants a string."""

    text: str


class _EnvFloat(float):
    text: str


def _env_value(text: str) -> Any:
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    if type(value) in (int, float):  # TRIPWIRE_SINK__GROUP=2024 stays "2024" for a string key
        number = _EnvInt(value) if type(value) is int else _EnvFloat(value)
        number.text = text.strip()
        return number
    return value


_NO_LOST_DATA = (
    "Tripwire no longer recovers from a Kafka broker that comes back without the records it had "
    "acknowledged (tansu's memory storage): run the broker on storage that survives a restart and delete "
    "the key (deploy/README.md, 'When the Kafka broker goes away')"
)
# Keys that existed once: naming one gets why it went and what to do instead of "unknown key".
REMOVED_KEYS = {
    "log.kafka_epochs": _NO_LOST_DATA,
    "log.kafka_retain_s": _NO_LOST_DATA,
    "log.kafka_retain_max_bytes": _NO_LOST_DATA,
}


def build(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """Instantiate dataclass ``cls`` from ``values``, checking names and types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = set(values) - fields
    for name in sorted(unknown):
        if f"{where}.{name}" in REMOVED_KEYS:
            raise ConfigError(f"Config '{where}.{name}' was removed. {REMOVED_KEYS[f'{where}.{name}']}.")
    if unknown:
        name = sorted(unknown)[0]
        close = difflib.get_close_matches(name, sorted(fields), n=1)
        hint = f" (did you mean '{where}.{close[0]}'?)" if close else ""
        raise ConfigError(f"Unknown config key '{where}.{name}'{hint}. Known keys: {', '.join(sorted(fields))}.")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Config '{where}': {exc}") from exc


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(value, (_EnvInt, _EnvFloat)) and tp is not str and origin not in (typing.Union, types.UnionType):
        value = int(value) if isinstance(value, _EnvInt) else float(value)  # only a string key wants the text
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise _bad(key, value, "a list")
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _bad(key, value, "a table")
        item = (typing.get_args(tp) or (str, Any))[1]
        return {k: _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # TRIPWIRE_X=1 arrives as a TOML integer
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise _bad(key, value, "a bool")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise _bad(key, value, "an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _bad(key, value, "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (_EnvInt, _EnvFloat)):
            return value.text
        raise _bad(key, value, "a string")
    if tp is Path:
        if isinstance(value, str):
            return Path(value).expanduser()
        raise _bad(key, value, "a path")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _bad(key, value, "a table")
        return build(tp, value, key)  # type: ignore[arg-type]
    return value


SECRET_WORDS = ("secret", "key", "salt", "password", "token")  # in a key's last part: its value is not printed


def mask_url(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, and ``/***`` if it has more (a path, a query, credentials):
    a webhook URL's path or query is often its token. ``***`` if it is not a URL with a host."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return "***"
    if not parts.scheme or not host:
        return "***"
    base = f"{parts.scheme}://{f'[{host}]' if ':' in host else host}{f':{port}' if port is not None else ''}"
    more = parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc
    return base + ("/***" if more else parts.path)


def _hidden(key: str) -> str | None:
    """Why the value of ``key`` is never printed in an error, or None."""
    parts = key.lower().split(".")
    name = parts[-1].split("[", 1)[0]
    if any(w in name for w in SECRET_WORDS):
        return "a secret"
    if "headers" in (name, *parts[:-1]):
        return "a header value"
    if parts[0] == "endpoints" and name == "url":
        return "an endpoint URL"
    return None


def _bad(key: str, value: Any, expected: str) -> ConfigError:
    why = _hidden(key)
    if why is not None:
        kind = {_EnvInt: "int", _EnvFloat: "float"}.get(type(value), type(value).__name__)
        return ConfigError(f"Config '{key}' has a value of type {kind} (not shown: {why}). Not {expected}.")
    return ConfigError(f"Config '{key}' has value {value!r}. Not {expected}.")
