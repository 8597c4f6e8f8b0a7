"""Tomography: normalisation, sinograms, ramp filters, FBP, centre search, ring suppression,
scan files, offline volumes and the live reconstruction; NumPy or CuPy alike."""

from .centre import centre_from_pair, find_centre
from .errors import ScanError
from .fbp import angle_weight, backproject, fbp
from .files import ScanFile
from .filters import FILTERS, filter_rows
from .live import LiveReconstruction
from .normalize import absorption, sinograms
from .rings import suppress_rings
from .volume import ReconSettings, VolumeWriter, centre_of_scan, reconstruct_band

__all__ = [
    "FILTERS",
    "LiveReconstruction",
    "ReconSettings",
    "ScanError",
    "ScanFile",
    "VolumeWriter",
    "absorption",
    "angle_weight",
    "backproject",
    "centre_from_pair",
    "centre_of_scan",
    "fbp",
    "filter_rows",
    "find_centre",
    "reconstruct_band",
    "sinograms",
    "suppress_rings",
]
