"""The frame-source protocol: how TCP, replay and RDMA put frames into the engine's rings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .framing import IngestSink

#: ``spawn(name, target)``: the engine runs ``target`` on a thread it owns and joins.
Spawn = Callable[[str, Callable[[], None]], None]


class FrameSource(Protocol):
    """Fills the rings of an :class:`IngestSink` from loops the engine runs on its threads.

    ``open`` asks for the loops with ``spawn`` and returns at once; ``close`` ends them
    (the engine then joins its threads). Frames are taken only while ``sink.armed`` is set;
    every frame refused or lost is counted in ``sink.counters``.
    """

    @property
    def description(self) -> str:
        """Where frames come from, for logs and the welcome text (e.g. ``tcp 0.0.0.0:5555``)."""
        ...

    @property
    def running(self) -> bool:
        """True while the source can still deliver frames (its loops are alive)."""
        ...

    def open(self, sink: IngestSink, spawn: Spawn) -> None: ...

    def close(self) -> None: ...
