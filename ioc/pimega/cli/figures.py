"""What every ``pimega bench`` part reports: a figure against a baseline of the same run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    figure: str
    value: float
    unit: str
    baseline: float
    ratio: float

    def line(self) -> str:
        return json.dumps(self.__dict__)


def best_of(repeats: int, action: Callable[[], object]) -> float:
    """Shortest wall time of ``repeats`` runs: the least disturbed by a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - t0)
    return best
