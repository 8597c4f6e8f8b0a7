"""HDF5/NeXus (NXtomo) writer: one file per acquisition, frames appended as they come.

The engine drives a ``NexusWriter`` from its writer thread: ``open()``, ``write()`` per frame,
``close()``. Every frame is one chunk written with ``write_direct_chunk`` (raw bytes, or a
bitshuffle-LZ4 chunk for HDF5 filter 32008 that any reader with hdf5plugin decodes). With SWMR on,
a reader opening the file with ``swmr=True`` sees the frame count grow at every flush; the
per-frame arrays (image_key, frame_number, timestamp) are appended at each flush, so between
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
from typing import Literal, NoReturn

import h5py
import hdf5plugin
import numpy as np
import numpy.typing as npt

from pimega.core.errors import ConfigError, WriterError
from pimega.writer.bitshuffle import BitshuffleLZ4Compressor, chunk_bound

Compression = Literal["none", "bslz4"]
Scalar = bool | int | float | str

DATA_PATH = "/entry/data/data"
DETECTOR_PATH = "/entry/instrument/detector"
_METADATA_RESERVE_BYTES = 1 << 20
_COLUMN_CHUNK = 4096
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
_COMPRESSION_WORKERS = 2
# (low, high) HDF5 format bounds: SWMR needs >= 1.10 structures; readers need HDF5 >= 1.10.
_LIBVER = ("v110", "latest")


@dataclass(frozen=True)
class NexusMetadata:
    """What the file says about the detector and the acquisition (NXdetector fields)."""

    bit_depth: int
    count_time_s: float
    frame_time_s: float
    n_modules: int = 1
    module_shape: tuple[int, int] = (1536, 1536)
    layout: str = "1x1"
    pixel_size_m: float = 55e-6
    detector_description: str = "π-MEGA (Medipix3RX)"
    title: str = ""
    extra: Mapping[str, Scalar] = field(default_factory=dict)

    def __post_init__(self) -> None:
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
                 swmr: bool = False, reserve_bytes: int | None = None) -> None:
        if compression not in ("none", "bslz4"):
            raise ConfigError(f"compression {compression!r} is not one of 'none', 'bslz4'")
        self.filename = os.fspath(filename)
        self._frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self._dtype = np.dtype(dtype)
        if self._dtype.kind not in "uif":
            raise ConfigError(f"frame dtype {self._dtype} is not an integer or float type")
        self._metadata = metadata
        self._compression = compression
        self._flush_interval_s = flush_interval_s
        self._swmr = swmr
        frame_nbytes = self._frame_shape[0] * self._frame_shape[1] * self._dtype.itemsize
        self._chunk_bound = chunk_bound(frame_nbytes) if compression == "bslz4" else frame_nbytes
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
              image_key: int = 0, angle_deg: float = 0.0) -> None:
        """Append one frame (stored when this returns; ``image`` may be reused at once).

        ``image_key`` follows NXtomo: 0 projection, 1 flat, 2 dark, 3 invalid; ``angle_deg``
        is the sample's rotation angle (NXtomo ``/entry/sample/rotation_angle``).
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
            chunk = self._compressor.compress(frame) if self._compressor else frame
            self._data.id.set_extent((self._frames + 1, *self._frame_shape))
            self._data.id.write_direct_chunk((self._frames, 0, 0), chunk)
        except (OSError, RuntimeError) as error:
            self._fail(error)
        self._frames += 1
        for name, value in (("image_key", image_key), ("frame_number", frame_number),
                            ("timestamp", timestamp_ns), ("rotation_angle", angle_deg)):
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
        entry = _group(file, "entry", "NXentry")
        entry.attrs["default"] = "data"
        # Always NXtomo: every frame carries its image_key; plain series are all projections (0).
        entry["definition"] = "NXtomo"
        entry["start_time"] = datetime.now(UTC).isoformat(timespec="milliseconds")
        if meta.title:
            entry["title"] = meta.title
        detector = _group(_group(entry, "instrument", "NXinstrument"), "detector", "NXdetector")
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
        self._data = data = data_group.create_dataset(
            "data", shape=(0, *self._frame_shape), maxshape=(None, *self._frame_shape),
            chunks=(1, *self._frame_shape), dtype=self._dtype,
            **(hdf5plugin.Bitshuffle(cname="lz4") if self._compression == "bslz4" else {}))
        data.attrs["interpretation"] = "image"
        detector["data"] = data
        for name, dtype in (("image_key", np.int32), ("frame_number", np.uint64),
                            ("timestamp", np.uint64)):
            dataset = detector.create_dataset(name, shape=(0,), maxshape=(None,),
                                              chunks=(_COLUMN_CHUNK,), dtype=dtype)
            self._columns[name] = _Column(dataset)
        self._columns["timestamp"].dataset.attrs["units"] = "ns"
        sample = _group(entry, "sample", "NXsample")
        angle = sample.create_dataset("rotation_angle", shape=(0,), maxshape=(None,),
                                      chunks=(_COLUMN_CHUNK,), dtype=np.float64)
        angle.attrs["units"] = "degree"
        self._columns["rotation_angle"] = _Column(angle)
        data_group["image_key"] = self._columns["image_key"].dataset
        data_group["rotation_angle"] = angle

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
