"""``Pipe:``: the node's stages, their timing and queues, the node's throughput, and where
the pipeline runs.

One subgroup per stage the node declares (``Pipe:Ingest:``, ``Pipe:Decode:``, …
``Pipe:Write:``), so a new stage or consumer gets its PVs (and screens) without code here.

``Pipe:Backend`` (Auto, CPU, GPU) chooses the backend between acquisitions (refused while
acquiring, and GPU where none is usable: the reason goes to ``Pipe:GpuMessage_RBV``);
``Pipe:Backend_RBV`` says what runs. It is not autosaved: ``pimega-ioc --backend`` sets it at
start-up. The ``Pipe:Gpu…_RBV`` figures are the device's (empty and zero on the CPU).
"""

from __future__ import annotations

import asyncio
from typing import Any

from caproto.server import SubGroup

from pimega.core.errors import ConfigError
from pimega.runtime import StageStatus, Status

from .base import NodeGroup, ascii_text
from .catalog import PVSpec, ai, longin, mbbi, mbbo, stringin, text
from .factory import make_group, on_put

STAGE_STATES = ("Idle", "Running", "Error")

STAGE_SPECS: tuple[PVSpec, ...] = (
    mbbi("State_RBV", STAGE_STATES, doc="Stage state"),
    longin("Frames_RBV", doc="Frames through the stage"),
    ai("TimePerFrame_RBV", precision=3, units="ms", doc="Mean time a frame"),
    longin("QueueDepth_RBV", doc="Items waiting"),
    longin("QueueSize_RBV", doc="Queue capacity"),
    longin("Dropped_RBV", doc="Frames lost or skipped here"),
)

#: ``Pipe:Backend``'s choices (the engine's ``select_backend`` takes them).
BACKENDS = ("Auto", "CPU", "GPU")
#: The device's steps (``pipeline.gpu.STAGES``) and the PV of each one's time per frame.
GPU_TIMES = {"h2d": "GpuH2DTime_RBV", "assemble": "GpuAssembleTime_RBV",
             "correct": "GpuCorrectTime_RBV", "stats": "GpuStatsTime_RBV",
             "preview": "GpuPreviewTime_RBV", "d2h": "GpuD2HTime_RBV"}
_GPU_TIME_DOCS = {"h2d": "copy to the GPU", "assemble": "decode + assemble",
                  "correct": "corrections", "stats": "statistics (an image)",
                  "preview": "preview binning (an image)", "d2h": "copy back"}
_MB = 1e-6

BACKEND_SPECS: tuple[PVSpec, ...] = (
    mbbo("Backend", BACKENDS, "CPU", readback=False,
         doc="Backend from the next acquisition"),
    stringin("Backend_RBV", "CPU", doc="Where the pipeline runs: CPU or GPU"),
    stringin("GpuDevice_RBV", doc="GPU in use (empty on the CPU)"),
    ai("GpuMemoryUsed_RBV", precision=1, units="MB", doc="GPU memory in use"),
    ai("GpuMemoryTotal_RBV", precision=1, units="MB", doc="GPU memory in all"),
    longin("GpuInFlight_RBV", doc="Frames on the GPU"),
    ai("GpuH2D_RBV", precision=2, units="GB/s", doc="Host to GPU copy rate"),
    *(ai(pv, precision=3, units="ms", doc=f"GPU ms a frame: {_GPU_TIME_DOCS[stage]}")
      for stage, pv in GPU_TIMES.items()),
    text("GpuMessage_RBV", 256, doc="Why the GPU is not used, or how it failed"),
)

PIPELINE_SPECS: tuple[PVSpec, ...] = (
    *BACKEND_SPECS,
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
    #: Why the last Backend put was refused, shown until one is taken (the node's own
    #: backend message would replace it at the next status poll otherwise).
    _refusal = ""

    async def refused(self, name: str, reason: str) -> None:
        if name == "Backend":
            self._refusal = reason
            await self.post("GpuMessage_RBV", reason)

    @on_put("Backend")
    async def _backend(self, name: str, value: str) -> str:
        """Choose the backend off the IOC's loop (a new GPU backend compiles its kernels)."""
        select = getattr(self.node, "select_backend", None)
        if select is None:
            raise ConfigError("this node's backend is chosen on each module's own node")
        await asyncio.get_running_loop().run_in_executor(None, select, value)
        self._refusal = ""
        await self.root.publish()  # Backend_RBV and the messages follow at once
        return value

    async def publish(self, status: Status) -> None:
        gpu = status.gpu
        values: dict[str, Any] = {
            "GpuDevice_RBV": ascii_text(gpu.device, 39),
            "GpuMemoryUsed_RBV": gpu.memory_used_bytes * _MB,
            "GpuMemoryTotal_RBV": gpu.memory_total_bytes * _MB,
            "GpuInFlight_RBV": gpu.frames_in_flight, "GpuH2D_RBV": gpu.h2d_gb_s,
            "GpuMessage_RBV": status.gpu.error or self._refusal or status.backend_message,
            **{pv: gpu.gpu_ms_per_frame.get(stage, 0.0) for stage, pv in GPU_TIMES.items()},
        }
        if status.backend_choice in BACKENDS:
            values["Backend"] = status.backend_choice
        await self.post_many(values)
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
