"""The NDPlugin groups: ``image1:`` (preview), ``HDF1:`` (file), ``Stats1:``, ``ROI1:``.

They are views of the one pipeline inside the engine, not separate threads: ROI and
statistics are computed by the pipeline, the preview is binned there, the file is written by
the engine's writer thread. Each group publishes what the engine reports.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from caproto import SkipWrite

from pimega.core.errors import ConfigError, PimegaError
from pimega.pipeline.stats import Stats
from pimega.runtime.settings import CaptureSettings
from pimega.runtime.status import Status
from pimega.writer.naming import ensure_directory, full_file_name, normalise_path

from .base import EngineGroup
from .catalog import HDF5_STACK, IMAGE_STACK, ROI_STACK, STATS_STACK
from .factory import make_group, override
from .pimega_specs import PIMEGA_IMAGE
from .pva import PvaImage

CAPTURE_POLL_S = 0.02
#: Shortest preview interval (50 Hz): a waveform monitor must never go unpaced.
PREVIEW_FLOOR_S = 0.02
UPSTREAM_PORT = "PIMEGA"


class PluginGroup(EngineGroup):
    """NDPluginBase identity: port names and the upstream port, posted at start-up."""

    port_name = ""
    upstream = UPSTREAM_PORT

    async def startup(self) -> None:
        await self.post_many({"PortName_RBV": self.port_name, "NDArrayPort": self.upstream,
                              "EnableCallbacks": "Enable",
                              "PluginType_RBV": self.pv("PluginType_RBV").value})


ImageBase = make_group("ImageBase", *IMAGE_STACK, PIMEGA_IMAGE)


class ImageGroup(PluginGroup, ImageBase):
    """NDStdArrays: the latest image, binned to fit, at most once per MinCallbackTime."""

    port_name = "IMAGE1"

    async def on_put(self, name: str, value: Any) -> Any:
        engine = self.engine
        if name == "MinCallbackTime":  # the pipeline makes previews twice as often as shown
            engine.configure(preview_interval_s=max(float(value), PREVIEW_FLOOR_S) / 2)
        elif name == "PreviewBinning":
            engine.set_preview_binning(int(value))  # refuses < 0 or larger than the image
            await self.post_array_geometry(engine.preview_shape, engine.image_dtype)
        return value

    async def run_preview(self) -> None:
        """Publish previews forever, one per MinCallbackTime at most, paced on deadlines."""
        deadline = time.monotonic()
        while True:
            await self.publish_preview()
            deadline += max(self.pv("MinCallbackTime").value, PREVIEW_FLOOR_S)
            late = time.monotonic() - deadline
            if late > 0:  # fell behind (a busy loop): start afresh rather than burst
                deadline += late
            await asyncio.sleep(deadline - time.monotonic())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._published_id = 0
        self.pva: PvaImage | None = None  # set by the IOC where p4p is installed

    async def startup(self) -> None:
        """Post the preview's geometry before the first frame (ophyd's ImagePlugin reads it)."""
        await super().startup()
        engine = self.engine
        await self.post_array_geometry(engine.preview_shape, engine.image_dtype)

    async def publish_preview(self) -> None:
        """Publish the engine's newest preview if it is new (``run_preview`` paces this)."""
        if self.pv("EnableCallbacks").value != "Enable":
            return
        preview = self.engine.latest_preview()
        if preview is None or preview[0] == self._published_id:
            return
        unique_id, image = preview
        self._published_id = unique_id
        await self.post_array_geometry(image.shape, image.dtype)
        # the one copy the waveform needs, made off the event loop (NumPy drops the GIL)
        flat = await asyncio.get_running_loop().run_in_executor(None, _as_waveform, image)
        await self.pv("ArrayData").write(flat, verify_value=False)
        if self.pva is not None:
            self.pva.post(image, unique_id)
        await self.post_many({"UniqueId_RBV": unique_id,
                              "ArrayCounter_RBV": self.pv("ArrayCounter_RBV").value + 1})


def _as_waveform(image: np.ndarray) -> np.ndarray:
    """ArrayData's element type (LONG), big-endian as Channel Access sends it."""
    return image.ravel().astype(">i4")


HDF5Base = make_group("HDF5Base", *HDF5_STACK)

#: HDF1:Compression strings this writer honours, and the writer's name for each.
COMPRESSION = {"None": "none", "BSLZ4": "bslz4"}


class HDF5Group(PluginGroup, HDF5Base):
    """NDFileHDF5: Capture streams processed frames into one NeXus file."""

    port_name = "HDF1"

    async def on_put(self, name: str, value: Any) -> Any:
        try:
            match name:
                case "FilePath":
                    value = normalise_path(value)
                    ensure_directory(value, self.pv("CreateDirectory").value)
                    await self.post("FilePathExists_RBV", "Yes")
                case "Compression" if value not in COMPRESSION:
                    raise ConfigError(f"compression {value} is not supported: use None or BSLZ4")
                case "FileTemplate":
                    full_file_name("/", "x", value, 0)
                case "NumCapture" if value < 0:
                    raise ConfigError(f"NumCapture must be ≥ 0, got {value}")
        except PimegaError as exc:
            await self.report_write_error(str(exc))
            raise
        return value

    async def report_write_error(self, message: str) -> None:
        """NDFile's way of saying why: WriteMessage plus WriteStatus "Write error"."""
        await self.post_many({"WriteMessage": message, "WriteStatus": "Write error"})

    async def startup(self) -> None:
        await super().startup()
        await self.post("FileTemplate", "%s%s_%6.6d.h5")
        await self.post("FileFormat", "HDF5")
        await self.post("SWMRSupported_RBV", "Supported")

    async def _put_capture(self, instance: Any, value: Any) -> Any:
        engine = self.engine
        if value in (0, "Done"):
            engine.stop_capture()
            return 0  # Capture reads Done at once, as a busy record does
        if self.pv("Capture_RBV").value == "Capturing":
            return SkipWrite  # already running: this put changes nothing
        try:
            settings = self._capture_settings()
            engine.start_capture(settings)
        except PimegaError as exc:
            await self.report_write_error(str(exc))
            raise
        if self.pv("AutoIncrement").value == "Yes":
            await self.post("FileNumber", self.pv("FileNumber").value + 1)
        await self.post_many({"FullFileName_RBV": settings.filename, "NumCaptured_RBV": 0,
                              "WriteStatus": "Write OK", "WriteMessage": "",
                              "SWMRActive_RBV": "Active" if settings.swmr else "Off"})
        await self.post("Capture", 1)
        while not engine.wait_capture(timeout=0):
            await asyncio.sleep(CAPTURE_POLL_S)
            await self.publish_capture(engine.status())
        status = engine.status()
        await self.publish_capture(status)
        if status.capture.error:
            await self.report_write_error(status.capture.error)
        await self.post_many({"SWMRActive_RBV": "Off"})
        await self.post("Capture", 0)
        return SkipWrite

    capture = override(HDF5Base, "capture", put=_put_capture)

    def _capture_settings(self) -> CaptureSettings:
        path = self.pv("FilePath").value
        ensure_directory(path, self.pv("CreateDirectory").value)
        filename = full_file_name(path, self.pv("FileName").value,
                                  self.pv("FileTemplate").value, self.pv("FileNumber").value)
        mode = self.pv("FileWriteMode").value
        return CaptureSettings(
            filename=filename,
            num_capture=1 if mode == "Single" else self.pv("NumCapture").value,
            compression=COMPRESSION[self.pv("Compression").value],  # type: ignore[arg-type]
            lazy_open=self.pv("LazyOpen").value == "Yes",
            swmr=self.pv("SWMRMode").value == "On",
        )

    async def publish_capture(self, status: Status) -> None:
        await self.post_many({"NumCaptured_RBV": status.capture.num_captured,
                              "ArrayCounter_RBV": status.frames_written})

    async def _put_flush_now(self, instance: Any, value: Any) -> Any:
        if value not in (0, "Done"):
            await asyncio.get_running_loop().run_in_executor(None, self.engine.flush)
        return 0

    flush_now = override(HDF5Base, "flush_now", put=_put_flush_now)


StatsBase = make_group("StatsBase", *STATS_STACK)


class StatsGroup(PluginGroup, StatsBase):
    """NDStats of the ROI1 output, computed by the pipeline (rate-limited there)."""

    port_name = "STATS1"
    upstream = "ROI1"

    async def publish_stats(self, stats: Stats | None, unique_id: int) -> None:
        if stats is None or self.pv("ComputeStatistics").value != "Yes":
            return
        await self.post_many({
            "Total_RBV": stats.total, "Net_RBV": stats.net, "MinValue_RBV": stats.min_value,
            "MaxValue_RBV": stats.max_value, "MeanValue_RBV": stats.mean,
            "Sigma_RBV": stats.sigma, "MinX_RBV": stats.min_x, "MinY_RBV": stats.min_y,
            "MaxX_RBV": stats.max_x, "MaxY_RBV": stats.max_y,
            "CentroidX_RBV": stats.centroid_x, "CentroidY_RBV": stats.centroid_y,
            "SigmaX_RBV": stats.sigma_x, "SigmaY_RBV": stats.sigma_y,
            "SigmaXY_RBV": stats.sigma_xy, "UniqueId_RBV": unique_id,
        })


ROIBase = make_group("ROIBase", *ROI_STACK)

_ROI_FIELDS = {"MinX": "min_x", "MinY": "min_y", "SizeX": "size_x", "SizeY": "size_y",
               "BinX": "bin_x", "BinY": "bin_y"}


class ROIGroup(PluginGroup, ROIBase):
    """NDROI: the region (and binning) the statistics are computed on."""

    port_name = "ROI1"

    async def on_put(self, name: str, value: Any) -> Any:
        if name in _ROI_FIELDS:
            self.engine.set_roi(**{_ROI_FIELDS[name]: int(value)})  # refuses bad values
            await self.publish_region()
        return value

    async def publish_region(self) -> tuple[int, int]:
        """Post the ROI's output geometry; returns its (height, width)."""
        engine = self.engine
        roi = engine.roi
        height, width = engine.image_shape
        x0, y0 = min(roi.min_x, width - 1), min(roi.min_y, height - 1)
        size_x = min(roi.size_x or width, width - x0) // roi.bin_x
        size_y = min(roi.size_y or height, height - y0) // roi.bin_y
        await self.post_many({"MaxSizeX_RBV": width, "MaxSizeY_RBV": height,
                              "MaxX": width, "MaxY": height})
        await self.post_array_geometry((size_y, size_x), engine.image_dtype)
        return size_y, size_x
