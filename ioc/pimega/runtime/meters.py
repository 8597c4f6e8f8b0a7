"""Small thread-safe meters: time per frame of a stage, and a rate over a sliding window."""

from __future__ import annotations

import threading
import time
from collections import deque


class StageTimer:
    """Exponentially weighted mean of a stage's seconds per frame, frames through it and
    frames it lost (one writer thread; readers see whole values)."""

    def __init__(self, weight: float = 0.05) -> None:
        self._weight = weight
        self.mean_s = 0.0
        self.frames = 0
        self.dropped = 0

    def add(self, seconds: float) -> None:
        self.mean_s = seconds if self.frames == 0 else (
            self.mean_s + self._weight * (seconds - self.mean_s)
        )
        self.frames += 1

    def reset(self) -> None:
        self.mean_s = 0.0
        self.frames = self.dropped = 0


class RateMeter:
    """Events and bytes per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 1.0) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, int, int]] = deque()
        self._lock = threading.Lock()

    def sample(self, events: int, nbytes: int) -> None:
        """Record cumulative totals now (call from any thread, e.g. at each status poll)."""
        now = time.monotonic()
        with self._lock:
            self._samples.append((now, events, nbytes))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self._window_s:
                self._samples.popleft()

    def rates(self) -> tuple[float, float]:
        """(events/s, bytes/s) between the oldest and newest samples in the window."""
        with self._lock:
            if len(self._samples) < 2:
                return 0.0, 0.0
            (t0, e0, b0), (t1, e1, b1) = self._samples[0], self._samples[-1]
        span = t1 - t0
        return ((e1 - e0) / span, (b1 - b0) / span) if span > 0 else (0.0, 0.0)

    def reset(self) -> None:
        with self._lock:
            self._samples.clear()
