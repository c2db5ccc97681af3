"""Errors of the console.

::

    ConsoleError
     └── ConsoleConfigError   a [console] setting cannot be used, or the console cannot listen
                              (also a tripwire.config.ConfigError: one line at start-up, exit 2)
"""

from __future__ import annotations

from tripwire.config import ConfigError


class ConsoleError(Exception):
    """Root of the console's errors."""


class ConsoleConfigError(ConsoleError, ConfigError):
    """A ``[console]`` key cannot be used (an address without a token, a port that is taken)."""
