"""Snapshots the engine hands out: plain data, safe to read from any thread.

:class:`~pimega.pipeline.backend.BackendStatus` (the GPU's figures) is the backend's own
snapshot, handed on as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pimega.pipeline.backend import BackendStatus


class DetectorState(StrEnum):
    """The subset of ADBase ``DetectorState_RBV`` strings the engine reaches."""

    IDLE = "Idle"
    ACQUIRE = "Acquire"
    ABORTED = "Aborted"
    ERROR = "Error"


@dataclass(frozen=True)
class StageStatus:
    """One pipeline stage: frames through it, mean time a frame, queue fill, frames lost, and
    whether it failed (its thread or source is gone); a rate-limited stage also counts, since
    the node opened, the frames it processed (``total``) and those it skipped (``skipped``)."""

    name: str
    running: bool
    frames: int
    time_per_frame_ms: float
    queue_depth: int
    queue_size: int
    dropped: int
    error: bool = False
    total: int = 0
    skipped: int = 0


@dataclass(frozen=True)
class CaptureStatus:
    """The capture's file (the last one, one file per frame), frames written, why it failed;
    unique id and time (ns since the Unix epoch) of the last frame written; with one file per
    frame, the number the next file takes."""

    active: bool = False
    filename: str = ""
    num_captured: int = 0
    error: str = ""
    last_unique_id: int = 0
    last_timestamp_ns: int = 0
    next_file_number: int = 0


@dataclass(frozen=True)
class Status:
    state: DetectorState
    message: str
    backend: str
    bit_depth: int
    frames_received: int
    frames_processed: int
    frames_written: int
    frames_dropped: int
    corrupt_frames: int
    frame_rate_hz: float
    throughput_gbps: float
    unique_id: int
    modules: list[dict] = field(default_factory=list)
    stages: list[StageStatus] = field(default_factory=list)
    capture: CaptureStatus = CaptureStatus()
    buffer_used: int = 0
    buffer_size: int = 0
    acquisition: int = 0
    num_filtered: int = 0  # frames in Proc1's recursive filter since its reset
    backend_choice: str = ""  # what was asked for (Auto, CPU, GPU); ``backend`` is what runs
    gpu: BackendStatus = field(default_factory=BackendStatus)  # the device's (CPU: empty)
    backend_message: str = ""  # why the GPU does not run, or how it failed ("" if neither)
