"""Dark/flat normalisation, −log and sinogram extraction, NumPy or CuPy alike.

Projections become absorption ``−log((p − dark) / (flat − dark))`` in float32. Where the
flat does not exceed the dark (a dead pixel) the transmission is taken as 1, absorption 0,
rather than dividing by zero; transmissions at or below zero (photon-starved pixels, noise)
are floored at :data:`MIN_TRANSMISSION` so the logarithm stays finite.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pimega.core.xp import array_namespace

MIN_TRANSMISSION = 1e-6


def mean_frame(frames: Any) -> Any:
    """Mean of a stack of frames along axis 0 as float32, accumulated in float64."""
    xp = array_namespace(frames)
    return xp.mean(frames, axis=0, dtype=xp.float64).astype(xp.float32)


def transmission(projections: Any, dark: Any, flat: Any) -> Any:
    """``(p − dark) / (flat − dark)`` in float32; dark and flat broadcast over the projections."""
    xp = array_namespace(projections)
    dark = xp.asarray(dark, dtype=xp.float32)
    gain = xp.asarray(flat, dtype=xp.float32) - dark
    live = gain > 0
    result = xp.asarray(projections, dtype=xp.float32) - dark
    result /= xp.where(live, gain, xp.float32(1))
    return xp.where(live, result, xp.float32(1))


def minus_log(transmitted: Any) -> Any:
    """``−log`` of a transmission in float32, floored at :data:`MIN_TRANSMISSION`."""
    xp = array_namespace(transmitted)
    result = xp.maximum(transmitted, xp.float32(MIN_TRANSMISSION))
    xp.log(result, out=result)
    xp.negative(result, out=result)
    return result


def absorption(projections: Any, dark: Any, flat: Any) -> Any:
    """Normalised projections as line integrals: ``−log(transmission)``, float32."""
    return minus_log(transmission(projections, dark, flat))


def sinograms(projections: Any) -> Any:
    """(angles, rows, width) projections → (rows, angles, width) sinograms, contiguous."""
    xp = array_namespace(projections)
    return xp.ascontiguousarray(xp.moveaxis(projections, 1, 0))


def as_float32(array: Any) -> Any:
    """The array as contiguous float32 in its own namespace (no copy when it already is)."""
    xp = array_namespace(array)
    return xp.ascontiguousarray(array, dtype=xp.float32)



def to_numpy(array: Any) -> np.ndarray:
    """The array on the host: a NumPy copy of a CuPy array, a NumPy array as it is."""
    return np.asarray(array.get() if array_namespace(array) is not np else array)
