"""``Pipe:``: the node's stages, their timing and queues, and the node's throughput.

One subgroup per stage the node declares (``Pipe:Ingest:``, ``Pipe:Decode:``, …
``Pipe:Write:``), so a new stage or consumer gets its PVs (and screens) without code here.
"""

from __future__ import annotations

from caproto.server import SubGroup

from pimega.runtime import StageStatus, Status

from .base import NodeGroup
from .catalog import PVSpec, ai, longin, mbbi, stringin
from .factory import make_group

STAGE_STATES = ("Idle", "Running", "Error")

STAGE_SPECS: tuple[PVSpec, ...] = (
    mbbi("State_RBV", STAGE_STATES, doc="Stage state"),
    longin("Frames_RBV", doc="Frames through the stage"),
    ai("TimePerFrame_RBV", precision=3, units="ms", doc="Mean time a frame"),
    longin("QueueDepth_RBV", doc="Items waiting"),
    longin("QueueSize_RBV", doc="Queue capacity"),
    longin("Dropped_RBV", doc="Frames lost or skipped here"),
)

PIPELINE_SPECS: tuple[PVSpec, ...] = (
    stringin("Backend_RBV", "CPU", doc="Where the pipeline runs: CPU or GPU"),
    ai("FrameRate_RBV", precision=1, units="Hz", doc="Processed frames/s"),
    ai("Throughput_RBV", precision=3, units="Gbit/s", doc="Received Gbit/s"),
    longin("FramesProcessed_RBV", doc="Frames processed in this acquisition"),
    longin("FramesWritten_RBV", doc="Frames written"),
    longin("DroppedFrames_RBV", doc="Frames lost, all stages"),
    longin("CorruptFrames_RBV", doc="Corrupt frames received"),
)


class StageGroup(NodeGroup, make_group("StageBase", STAGE_SPECS)):
    """One stage: state, mean time a frame, queue fill, frames lost."""

    async def publish(self, stage: StageStatus, node_error: bool) -> None:
        error = stage.error or (node_error and stage.running)
        await self.post_many({
            "State_RBV": 2 if error else int(stage.running),
            "Frames_RBV": stage.frames, "TimePerFrame_RBV": stage.time_per_frame_ms,
            "QueueDepth_RBV": stage.queue_depth, "QueueSize_RBV": stage.queue_size,
            "Dropped_RBV": stage.dropped,
        })


class PipelineGroup(NodeGroup, make_group("PipelineBase", PIPELINE_SPECS)):
    """Node-wide figures and one :class:`StageGroup` per stage (:func:`pipeline_group_class`)."""

    stage_names: tuple[str, ...] = ()

    async def publish(self, status: Status) -> None:
        await self.post_many({
            "Backend_RBV": status.backend, "FrameRate_RBV": status.frame_rate_hz,
            "Throughput_RBV": status.throughput_gbps,
            "FramesProcessed_RBV": status.frames_processed,
            "FramesWritten_RBV": status.frames_written,
            "DroppedFrames_RBV": status.frames_dropped, "CorruptFrames_RBV": status.corrupt_frames,
        })
        error = status.state == "Error"
        for stage in status.stages:
            group = getattr(self, stage.name, None)
            if isinstance(group, StageGroup):
                await group.publish(stage, error)


def stage_prefix(name: str) -> str:
    """``"write"`` → ``"Write:"``: a stage's PV prefix under ``Pipe:``."""
    return name[:1].upper() + name[1:] + ":"


def pipeline_group_class(stage_names: tuple[str, ...]) -> type[PipelineGroup]:
    """PipelineGroup with one StageGroup per stage, in pipeline order."""
    stages = {name: SubGroup(StageGroup, prefix=stage_prefix(name)) for name in stage_names}
    return type("PipelineStagesGroup", (PipelineGroup,), {**stages, "stage_names": stage_names})
