"""``Pipe:``: the pipeline's stages, their timing and queues, and the whole node's throughput."""

from __future__ import annotations

from caproto import ChannelType
from caproto.server import PVGroup, SubGroup, pvproperty

from pimega.runtime.status import StageStatus, Status

from .publish import readback, update

STAGE_STATES = ("Idle", "Running", "Error")


class StageGroup(PVGroup):
    """One stage (``Pipe:Decode:`` …): state, mean time a frame, queue fill, frames lost."""

    state = readback(0, record="mbbi", doc="stage state", name="State_RBV",
                     dtype=ChannelType.ENUM, enum_strings=STAGE_STATES)
    frames = readback(0, record="longin", doc="frames through the stage", name="Frames_RBV")
    time_per_frame = readback(0.0, record="ai", doc="mean time a frame, ms",
                              name="TimePerFrame_RBV", precision=3, units="ms")
    queue_depth = readback(0, record="longin", doc="items waiting", name="QueueDepth_RBV")
    queue_size = readback(0, record="longin", doc="queue capacity", name="QueueSize_RBV")
    dropped = readback(0, record="longin", doc="frames lost here", name="Dropped_RBV")

    async def publish(self, stage: StageStatus, error: bool) -> None:
        state = 2 if error and stage.running else int(stage.running)
        await update((
            (self.state, state), (self.frames, stage.frames),
            (self.time_per_frame, stage.time_per_frame_ms), (self.queue_depth, stage.queue_depth),
            (self.queue_size, stage.queue_size), (self.dropped, stage.dropped),
        ))


class PipelineGroup(PVGroup):
    """Node-wide figures and one :class:`StageGroup` per stage."""

    backend = readback("CPU", record="stringin", doc="CPU or GPU", name="Backend_RBV")
    frame_rate = readback(0.0, record="ai", doc="processed frames/s", name="FrameRate_RBV",
                          precision=1, units="Hz")
    throughput = readback(0.0, record="ai", doc="received Gbit/s", name="Throughput_RBV",
                          precision=3, units="Gbit/s")
    frames_processed = readback(0, record="longin", doc="frames processed",
                                name="FramesProcessed_RBV")
    frames_written = readback(0, record="longin", doc="frames written", name="FramesWritten_RBV")
    dropped = readback(0, record="longin", doc="frames lost, all stages",
                       name="DroppedFrames_RBV")
    corrupt = readback(0, record="longin", doc="corrupt frames received",
                       name="CorruptFrames_RBV")

    ingest = SubGroup(StageGroup, prefix="Ingest:")
    decode = SubGroup(StageGroup, prefix="Decode:")
    correct = SubGroup(StageGroup, prefix="Correct:")
    stats = SubGroup(StageGroup, prefix="Stats:")
    write = SubGroup(StageGroup, prefix="Write:")

    async def publish(self, status: Status) -> None:
        await update((
            (self.backend, status.backend), (self.frame_rate, status.frame_rate_hz),
            (self.throughput, status.throughput_gbps),
            (self.frames_processed, status.frames_processed),
            (self.frames_written, status.frames_written), (self.dropped, status.frames_dropped),
            (self.corrupt, status.corrupt_frames),
        ))
        groups = {"ingest": self.ingest, "decode": self.decode, "correct": self.correct,
                  "stats": self.stats, "write": self.write}
        error = status.state == "Error"
        for stage in status.stages:
            await groups[stage.name].publish(stage, error)
