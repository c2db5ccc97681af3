"""Errors of the rules room.

::

    RulesError
     └── StateError         durable engine state cannot be read or written
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Diagnostic:
    """One finding of ``rules check``: always a file, a line and a column (1-based)."""

    file: str
    line: int
    column: int
    message: str
    severity: str = "error"  # "error" or "warning"
    source_line: str = ""

    def headline(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.column}: {prefix}{self.message}"

    def format(self) -> str:
        """``file:line:col: message`` then the source line and a caret under the column."""
        text = self.headline()
        if self.source_line.strip():
            line = self.source_line.rstrip("\r\n").expandtabs(1)  # a CRLF file's lines end in \r
            text += f"\n    {line}\n    {' ' * (self.column - 1)}^"
        return text


class RulesError(Exception):
    """Root of the rules room's errors."""


class StateError(RulesError):
    """The engine's durable state (SQLite or checkpoint store) failed."""
