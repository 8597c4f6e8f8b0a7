"""``cam1:``: ADBase driver PVs plus π-MEGA's, driving the engine with areaDetector semantics.

``Acquire`` is a busy record: a put of 1 returns (put-callback) only when the acquisition
ends; ``Acquire_RBV`` goes 1 then 0 as separate monitor updates even for one fast frame, as
ophyd's ``SingleTrigger`` needs. A put of 0 stops the acquisition.
"""

from __future__ import annotations

import asyncio
from typing import Any

from caproto import SkipWrite
from caproto.server import SubGroup

from pimega import __version__
from pimega.core.errors import ConfigError, PimegaError
from pimega.runtime.status import Status

from .base import EngineGroup
from .catalog import CAM_STACK
from .factory import make_group, override
from .module_group import ModuleGroup
from .pimega_specs import DEPTH_OF_STATE, PIMEGA_CAM

CamBase = make_group("CamBase", *CAM_STACK, PIMEGA_CAM)

#: How often the Acquire putter looks at the engine while it waits.
ACQUIRE_POLL_S = 0.01


class CamGroup(EngineGroup, CamBase):
    """The detector driver: settings go to the engine, Acquire runs it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acquisitions = 0
        self._counter_base = 0

    async def on_put(self, name: str, value: Any) -> Any:
        engine = self.engine
        try:
            match name:
                case "AcquireTime":
                    engine.configure(acquire_time_s=float(value))
                case "AcquirePeriod":
                    engine.configure(acquire_period_s=float(value))
                case "NumImages":
                    if value < 1:
                        raise ConfigError(f"NumImages must be ≥ 1, got {value}")
                case "CounterDepth":
                    engine.configure(bit_depth=DEPTH_OF_STATE[value])
                case "ArrayCounter":
                    self._counter_base = int(value) - engine.status().frames_processed
                case "SizeX" | "SizeY" | "MinX" | "MinY" | "BinX" | "BinY":
                    raise ConfigError(f"{name} is fixed by the module geometry")
        except PimegaError as exc:
            await self.post("StatusMessage_RBV", str(exc))
            raise
        if name == "CounterDepth":  # data type and rate limit change everywhere at once
            await self.publish_settings()
            await self.root.publish()
        return value

    async def publish_settings(self) -> None:
        """Readbacks that follow from the engine's settings and the geometry."""
        engine = self.engine
        settings = engine.settings
        width, height = engine.layout.width, engine.layout.height
        await self.post_many({
            "MaxFrameRate_RBV": settings.max_frame_rate_hz,
            "MaxSizeX_RBV": width, "MaxSizeY_RBV": height, "SizeX": width, "SizeY": height,
        })
        await self.post_array_geometry(engine.image_shape, engine.image_dtype)

    async def startup(self) -> None:
        """Post the engine's defaults and the detector's identity once the IOC runs."""
        engine = self.engine
        settings = engine.settings
        await self.post_many({
            "Manufacturer_RBV": "LNLS", "Model_RBV": f"pi-MEGA {engine.layout.n_modules}-module",
            "DriverVersion_RBV": __version__, "ADCoreVersion_RBV": "3.14.0",
            "PortName_RBV": "PIMEGA", "SerialNumber_RBV": "simulated",
        })
        await self.post("AcquireTime", settings.acquire_time_s)
        await self.post("AcquirePeriod", settings.acquire_period_s)
        await self.post("DetectorState_RBV", "Idle")
        await self.post("StatusMessage_RBV", "Idle")
        await self.publish_settings()

    async def _put_acquire(self, instance: Any, value: Any) -> Any:
        engine = self.engine
        if value in (0, "Done"):
            engine.stop()
            return 0  # Acquire reads Done at once, as a busy record does
        if engine.acquiring:
            return SkipWrite  # already running: this put changes nothing
        mode = self.pv("ImageMode").value
        n_images = {"Single": 1, "Multiple": self.pv("NumImages").value, "Continuous": 0}[mode]
        try:
            engine.configure(n_images=n_images)
            engine.start()
        except PimegaError as exc:
            await self.post("StatusMessage_RBV", f"Acquire refused: {exc}")
            raise
        self._counter_base = self.pv("ArrayCounter_RBV").value
        await self.post("Acquire", 1)
        await self.post_many({"DetectorState_RBV": "Acquire", "StatusMessage_RBV": "Acquiring"})
        while engine.acquiring:
            await asyncio.sleep(ACQUIRE_POLL_S)
            await self.publish_progress(engine.status())
        if self.pv("WaitForPlugins").value == "Yes":
            await asyncio.get_running_loop().run_in_executor(None, engine.flush)
        await self.root.publish()  # every plugin shows the last frame before Acquire_RBV=0
        status = engine.status()
        self._acquisitions += 1
        await self.post("ProcessedAcquisitionCounter_RBV", self._acquisitions)
        await self.post_many({"DetectorState_RBV": str(status.state),
                              "StatusMessage_RBV": status.message})
        await self.post("Acquire", 0)
        return SkipWrite

    acquire = override(CamBase, "acquire", put=_put_acquire)

    async def publish_progress(self, status: Status) -> None:
        """Counters that move while frames arrive."""
        await self.post_many({
            "ArrayCounter_RBV": self._counter_base + status.frames_processed,
            "NumImagesCounter_RBV": status.frames_processed,
            "UniqueId_RBV": status.unique_id,
            "ArrayRate_RBV": status.frame_rate_hz,
            "FrameRate_RBV": status.frame_rate_hz,
            "Throughput_RBV": status.throughput_gbps,
            "CorruptFrames_RBV": status.corrupt_frames,
            "DroppedFrames_RBV": status.frames_dropped,
            "Backend_RBV": status.backend,
            "Backend_BufferUsed_RBV": 100.0 * status.buffer_used / max(status.buffer_size, 1),
        })

    async def publish_status(self, status: Status) -> None:
        """Everything the periodic poll refreshes (the Acquire putter owns state changes)."""
        await self.publish_progress(status)
        if status.state == "Error":
            await self.post_many({"DetectorState_RBV": "Error"})
        await self.post_many({"IOCStatusMessage_RBV": status.message})
        modules = [getattr(self, f"m{i + 1}") for i in range(len(status.modules))]
        for group, counters in zip(modules, status.modules, strict=True):
            await group.publish(counters, self._acquisitions)


def cam_group_class(n_modules: int) -> type[CamGroup]:
    """CamGroup with ADPimega's per-module subgroups ``M1:`` … ``Mn:``."""
    modules = {f"m{i}": SubGroup(ModuleGroup, prefix=f"M{i}:") for i in range(1, n_modules + 1)}
    return type(f"Cam{n_modules}Group", (CamGroup,), modules)
