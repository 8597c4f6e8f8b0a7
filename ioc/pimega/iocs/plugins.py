"""The NDPlugin groups: ``Pva1:`` (preview over PV Access), ``HDF1:`` (file), ``Stats1:``,
``ROI1:``, and their base (``image1:`` is in :mod:`pimega.iocs.image_group`).

They are views of the one pipeline inside the node, not separate threads: ROI and
statistics are computed by the pipeline, the preview is binned there, the file is written by
the node's writer thread. Each group publishes what the node reports.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np
from caproto import SkipWrite
from caproto.server import SubGroup

from pimega.core.errors import ConfigError, PimegaError
from pimega.core.naming import (
    check_within,
    ensure_directory,
    full_file_name,
    next_free_number,
    normalise_path,
)
from pimega.runtime import (
    CaptureEnded,
    CaptureSettings,
    CompressionOptions,
    FileNaming,
    MxGeometry,
    Stats,
    Status,
    check_compression,
)

from .base import NodeGroup, frame_time_values
from .catalog import HDF5_STACK, ROI_STACK, STATS_STACK
from .events import Busy
from .factory import make_group, on_put, override
from .pimega_specs import PIMEGA_HDF5
from .pva import PVA_IMAGE_SUFFIX, PvaBase
from .time_series import TimeSeriesGroup

UPSTREAM_PORT = "PIMEGA"


class PluginGroup(NodeGroup):
    """NDPluginBase identity (port names and the upstream port, posted at start-up) and its
    counters: arrays processed (ArrayCounter_RBV), arrays the plugin's rate limit skipped
    (DroppedArrays_RBV) — both reset by a put, as ADCore's — and the last array's unique id
    and time."""

    port_name = ""
    upstream = UPSTREAM_PORT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._processed = self._dropped = 0  # since start-up
        self._processed_base = self._dropped_base = 0  # at the last reset by a put

    @on_put("ArrayCounter")
    async def _reset_array_counter(self, name: str, value: int) -> int:
        self._processed_base = self._processed - int(value)
        return value

    @on_put("DroppedArrays")
    async def _reset_dropped_arrays(self, name: str, value: int) -> int:
        self._dropped_base = self._dropped - int(value)
        return value

    @on_put("DataType", "ColorMode")
    async def _array_type(self, name: str, value: str) -> str:
        """A plugin's DataType and ColorMode are those of the arrays it receives."""
        current = self.pv(f"{name}_RBV").value
        if value != current:
            raise ConfigError(f"{name} is {current}, that of the arrays this plugin receives "
                              "(Proc1:DataTypeOut converts them)")
        return value

    async def publish_arrays(self, processed: int, dropped: int, unique_id: int) -> None:
        """Post the counters (totals since start-up) and the identity of the last array."""
        self._processed, self._dropped = processed, dropped
        await self.post_many({
            "ArrayCounter_RBV": processed - self._processed_base,
            "DroppedArrays_RBV": dropped - self._dropped_base,
            "UniqueId_RBV": unique_id,
            **frame_time_values(self.node.frame_timestamp_ns(unique_id)),
        })

    async def startup(self) -> None:
        await self.post_many({"PortName_RBV": self.port_name, "NDArrayPort": self.upstream,
                              "EnableCallbacks": "Enable",
                              "PluginType_RBV": self.pv("PluginType_RBV").value})


class PvaGroup(PluginGroup, PvaBase):
    """NDPva: the preview as an NTNDArray over PV Access (``Pva1:Image``, where p4p is
    installed), with the plugin's Channel Access PVs and counters."""

    port_name = "PVA1"
    upstream = "IMAGE1"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._posted = 0

    async def startup(self) -> None:
        await super().startup()
        served = self.root.pva is not None
        await self.post("PvName_RBV", self.root.prefix + PVA_IMAGE_SUFFIX if served else "")
        if not served:
            await self.post("EnableCallbacks", "Disable")

    @on_put("EnableCallbacks")
    async def _enable_callbacks(self, name: str, value: str) -> str:
        if value == "Enable" and self.root.pva is None:
            raise ConfigError("no PV Access server here: p4p is not installed "
                              "(pip install pimega[pva])")
        return value

    async def publish(self, image: np.ndarray, unique_id: int) -> None:
        """Post one preview image over PV Access, if enabled there."""
        pva = self.root.pva
        if pva is None or self.pv("EnableCallbacks").value != "Enable":
            return
        # wrapping copies the image twice (1.5 ms, up to 6 ms, of 1536² here): off the loop
        await asyncio.get_running_loop().run_in_executor(
            None, pva.post, PVA_IMAGE_SUFFIX, image, unique_id,
            self.node.frame_timestamp_ns(unique_id))
        self._posted += 1
        await self.publish_arrays(self._posted, 0, unique_id)
        await self.post_array_geometry(image.shape, image.dtype)


HDF5Base = make_group("HDF5Base", *HDF5_STACK, PIMEGA_HDF5)

#: The writer's name of each HDF1:Compression string (JPEG is refused with the reason).
COMPRESSION = {"None": "none", "N-bit": "nbit", "szip": "szip", "zlib": "zlib",
               "Blosc": "blosc", "BSLZ4": "bslz4", "LZ4": "lz4", "JPEG": "jpeg"}
#: CompressionOptions field of each compression option PV (enums map to lower case).
_COMPRESSION_OPTIONS = {"ZLevel": "zlib_level", "BloscCompressor": "blosc_compressor",
                        "BloscLevel": "blosc_level", "BloscShuffle": "blosc_shuffle",
                        "NumDataBits": "nbit_bits", "DataBitsOffset": "nbit_offset",
                        "SZipNumPixels": "szip_pixels"}
#: MxGeometry field of each NXmx PV, and the factor from the PV's unit to the field's.
_MX_GEOMETRY = {"DetDist": ("distance_m", 1e-3), "BeamX": ("beam_center_x_px", 1.0),
                "BeamY": ("beam_center_y_px", 1.0), "Wavelength": ("wavelength_a", 1.0),
                "SensorMaterial": ("sensor_material", None),
                "SensorThickness": ("sensor_thickness_m", 1e-6),
                "SourceName": ("source_name", None)}


def _check_plain_text(name: str, value: str) -> None:
    """Refuse text a file's metadata should not hold: non-ASCII (Channel Access carries
    bytes, which clients decode as Latin-1 or UTF-8 as they please) and control characters."""
    if not (value.isascii() and value.isprintable()):
        raise ConfigError(f"{name} {value!r}: printable ASCII only")


class HDF5Group(PluginGroup, HDF5Base):
    """NDFileHDF5: Capture streams processed frames into one NeXus file."""

    port_name = "HDF1"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy: Busy | None = None
        self._settings: CaptureSettings | None = None  # of the capture started last
        self._per_frame: int | None = None  # the acquisition's capture, Single with AutoSave
        self._file_number = 0  # the number in its file name
        self._per_frame_seen: tuple[str, int] | None = None  # AutoSave's last file and number

    @property
    def busy(self) -> Busy:
        if self._busy is None:
            self._busy = Busy(self.completions, CaptureEnded)
        return self._busy

    async def refused(self, name: str, reason: str) -> None:
        await self.report_write_error(reason)

    @on_put("FilePath")
    async def _file_path(self, name: str, value: str) -> str:
        value = normalise_path(value)
        check_within(value, self.root.data_roots)
        ensure_directory(value, self.pv("CreateDirectory").value)
        await self.post("FilePathExists_RBV", "Yes")
        return value

    @on_put("Compression")
    async def _compression(self, name: str, value: str) -> str:
        check_compression(COMPRESSION[value])  # refuses, with the reason, what none provides
        return value

    @on_put(*_COMPRESSION_OPTIONS)
    async def _compression_option(self, name: str, value: Any) -> Any:
        self._compression_options(name, value)  # refuses what the writer would
        return value

    def _compression_options(self, name: str = "", value: Any = None) -> CompressionOptions:
        """The options of the PVs as they are, ``name`` taking ``value``."""
        options = {}
        for pv, field in _COMPRESSION_OPTIONS.items():
            current = value if pv == name else self.pv(pv).value
            options[field] = current.lower() if isinstance(current, str) else int(current)
        return CompressionOptions(**options)

    @on_put(*_MX_GEOMETRY)
    async def _mx_geometry(self, name: str, value: Any) -> Any:
        if isinstance(value, str):
            _check_plain_text(name, value)
        try:
            self._mx(name, value)  # refuses what makes no geometry
        except ConfigError as exc:
            raise ConfigError(f"{name} {value!r}: {exc}") from None
        return value

    @on_put("SampleName")
    async def _sample_name(self, name: str, value: str) -> str:
        _check_plain_text(name, value)
        return value

    def _mx(self, name: str = "", value: Any = None) -> MxGeometry:
        """The NXmx geometry of the PVs as they are, ``name`` taking ``value``."""
        geometry = {}
        for pv, (field, factor) in _MX_GEOMETRY.items():
            current = value if pv == name else self.pv(pv).value
            geometry[field] = current if factor is None else float(current) * factor
        return MxGeometry(**geometry)

    @on_put("FileTemplate")
    async def _file_template(self, name: str, value: str) -> str:
        full_file_name(self.pv("FilePath").value or "/", self.pv("FileName").value or "x",
                       value, self.pv("FileNumber").value)
        return value

    @on_put("FileName")
    async def _file_name(self, name: str, value: str) -> str:
        full_file_name("/", value, "%s%s", 0)  # no separators, within the name limit
        return value

    @on_put("NumCapture")
    async def _num_capture(self, name: str, value: int) -> int:
        if value < 0:
            raise ConfigError(f"NumCapture must be ≥ 0, got {value}")
        return value

    async def report_write_error(self, message: str) -> None:
        """NDFile's way of saying why: WriteMessage plus WriteStatus "Write error"."""
        await self.post_many({"WriteMessage": message, "WriteStatus": "Write error"})

    async def startup(self) -> None:
        await super().startup()
        await self.post("FileTemplate", "%s%s_%6.6d.h5")
        await self.post("FileFormat", "HDF5")
        await self.post("SWMRSupported_RBV", "Supported")
        defaults = CompressionOptions()  # the driver's defaults, as NDFileHDF5's constructor
        await self.post_many({"ZLevel": defaults.zlib_level, "BloscLevel": defaults.blosc_level,
                              "SZipNumPixels": defaults.szip_pixels})

    def _start(self) -> int:
        self._settings = self._capture_settings()
        return self.node.start_capture(self._settings)

    async def _put_capture(self, instance: Any, value: Any) -> Any:
        if value in (0, "Done"):
            self.busy.stop()
            self.node.stop_capture()
            return 0  # Capture reads Done at once, as a busy record does
        try:
            number = await self.busy.begin(self._start)
        except PimegaError as exc:
            await self.report_write_error(str(exc))
            raise
        if number is None:  # joined a running capture, which has ended now
            return SkipWrite
        settings = self._settings
        assert settings is not None
        if self.pv("AutoIncrement").value == "Yes":
            await self.post("FileNumber", self._file_number + 1)
        await self.post_many({"FullFileName_RBV": settings.filename, "NumCaptured_RBV": 0,
                              "WriteStatus": "Write OK", "WriteMessage": "",
                              "SWMRActive_RBV": "Active" if settings.swmr else "Off"})
        await self.post("Capture", 1)
        ended: CaptureEnded = await self.busy.wait(number)
        await self.publish_capture(self.node.status())
        if ended.error:
            await self.report_write_error(ended.error)
        await self.post_many({"SWMRActive_RBV": "Off"})
        await self.post("Capture", 0)
        return SkipWrite

    capture = override(HDF5Base, "capture", put=_put_capture)

    def _capture_settings(self, per_frame: bool = False) -> CaptureSettings:
        """The capture's snapshot. An existing file is never replaced: with AutoIncrement the
        number moves on to the next free name, without it the capture is refused. With
        ``per_frame`` every frame gets a file of its own (Single mode with AutoSave)."""
        path = self.pv("FilePath").value
        check_within(path, self.root.data_roots)
        ensure_directory(path, self.pv("CreateDirectory").value)
        name, template = self.pv("FileName").value, self.pv("FileTemplate").value
        number = self.pv("FileNumber").value
        if self.pv("AutoIncrement").value == "Yes":
            number = next_free_number(path, name, template, number)
        filename = full_file_name(path, name, template, number)
        if os.path.exists(filename):
            raise ConfigError(f"{filename} exists and is not replaced: change FileName or "
                              "FileNumber, or set AutoIncrement Yes")
        self._file_number = number
        mode = self.pv("FileWriteMode").value
        if per_frame and self.pv("AutoIncrement").value != "Yes":
            raise ConfigError("AutoSave in Single mode needs AutoIncrement Yes: an existing "
                              "file is never replaced")
        return CaptureSettings(
            filename=filename,
            num_capture=(0 if per_frame else 1 if mode == "Single"
                         else self.pv("NumCapture").value),
            compression=COMPRESSION[self.pv("Compression").value],  # type: ignore[arg-type]
            lazy_open=self.pv("LazyOpen").value == "Yes",
            swmr=self.pv("SWMRMode").value == "On",
            compression_options=self._compression_options(),
            definition=self.pv("NexusDefinition").value,
            mx=self._mx(),
            per_frame=FileNaming(path, name, template, number) if per_frame else None,
            sample_name=self.pv("SampleName").value,
        )

    async def begin_auto_save(self) -> None:
        """At an acquisition's start: in Single mode with AutoSave (and no capture running),
        every frame of the acquisition goes into a file of its own, as ADCore's NDFile saves
        each array it receives then."""
        if (self.pv("FileWriteMode").value != "Single" or self.pv("AutoSave").value != "Yes"
                or self.pv("EnableCallbacks").value != "Enable" or self.busy.active):
            return
        try:
            self._per_frame = self.node.start_capture(self._capture_settings(per_frame=True))
        except PimegaError as exc:  # the acquisition runs; the file writer says why not
            await self.report_write_error(f"AutoSave: {exc}")

    async def end_auto_save(self) -> None:
        """At the acquisition's end: close its one-file-per-frame capture."""
        if self._per_frame is None:
            return
        number, self._per_frame = self._per_frame, None
        self.node.stop_capture()
        await self.busy.wait(number)
        await self.publish_capture(self.node.status())

    @on_put("WriteFile")
    async def _write_file(self, name: str, value: str) -> str:
        """Single mode: the newest frame into the next file, as NDFile writes the array it
        holds; the put completes when the file is closed."""
        if value != "Write":
            return value
        if self.pv("FileWriteMode").value != "Single":
            raise ConfigError("WriteFile writes the newest frame in Single mode; in Capture "
                              "and Stream modes frames are written as they come")
        settings = self._capture_settings()
        await asyncio.get_running_loop().run_in_executor(None, self.node.write_newest, settings)
        if self.pv("AutoIncrement").value == "Yes":
            await self.post("FileNumber", self._file_number + 1)
        await self.post_many({"FullFileName_RBV": settings.filename, "WriteStatus": "Write OK",
                              "WriteMessage": ""})
        return "Done"

    @on_put("ReadFile")
    async def _read_file(self, name: str, value: str) -> str:
        if value != "Done":
            raise ConfigError("ReadFile is not available: this back-end writes frames, it "
                              "does not read them back into the pipeline")
        return value

    async def publish_capture(self, status: Status) -> None:
        capture = status.capture
        await self.post_many({"NumCaptured_RBV": capture.num_captured})
        moved = (capture.filename, capture.next_file_number)
        if capture.next_file_number and moved != self._per_frame_seen:
            # one file per frame: name and number move on, once each (a later WriteFile's
            # name and number stay)
            self._per_frame_seen = moved
            await self.post_many({"FullFileName_RBV": capture.filename})
            if self.pv("FileNumber").value != capture.next_file_number:
                await self.post("FileNumber", capture.next_file_number)
        if capture.error:
            await self.report_write_error(capture.error)
        if capture.last_unique_id:
            await self.publish_arrays(status.frames_written, 0, capture.last_unique_id)

    async def _put_flush_now(self, instance: Any, value: Any) -> Any:
        if value not in (0, "Done"):
            await asyncio.get_running_loop().run_in_executor(None, self.node.flush)
        return 0

    flush_now = override(HDF5Base, "flush_now", put=_put_flush_now)


StatsBase = make_group("StatsBase", *STATS_STACK)


#: The statistics' readbacks, zeroed by Stats1:Reset.
_STATS_RESULTS = ("Total_RBV", "Net_RBV", "MinValue_RBV", "MaxValue_RBV", "MeanValue_RBV",
                  "Sigma_RBV", "MinX_RBV", "MinY_RBV", "MaxX_RBV", "MaxY_RBV",
                  "CentroidX_RBV", "CentroidY_RBV", "SigmaX_RBV", "SigmaY_RBV", "SigmaXY_RBV")


class StatsGroup(PluginGroup, StatsBase):
    """NDStats of the ROI1 output, computed by the pipeline (rate-limited there), with its
    time series ``TS:``."""

    port_name = "STATS1"
    upstream = "ROI1"
    time_series = SubGroup(TimeSeriesGroup, prefix="TS:")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._published_id = 0

    async def startup(self) -> None:
        await super().startup()
        await self.time_series.startup()

    @on_put("Reset")
    async def _reset(self, name: str, value: int) -> int:
        await self.post_many(dict.fromkeys(_STATS_RESULTS, 0))
        return value

    async def publish_stats(self, latest: tuple[int, Stats] | None) -> None:
        """Post the newest statistics once (and add them to the time series)."""
        if latest is None or latest[0] == self._published_id:
            return
        unique_id, stats = latest
        self._published_id = unique_id
        timestamp = frame_time_values(self.node.frame_timestamp_ns(unique_id))
        await self.time_series.add_point(stats, timestamp.get("TimeStamp_RBV", 0.0))
        if self.pv("ComputeStatistics").value != "Yes":
            return
        await self.post_many({
            "Total_RBV": stats.total, "Net_RBV": stats.net, "MinValue_RBV": stats.min_value,
            "MaxValue_RBV": stats.max_value, "MeanValue_RBV": stats.mean,
            "Sigma_RBV": stats.sigma, "MinX_RBV": stats.min_x, "MinY_RBV": stats.min_y,
            "MaxX_RBV": stats.max_x, "MaxY_RBV": stats.max_y,
            "CentroidX_RBV": stats.centroid_x, "CentroidY_RBV": stats.centroid_y,
            "SigmaX_RBV": stats.sigma_x, "SigmaY_RBV": stats.sigma_y,
            "SigmaXY_RBV": stats.sigma_xy,
        })


ROIBase = make_group("ROIBase", *ROI_STACK)

_ROI_FIELDS = {"MinX": "min_x", "MinY": "min_y", "SizeX": "size_x", "SizeY": "size_y",
               "BinX": "bin_x", "BinY": "bin_y"}


class ROIGroup(PluginGroup, ROIBase):
    """NDROI: the region (and binning) the statistics are computed on."""

    port_name = "ROI1"

    @on_put(*_ROI_FIELDS)
    async def _region(self, name: str, value: int) -> int:
        self.node.set_roi(**{_ROI_FIELDS[name]: int(value)})  # refuses bad values
        await self.publish_region()
        return value

    async def publish_region(self) -> tuple[int, int]:
        """Post the ROI's output geometry; returns its (height, width)."""
        node = self.node
        roi = node.roi
        height, width = node.image_shape
        x0, y0 = min(roi.min_x, width - 1), min(roi.min_y, height - 1)
        size_x = min(roi.size_x or width, width - x0) // roi.bin_x
        size_y = min(roi.size_y or height, height - y0) // roi.bin_y
        await self.post_many({"MaxSizeX_RBV": width, "MaxSizeY_RBV": height,
                              "MaxX": width, "MaxY": height})
        await self.post_array_geometry((size_y, size_x), node.image_dtype)
        return size_y, size_x
