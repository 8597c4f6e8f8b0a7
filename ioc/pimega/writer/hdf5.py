"""HDF5/NeXus writer: one file per capture, frames appended as they come.

The engine drives a ``NexusWriter`` from its writer thread: ``open()``, ``write()`` per frame,
``close()``. Every frame is one chunk: raw bytes or a bitshuffle-LZ4 chunk (HDF5 filter 32008)
written with ``write_direct_chunk``, or a frame passed through one of the HDF5 filters of
:mod:`pimega.writer.filters` (zlib, szip, LZ4, Blosc, N-bit); any reader with h5py and
hdf5plugin decodes them all.

The file follows a NeXus application definition that ``nxvalidate`` accepts: NXtomo (every
frame has its ``image_key`` and the sample's ``rotation_angle``), or NXmx for diffraction
(detector distance, beam centre, sensor, ``depends_on`` chains, one NXdetector_module per
module, NXbeam and NXsource). Per frame it stores the detector's frame number, the node's
unique id, a number that keeps increasing across the acquisitions of one capture, and the
frame's time in ns since the Unix epoch. With SWMR on,
a reader opening the file with ``swmr=True`` sees the frame count grow at every flush; the
per-frame arrays (image_key, frame_number, timestamp, ...) are appended at each flush, so between
flushes they may trail the data by a few frames. One thread drives a writer.

A full disk never leaves a broken file. HDF5 needs space for its metadata to close a file, so
the writer keeps some: before each frame it checks the space left (filesystem free space and
the process's file-size limit) and stops with ``WriterError`` while the file can still be
closed; and it holds a ballast file of the same size beside the data, deleted when a write
fails anyway (another process filled the disk), so that closing always finds room. Either way
the datasets are cut back to the frames written and the file is closed.
"""

import contextlib
import errno
import os
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NoReturn, cast

import h5py
import numpy as np
import numpy.typing as npt

from pimega.core.errors import ConfigError, WriterError
from pimega.writer.bitshuffle import BitshuffleLZ4Compressor
from pimega.writer.bitshuffle import chunk_bound as bslz4_chunk_bound
from pimega.writer.filters import (
    Compression,
    CompressionOptions,
    check_compression,
    chunk_bound,
    create_nbit_dataset,
    filter_arguments,
)
from pimega.writer.nexus import MxGeometry, write_mx_layout

Scalar = bool | int | float | str

DATA_PATH = "/entry/data/data"
DETECTOR_PATH = "/entry/instrument/detector"
DEFINITIONS = ("NXtomo", "NXmx")
#: Per-frame columns of the detector group: name, dtype, units.
_DETECTOR_COLUMNS = (("image_key", np.int32, ""), ("frame_number", np.uint64, ""),
                     ("detector_frame_number", np.uint64, ""), ("unique_id", np.uint64, ""),
                     ("timestamp", np.uint64, "ns"))
_METADATA_RESERVE_BYTES = 1 << 20
_COLUMN_CHUNK = 4096
_TIME_DTYPE = h5py.string_dtype("utf-8", 32)  # fixed length: rewritten in SWMR mode
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
_COMPRESSION_WORKERS = 2
# (low, high) HDF5 format bounds: SWMR needs >= 1.10 structures; readers need HDF5 >= 1.10.
_LIBVER = ("v110", "latest")


@dataclass(frozen=True)
class NexusMetadata:
    """What the file says about the detector and the acquisition (NXdetector fields).

    ``definition`` is the NeXus application definition (NXtomo, or NXmx with ``mx``);
    ``processing`` lists the corrections applied to the frames (name → value or reference
    frame), stored in ``/entry/process``.
    """

    bit_depth: int
    count_time_s: float
    frame_time_s: float
    n_modules: int = 1
    module_shape: tuple[int, int] = (1536, 1536)
    layout: str = "1x1"
    module_origins: tuple[tuple[int, int], ...] = ((0, 0),)
    pixel_size_m: float = 55e-6
    detector_description: str = "π-MEGA (Medipix3RX)"
    title: str = ""
    sample_name: str = "sample"
    definition: str = "NXtomo"
    mx: MxGeometry = field(default_factory=MxGeometry)
    extra: Mapping[str, Scalar] = field(default_factory=dict)
    processing: Mapping[str, Scalar | np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.definition not in DEFINITIONS:
            raise ConfigError(f"NeXus definition {self.definition!r} is not one of "
                              f"{DEFINITIONS}")
        for key, value in self.extra.items():
            if not isinstance(value, bool | int | float | str | np.generic):
                raise ConfigError(f"extra metadata {key!r} must be a scalar, not "
                                  f"{type(value).__name__}")


class _Column:
    """A per-frame 1-D dataset, buffered in memory and appended at each flush (cheap per frame)."""

    def __init__(self, dataset: h5py.Dataset) -> None:
        self.dataset = dataset
        self.pending: list[float] = []

    def flush(self, frames: int) -> None:
        if not self.pending:
            return
        start = frames - len(self.pending)
        self.dataset.resize((frames,))
        self.dataset[start:frames] = np.asarray(self.pending, dtype=self.dataset.dtype)
        self.pending.clear()


class _SpaceGuard:
    """Keeps ``reserve_bytes`` for the file's metadata: a free-space check and a ballast file."""

    def __init__(self, filename: str, reserve_bytes: int) -> None:
        directory, name = os.path.split(filename)
        self.ballast = os.path.join(directory, f".{name}.reserve")
        self.reserve_bytes = reserve_bytes
        self.size_limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        self.filename = filename

    def hold(self) -> None:
        """Write the ballast (random bytes, so compressing filesystems allocate it too)."""
        with open(self.ballast, "wb") as ballast:
            ballast.write(os.urandom(self.reserve_bytes))

    def release(self) -> None:
        """Delete the ballast, giving its space to the file's metadata (idempotent)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.ballast)

    def check(self, file_size: int, chunk_bytes: int) -> None:
        """Raise OSError(ENOSPC) unless a chunk of ``chunk_bytes`` leaves the reserve free."""
        stats = os.statvfs(self.filename)
        available = stats.f_bavail * stats.f_frsize
        where = f"on the filesystem of {self.filename}"
        if self.size_limit != resource.RLIM_INFINITY and \
                self.size_limit - file_size < available:
            available, where = self.size_limit - file_size, "below this process's file-size limit"
        if available < self.reserve_bytes + chunk_bytes:
            raise OSError(errno.ENOSPC, f"{max(available, 0)} bytes left {where}, a frame needs "
                          f"up to {chunk_bytes} and {self.reserve_bytes} are kept for metadata")


class NexusWriter:
    """Writes frames of one shape and dtype into a NeXus file (see the module docstring).

    ``reserve_bytes`` is the space kept for the file's metadata (default 1 MiB): the free-space
    check keeps that much free on top of the next frame, and the ballast file holds as much.
    """

    def __init__(self, filename: str | os.PathLike[str], frame_shape: tuple[int, int],
                 dtype: npt.DTypeLike, metadata: NexusMetadata,
                 compression: Compression = "none", flush_interval_s: float = 0.5,
                 swmr: bool = False, reserve_bytes: int | None = None,
                 compression_options: CompressionOptions | None = None) -> None:
        check_compression(compression)
        self.filename = os.fspath(filename)
        self._frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self._dtype = np.dtype(dtype)
        if self._dtype.kind not in "uif":
            raise ConfigError(f"frame dtype {self._dtype} is not an integer or float type")
        self._metadata = metadata
        self._compression = compression
        self._options = compression_options or CompressionOptions()
        self._flush_interval_s = flush_interval_s
        self._swmr = swmr
        frame_nbytes = self._frame_shape[0] * self._frame_shape[1] * self._dtype.itemsize
        self._chunk_bound = (bslz4_chunk_bound(frame_nbytes) if compression == "bslz4"
                             else chunk_bound(compression, frame_nbytes))
        self._reserve_bytes = _METADATA_RESERVE_BYTES if reserve_bytes is None else reserve_bytes
        if self._reserve_bytes <= 0:
            raise ConfigError(f"reserve_bytes must be positive, not {self._reserve_bytes}: "
                              f"without room for its metadata a full disk corrupts the file")
        self._file: h5py.File | None = None
        self._data: h5py.Dataset | None = None
        self._columns: dict[str, _Column] = {}
        self._compressor: BitshuffleLZ4Compressor | None = None
        self._frames = 0
        self._opened = False
        self._last_flush = 0.0
        self._space = _SpaceGuard(self.filename, self._reserve_bytes)

    @property
    def frames_written(self) -> int:
        """Frames stored in the file so far."""
        return self._frames

    def __enter__(self) -> "NexusWriter":
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Create the file (replacing an existing one, as areaDetector does) and its layout."""
        if self._opened:
            raise WriterError(f"{self.filename}: open() called twice")
        self._opened = True
        try:
            self._file = file = h5py.File(self.filename, "w", libver=_LIBVER)
            self._space.hold()
            self._create_layout(file)
            if self._swmr:
                file.swmr_mode = True
        except (OSError, RuntimeError, ValueError) as error:
            with contextlib.suppress(OSError, RuntimeError):
                self._finish()
            raise WriterError(f"cannot create {self.filename}: {error}") from error
        if self._compression == "bslz4":
            self._compressor = BitshuffleLZ4Compressor(_COMPRESSION_WORKERS)
        self._last_flush = time.monotonic()

    def write(self, image: np.ndarray, frame_number: int, timestamp_ns: int,
              image_key: int = 0, angle_deg: float = 0.0, unique_id: int | None = None,
              detector_frame_number: int | None = None) -> None:
        """Append one frame (stored when this returns; ``image`` may be reused at once).

        ``frame_number`` is the frame's number in the file's series, ``detector_frame_number``
        the detector's (from 0 each acquisition; default ``frame_number``), ``unique_id`` the
        node's (default the frame's index in the file), ``timestamp_ns`` its time since the
        Unix epoch. ``image_key`` follows NXtomo: 0 projection, 1 flat, 2 dark, 3 invalid;
        ``angle_deg`` is the sample's rotation angle (``/entry/sample/rotation_angle``).
        Raises WriterError on a frame of the wrong shape or dtype, and when the frame cannot be
        kept (disk full, I/O error); after the latter the file is closed, holding every earlier
        frame.
        """
        if self._file is None or self._data is None:
            state = "closed" if self._opened else "not open yet"
            raise WriterError(f"{self.filename}: writer is {state}")
        frame = np.ascontiguousarray(image)
        if frame.shape != self._frame_shape or frame.dtype != self._dtype:
            raise WriterError(f"{self.filename}: frame {frame_number} is {frame.shape} "
                              f"{frame.dtype}, the file holds {self._frame_shape} {self._dtype}")
        try:
            self._space.check(self._file.id.get_filesize(), self._chunk_bound)
            self._data.id.set_extent((self._frames + 1, *self._frame_shape))
            if self._compression in ("none", "bslz4"):
                chunk = self._compressor.compress(frame) if self._compressor else frame
                self._data.id.write_direct_chunk((self._frames, 0, 0), chunk)
            else:  # HDF5 runs the dataset's filter
                self._data[self._frames] = frame
        except (OSError, RuntimeError) as error:
            self._fail(error)
        values = {"image_key": image_key, "frame_number": frame_number,
                  "detector_frame_number": (frame_number if detector_frame_number is None
                                            else detector_frame_number),
                  "unique_id": self._frames if unique_id is None else unique_id,
                  "timestamp": timestamp_ns, "rotation_angle": angle_deg}
        self._frames += 1
        for name, value in values.items():
            self._columns[name].pending.append(value)
        if time.monotonic() - self._last_flush >= self._flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Make every frame written so far visible to readers (SWMR) and durable in HDF5's view."""
        if self._file is None:
            return
        try:
            self._flush_columns()
            self._file.flush()
        except (OSError, RuntimeError) as error:
            self._fail(error)
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush, cut the datasets to the frames written and close the file (idempotent)."""
        try:
            self._finish()
        except (OSError, RuntimeError) as error:
            raise WriterError(f"{self.filename}: closing after {self._frames} frames failed: "
                              f"{error}") from error

    def _create_layout(self, file: h5py.File) -> None:
        meta = self._metadata
        file.attrs["default"] = "entry"  # silx and NeXus readers find the NXdata from here
        entry = _group(file, "entry", "NXentry")
        entry.attrs["default"] = "data"
        entry["definition"] = meta.definition
        entry["start_time"] = _now()
        for name in ("end_time", "end_time_estimated"):  # rewritten at close
            entry.create_dataset(name, data=_now(), dtype=_TIME_DTYPE)
        if meta.title:
            entry["title"] = meta.title
        instrument = _group(entry, "instrument", "NXinstrument")
        detector = _group(instrument, "detector", "NXdetector")
        _quantity(detector, "x_pixel_size", meta.pixel_size_m, "m")
        _quantity(detector, "y_pixel_size", meta.pixel_size_m, "m")
        _quantity(detector, "count_time", meta.count_time_s, "s")
        _quantity(detector, "frame_time", meta.frame_time_s, "s")
        detector["bit_depth_readout"] = np.int32(meta.bit_depth)
        detector["description"] = meta.detector_description
        specific = _group(detector, "collection", "NXcollection")
        specific["n_modules"] = np.int32(meta.n_modules)
        specific["module_shape"] = np.asarray(meta.module_shape, dtype=np.int32)
        specific["layout"] = meta.layout
        for key, value in meta.extra.items():
            specific[key] = value
        data_group = _group(entry, "data", "NXdata")
        data_group.attrs["signal"] = "data"
        self._data = data = self._create_frame_dataset(detector)
        data.attrs["interpretation"] = "image"
        for name, dtype, units in _DETECTOR_COLUMNS:
            self._columns[name] = _Column(_column(detector, name, dtype, units))
        sample = _group(entry, "sample", "NXsample")
        sample["name"] = meta.sample_name
        angle = _column(sample, "rotation_angle", np.float64, "degree")
        self._columns["rotation_angle"] = _Column(angle)
        _link(data_group, "data", data)
        if meta.definition == "NXmx":
            write_mx_layout(entry, instrument, detector, meta.mx, meta.module_shape,
                            meta.module_origins, meta.pixel_size_m, meta.bit_depth)
        else:
            _link(data_group, "image_key", self._columns["image_key"].dataset)
            _link(data_group, "rotation_angle", angle)
        if meta.processing:
            process = _group(entry, "process", "NXprocess")
            process["program"] = "pimega"
            process["sequence_index"] = np.int32(1)
            for name, value in meta.processing.items():
                process[name] = value

    def _create_frame_dataset(self, detector: h5py.Group) -> h5py.Dataset:
        shape = self._frame_shape
        if self._compression == "nbit":
            options = self._options
            return create_nbit_dataset(detector, "data", shape, self._dtype,
                                       options.nbit_bits or self._metadata.bit_depth,
                                       options.nbit_offset)
        return detector.create_dataset(
            "data", shape=(0, *shape), maxshape=(None, *shape), chunks=(1, *shape),
            dtype=self._dtype, **filter_arguments(self._compression, self._options))

    def _fail(self, error: BaseException) -> NoReturn:
        """Close what can be closed; raise WriterError saying why and how many frames are kept."""
        kind = "disk full" if getattr(error, "errno", None) in _DISK_FULL_ERRNOS else "write failed"
        reason = " ".join(str(error).split())  # HDF5 messages span lines
        message = f"{self.filename}: {kind} after {self._frames} frames: {reason}"
        try:
            self._finish()
            message += f"; the file is closed and holds those {self._frames} frames"
        except (OSError, RuntimeError) as close_error:
            message += f"; the file could not be closed cleanly either: {close_error}"
        raise WriterError(message) from error

    def _flush_columns(self) -> None:
        for column in self._columns.values():
            column.flush(self._frames)

    def _finish(self) -> None:
        """Drop the ballast, write what is pending, cut the data to the frames written, close.

        Dataset handles are dropped before the file closes: after a failed close, h5py must not
        find them open (releasing them then can crash the process).
        """
        self._space.release()
        self._stop_compressor()
        file, data, columns = self._file, self._data, self._columns
        self._file, self._data, self._columns = None, None, {}
        if file is None:
            return
        for column in columns.values():
            column.flush(self._frames)
        if data is not None and data.shape[0] != self._frames:
            data.id.set_extent((self._frames, *self._frame_shape))
        del data, columns
        end_time = _now()
        for name in ("end_time", "end_time_estimated"):
            cast(h5py.Dataset, file[f"entry/{name}"])[()] = end_time
        file.close()

    def _stop_compressor(self) -> None:
        if self._compressor is not None:
            self._compressor.close()
            self._compressor = None


def _group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _quantity(group: h5py.Group, name: str, value: float, units: str) -> None:
    group[name] = np.float64(value)
    group[name].attrs["units"] = units


def _column(group: h5py.Group, name: str, dtype: type, units: str) -> h5py.Dataset:
    """An empty per-frame dataset that grows at each flush."""
    dataset = group.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(_COLUMN_CHUNK,),
                                   dtype=dtype)
    if units:
        dataset.attrs["units"] = units
    return dataset


def _link(group: h5py.Group, name: str, dataset: h5py.Dataset) -> None:
    """A NeXus link: ``group/name`` is ``dataset``, whose ``@target`` names the original."""
    dataset.attrs["target"] = dataset.name
    group[name] = dataset


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
