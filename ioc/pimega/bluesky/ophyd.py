"""ophyd (v1) device for the π-MEGA IOC: a stock areaDetector plus π-MEGA's own PVs.

``PimegaDetector`` is built from ophyd's stock classes (``AreaDetectorCam``, ``HDF5Plugin``
with ``FileStoreHDF5IterativeWrite``, ``ROIPlugin``, ``StatsPlugin``, ``ImagePlugin``), so
``count`` and ``scan`` record one HDF5 frame per point as an ``AD_HDF5`` resource with one
datum per point; ``Stats1:Total_RBV`` is the hinted reading. :func:`read_datum_frames` reads
a datum's frames back from the file, as databroker's ``AD_HDF5`` handler would.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401 - registers the bitshuffle-LZ4 filter for readers
import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO, Kind, Staged
from ophyd.areadetector import ADComponent as ADCpt
from ophyd.areadetector import DetectorBase, EpicsSignalWithRBV, SingleTrigger
from ophyd.areadetector.cam import AreaDetectorCam
from ophyd.areadetector.filestore_mixins import FileStoreHDF5IterativeWrite
from ophyd.areadetector.plugins import HDF5Plugin, ImagePlugin, ROIPlugin, StatsPlugin

#: The dataset the IOC writes frames to (NeXus ``/entry/data/data``, frames × rows × cols).
DATASET = "/entry/data/data"


class PimegaCam(AreaDetectorCam):
    """``cam1:``: ADBase plus the π-MEGA driver PVs (ADPimega's names)."""

    _default_configuration_attrs = (
        *AreaDetectorCam._default_configuration_attrs, "counter_depth", "max_frame_rate")

    counter_depth = ADCpt(EpicsSignalWithRBV, "CounterDepth", string=True)
    max_frame_rate = ADCpt(EpicsSignalRO, "MaxFrameRate_RBV")
    frame_rate = ADCpt(EpicsSignalRO, "FrameRate_RBV")
    throughput = ADCpt(EpicsSignalRO, "Throughput_RBV")
    dropped_frames = ADCpt(EpicsSignalRO, "DroppedFrames_RBV")
    corrupt_frames = ADCpt(EpicsSignalRO, "CorruptFrames_RBV")
    buffer_used = ADCpt(EpicsSignalRO, "Backend_BufferUsed_RBV")
    backend = ADCpt(EpicsSignalRO, "Backend_RBV", string=True)
    # ADCore's WaitForPlugins (no _RBV): Acquire ends only once every plugin saw the frames
    wait_for_plugins = ADCpt(EpicsSignal, "WaitForPlugins", string=True, kind="omitted")


class PipelineStage(Device):
    """One stage of ``Pipe:`` (Ingest, Decode, Stats, Preview, Write)."""

    state = Cpt(EpicsSignalRO, "State_RBV", string=True)
    frames = Cpt(EpicsSignalRO, "Frames_RBV")
    time_per_frame = Cpt(EpicsSignalRO, "TimePerFrame_RBV")
    queue_depth = Cpt(EpicsSignalRO, "QueueDepth_RBV")
    dropped = Cpt(EpicsSignalRO, "Dropped_RBV")


class PimegaPipeline(Device):
    """``Pipe:``: the frame pipeline's totals and per-stage state (read on demand)."""

    backend = Cpt(EpicsSignalRO, "Backend_RBV", string=True)
    frame_rate = Cpt(EpicsSignalRO, "FrameRate_RBV")
    throughput = Cpt(EpicsSignalRO, "Throughput_RBV")
    frames_processed = Cpt(EpicsSignalRO, "FramesProcessed_RBV")
    frames_written = Cpt(EpicsSignalRO, "FramesWritten_RBV")
    dropped_frames = Cpt(EpicsSignalRO, "DroppedFrames_RBV")
    corrupt_frames = Cpt(EpicsSignalRO, "CorruptFrames_RBV")
    ingest = Cpt(PipelineStage, "Ingest:")
    decode = Cpt(PipelineStage, "Decode:")
    stats = Cpt(PipelineStage, "Stats:")
    preview = Cpt(PipelineStage, "Preview:")
    write = Cpt(PipelineStage, "Write:")


class HDF5PluginWithFileStore(HDF5Plugin, FileStoreHDF5IterativeWrite):
    """``HDF1:`` streaming one file per run; each trigger adds a datum (``point_number``)."""


# ophyd's own recipe; its SingleTrigger and DetectorBase annotate stage() differently
class PimegaDetector(SingleTrigger, DetectorBase):  # pyright: ignore[reportIncompatibleMethodOverride]
    """π-MEGA for ophyd: ``cam.num_images`` frames (1) per trigger, written to ``HDF1:``.

    ``write_path_template`` is the directory the IOC writes to (strftime codes allowed);
    ``read_path_template`` is the same directory as this machine sees it, when it differs.
    ``Stats1:`` computes on ``ROI1:``'s output, so ``roi1`` is part of the port chain.
    """

    cam = ADCpt(PimegaCam, "cam1:")
    image1 = ADCpt(ImagePlugin, "image1:")
    roi1 = ADCpt(ROIPlugin, "ROI1:")
    stats1 = ADCpt(StatsPlugin, "Stats1:")
    hdf1 = ADCpt(HDF5PluginWithFileStore, "HDF1:", write_path_template="/")
    pipe = Cpt(PimegaPipeline, "Pipe:", lazy=True, kind="omitted")

    def __init__(
        self,
        prefix: str,
        *,
        write_path_template: str,
        read_path_template: str | None = None,
        root: str = "/",
        **kwargs: Any,
    ) -> None:
        super().__init__(prefix, **kwargs)
        self.hdf1.reg_root = root
        self.hdf1.write_path_template = write_path_template
        self.hdf1.read_path_template = read_path_template
        self.stage_sigs.update({"cam.num_images": 1, "cam.wait_for_plugins": "Yes"})
        self.hdf1.kind = Kind.normal
        self.stats1.kind = Kind.normal
        self.stats1.read_attrs = ["total"]
        self.stats1.total.kind = Kind.hinted
        self.image1.kind = self.roi1.kind = Kind.omitted

    def trigger(self):
        """Start one acquisition; the status completes on ``Acquire_RBV``'s 1 → 0 edge.

        ophyd's ``SingleTrigger.trigger`` returns ``self._status``, which its ``Acquire_RBV``
        monitor sets back to None on that edge: a small π-MEGA acquisition can end before
        ``trigger()`` returns (about half the time with 32×32 frames), and the RunEngine then
        fails on a None status. This version keeps its own reference.
        """
        if self._staged != Staged.yes:
            raise RuntimeError("This detector is not ready to trigger: stage it first")
        status = self._status = self._status_type(self)
        self.generate_datum(self._image_name, time.time(), {})
        self._acquisition_signal.put(1, wait=False)
        return status


def read_datum_frames(
    resource: Mapping[str, Any], datum: Mapping[str, Any], root: str | None = None
) -> np.ndarray:
    """The frames (``frame_per_point`` × rows × cols) of one ``AD_HDF5`` datum.

    ``root`` replaces the resource's root, for a file moved or mounted elsewhere.
    """
    if resource["spec"] != "AD_HDF5":
        raise ValueError(f"not an AD_HDF5 resource: {resource['spec']}")
    path = Path(root or resource["root"]) / resource["resource_path"]
    per_point = resource["resource_kwargs"]["frame_per_point"]
    start = datum["datum_kwargs"]["point_number"] * per_point
    with h5py.File(path, "r", swmr=True) as f:
        dataset = f[DATASET]
        if not isinstance(dataset, h5py.Dataset):
            raise ValueError(f"{path} holds no dataset at {dataset.name}")
        return dataset[start : start + per_point]
