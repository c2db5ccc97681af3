"""argparse value checks the commands share."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse ``type`` taking whole numbers >= ``minimum``; anything else is "<text> is not <what> (<minimum> or more)"."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = minimum - 1
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{text} is not {what} ({minimum} or more)")
        return n

    return parse
