"""Validated settings of one acquisition and one file capture.

The engine refuses a setting it cannot honour with a :class:`ConfigError` that says why;
the IOC shows that text on its status PV and leaves the old value in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pimega.core.errors import ConfigError
from pimega.core.geometry import MAX_FRAME_RATE_HZ, check_bit_depth
from pimega.pipeline.correct import Corrections

Compression = Literal["none", "bslz4"]
#: Longest exposure or period accepted (a day): beyond it a typo, not an experiment.
MAX_TIME_S = 86400.0


@dataclass(frozen=True)
class AcquireSettings:
    """What the detector is asked to do: ``n_images`` 0 means until stopped (Continuous)."""

    bit_depth: int = 12
    n_images: int = 1
    acquire_time_s: float = 0.001
    acquire_period_s: float = 0.001
    corrections: Corrections = field(default_factory=Corrections)
    preview_interval_s: float = 0.1
    stats_interval_s: float = 0.25

    def __post_init__(self) -> None:
        check_bit_depth(self.bit_depth)
        if self.n_images < 0:
            raise ConfigError(
                f"number of images must be ≥ 0 (0: until stopped), got {self.n_images}")
        if not 0 < self.acquire_time_s <= MAX_TIME_S:
            raise ConfigError(f"acquire time must be > 0 s and ≤ {MAX_TIME_S:g} s, got "
                              f"{self.acquire_time_s}")
        if not 0 <= self.acquire_period_s <= MAX_TIME_S:
            raise ConfigError(f"acquire period must be ≥ 0 s and ≤ {MAX_TIME_S:g} s, got "
                              f"{self.acquire_period_s}")
        if self.preview_interval_s < 0 or self.stats_interval_s < 0:
            raise ConfigError("preview and statistics intervals must be ≥ 0 s")

    @property
    def max_frame_rate_hz(self) -> float:
        return MAX_FRAME_RATE_HZ[self.bit_depth]

    @property
    def frame_rate_hz(self) -> float:
        """As areaDetector: one frame every max(time, period), no faster than read-out allows."""
        period = max(self.acquire_time_s, self.acquire_period_s)
        return min(1.0 / period, self.max_frame_rate_hz)


@dataclass(frozen=True)
class CaptureSettings:
    """One HDF5 file: its full name, how many frames (0: until stopped), compression, and
    whether readers may open it while it is written (SWMR: costs 1.5-2x a frame in HDF5; off
    by default, as ADCore's SWMRMode)."""

    filename: str
    num_capture: int = 0
    compression: Compression = "none"
    lazy_open: bool = False
    swmr: bool = False

    def __post_init__(self) -> None:
        if self.num_capture < 0:
            raise ConfigError(f"number to capture must be ≥ 0, got {self.num_capture}")
        if self.compression not in ("none", "bslz4"):
            raise ConfigError(f"compression {self.compression!r} is not one of none, bslz4")
