"""Per-module receive counters: written by the receiver thread, read by the engine and PVs."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(slots=True)
class ModuleCounters:
    """What one module's frames did on the way in.

    Thread safety: each field is a plain attribute, so a reader always sees a whole value
    (never a torn one); a snapshot is not atomic across fields. One receiver thread writes a
    module's counters in normal operation; should two connections carry the same module, an
    increment may rarely be lost, never corrupt anything.

    ``frames``/``bytes`` count good frames handed to the ring (bytes include headers).
    ``gaps`` counts frame numbers skipped forward since the previous readable header of this
    module (frame 0 restarts the sequence), so a frame whose header could not be read shows
    up both in ``corrupt`` and in ``gaps``.
    """

    frames: int = 0
    bytes: int = 0
    corrupt: int = 0
    gaps: int = 0
    dropped_idle: int = 0
    connections: int = 0
    connected: bool = False
    last_error: str = ""
    last_frame_number: int = -1

    def note_frame_number(self, frame_number: int) -> None:
        """Track the sequence and count the frame numbers it skips."""
        last = self.last_frame_number
        if frame_number > last + 1 and last >= 0:
            self.gaps += frame_number - last - 1
        self.last_frame_number = frame_number

    def reset_acquisition(self) -> None:
        """Zero the per-acquisition counters; connection state and the sequence stay."""
        self.frames = self.bytes = self.corrupt = self.gaps = self.dropped_idle = 0

    def snapshot(self) -> dict[str, int | bool | str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
