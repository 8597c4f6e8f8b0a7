"""Offline reconstruction of a scan file, one band of detector rows at a time.

A band is normalised, turned into sinograms, optionally ring-filtered and reconstructed by
FBP (:func:`reconstruct_band`, NumPy or CuPy); the rotation centre is found once for the
whole scan (:func:`centre_of_scan`) so every band uses the same one. The slices go into a
NeXus file (:class:`VolumeWriter`) written under a temporary name and renamed only when
every slice is in, so a failed or interrupted reconstruction leaves no half-written file.
Spreading the bands over processes or machines is the caller's business (``pimega recon``
uses Dask).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from pimega import __version__
from pimega.core.errors import ConfigError

from .centre import centre_from_pair, opposite_pair
from .errors import ScanError
from .fbp import fbp
from .files import ScanFile
from .filters import check_filter
from .normalize import absorption, sinograms
from .rings import suppress_rings


@dataclass(frozen=True)
class ReconSettings:
    """How to turn a band of projections into slices."""

    centre: float
    filter_name: str = "ram-lak"
    ring_removal: bool = False

    def __post_init__(self) -> None:
        check_filter(self.filter_name)


def check_rows(rows: range, height: int) -> range:
    """``rows`` if it is a non-empty band of the detector's ``height`` rows."""
    if not 0 <= rows.start < rows.stop <= height:
        raise ConfigError(f"rows {rows.start}:{rows.stop} are not a band of the detector's "
                          f"rows 0:{height}")
    return rows


def reconstruct_band(projections: Any, dark: Any, flat: Any, angles_deg: Any,
                     settings: ReconSettings) -> Any:
    """Slices (rows, width, width) from raw projections (angles, rows, width) of one band.

    ``dark`` and ``flat`` are the band's mean references (rows, width); NumPy or CuPy.
    """
    bands = sinograms(absorption(projections, dark, flat))
    if settings.ring_removal:
        bands = suppress_rings(bands)
    return fbp(bands, angles_deg, settings.centre, settings.filter_name)


def centre_of_scan(scan: ScanFile) -> float:
    """Rotation centre from the scan's first projection and the one 180° from it."""
    pair = list(opposite_pair(scan.angles_deg))
    first, opposite = absorption(scan.projections.subset(pair).read(slice(None)),
                                 *scan.references())
    return centre_from_pair(first, opposite)


def _nexus_value(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


class VolumeWriter:
    """Slices of detector ``rows`` into a NeXus file that appears only once complete.

    ``/entry/data`` is an NXdata: ``data`` (rows, width, width) float32 with axes ``row``
    (detector row of each slice), ``y`` and ``x`` (pixels from the rotation axis);
    ``/entry/reconstruction`` (NXprocess) holds the program, its version, the date and, in
    ``parameters``, the ``parameters`` given here. Use as a context manager: leaving it
    normally renames the finished file to ``path``; an exception, or slices missing, removes
    it.
    """

    def __init__(self, path: str | Path, rows: range, width: int,
                 parameters: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.rows = rows
        self._temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self._written = np.zeros(len(rows), dtype=bool)
        self._file = h5py.File(self._temp, "w")
        try:
            self._data = self._layout(width, parameters)
        except BaseException:
            self._discard()
            raise

    def _layout(self, width: int, parameters: Mapping[str, Any]) -> h5py.Dataset:
        now = datetime.datetime.now(datetime.UTC).isoformat()
        self._file.attrs.update(default="entry", file_name=self.path.name, file_time=now,
                                creator="pimega recon")
        entry = self._file.create_group("entry")
        entry.attrs.update(NX_class="NXentry", default="data")
        data = entry.create_group("data")
        data.attrs.update(NX_class="NXdata", signal="data", axes=["row", "y", "x"],
                          row_indices=0, y_indices=1, x_indices=2)
        volume = data.create_dataset("data", (len(self.rows), width, width), dtype=np.float32,
                                     chunks=(1, width, width))
        volume.attrs["long_name"] = "linear attenuation coefficient × pixel size"
        data.create_dataset("row", data=np.asarray(self.rows, dtype=np.int32))
        pixels = np.arange(width) - width // 2
        data.create_dataset("x", data=pixels.astype(np.float32)).attrs["units"] = "pixel"
        data.create_dataset("y", data=-pixels.astype(np.float32)).attrs["units"] = "pixel"
        process = entry.create_group("reconstruction")
        process.attrs["NX_class"] = "NXprocess"
        process.update(program="pimega recon", version=__version__, date=now)
        stored = process.create_group("parameters")
        stored.attrs["NX_class"] = "NXparameters"
        for name, value in parameters.items():
            stored[name] = _nexus_value(value)
        return volume

    def write(self, first_row: int, slices: np.ndarray) -> None:
        """Store ``slices`` (n, width, width) as detector rows ``first_row`` … + n − 1."""
        start = first_row - self.rows.start
        stop = start + len(slices)
        if start < 0 or stop > len(self.rows):
            raise ConfigError(f"rows {first_row}:{first_row + len(slices)} are outside the "
                              f"volume's rows {self.rows.start}:{self.rows.stop}")
        self._data[start:stop] = slices
        self._written[start:stop] = True

    def _discard(self) -> None:
        self._file.close()
        self._temp.unlink(missing_ok=True)

    def __enter__(self) -> VolumeWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self._discard()
            return
        missing = np.flatnonzero(~self._written)
        if missing.size:
            self._discard()
            raise ScanError(f"{self.path} not written: {missing.size} slices missing, "
                            f"first detector row {self.rows.start + int(missing[0])}")
        self._file.close()
        os.replace(self._temp, self.path)
