"""The detector as the engine sees it: something that sends N frames at a rate when asked,
and, where it has a trigger input the IOC can pulse, one frame per trigger."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, runtime_checkable


class TriggerMode(StrEnum):
    """``cam1:TriggerMode``: what starts each exposure."""

    INTERNAL = "Internal"  # the detector's own clock, one frame every AcquirePeriod
    EXTERNAL = "External"  # a trigger pulse: one exposure of AcquireTime per pulse
    GATED = "Gated"  # the detector exposes while its gate input is high


class DetectorControl(Protocol):
    """Asks the detector (hardware, the simulator, a replay) for frames."""

    def start(self, n_frames: int, frame_rate_hz: float, bit_depth: int) -> None:
        """Start sending ``n_frames`` (0: until stopped) numbered from 0."""
        ...

    def stop(self) -> None:
        """Stop sending as soon as possible."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class TriggerInput(Protocol):
    """A detector control whose trigger input the IOC can pulse (``cam1:TriggerSoftware``)."""

    def arm(self, n_frames: int, exposure_s: float, bit_depth: int) -> None:
        """Expose one frame per :meth:`trigger`, ``n_frames`` of them (0: until stopped)."""
        ...

    def trigger(self) -> None:
        """One trigger pulse."""
        ...
