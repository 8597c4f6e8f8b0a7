"""The master file of an array: one NeXus file whose ``/entry/data/data`` is an HDF5 virtual
dataset of the whole array, made of the files the module nodes write.

Each node writes its module's frames to a file of its own (:mod:`pimega.writer.hdf5`:
``/entry/data/data``, frames × module rows × module columns). The master maps each of them to
its module's place in the array image, so plain h5py (HDF5 ≥ 1.10) reads the array like any
dataset. Source files lying under the master's directory are named relative to it (HDF5
looks for them beside the master), so the set can be moved as a whole.

While a capture runs, the mapping is unlimited in frames: a reader sees as many frames as the
furthest module has flushed (what another module has not yet written reads as 0). When the
capture ends, the master is written again with a fixed number of frames (the coordinator
takes those every surviving module holds); a module holding fewer reads 0 beyond them, and a
module whose file cannot be read (its node died mid-capture) is left out, its part reading
0. Each write goes to a temporary file renamed over the master, so a reader holding the old
one keeps a whole file.

Per-frame metadata stays in the node files: ``/entry/instrument/detector`` links
``frame_number``, ``timestamp`` and ``image_key`` (and ``/entry/sample`` its
``rotation_angle``) to the first mapped module's file, and ``/entry/instrument/M<n>`` is each
node file's ``/entry``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import h5py
import numpy as np
import numpy.typing as npt

from .hdf5 import DATA_PATH, DETECTOR_PATH, NexusMetadata
from .nexus import write_mx_layout

#: Per-frame datasets of a node file's detector group the master links to.
FRAME_COLUMNS = ("frame_number", "timestamp", "image_key")


@dataclass(frozen=True)
class ModuleFile:
    """One module's part of the array: the node's file, the (row, column) of the module's
    top-left pixel in the array image, the frames the file holds (recorded; None while it
    grows), and whether it is mapped (False: left out, unreadable)."""

    filename: str
    origin: tuple[int, int]
    frames: int | None = None
    mapped: bool = True


def write_master(filename: str, modules: Sequence[ModuleFile], frames: int | None,
                 module_shape: tuple[int, int], array_shape: tuple[int, int],
                 dtype: npt.DTypeLike, metadata: NexusMetadata) -> None:
    """Write (or replace) the master file of ``frames`` frames (None: growing with the
    nodes' files)."""
    mapped = [m for m in modules if m.mapped]
    directory, name = os.path.split(os.path.abspath(filename))
    partial = os.path.join(directory, f".{name}.partial")
    with h5py.File(partial, "w", libver=("v110", "latest")) as file:  # readable with swmr=True
        _write(file, directory, modules, mapped, module_shape, array_shape, np.dtype(dtype),
               metadata, frames)
    os.replace(partial, filename)


def _write(file: h5py.File, directory: str, modules: Sequence[ModuleFile],
           mapped: Sequence[ModuleFile], module_shape: tuple[int, int],
           array_shape: tuple[int, int], dtype: np.dtype, meta: NexusMetadata,
           frames: int | None) -> None:
    file.attrs["default"] = "entry"
    entry = _group(file, "entry", "NXentry")
    entry.attrs["default"] = "data"
    entry["definition"] = meta.definition
    entry["start_time"] = datetime.now(UTC).isoformat(timespec="milliseconds")
    if meta.title:
        entry["title"] = meta.title
    instrument = _group(entry, "instrument", "NXinstrument")
    detector = _group(instrument, "detector", "NXdetector")
    for field, value, units in (("x_pixel_size", meta.pixel_size_m, "m"),
                                ("y_pixel_size", meta.pixel_size_m, "m"),
                                ("count_time", meta.count_time_s, "s"),
                                ("frame_time", meta.frame_time_s, "s")):
        detector[field] = np.float64(value)
        detector[field].attrs["units"] = units
    detector["bit_depth_readout"] = np.int32(meta.bit_depth)
    detector["description"] = meta.detector_description
    collection = _group(detector, "collection", "NXcollection")
    collection["n_modules"] = np.int32(len(modules))
    collection["module_shape"] = np.asarray(module_shape, dtype=np.int32)
    collection["layout"] = meta.layout
    collection["module_origins"] = np.asarray([m.origin for m in modules], dtype=np.int32)
    collection["module_files"] = [_source_name(directory, m.filename) for m in modules]
    if frames is not None:
        collection["module_frames"] = np.asarray(
            [(m.frames or 0) if m.mapped else 0 for m in modules], dtype=np.int64)
    data_group = _group(entry, "data", "NXdata")
    data_group.attrs["signal"] = "data"
    data = data_group.create_virtual_dataset(
        "data", _layout(directory, mapped, module_shape, array_shape, dtype, frames),
        fillvalue=0)
    data.attrs["interpretation"] = "image"
    detector["data"] = data
    sample = _group(entry, "sample", "NXsample")
    sample["name"] = meta.sample_name
    for index, module in enumerate(modules):
        instrument[f"M{index + 1}"] = h5py.ExternalLink(_source_name(directory, module.filename),
                                                        "/entry")
    if meta.definition == "NXmx":
        write_mx_layout(entry, instrument, detector, meta.mx, module_shape,
                        [m.origin for m in modules], meta.pixel_size_m, meta.bit_depth)
    if not mapped:
        return
    first = _source_name(directory, mapped[0].filename)
    for column in FRAME_COLUMNS:
        detector[column] = h5py.ExternalLink(first, f"{DETECTOR_PATH}/{column}")
    sample["rotation_angle"] = h5py.ExternalLink(first, "/entry/sample/rotation_angle")
    if meta.definition == "NXtomo":
        data_group["image_key"] = h5py.ExternalLink(first, f"{DETECTOR_PATH}/image_key")
        data_group["rotation_angle"] = h5py.ExternalLink(first, "/entry/sample/rotation_angle")


def _layout(directory: str, mapped: Sequence[ModuleFile], module_shape: tuple[int, int],
            array_shape: tuple[int, int], dtype: np.dtype,
            frames: int | None) -> h5py.VirtualLayout:
    """Each mapped module's frames at its origin: unlimited in frames, or ``frames`` of them.

    An unlimited mapping starts from one frame (h5py maps an empty selection as no mapping).
    """
    height, width = module_shape
    stop = h5py.h5s.UNLIMITED if frames is None else frames
    start_frames = 1 if frames is None else frames
    layout = h5py.VirtualLayout((start_frames, *array_shape), dtype,
                                maxshape=(None if frames is None else frames, *array_shape))
    if frames == 0:
        return layout
    for module in mapped:
        source = h5py.VirtualSource(
            _source_name(directory, module.filename), DATA_PATH, (start_frames, height, width),
            dtype, maxshape=(None, height, width))
        row, column = module.origin
        layout[:stop, row:row + height, column:column + width] = source[:stop]
    return layout


def _source_name(directory: str, filename: str) -> str:
    """``filename`` relative to the master's directory when it lies under it, else absolute."""
    path = os.path.abspath(filename)
    relative = os.path.relpath(path, directory)
    return path if relative.startswith(os.pardir) else relative


def _group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs["NX_class"] = nx_class
    return group
