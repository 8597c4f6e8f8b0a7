"""``Pipe:``: the pipeline's stages, their timing and queues, and the node's throughput."""

from __future__ import annotations

from caproto.server import SubGroup

from pimega.runtime.status import StageStatus, Status

from .base import EngineGroup
from .catalog import PVSpec, ai, longin, mbbi, stringin
from .factory import make_group

STAGE_STATES = ("Idle", "Running", "Error")

STAGE_SPECS: tuple[PVSpec, ...] = (
    mbbi("State_RBV", STAGE_STATES, doc="Stage state"),
    longin("Frames_RBV", doc="Frames through the stage"),
    ai("TimePerFrame_RBV", precision=3, units="ms", doc="Mean time a frame"),
    longin("QueueDepth_RBV", doc="Items waiting"),
    longin("QueueSize_RBV", doc="Queue capacity"),
    longin("Dropped_RBV", doc="Frames lost here"),
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


class StageGroup(EngineGroup, make_group("StageBase", STAGE_SPECS)):
    """One stage (``Pipe:Decode:`` …): state, mean time a frame, queue fill, frames lost."""

    async def publish(self, stage: StageStatus, error: bool) -> None:
        await self.post_many({
            "State_RBV": 2 if error and stage.running else int(stage.running),
            "Frames_RBV": stage.frames, "TimePerFrame_RBV": stage.time_per_frame_ms,
            "QueueDepth_RBV": stage.queue_depth, "QueueSize_RBV": stage.queue_size,
            "Dropped_RBV": stage.dropped,
        })


class PipelineGroup(EngineGroup, make_group("PipelineBase", PIPELINE_SPECS)):
    """Node-wide figures and one :class:`StageGroup` per stage."""

    ingest = SubGroup(StageGroup, prefix="Ingest:")
    decode = SubGroup(StageGroup, prefix="Decode:")
    correct = SubGroup(StageGroup, prefix="Correct:")
    stats = SubGroup(StageGroup, prefix="Stats:")
    write = SubGroup(StageGroup, prefix="Write:")

    async def publish(self, status: Status) -> None:
        await self.post_many({
            "Backend_RBV": status.backend, "FrameRate_RBV": status.frame_rate_hz,
            "Throughput_RBV": status.throughput_gbps,
            "FramesProcessed_RBV": status.frames_processed,
            "FramesWritten_RBV": status.frames_written,
            "DroppedFrames_RBV": status.frames_dropped, "CorruptFrames_RBV": status.corrupt_frames,
        })
        stages = {"ingest": self.ingest, "decode": self.decode, "correct": self.correct,
                  "stats": self.stats, "write": self.write}
        error = status.state == "Error"
        for stage in status.stages:
            await stages[stage.name].publish(stage, error)
