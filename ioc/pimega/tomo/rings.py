"""Ring-artefact suppression on sinograms, NumPy or CuPy alike.

A detector column that answers a little too high or too low at every angle (a stripe in the
sinogram) back-projects into a ring. Averaged over all angles the sample's own profile is
smooth across columns, a stripe is not: each column's mean minus a running median of those
means across columns estimates the column's error, which is subtracted at every angle.
"""

from __future__ import annotations

from typing import Any

from pimega.core.errors import ConfigError
from pimega.core.xp import array_namespace

DEFAULT_WIDTH = 11  # columns in the running median: wider than a stripe, narrower than detail


def suppress_rings(sinograms: Any, width: int = DEFAULT_WIDTH) -> Any:
    """Sinograms (…, angles, columns) with each column's stripe offset removed, float32."""
    if width < 3 or width % 2 == 0:
        raise ConfigError(f"the ring filter's width must be an odd number ≥ 3, got {width}")
    xp = array_namespace(sinograms)
    column_means = xp.mean(sinograms, axis=-2, dtype=xp.float64)
    half = width // 2
    n_columns = column_means.shape[-1]
    padded = xp.pad(column_means, [(0, 0)] * (column_means.ndim - 1) + [(half, half)],
                    mode="edge")
    windows = xp.stack([padded[..., k : k + n_columns] for k in range(width)])
    stripes = (column_means - xp.median(windows, axis=0)).astype(xp.float32)
    return xp.asarray(sinograms, dtype=xp.float32) - stripes[..., None, :]
