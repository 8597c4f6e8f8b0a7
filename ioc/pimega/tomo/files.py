"""Reading tomography scans from HDF5: this project's files, NXtomo and DXchange.

- This project (and NXtomo): frames ``/entry/data/data`` (N, H, W) — in NXtomo possibly a
  link to ``/entry/instrument/detector/data`` —, ``image_key`` (N; 0 projection, 1 flat,
  2 dark, 3 invalid) under ``/entry/instrument/detector`` or ``/entry/data``, and rotation
  angles (N, degrees unless their ``units`` say radians) at ``/entry/sample/rotation_angle``
  or ``/entry/data/rotation_angle``. The entry is ``/entry`` or the first NXentry group.
- DXchange: ``/exchange/data`` (projections), ``/exchange/data_white`` (flats),
  ``/exchange/data_dark`` (darks), ``/exchange/theta`` (degrees).

Frames are read a band of detector rows at a time, so a volume larger than memory can be
reconstructed band by band. Invalid frames (key 3) are skipped.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import h5py
import numpy as np

from pimega.core.wire import ImageKey

from .errors import ScanError
from .normalize import mean_frame

with contextlib.suppress(ImportError):  # HDF5 then decodes the files' LZ4/Blosc/BSLZ4 chunks
    import hdf5plugin  # noqa: F401

RADIAN_UNITS = {"rad", "radian", "radians"}


@dataclass(frozen=True)
class FrameSet:
    """Frames ``indices`` (increasing) of a (frames, rows, columns) dataset."""

    dataset: h5py.Dataset
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, positions: list[int]) -> FrameSet:
        """The frames at ``positions`` (increasing) of this set."""
        return FrameSet(self.dataset, self.indices[positions])

    def read(self, rows: slice) -> np.ndarray:
        """The frames' band of ``rows`` as (frames, rows, columns), in the stored dtype."""
        n_rows = len(range(*rows.indices(self.dataset.shape[1])))
        out = np.empty((len(self.indices), n_rows, self.dataset.shape[2]), self.dataset.dtype)
        runs = np.split(self.indices, np.flatnonzero(np.diff(self.indices) != 1) + 1)
        done = 0
        for run in runs:
            if run.size:
                self.dataset.read_direct(out, np.s_[run[0] : run[-1] + 1, rows, :],
                                         np.s_[done : done + run.size])
                done += run.size
        return out


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _first(group: h5py.Group, paths: tuple[str, ...], what: str) -> h5py.Dataset:
    for path in paths:
        item = group.get(path)
        if isinstance(item, h5py.Dataset):
            return item
    raise ScanError(f"{group.file.filename}: no {what} (looked for "
                    f"{', '.join(f'{group.name}/{p}' for p in paths)})")


def _entry(file: h5py.File) -> h5py.Group:
    entry = file.get("entry")
    if isinstance(entry, h5py.Group):
        return entry
    for item in file.values():
        if isinstance(item, h5py.Group) and _text(item.attrs.get("NX_class", "")) == "NXentry":
            return item
    raise ScanError(f"{file.filename}: neither an /entry (NXtomo) nor an /exchange (DXchange) "
                    "group")


def _degrees(dataset: h5py.Dataset) -> np.ndarray:
    angles = np.asarray(dataset[()], dtype=np.float64).reshape(-1)
    units = _text(dataset.attrs.get("units", "degree")).strip().lower()
    return np.degrees(angles) if units in RADIAN_UNITS else angles


class ScanFile:
    """A scan file open for reading; darks, flats, projections and their angles checked."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise ScanError(f"cannot open {self.path} as HDF5: {exc}") from None
        try:
            if "exchange" in self._file:
                self._read_dxchange(self._file["exchange"])  # type: ignore[arg-type]
            else:
                self._read_nxtomo(_entry(self._file))
            self._check()
        except BaseException:
            self._file.close()
            raise

    def _read_nxtomo(self, entry: h5py.Group) -> None:
        self.layout = "NXtomo"
        frames = _first(entry, ("data/data", "instrument/detector/data"), "frames")
        keys = np.asarray(_first(
            entry, ("instrument/detector/image_key", "data/image_key"), "image_key")[()])
        angles = _degrees(_first(
            entry, ("sample/rotation_angle", "data/rotation_angle"), "rotation angles"))
        if frames.ndim != 3:
            raise ScanError(f"{self.path}: frames must be (N, rows, columns), got {frames.shape}")
        n_frames = frames.shape[0]
        for name, values in (("image keys", keys), ("rotation angles", angles)):
            if len(values) != n_frames:
                raise ScanError(f"{self.path}: {len(values)} {name} for {n_frames} frames")
        unknown = set(np.unique(keys).tolist()) - {int(k) for k in ImageKey}
        if unknown:
            raise ScanError(f"{self.path}: unknown image_key values {sorted(unknown)}")
        projections = np.flatnonzero(keys == ImageKey.PROJECTION)
        self.darks = FrameSet(frames, np.flatnonzero(keys == ImageKey.DARK))
        self.flats = FrameSet(frames, np.flatnonzero(keys == ImageKey.FLAT))
        self.projections = FrameSet(frames, projections)
        self.angles_deg = angles[projections]

    def _read_dxchange(self, exchange: h5py.Group) -> None:
        self.layout = "DXchange"

        def frame_set(name: str, what: str) -> FrameSet:
            dataset = _first(exchange, (name,), what)
            if dataset.ndim != 3:
                raise ScanError(f"{self.path}: {dataset.name} must be (N, rows, columns), "
                                f"got {dataset.shape}")
            return FrameSet(dataset, np.arange(dataset.shape[0]))

        self.projections = frame_set("data", "projections")
        self.flats = frame_set("data_white", "flats (data_white)")
        self.darks = frame_set("data_dark", "darks (data_dark)")
        self.angles_deg = _degrees(_first(exchange, ("theta",), "angles (theta)"))
        if len(self.angles_deg) != len(self.projections):
            raise ScanError(f"{self.path}: {len(self.angles_deg)} angles for "
                            f"{len(self.projections)} projections")

    def _check(self) -> None:
        for frames, what in ((self.projections, "projections"), (self.flats, "flat frames"),
                             (self.darks, "dark frames")):
            if not len(frames):
                raise ScanError(f"{self.path} has no {what}; a reconstruction needs them")
        shapes = {fs.dataset.shape[1:] for fs in (self.projections, self.flats, self.darks)}
        if len(shapes) != 1:
            raise ScanError(f"{self.path}: projections, flats and darks differ in frame shape "
                            f"{sorted(shapes)}")
        if not np.isfinite(self.angles_deg).all():
            raise ScanError(f"{self.path}: rotation angles that are not finite numbers")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of a frame."""
        rows, columns = self.projections.dataset.shape[1:]
        return int(rows), int(columns)

    def references(self, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Mean dark and mean flat over a band of ``rows``, float32 (rows, columns)."""
        return mean_frame(self.darks.read(rows)), mean_frame(self.flats.read(rows))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ScanFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
