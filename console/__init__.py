"""The web console: a second face beside the CLI, for the people who use Tripwire.

Pages: live events (server-sent events, sampled), rules (text, plain words, what
the engine does with them, triggers per hour, delivery outcome), one person's
journey with each rule's progress and "why not", backtests over the lake, and
webhook deliveries with the one write action, replaying a dead letter. It reads
the rooms' public surfaces and the event log; no room imports it.

Public names: :func:`create_app`, :func:`create_service` (``tripwire run``, ``tripwire
console``), :class:`ConsoleConfig` / :func:`console_config` (``[console]``),
:class:`ConsoleError` (the root of its errors). See console/README.md.
"""

from __future__ import annotations

from .app import Console, create_app
from .config import ConsoleConfig, console_config
from .errors import ConsoleConfigError, ConsoleError
from .service import ConsoleService, create_service

__all__ = ["Console", "ConsoleConfig", "ConsoleConfigError", "ConsoleError", "ConsoleService", "console_config",
           "create_app", "create_service"]
