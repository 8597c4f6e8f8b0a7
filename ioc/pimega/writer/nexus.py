"""The NXmx part of a NeXus file: geometry a diffraction program (DIALS, XDS via
``nxmx``, silx) needs to index frames, from the values the user set (the IOC's PVs).

Axes follow NeXus/McStas: z along the beam, y up, x completing a right-handed frame. The
detector sits ``distance`` along z and faces the beam; its fast axis (image columns) runs
along −x, its slow axis (image rows) along −y, so pixel (row, column) = (beam_y, beam_x)
lies on the beam. Each module is one NXdetector_module whose offset places it in the array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from pimega.core.errors import ConfigError


@dataclass(frozen=True)
class MxGeometry:
    """Diffraction geometry: distance sample→detector (m), beam centre (pixels, column and
    row), wavelength (Å), sensor material and thickness (m), source name."""

    distance_m: float = 0.1
    beam_center_x_px: float = 0.0
    beam_center_y_px: float = 0.0
    wavelength_a: float = 1.0
    sensor_material: str = "Si"
    sensor_thickness_m: float = 300e-6
    source_name: str = "unknown"

    def __post_init__(self) -> None:
        if self.distance_m <= 0 or self.wavelength_a <= 0 or self.sensor_thickness_m <= 0:
            raise ConfigError("detector distance, wavelength and sensor thickness must be > 0")
        if not self.sensor_material or not self.source_name:
            raise ConfigError("sensor material and source name must not be empty")


def write_mx_layout(entry: h5py.Group, instrument: h5py.Group, detector: h5py.Group,
                    mx: MxGeometry,
                    module_shape: tuple[int, int], module_origins: Sequence[tuple[int, int]],
                    pixel_size_m: float, bit_depth: int) -> None:
    """Add NXmx's groups and fields to ``entry`` (its NXinstrument ``instrument`` holding
    the NXdetector ``detector``): one NXdetector_module per (row, column) origin of a module
    in the image."""
    instrument["name"] = "pi-MEGA"
    instrument["time_zone"] = "UTC"
    beam = _group(instrument, "beam", "NXbeam")
    _quantity(beam, "incident_wavelength", mx.wavelength_a, "angstrom")
    source = _group(entry, "source", "NXsource")
    source["name"] = mx.source_name
    entry["sample/depends_on"] = "."
    transformations = _group(detector, "transformations", "NXtransformations")
    distance = _quantity(transformations, "translation", mx.distance_m, "m")
    distance.attrs.update(transformation_type="translation", vector=[0.0, 0.0, 1.0],
                          depends_on=".")
    distance_path = f"{transformations.name}/translation"
    detector["depends_on"] = distance_path
    _quantity(detector, "distance", mx.distance_m, "m")
    detector["distance_derived"] = False
    _quantity(detector, "beam_center_x", mx.beam_center_x_px * pixel_size_m, "m")
    _quantity(detector, "beam_center_y", mx.beam_center_y_px * pixel_size_m, "m")
    detector["sensor_material"] = mx.sensor_material
    _quantity(detector, "sensor_thickness", mx.sensor_thickness_m, "m")
    detector["saturation_value"] = np.int64(2**bit_depth - 1)
    for index, origin in enumerate(module_origins):
        _module(detector, f"module{index + 1}", origin, module_shape, pixel_size_m, mx,
                distance_path)


def _module(detector: h5py.Group, name: str, origin: tuple[int, int],
            shape: tuple[int, int], pixel_size_m: float, mx: MxGeometry,
            depends_on: str) -> None:
    """One NXdetector_module: its pixels in the data, its corner in the detector frame."""
    module = _group(detector, name, "NXdetector_module")
    module["data_origin"] = np.asarray(origin, dtype=np.int32)
    module["data_size"] = np.asarray(shape, dtype=np.int32)
    module["data_stride"] = np.asarray([1, 1], dtype=np.int32)
    corner_x = (mx.beam_center_x_px - origin[1]) * pixel_size_m
    corner_y = (mx.beam_center_y_px - origin[0]) * pixel_size_m
    offset = _quantity(module, "module_offset", 0.0, "m")
    offset.attrs.update(transformation_type="translation", vector=[1.0, 0.0, 0.0],
                        offset=[corner_x, corner_y, 0.0], depends_on=depends_on)
    for axis, vector in (("fast_pixel_direction", [-1.0, 0.0, 0.0]),
                         ("slow_pixel_direction", [0.0, -1.0, 0.0])):
        direction = _quantity(module, axis, pixel_size_m, "m")
        direction.attrs.update(transformation_type="translation", vector=vector,
                               offset=[0.0, 0.0, 0.0],
                               depends_on=f"{module.name}/module_offset")


def _group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    group = parent.create_group(name)
    group.attrs["NX_class"] = nx_class
    return group


def _quantity(group: h5py.Group, name: str, value: float, units: str) -> h5py.Dataset:
    dataset = group.create_dataset(name, data=np.float64(value))
    dataset.attrs["units"] = units
    return dataset
