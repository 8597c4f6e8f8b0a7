"""ophyd-async device for the π-MEGA IOC: an ``adcore`` ``AreaDetector`` with π-MEGA's PVs.

The detector is ophyd-async's standard areaDetector: ``ADAcquireLogic`` runs ``cam1:Acquire``
(put-callback left open until the acquisition ends), ``ADHDFDataLogic`` streams ``HDF1:`` to
one file per stage and emits stream resource / stream datum documents for
``/entry/data/data``, and :class:`PimegaTriggerLogic` sets up internally timed frames. It works
in step scans (``count``, ``scan``: one frame per point, ``Stats1:Total_RBV`` hinted) and in
fly scans (``prepare(TriggerInfo(number_of_events=N))``, ``kickoff``, ``complete``,
``collect``). :func:`read_stream_frames` reads a stream datum's frames back from the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated as A
from typing import Any
from urllib.parse import urlparse

import h5py
import hdf5plugin  # noqa: F401 - registers the bitshuffle-LZ4 filter for readers
import numpy as np
from ophyd_async.core import (
    DetectorTriggerLogic,
    PathProvider,
    SignalDict,
    SignalR,
    SignalRW,
    StrictEnum,
    SubsetEnum,
    TriggerInfo,
)
from ophyd_async.epics.adcore import (
    NDROIIO,
    ADAcquireLogic,
    ADBaseIO,
    ADWriterFactory,
    AreaDetector,
    NDPluginBaseIO,
    NDStatsIO,
    PluginSignalDataLogic,
    prepare_exposures,
    trigger_info_from_num_images,
)
from ophyd_async.epics.core import EpicsDevice, PvSuffix

__all__ = [
    "PimegaCounterDepth",
    "PimegaDetector",
    "PimegaDriverIO",
    "PimegaPipelineIO",
    "PimegaTriggerLogic",
    "PimegaTriggerMode",
    "PipelineStageIO",
    "PipelineState",
    "pimega_detector",
    "read_stream_frames",
]


class PimegaCounterDepth(StrictEnum):
    """``cam1:CounterDepth``: ADPimega's counter modes, in its order."""

    ONE_BIT = "1 bit"
    TWELVE_BITS = "12 bits"
    SIX_BITS = "6 bits"
    TWENTY_FOUR_BITS = "24 bits"


class PimegaTriggerMode(SubsetEnum):
    """``cam1:TriggerMode`` (ADPimega adds "Alignment", which this client does not use)."""

    INTERNAL = "Internal"
    EXTERNAL = "External"
    GATED = "Gated"


class PipelineState(StrictEnum):
    """``Pipe:<Stage>:State_RBV``."""

    IDLE = "Idle"
    RUNNING = "Running"
    ERROR = "Error"


class PimegaDriverIO(ADBaseIO):
    """``cam1:``: ADBase plus the π-MEGA driver PVs (ADPimega's names)."""

    trigger_mode: A[SignalRW[PimegaTriggerMode], PvSuffix.rbv("TriggerMode")]
    counter_depth: A[SignalRW[PimegaCounterDepth], PvSuffix.rbv("CounterDepth")]
    max_frame_rate: A[SignalR[float], PvSuffix("MaxFrameRate_RBV")]
    frame_rate: A[SignalR[float], PvSuffix("FrameRate_RBV")]
    throughput: A[SignalR[float], PvSuffix("Throughput_RBV")]
    dropped_frames: A[SignalR[int], PvSuffix("DroppedFrames_RBV")]
    corrupt_frames: A[SignalR[int], PvSuffix("CorruptFrames_RBV")]
    buffer_used: A[SignalR[float], PvSuffix("Backend_BufferUsed_RBV")]
    backend: A[SignalR[str], PvSuffix("Backend_RBV")]


class PipelineStageIO(EpicsDevice):
    """One stage of ``Pipe:`` (Ingest, Decode, Stats, Preview, Write)."""

    state: A[SignalR[PipelineState], PvSuffix("State_RBV")]
    frames: A[SignalR[int], PvSuffix("Frames_RBV")]
    time_per_frame: A[SignalR[float], PvSuffix("TimePerFrame_RBV")]
    queue_depth: A[SignalR[int], PvSuffix("QueueDepth_RBV")]
    dropped: A[SignalR[int], PvSuffix("Dropped_RBV")]


class PimegaPipelineIO(EpicsDevice):
    """``Pipe:``: the frame pipeline's totals and per-stage state."""

    backend: A[SignalR[str], PvSuffix("Backend_RBV")]
    frame_rate: A[SignalR[float], PvSuffix("FrameRate_RBV")]
    throughput: A[SignalR[float], PvSuffix("Throughput_RBV")]
    frames_processed: A[SignalR[int], PvSuffix("FramesProcessed_RBV")]
    frames_written: A[SignalR[int], PvSuffix("FramesWritten_RBV")]
    dropped_frames: A[SignalR[int], PvSuffix("DroppedFrames_RBV")]
    corrupt_frames: A[SignalR[int], PvSuffix("CorruptFrames_RBV")]
    ingest: A[PipelineStageIO, PvSuffix("Ingest:")]
    decode: A[PipelineStageIO, PvSuffix("Decode:")]
    stats: A[PipelineStageIO, PvSuffix("Stats:")]
    preview: A[PipelineStageIO, PvSuffix("Preview:")]
    write: A[PipelineStageIO, PvSuffix("Write:")]


@dataclass
class PimegaTriggerLogic(DetectorTriggerLogic):
    """Internally timed frames: ``num`` of them (0: until stopped), ``livetime`` each; or one
    ``livetime`` exposure per trigger edge (External), or one frame per gate (Gated).

    Medipix3RX reads out while it counts, so frames follow each other with no dead time:
    the period is ``livetime + deadtime``, but never shorter than ``1 / MaxFrameRate_RBV``.
    """

    driver: PimegaDriverIO

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        await self.driver.trigger_mode.set(PimegaTriggerMode.INTERNAL)
        if livetime:
            min_period = 1.0 / await self.driver.max_frame_rate.get_value()
            deadtime = max(deadtime, min_period - livetime, 0.0)
            await self.driver.acquire_period.set(livetime + deadtime)
        await prepare_exposures(self.driver, num, livetime)

    def get_deadtime(self, config_values: SignalDict) -> float:
        """None between exposures: the chips count while they read out (triggers faster than
        ``MaxFrameRate_RBV`` are the only limit)."""
        return 0.0

    async def prepare_edge(self, num: int, livetime: float) -> None:
        await self.driver.trigger_mode.set(PimegaTriggerMode.EXTERNAL)
        await prepare_exposures(self.driver, num, livetime)

    async def prepare_level(self, num: int) -> None:
        await self.driver.trigger_mode.set(PimegaTriggerMode.GATED)
        await prepare_exposures(self.driver, num)

    async def default_trigger_info(self) -> TriggerInfo:
        return await trigger_info_from_num_images(self.driver)


class PimegaDetector(AreaDetector[PimegaDriverIO]):
    """π-MEGA for ophyd-async: ``cam1:`` driver, ``HDF1:`` writer, ``ROI1:``/``Stats1:``/
    ``image1:`` plugins and the ``Pipe:`` status; ``CounterDepth`` is configuration."""

    def __init__(self, prefix: str, path_provider: PathProvider, name: str = "") -> None:
        driver = PimegaDriverIO(prefix + "cam1:")
        stats = NDStatsIO(prefix + "Stats1:")
        self.pipeline = PimegaPipelineIO(prefix + "Pipe:")
        super().__init__(
            driver,
            prefix,
            ADWriterFactory.hdf(path_provider, writer_suffix="HDF1:"),
            acquire_logic=ADAcquireLogic(driver),
            trigger_logic=PimegaTriggerLogic(driver),
            plugins={"roi": NDROIIO(prefix + "ROI1:"), "stats": stats,
                     "image": NDPluginBaseIO(prefix + "image1:")},
            config_sigs=(driver.counter_depth,),
            name=name,
        )
        # a step scan also reads Stats1:Total_RBV (with WaitForPlugins, of the last frame)
        self.add_detector_logics(PluginSignalDataLogic(driver, stats.total))


def pimega_detector(
    prefix: str, path_provider: PathProvider, name: str = "pimega"
) -> PimegaDetector:
    """The π-MEGA detector at ``prefix`` (e.g. ``"PIMEGA:"``), writing where ``path_provider``
    says; connect it with ``init_devices()`` or ``await det.connect()``."""
    return PimegaDetector(prefix, path_provider, name=name)


def read_stream_frames(
    stream_resource: Mapping[str, Any], stream_datum: Mapping[str, Any]
) -> np.ndarray:
    """The frames a stream datum points at (events × rows × cols), read from its HDF5 file."""
    if stream_resource["mimetype"] != "application/x-hdf5":
        raise ValueError(f"not an HDF5 stream resource: {stream_resource['mimetype']}")
    path = urlparse(stream_resource["uri"]).path
    indices = stream_datum["indices"]
    with h5py.File(path, "r", swmr=True) as f:
        dataset = f[stream_resource["parameters"]["dataset"]]
        if not isinstance(dataset, h5py.Dataset):
            raise ValueError(f"{path} holds no dataset at {dataset.name}")
        return dataset[indices["start"] : indices["stop"]]
