"""``cam1:``: ADBase driver PVs plus π-MEGA's, driving the node with areaDetector semantics.

``Acquire`` is a busy record (:class:`~pimega.iocs.events.Busy`): a put of 1 returns
(put-callback) only when the acquisition ends — a second client's put joins the running one,
and a start right after a stop starts a new one once the stopped one has ended.
``Acquire_RBV`` goes 1 then 0 as separate monitor updates even for one fast frame, as
ophyd's ``SingleTrigger`` needs. A put of 0 stops the acquisition. The acquisition's settings
are one snapshot of the PVs, taken when it starts (Proc1:'s steps included).

Readbacks never say what the detector does not do: ``DataType`` is the counter depth's
(UInt8, UInt16, UInt32) and refuses any other (Proc1:DataTypeOut converts frames),
``ColorMode`` is Mono. ``TimeRemaining_RBV`` counts down to the end of the acquisition (of
the current frame in Continuous mode): frame k arrives at start + (k+1)·max(AcquireTime,
AcquirePeriod), as from a detector. ``TriggerMode`` External: one AcquireTime exposure per
trigger (``TriggerSoftware`` pulses the simulator's input); Gated and External where the
node has no detector control (``--listen``): frames come as the sender sends them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from caproto import SkipWrite
from caproto.server import SubGroup

from pimega import __version__
from pimega.core.bitpack import dtype_for_depth
from pimega.core.errors import ConfigError, PimegaError
from pimega.runtime import AcquisitionEnded, Status, TriggerMode

from .base import NodeGroup, data_type_name, frame_time_values
from .catalog import CAM_STACK
from .events import Busy
from .factory import make_group, on_put, override
from .module_group import ModuleGroup
from .pimega_specs import DEPTH_OF_STATE, PIMEGA_CAM

CamBase = make_group("CamBase", *CAM_STACK, PIMEGA_CAM)

_SETTING_OF_PV = {"AcquireTime": "acquire_time_s", "AcquirePeriod": "acquire_period_s"}
_IMAGES_OF_MODE = {"Single": lambda n: 1, "Multiple": lambda n: n, "Continuous": lambda n: 0}


class CamGroup(NodeGroup, CamBase):
    """The detector driver: settings go to the node, Acquire runs it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acquisitions = 0
        self._counter_base = 0
        self._busy: Busy | None = None
        self._started: float | None = None  # monotonic start of the running acquisition

    @property
    def busy(self) -> Busy:
        if self._busy is None:
            self._busy = Busy(self.completions, AcquisitionEnded)
        return self._busy

    async def refused(self, name: str, reason: str) -> None:
        await self.post("StatusMessage_RBV", reason)

    @on_put("AcquireTime", "AcquirePeriod")
    async def _timing(self, name: str, value: float) -> float:
        """Checked now; in force at once when idle, else from the next acquisition."""
        change = {_SETTING_OF_PV[name]: float(value)}
        if self.node.acquiring:
            replace(self.node.settings, **change)  # validates, changes nothing
        else:
            self.node.configure(**change)
        return value

    @on_put("TriggerMode")
    async def _trigger_mode(self, name: str, value: str) -> str:
        self.node.configure(trigger_mode=TriggerMode(value))  # refused while acquiring
        return value

    @on_put("TriggerSoftware")
    async def _trigger_software(self, name: str, value: str) -> str:
        if value == "Trigger":
            self.node.trigger()
        return "Done"  # a pulse, not a state

    @on_put("NumImages")
    async def _num_images(self, name: str, value: int) -> int:
        if value < 1:
            raise ConfigError(f"NumImages must be ≥ 1, got {value}")
        return value

    @on_put("CounterDepth")
    async def _counter_depth(self, name: str, value: str) -> str:
        self.node.configure(bit_depth=DEPTH_OF_STATE[value])  # refused while acquiring
        # data type and rate limit change everywhere at once, before the put completes
        await self.publish_settings()
        await self.root.publish()
        return value

    @on_put("ArrayCounter")
    async def _array_counter(self, name: str, value: int) -> int:
        self._counter_base = int(value) - self.node.status().frames_processed
        return value

    @on_put("SizeX", "SizeY", "MinX", "MinY", "BinX", "BinY")
    async def _geometry(self, name: str, value: int) -> int:
        raise ConfigError(f"{name} is fixed by the module geometry")

    @on_put("DataType")
    async def _data_type(self, name: str, value: str) -> str:
        depth_type = self._raw_type()
        if value != depth_type:
            raise ConfigError(f"DataType is {depth_type}, fixed by the counter depth: change "
                              "CounterDepth, or Proc1:DataTypeOut to convert frames")
        return value

    @on_put("ColorMode")
    async def _color_mode(self, name: str, value: str) -> str:
        if value != "Mono":
            raise ConfigError("ColorMode is Mono: the detector counts photons per pixel")
        return value

    def _raw_type(self) -> str:
        """The DataType of the frames the detector sends at the current counter depth."""
        return data_type_name(dtype_for_depth(self.node.settings.bit_depth))

    async def publish_settings(self) -> None:
        """Readbacks that follow from the node's settings and the geometry."""
        node = self.node
        width, height = node.layout.width, node.layout.height
        await self.post_many({
            "MaxFrameRate_RBV": node.settings.max_frame_rate_hz,
            "MaxSizeX_RBV": width, "MaxSizeY_RBV": height, "SizeX": width, "SizeY": height,
        })
        await self.post_array_geometry(node.image_shape, dtype_for_depth(node.settings.bit_depth))

    async def startup(self) -> None:
        """Post the node's defaults and the detector's identity once the IOC runs."""
        node = self.node
        settings = node.settings
        await self.post_many({
            "Manufacturer_RBV": "LNLS", "Model_RBV": f"pi-MEGA {node.layout.n_modules}-module",
            "DriverVersion_RBV": __version__, "ADCoreVersion_RBV": "3.14.0",
            "PortName_RBV": "PIMEGA", "SerialNumber_RBV": "simulated",
        })
        await self.post("AcquireTime", settings.acquire_time_s)
        await self.post("AcquirePeriod", settings.acquire_period_s)
        await self.post("DetectorState_RBV", "Idle")
        await self.post("StatusMessage_RBV", "Idle")
        await self.publish_settings()

    def _acquire_settings(self) -> dict[str, Any]:
        """The snapshot an acquisition runs with, from the PVs as they are now."""
        return {
            "acquire_time_s": self.pv("AcquireTime").value,
            "acquire_period_s": self.pv("AcquirePeriod").value,
            "bit_depth": DEPTH_OF_STATE[self.pv("CounterDepth").value],
            "n_images": _IMAGES_OF_MODE[self.pv("ImageMode").value](self.pv("NumImages").value),
            "process": self.root.proc.steps(),
        }

    def _start(self) -> int:
        self.node.configure(**self._acquire_settings())
        number = self.node.start()
        self._counter_base = self.pv("ArrayCounter_RBV").value
        self._started = time.monotonic()
        return number

    async def _put_acquire(self, instance: Any, value: Any) -> Any:
        if value in (0, "Done"):
            self.busy.stop()
            self.node.stop()
            return 0  # Acquire reads Done at once, as a busy record does
        hdf = self.root.hdf
        if not self.busy.active:  # a put that joins or follows a running one arms nothing
            await hdf.begin_auto_save()
        try:
            number = await self.busy.begin(self._start)
        except PimegaError as exc:
            await hdf.end_auto_save()
            await self.post("StatusMessage_RBV", f"Acquire refused: {exc}")
            raise
        if number is None:  # joined a running acquisition, which has ended now
            return SkipWrite
        await self.post("Acquire", 1)
        if self.node.settings.trigger_mode == TriggerMode.INTERNAL:
            await self.post_many({"DetectorState_RBV": "Acquire",
                                  "StatusMessage_RBV": "Acquiring"})
        else:  # as ADCore drivers show an acquisition that frames come to from outside
            await self.post_many({"DetectorState_RBV": "Waiting",
                                  "StatusMessage_RBV": "Waiting for triggers"})
        ended: AcquisitionEnded = await self.busy.wait(number)
        self._started = None
        await hdf.end_auto_save()
        if self.pv("WaitForPlugins").value == "Yes":
            await asyncio.get_running_loop().run_in_executor(None, self.node.flush)
        await self.root.publish()  # every plugin shows the last frame before Acquire_RBV=0
        self._acquisitions += 1
        await self.post("ProcessedAcquisitionCounter_RBV", self._acquisitions)
        await self.post_many({"DetectorState_RBV": str(ended.state),
                              "StatusMessage_RBV": ended.message})
        await self.post("Acquire", 0)
        return SkipWrite

    acquire = override(CamBase, "acquire", put=_put_acquire)

    async def publish_status(self, status: Status) -> None:
        """Everything the periodic poll refreshes (the Acquire putter owns state changes)."""
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
            "IOCStatusMessage_RBV": status.message,
            "TimeRemaining_RBV": self._time_remaining(),
            **frame_time_values(self.node.frame_timestamp_ns(status.unique_id)),
        })
        if status.state == "Error":
            await self.post_many({"DetectorState_RBV": "Error"})
        modules = [getattr(self, f"m{i + 1}") for i in range(len(status.modules))]
        for group, counters in zip(modules, status.modules, strict=True):
            await group.publish(counters, self._acquisitions)


    def _time_remaining(self) -> float:
        """Seconds left in the acquisition (in the current frame when Continuous); unknown,
        so 0, when triggers set the pace."""
        settings = self.node.settings
        if self._started is None or settings.trigger_mode != TriggerMode.INTERNAL:
            return 0.0
        period = 1.0 / settings.frame_rate_hz
        elapsed = time.monotonic() - self._started
        if settings.n_images == 0:
            return period - elapsed % period
        return max(settings.n_images * period - elapsed, 0.0)


def cam_group_class(n_modules: int) -> type[CamGroup]:
    """CamGroup with ADPimega's per-module subgroups ``M1:`` … ``Mn:``."""
    modules = {f"m{i}": SubGroup(ModuleGroup, prefix=f"M{i}:") for i in range(1, n_modules + 1)}
    return type(f"Cam{n_modules}Group", (CamGroup,), modules)
