"""Rotation-centre search by registering two projections 180° apart.

In parallel beam the projection at θ + 180° is the one at θ mirrored about the rotation
axis: ``p₁₈₀(u) = p₀(2c − u)``. Mirroring ``p₁₈₀`` about the image's middle therefore gives
``p₀`` shifted by ``s = 2c − (width − 1)``. The shift is the peak of the cross-correlation
of the two rows' gradients (edges give a sharp peak, a constant offset between the two
frames drops out), summed over all rows given, refined below a pixel by a parabola through
the peak and its neighbours. A whole pixel of shift is half a pixel of centre.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pimega.core.xp import array_namespace

from .errors import ScanError
from .filters import padded_length
from .normalize import as_float32, to_numpy

# How far from 180° apart the closest pair of projections may be for the search.
MAX_PAIR_MISMATCH_DEG = 2.0


def centre_from_pair(first: Any, opposite: Any) -> float:
    """Rotation centre (detector column) from absorption projections 180° apart.

    ``first`` and ``opposite`` are rows × width (or one row); more rows, less noise.
    """
    xp = array_namespace(first)
    first, opposite = as_float32(first), as_float32(opposite)
    if first.shape != opposite.shape:
        raise ScanError(f"projections to register differ in shape: {first.shape}, "
                        f"{opposite.shape}")
    width = first.shape[-1]
    if width < 3:
        raise ScanError(f"the centre search needs at least 3 detector columns, got {width}")
    edges = xp.diff(first, axis=-1)
    mirrored_edges = xp.diff(opposite[..., ::-1], axis=-1)
    n_fft = padded_length(width)
    cross = xp.fft.rfft(edges, n=n_fft, axis=-1) * xp.conj(
        xp.fft.rfft(mirrored_edges, n=n_fft, axis=-1))
    if cross.ndim > 1:
        cross = cross.reshape(-1, cross.shape[-1]).sum(axis=0)
    correlation = to_numpy(xp.fft.irfft(cross, n=n_fft)).astype(np.float64)
    peak = int(np.argmax(correlation))
    left, here, right = correlation[[peak - 1, peak, (peak + 1) % n_fft]]
    curvature = left - 2 * here + right
    offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    shift = (peak if peak < n_fft // 2 else peak - n_fft) + offset
    return (shift + width - 1) / 2


def opposite_pair(angles_deg: Any) -> tuple[int, int]:
    """Indices of the first projection and the one closest to 180° from it.

    :class:`ScanError` when no projection lies within :data:`MAX_PAIR_MISMATCH_DEG` of it.
    """
    angles = np.asarray(angles_deg, dtype=np.float64)
    if angles.size < 2:
        raise ScanError(f"the centre search needs at least 2 projections, got {angles.size}")
    mismatch = np.abs((angles - angles[0]) % 360.0 - 180.0)
    best = int(np.argmin(mismatch))
    if mismatch[best] > MAX_PAIR_MISMATCH_DEG:
        raise ScanError(
            f"the centre search needs two projections 180° ± {MAX_PAIR_MISMATCH_DEG}° apart; "
            f"the closest pair is {abs((angles[best] - angles[0]) % 360.0):g}° apart; "
            "give the centre")
    return 0, best


def find_centre(sinograms: Any, angles_deg: Any) -> float:
    """Rotation centre from absorption sinograms (rows, angles, width) or (angles, width)."""
    first, opposite = opposite_pair(angles_deg)
    return centre_from_pair(sinograms[..., first, :], sinograms[..., opposite, :])
