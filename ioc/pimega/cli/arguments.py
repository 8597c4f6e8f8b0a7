"""argparse types the command-line tools share."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def finite(minimum: float, inclusive: bool) -> Callable[[str], float]:
    """An argparse type: a finite float above ``minimum`` (or equal, where ``inclusive``);
    anything else is argparse's usage error naming the option (nan and inf too: a rate or a
    time of either would crash or never end)."""
    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            bound = "≥" if inclusive else ">"
            raise argparse.ArgumentTypeError(f"must be finite and {bound} {minimum:g}, "
                                             f"got {text}")
        return value
    return number
