"""The detector as the engine sees it: something that sends N frames at a rate when asked."""

from __future__ import annotations

from typing import Protocol

from pimega.sim.sender import SimConfig, Simulator

CONTINUOUS_FRAMES = 2**62


class DetectorControl(Protocol):
    def start(self, n_frames: int, frame_rate_hz: float, bit_depth: int) -> None:
        """Start sending ``n_frames`` (0: until stopped) numbered from 0."""
        ...

    def stop(self) -> None:
        """Stop sending as soon as possible."""
        ...

    def close(self) -> None: ...


class SimulatedDetector:
    """The built-in simulator, connected to the engine's own TCP listener."""

    def __init__(self, host: str, port: int, config: SimConfig) -> None:
        self._sim = Simulator(host, port, config)

    def connect(self, timeout: float = 10.0) -> None:
        self._sim.connect(timeout=timeout)

    def start(self, n_frames: int, frame_rate_hz: float, bit_depth: int) -> None:
        self._sim.acquire(
            n_frames=n_frames or CONTINUOUS_FRAMES, frame_rate_hz=frame_rate_hz,
            bit_depth=bit_depth,
        )

    def stop(self) -> None:
        self._sim.stop()

    def close(self) -> None:
        self._sim.close()
