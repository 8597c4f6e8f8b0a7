"""Frame sets: one committed ring slot per module, all with the same frame number."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from pimega.core.wire import FrameHeader
from pimega.ingest.ring import FrameRing

POLL_S = 0.1

FrameSet = list[tuple[int, FrameHeader]]


class FrameMatcher:
    """Takes the oldest frame of every module ring; a module behind the newest frame number
    of the set gives its frame back (counted in :attr:`unmatched`) until all agree."""

    def __init__(self, rings: Sequence[FrameRing]) -> None:
        self._rings = rings
        self.unmatched = 0

    def next_set(self, abort: threading.Event) -> FrameSet | None:
        """The next complete set; None (holding nothing) once ``abort`` is set."""
        heads: list[tuple[int, FrameHeader] | None] = [None] * len(self._rings)
        while True:
            for m, ring in enumerate(self._rings):
                while heads[m] is None:
                    if abort.is_set():
                        self.release([h for h in heads if h is not None], modules=[
                            i for i, h in enumerate(heads) if h is not None])
                        return None
                    heads[m] = ring.next_filled(timeout=POLL_S)
            full = [h for h in heads if h is not None]
            newest = max(h[1].frame_number for h in full)
            lagging = [m for m, h in enumerate(full) if h[1].frame_number < newest]
            if not lagging:
                return full
            for m in lagging:
                self._rings[m].release(full[m][0])
                heads[m] = None
                self.unmatched += 1

    def release(self, frame_set: FrameSet, modules: Sequence[int] | None = None) -> None:
        """Give the slots of ``frame_set`` back (module i's, or those of ``modules``)."""
        for m, (slot, _) in zip(modules or range(len(frame_set)), frame_set, strict=True):
            self._rings[m].release(slot)
