"""The ``[console]`` config section.

::

    [console]
    enabled = true          # served by `tripwire run` (the scale-out stack: `tripwire console`)
    host = "127.0.0.1"      # loopback by default; any other address needs a token
    port = 8090             # 0 = any free port (logged at start)
    token = ""              # or TRIPWIRE_CONSOLE__TOKEN; browsers send it as the password of HTTP Basic auth
    live_rows_per_s = 20    # the live page shows at most this many events per second (sampled beyond)
    scan_max_records = 200000   # per log partition, how far back a person's events are looked for

Without a token the console answers only requests whose Host is a loopback name
(127.0.0.1, localhost, [::1]), so a web page cannot reach it through DNS rebinding.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tripwire.config import Config

from .errors import ConsoleConfigError

@dataclass(frozen=True)
class ConsoleConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8090
    token: str = ""
    live_rows_per_s: int = 20
    scan_max_records: int = 200_000

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConsoleConfigError(f"Config 'console.port' has value {self.port!r}. Must be 0-65535 (0 = any free port).")
        if self.live_rows_per_s < 1:
            raise ConsoleConfigError(f"Config 'console.live_rows_per_s' has value {self.live_rows_per_s!r}. Must be >= 1.")
        if self.scan_max_records < 1000:
            raise ConsoleConfigError(
                f"Config 'console.scan_max_records' has value {self.scan_max_records!r}. Must be >= 1000.")

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def check_exposure(self) -> None:
        """Refuse to listen beyond this machine without a token: the console shows people's events."""
        if not self.loopback and not self.token:
            raise ConsoleConfigError(
                f"Config 'console.host' is {self.host!r}, not a loopback address: the console refuses to start "
                "without a token there; set [console] token (or TRIPWIRE_CONSOLE__TOKEN), or host = \"127.0.0.1\".")


def is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def console_config(config: Config) -> ConsoleConfig:
    return config.section("console", ConsoleConfig)
