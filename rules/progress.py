"""A one-line progress bar on stderr for long replays (``tripwire rules backtest``).

A bar shows one *phase* at a time (sorting the input, then replaying it): its label, how far
it is (a known total of items, or a fraction such as the bytes of a file read so far), the
items done and their rate since the phase started.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class Progress:
    """Redrawn at most every 0.2 s; :meth:`phase` starts another phase on a new line."""

    def __init__(self, total: int | None = None, out: TextIO | None = None, label: str = "backtest",
                 fraction: Callable[[], float] | None = None, unit: str = "events") -> None:
        self.out = out or sys.stderr
        self.drawn = False
        self.phase(label, total, fraction, unit)

    def phase(self, label: str, total: int | None = None, fraction: Callable[[], float] | None = None,
              unit: str = "events") -> None:
        """Start counting afresh: ``total`` items, or how far as ``fraction()`` (0..1) when the total is unknown."""
        self.end_line()
        self.label, self.total, self.fraction, self.unit = label, total, fraction, unit
        self.start = time.monotonic()
        self._last = 0.0
        self.drawn = False

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        rate = done / max(now - self.start, 1e-6)
        if self.total:
            frac: float | None = done / self.total
            count = f"{done:,}/{self.total:,} {self.unit}"
        else:
            frac = self.fraction() if self.fraction is not None else None
            count = f"{done:,} {self.unit}"
        if frac is not None:
            frac = min(1.0, max(0.0, frac))
            text = f"\r{self.label} [{'#' * int(frac * 30):<30}] {frac:6.1%} {count} {rate:,.0f}/s"
        else:
            text = f"\r{self.label} {count} {rate:,.0f}/s"
        self.out.write(text)
        self.out.flush()
        self.drawn = True

    def end_line(self) -> None:
        """Leave the bar as drawn so far (a message or another phase follows on the next line)."""
        if self.drawn:
            self.out.write("\n")
            self.out.flush()
            self.drawn = False

    def close(self, done: int) -> None:
        self.update(done, force=True)
        self.end_line()
