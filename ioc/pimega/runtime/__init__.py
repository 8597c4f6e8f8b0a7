"""The engine of one node and what its users see of it: settings, status, events, node control."""

from pimega.pipeline.correct import (
    FilterCoefficients,
    ProcessSteps,
    filter_coefficients,
)
from pimega.pipeline.stats import RoiSettings, Stats

from .detector import TriggerMode
from .node import AcquisitionEnded, CaptureEnded, Event, NodeControl
from .recon import MAX_SLICES, ReconSettings, ReconStatus, SliceUpdate
from .settings import (
    AcquireSettings,
    CaptureSettings,
    CompressionOptions,
    FileNaming,
    MxGeometry,
    check_compression,
)
from .stages import NODE_STAGES
from .status import CaptureStatus, DetectorState, StageStatus, Status

__all__ = [
    "MAX_SLICES",
    "NODE_STAGES",
    "AcquireSettings",
    "AcquisitionEnded",
    "CaptureEnded",
    "CaptureSettings",
    "CaptureStatus",
    "CompressionOptions",
    "DetectorState",
    "Event",
    "FileNaming",
    "FilterCoefficients",
    "MxGeometry",
    "NodeControl",
    "ProcessSteps",
    "ReconSettings",
    "ReconStatus",
    "RoiSettings",
    "SliceUpdate",
    "StageStatus",
    "Stats",
    "Status",
    "TriggerMode",
    "check_compression",
    "filter_coefficients",
]
