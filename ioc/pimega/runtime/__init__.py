"""The engine of one node and what its users see of it: settings, status, events, node control."""

from pimega.pipeline.stats import Stats

from .node import AcquisitionEnded, CaptureEnded, Event, NodeControl
from .recon import MAX_SLICES, ReconSettings, ReconStatus
from .settings import AcquireSettings, CaptureSettings
from .stages import NODE_STAGES, RoiSettings
from .status import CaptureStatus, DetectorState, StageStatus, Status

__all__ = [
    "MAX_SLICES",
    "NODE_STAGES",
    "AcquireSettings",
    "AcquisitionEnded",
    "CaptureEnded",
    "CaptureSettings",
    "CaptureStatus",
    "DetectorState",
    "Event",
    "NodeControl",
    "ReconSettings",
    "ReconStatus",
    "RoiSettings",
    "StageStatus",
    "Stats",
    "Status",
]
