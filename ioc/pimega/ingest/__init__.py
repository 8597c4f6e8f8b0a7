"""Frame sources (TCP, replay; RDMA later) on one transport-free framing, into frame rings."""

from .counters import ModuleCounters
from .framing import FrameExpectation, FrameReceiver, IngestSink
from .replay import NexusReplay, RawCaptureReplay
from .ring import FrameRing
from .source import FrameSource
from .tcp import TcpListener, TcpSource, receive

__all__ = [
    "FrameExpectation",
    "FrameReceiver",
    "FrameRing",
    "FrameSource",
    "IngestSink",
    "ModuleCounters",
    "NexusReplay",
    "RawCaptureReplay",
    "TcpListener",
    "TcpSource",
    "receive",
]
