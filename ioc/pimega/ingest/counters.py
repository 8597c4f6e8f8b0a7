"""Per-module receive counters: written by the receiver thread, read by the engine and PVs."""

from __future__ import annotations

from dataclasses import dataclass, fields

#: A forward jump of frame numbers larger than this is a restarted or garbled sequence
#: (counted once in ``sequence_errors``), not millions of lost frames.
MAX_GAP = 1 << 20


@dataclass(slots=True)
class ModuleCounters:
    """What one module's frames did on the way in.

    Thread safety: each field is a plain attribute, so a reader always sees a whole value
    (never a torn one); a snapshot is not atomic across fields. One receiver thread writes a
    module's counters in normal operation; should two connections carry the same module, an
    increment may rarely be lost, never corrupt anything.

    ``frames``/``bytes`` count good frames handed to the ring (bytes include headers).
    ``corrupt`` counts frames refused (bad header, size, CRC, geometry, cut off).
    ``gaps`` counts frame numbers skipped forward since the previous readable header of this
    module, less the corrupt frames counted in between (a frame is lost once, not twice);
    ``sequence_errors`` counts frame numbers that repeat, go backwards or jump by more than
    :data:`MAX_GAP`. Frame 0 starts a new sequence.
    """

    frames: int = 0
    bytes: int = 0
    corrupt: int = 0
    gaps: int = 0
    sequence_errors: int = 0
    dropped_idle: int = 0
    connections: int = 0
    connected: bool = False
    last_error: str = ""
    last_frame_number: int = -1
    _corrupt_since_last: int = 0

    def note_frame_number(self, frame_number: int) -> None:
        """Track the sequence and count the frame numbers it skips."""
        last = self.last_frame_number
        jump = frame_number - last - 1
        if frame_number == 0 or last < 0:
            pass
        elif jump < 0 or jump > MAX_GAP:
            self.sequence_errors += 1
        else:
            self.gaps += max(0, jump - self._corrupt_since_last)
        self._corrupt_since_last = 0
        self.last_frame_number = frame_number

    def note_corrupt(self, reason: str) -> None:
        self.corrupt += 1
        self._corrupt_since_last += 1
        self.last_error = reason

    @property
    def lost(self) -> int:
        """Frames this module lost on the way in."""
        return self.corrupt + self.gaps

    def reset_acquisition(self) -> None:
        """Zero the per-acquisition counters; connection state and the sequence stay."""
        self.frames = self.bytes = self.corrupt = self.gaps = self.dropped_idle = 0
        self.sequence_errors = self._corrupt_since_last = 0

    def snapshot(self) -> dict[str, int | bool | str]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name[0] != "_"}
