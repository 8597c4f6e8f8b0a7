"""Live reconstruction as a consumer: slices of chosen detector rows, updated as each
projection arrives, never slowing the frame path (a lossy consumer: when it falls behind,
frames are skipped and counted).

Frames that carry the wire's tomography extension bring their image key and angle; for a
sender without it every frame is a projection at ``start_angle_deg + k·angle_step_deg``.
Darks and flats of the scan are averaged as they come; projections before both are counted
as skipped. Settings take effect at the next acquisition.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pimega.core.errors import ConfigError, PimegaError
from pimega.core.frame import Frame, FrameInfo
from pimega.core.wire import ImageKey
from pimega.tomo.filters import FILTERS
from pimega.tomo.live import LiveReconstruction

#: Slices a live reconstruction keeps at most (each is W x W float32).
MAX_SLICES = 3


@dataclass(frozen=True)
class ReconSettings:
    enabled: bool = False
    rows: tuple[int, ...] = ()
    centre: float | None = None  # None: found from the projections 180° apart
    filter_name: str = "ram-lak"
    start_angle_deg: float = 0.0
    angle_step_deg: float = 0.0


@dataclass(frozen=True)
class ReconStatus:
    state: str  # "Idle", "Waiting" (for darks and flats), "Reconstructing", "Error"
    projections_used: int = 0
    skipped: int = 0
    time_per_update_ms: float = 0.0
    centre: float = 0.0
    error: str = ""


@dataclass(frozen=True)
class SliceUpdate:
    """The live slices as they stood at one update."""

    update: int  # counts updates from 1
    rows: tuple[int, ...]
    images: np.ndarray  # (rows, W, W) float32
    projections: int  # projections the slices are made of


class LiveRecon:
    """Consumer ``recon`` (see the module docstring)."""

    name = "recon"
    lossless = False

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        self.settings = ReconSettings()
        self._lock = threading.Lock()
        self._live: LiveReconstruction | None = None
        self._acquisition = -1
        self._projections = 0  # projections seen in this acquisition (for PV angles)
        self._behind = (-1, 0)  # (acquisition, projections skipped there while behind)
        self._error = ""
        self._dirty = False
        self._slices: SliceUpdate | None = None

    @staticmethod
    def warm_up() -> None:
        """Compile (or load) the back-projection kernels on a tiny scan, so the first
        projection of a real one does not wait seconds for numba (and get skipped)."""
        live = LiveReconstruction((2, 8), [0], centre=3.5)
        frame = np.ones((2, 8), dtype=np.uint16)
        for key in (ImageKey.DARK, ImageKey.FLAT, ImageKey.PROJECTION):
            live.add(frame * (1 + int(key == ImageKey.FLAT)), key, 0.0)

    def configure(self, **changes: Any) -> ReconSettings:
        """Check and keep new settings (in force from the next acquisition)."""
        new = replace(self.settings, **changes)
        height, width = self.shape
        if len(new.rows) > MAX_SLICES:
            raise ConfigError(f"at most {MAX_SLICES} rows, got {len(new.rows)}")
        if any(not 0 <= row < height for row in new.rows):
            raise ConfigError(f"rows {list(new.rows)} must lie within 0 … {height - 1}")
        if new.centre is not None and not 0 <= new.centre <= width - 1:
            raise ConfigError(f"centre {new.centre} lies outside the image's columns "
                              f"0 … {width - 1}")
        if new.filter_name not in FILTERS:
            raise ConfigError(f"filter {new.filter_name!r} is not one of {', '.join(FILTERS)}")
        self.settings = new
        return new

    def wants(self, info: FrameInfo) -> bool:
        return self.settings.enabled

    def skipped(self, info: FrameInfo) -> None:
        """A frame it was too far behind to take: a projection counts as skipped (a dark or
        a flat only thins the references)."""
        if _image_key(info) == ImageKey.PROJECTION:  # one writer (this thread): no lock
            acquisition, count = self._behind
            self._behind = (info.acquisition, count + 1 if acquisition == info.acquisition else 1)

    def consume(self, frame: Frame) -> None:
        info = frame.info
        with self._lock:
            if info.acquisition != self._acquisition:
                self._begin(info.acquisition)
            live = self._live
            if live is None:
                return
            s = self.settings
            key = _image_key(info)
            angle = (info.angle_deg if info.tomo
                     else s.start_angle_deg + s.angle_step_deg * self._projections)
            try:
                live.add(frame.image, key, angle)
            except PimegaError as exc:
                self._error, self._live = str(exc), None
                return
            self._projections += key == ImageKey.PROJECTION
            self._dirty = True

    def _begin(self, acquisition: int) -> None:
        self._acquisition, self._projections, self._error = acquisition, 0, ""
        self._slices, self._dirty = None, False
        s = self.settings
        try:
            self._live = LiveReconstruction(self.shape, s.rows, s.centre, s.filter_name)
        except PimegaError as exc:
            self._live, self._error = None, str(exc)

    def latest(self) -> SliceUpdate | None:
        """The slices as they stand now (None before the first projection)."""
        with self._lock:
            live = self._live
            if self._dirty and live is not None:
                count = self._slices.update + 1 if self._slices else 1
                rows = tuple(int(row) for row in live.rows)
                self._slices = SliceUpdate(count, rows, live.slices(), live.projections_used)
                self._dirty = False
            return self._slices

    def status(self) -> ReconStatus:
        """Where it stands; skipped: this acquisition's projections it was behind for or
        that came before its darks and flats."""
        live, error = self._live, self._error  # no lock: a back-projection may hold it
        acquisition, behind = self._behind
        if acquisition != self._acquisition:  # counted in another acquisition
            behind = 0
        if error:
            return ReconStatus("Error", error=error, skipped=behind)
        if live is None:
            return ReconStatus("Idle", skipped=behind)
        state = "Reconstructing" if live.projections_used else "Waiting"
        return ReconStatus(state, live.projections_used, live.projections_skipped + behind,
                           1e3 * live.last_update_s, live.centre)


def _image_key(info: FrameInfo) -> int:
    """The frame's NXtomo image key; a sender without the tomography extension sends
    projections."""
    return info.image_key if info.tomo else ImageKey.PROJECTION
