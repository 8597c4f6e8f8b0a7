"""The built-in simulator as the engine's detector control (``runtime.DetectorControl``)."""

from __future__ import annotations

from .sender import SimConfig, Simulator

CONTINUOUS_FRAMES = 2**62


class SimulatedDetector:
    """The simulator, connected to the engine's TCP source at ``host:port``."""

    def __init__(self, host: str, port: int, config: SimConfig) -> None:
        self._sim = Simulator(host, port, config)

    def connect(self, timeout: float = 10.0) -> None:
        self._sim.connect(timeout=timeout)

    def start(self, n_frames: int, frame_rate_hz: float, bit_depth: int) -> None:
        self._sim.acquire(
            n_frames=n_frames or CONTINUOUS_FRAMES, frame_rate_hz=frame_rate_hz,
            bit_depth=bit_depth,
        )

    def arm(self, n_frames: int, exposure_s: float, bit_depth: int) -> None:
        """``runtime.TriggerInput``: one frame per :meth:`trigger`, ``exposure_s`` after it."""
        self._sim.acquire(n_frames=n_frames or CONTINUOUS_FRAMES, frame_rate_hz=1 / exposure_s,
                          bit_depth=bit_depth, triggered=True)

    def trigger(self) -> None:
        self._sim.trigger()

    def stop(self) -> None:
        self._sim.stop()

    def close(self) -> None:
        self._sim.close()
