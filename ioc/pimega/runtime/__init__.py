"""The engine of one node and what its users see of it: settings, status, events, node control."""

from pimega.pipeline.stats import Stats

from .node import AcquisitionEnded, CaptureEnded, Event, NodeControl
from .settings import AcquireSettings, CaptureSettings
from .stages import NODE_STAGES, RoiSettings
from .status import CaptureStatus, DetectorState, StageStatus, Status

__all__ = [
    "NODE_STAGES",
    "AcquireSettings",
    "AcquisitionEnded",
    "CaptureEnded",
    "CaptureSettings",
    "CaptureStatus",
    "DetectorState",
    "Event",
    "NodeControl",
    "RoiSettings",
    "StageStatus",
    "Stats",
    "Status",
]
