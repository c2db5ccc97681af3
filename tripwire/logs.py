"""Process logging: plain text or one JSON object per line, with secrets and client IPs masked.

::

    [logging]
    format = "json"      # or "text" (default); CLI: tripwire --log-format json ...
    level = "info"       # CLI: --log-level
    redact_ips = true    # IPv4/IPv6 addresses other than loopback/unspecified -> 203.0.113.x / 2001:db8:...:x

Env: ``TRIPWIRE_LOGGING__FORMAT=json``. A JSON line carries ``ts`` (UTC, ms),
``level``, ``logger``, ``msg`` and, when present, ``exc`` (the traceback) and
``service``/``pid``. Masking runs on the formatted message and traceback of
every record in both formats, as a last line of defence: the rooms already avoid
logging secrets and raw client IPs; this catches what slips through (a library's
error that quotes a URL with credentials, an address in an exception).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from tripwire.config import Config, ConfigError

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The same line at most once a minute (RepeatFilter): aiokafka's failed connects during a broker
# outage, uvicorn's "Invalid HTTP request received." for every scanner that probes the port.
CHATTY_LIBRARIES = ("aiokafka", "uvicorn.error")


@dataclass(frozen=True)
class LoggingConfig:
    format: str = "text"
    level: str = "info"
    redact_ips: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"Config 'logging.format' has value {self.format!r}. Expected 'text' or 'json'.")
        if self.level.lower() not in LEVELS:
            raise ConfigError(f"Config 'logging.level' has value {self.level!r}. Expected one of {', '.join(LEVELS)}.")


# Secrets: webhook signing secrets, credentials in URLs, Authorization values, key=value pairs.
_SECRETS = [
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "whsec_***"),
    (re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 ***"),
    (re.compile(r"(?i)(://[^/\s:@]+:)[^@\s/]+@"), r"\1***@"),
    (re.compile(r"(?i)\b(secret|password|passwd|token|write_key|api_key|aws_secret_access_key)(['\"]?\s*[=:]\s*['\"]?)[^\s'\",;}]+"), r"\1\2***"),
]
_IPV4 = re.compile(r"(?<![\w.])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?![\w.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:)+:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*)?(?![\w:])")


def _mask_v4(m: re.Match[str]) -> str:
    text = m.group(0)
    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        return text
    if ip.is_loopback or ip.is_unspecified:
        return text
    return ".".join(text.split(".")[:3]) + ".x"


def _mask_v6(m: re.Match[str]) -> str:
    text = m.group(0)
    try:
        ip = ipaddress.IPv6Address(text)
    except ValueError:
        return text
    if ip.is_loopback or ip.is_unspecified:
        return text
    return str(ipaddress.IPv6Network(f"{ip}/48", strict=False).network_address).rstrip(":") + "::x"


def redact(text: str, ips: bool = True) -> str:
    """``text`` with secrets masked and (``ips``) non-loopback IP addresses truncated."""
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    if ips:
        text = _IPV4.sub(_mask_v4, text)
        if ":" in text:
            text = _IPV6.sub(_mask_v6, text)
    return text


class RedactingFormatter(logging.Formatter):
    def __init__(self, fmt: str | None = TEXT_FORMAT, redact_ips: bool = True) -> None:
        super().__init__(fmt)
        self.redact_ips = redact_ips

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.redact_ips)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields are stable names for log shippers (Loki, ELK, Vector)."""

    def __init__(self, service: str = "", redact_ips: bool = True) -> None:
        super().__init__()
        self.service = service
        self.redact_ips = redact_ips
        self.pid = os.getpid()

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage(), self.redact_ips),
        }
        if self.service:
            doc["service"] = self.service
        doc["pid"] = self.pid
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info), self.redact_ips)
        elif record.exc_text:
            doc["exc"] = redact(record.exc_text, self.redact_ips)
        return orjson.dumps(doc).decode()


class RepeatFilter(logging.Filter):
    """Let a library's identical message through once per ``interval_s``; the next one that passes
    says how many were held back. For chatty dependencies only (aiokafka logs each failed connect)."""

    def __init__(self, prefixes: tuple[str, ...], interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.interval_s = interval_s
        self.clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # -> (last passed, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if last is not None and last[1]:
            record.msg, record.args = f"{key[2]} ({last[1]} more in {self.interval_s:.0f}s)", ()
        return True


def logging_config(config: Config) -> LoggingConfig:
    return config.section("logging", LoggingConfig)


def setup(fmt: str = "text", level: str = "info", *, service: str = "", redact_ips: bool = True) -> None:
    """Configure the root logger once for this process (replacing earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service, redact_ips))
    else:
        handler.setFormatter(RedactingFormatter(TEXT_FORMAT, redact_ips))
    handler.addFilter(RepeatFilter(CHATTY_LIBRARIES))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn narrates its lifecycle at INFO under the name "uvicorn.error" ("Waiting for application
    # startup." and six more lines per run); the collector logs its own "listening on" and "stopped".
    quiet = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    logging.getLogger("uvicorn.error").setLevel(quiet)
    # httpx logs every request at INFO: the dispatcher's deliveries and `tripwire run`'s looks at its
    # child processes are counted in metrics and said when they fail, not narrated one line each.
    logging.getLogger("httpx").setLevel(quiet)
