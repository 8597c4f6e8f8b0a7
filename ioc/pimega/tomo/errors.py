"""The tomography stages' own error: scan data that cannot give the slices asked for."""

from pimega.core.errors import PimegaError


class ScanError(PimegaError, ValueError):
    """Projection data that cannot be reconstructed: no darks or flats, angles that do not
    match the frames, no projections 180° apart for the centre search, an unknown layout."""
