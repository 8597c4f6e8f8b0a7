"""Frame ingest: receivers that put wire-format frames into preallocated FrameRings."""

from .counters import ModuleCounters
from .ring import FrameRing
from .tcp import FrameExpectation, TcpListener, receive

__all__ = ["FrameExpectation", "FrameRing", "ModuleCounters", "TcpListener", "receive"]
