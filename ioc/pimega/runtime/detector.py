"""The detector as the engine sees it: something that sends N frames at a rate when asked."""

from __future__ import annotations

from typing import Protocol


class DetectorControl(Protocol):
    """Asks the detector (hardware, the simulator, a replay) for frames."""

    def start(self, n_frames: int, frame_rate_hz: float, bit_depth: int) -> None:
        """Start sending ``n_frames`` (0: until stopped) numbered from 0."""
        ...

    def stop(self) -> None:
        """Stop sending as soon as possible."""
        ...

    def close(self) -> None: ...
