"""Validated settings of one acquisition and one file capture.

The engine refuses a setting it cannot honour with a :class:`ConfigError` that says why;
the IOC shows that text on its status PV and leaves the old value in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pimega.core.errors import ConfigError
from pimega.core.geometry import MAX_FRAME_RATE_HZ, check_bit_depth
from pimega.core.naming import full_file_name
from pimega.pipeline.correct import Corrections, ProcessSteps
from pimega.writer.filters import Compression, CompressionOptions, check_compression
from pimega.writer.hdf5 import DEFINITIONS
from pimega.writer.nexus import MxGeometry

from .detector import TriggerMode

#: Longest exposure or period accepted (a day): beyond it a typo, not an experiment.
MAX_TIME_S = 86400.0


@dataclass(frozen=True)
class AcquireSettings:
    """What the detector is asked to do: ``n_images`` 0 means until stopped (Continuous);
    ``process`` is NDPluginProcess's steps (Proc1:), run after ``corrections``."""

    bit_depth: int = 12
    n_images: int = 1
    acquire_time_s: float = 0.001
    acquire_period_s: float = 0.001
    corrections: Corrections = field(default_factory=Corrections)
    process: ProcessSteps | None = None
    preview_interval_s: float = 0.1
    stats_interval_s: float = 0.25
    trigger_mode: TriggerMode = TriggerMode.INTERNAL

    def __post_init__(self) -> None:
        check_bit_depth(self.bit_depth)
        if self.trigger_mode not in tuple(TriggerMode):
            raise ConfigError(f"trigger mode must be one of {', '.join(TriggerMode)}, "
                              f"got {self.trigger_mode!r}")
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
        """As areaDetector: one frame every max(time, period), no faster than read-out allows;
        triggered, the triggers set the pace and the period is not used."""
        internal = self.trigger_mode == TriggerMode.INTERNAL
        period = max(self.acquire_time_s, self.acquire_period_s if internal else 0.0)
        return min(1.0 / period, self.max_frame_rate_hz)


@dataclass(frozen=True)
class FileNaming:
    """NDFile's naming of one file per frame (FileWriteMode Single with AutoSave): the
    template ``%s%s_%6.6d.h5`` of (path, name, number) from ``first_number`` on, each number
    the next whose file does not exist (an existing file is never replaced)."""

    path: str
    name: str
    template: str
    first_number: int

    def __post_init__(self) -> None:
        full_file_name(self.path, self.name, self.template, self.first_number)  # refuses


@dataclass(frozen=True)
class CaptureSettings:
    """One HDF5 file: its full name, how many frames (0: until stopped), compression (and
    its options), whether readers may open it while it is written (SWMR: costs 1.5-2x a frame
    in HDF5; off by default, as ADCore's SWMRMode), and the NeXus definition it follows
    (NXtomo, or NXmx with the diffraction geometry ``mx``). With ``per_frame`` every frame
    goes to a file of its own, named by it (``filename`` is then the first one's)."""

    filename: str
    num_capture: int = 0
    compression: Compression = "none"
    lazy_open: bool = False
    swmr: bool = False
    compression_options: CompressionOptions = field(default_factory=CompressionOptions)
    definition: str = "NXtomo"
    mx: MxGeometry = field(default_factory=MxGeometry)
    per_frame: FileNaming | None = None
    sample_name: str = "sample"

    def __post_init__(self) -> None:
        if self.num_capture < 0:
            raise ConfigError(f"number to capture must be ≥ 0, got {self.num_capture}")
        check_compression(self.compression)
        if self.definition not in DEFINITIONS:
            raise ConfigError(f"NeXus definition {self.definition!r} is not one of "
                              f"{DEFINITIONS}")


def next_settings(current: AcquireSettings, acquiring: bool, **changes: Any) -> AcquireSettings:
    """``current`` with ``changes``, validated; the depth cannot change while acquiring."""
    new = replace(current, **changes)
    if acquiring and new.bit_depth != current.bit_depth:
        raise ConfigError("the counter depth cannot change while acquiring")
    if acquiring and new.trigger_mode != current.trigger_mode:
        raise ConfigError("the trigger mode cannot change while acquiring")
    return new
