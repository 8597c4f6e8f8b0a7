"""Parallel-beam filtered back-projection: a fused numba kernel on the CPU, CUDA via CuPy.

Geometry (the simulator's, and scikit-image's ``iradon``): at angle θ detector column
``t = x·cos θ + y·sin θ + centre``, where (x, y) are slice coordinates in pixels with x
along the slice's columns, y up its rows, and the rotation axis at slice pixel
``(width // 2, width // 2)``. A slice is width × width pixels; only the disc that every
projection covers (radius ``min(centre, width − 1 − centre)`` around the axis) is
reconstructed, the rest is 0. Values are in the sinogram's units per pixel.

The back-projection is a sum over angles, so it can grow one projection at a time (the live
reconstruction does); :func:`angle_weight` turns the sum into the FBP's integral over
angles for projections evenly spread over 180° or 360°.
"""

from __future__ import annotations

import math
import threading
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np
from numba import njit, prange

from pimega.core.errors import ConfigError
from pimega.core.xp import array_namespace

from .errors import ScanError
from .filters import filter_rows

_CUDA_SOURCE = r"""
extern "C" __global__ void backproject(
    const float* filtered, const float* cos_a, const float* sin_a,
    int n_slices, int n_angles, int width,
    float centre, float origin, float radius, float* out)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    int i = blockIdx.y * blockDim.y + threadIdx.y;
    int s = blockIdx.z;
    if (i >= width || j >= width || s >= n_slices) return;
    float x = j - origin, y = origin - i;
    if (x * x + y * y > radius * radius) return;
    const float* rows = filtered + (size_t)s * n_angles * width;
    float sum = 0.0f;
    for (int k = 0; k < n_angles; ++k) {
        float t = x * cos_a[k] + y * sin_a[k] + centre;
        int it = min((int)t, width - 2);
        float f = t - it;
        const float* row = rows + (size_t)k * width;
        sum += row[it] + f * (row[it + 1] - row[it]);
    }
    out[((size_t)s * width + i) * width + j] += sum;
}
"""
_CUDA_BLOCK = (32, 8, 1)
# numba's default (workqueue) threading layer cannot run two parallel kernels at once: callers
# from several threads (a Dask worker's, say) take turns.
_CPU_KERNEL_LOCK = threading.Lock()


def check_centre(centre: float, width: int) -> float:
    """``centre`` as a float if it lies on the detector's columns, else :class:`ConfigError`."""
    if not 0 <= centre <= width - 1:  # also refuses NaN
        raise ConfigError(
            f"rotation centre {centre} is outside the image's columns 0 … {width - 1}")
    return float(centre)


def angle_weight(n_angles: int) -> float:
    """Factor from a sum of ``n_angles`` back-projections to the FBP (π / n_angles)."""
    return math.pi / max(n_angles, 1)


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def _backproject_cpu(filtered, cos_a, sin_a, centre, origin, radius, out):
    """Add Σ_k filtered[s, k](x·cos_k + y·sin_k + centre) into out[s], linear interpolation.

    One output row per parallel iteration: the detector positions and weights of a row and
    an angle are computed once and used for every slice, the inner loop runs along the
    row's pixels inside the disc.
    """
    n_slices, n_angles, width = filtered.shape
    size = out.shape[1]
    last = width - 2
    for i in prange(size):
        y = np.float32(origin - i)
        half_chord2 = radius * radius - y * y
        if half_chord2 < 0:
            continue
        half_chord = math.sqrt(half_chord2)
        j0 = max(0, math.ceil(origin - half_chord))
        j1 = min(size - 1, math.floor(origin + half_chord))
        n = j1 - j0 + 1
        if n <= 0:
            continue
        index = np.empty(n, np.int32)
        weight = np.empty(n, np.float32)
        for k in range(n_angles):
            step = cos_a[k]
            start = np.float32(y * sin_a[k] + centre + (j0 - origin) * step)
            for p in range(n):
                t = start + np.float32(p) * step
                it = min(int(t), last)
                index[p] = it
                weight[p] = t - it
            for s in range(n_slices):
                row = filtered[s, k]
                dst = out[s, i, j0 : j1 + 1]
                for p in range(n):
                    left = row[index[p]]
                    dst[p] += left + weight[p] * (row[index[p] + 1] - left)


@cache
def _cuda_kernel(xp: ModuleType) -> Any:
    return xp.RawKernel(_CUDA_SOURCE, "backproject")


def backproject(filtered: Any, angles_deg: Any, centre: float, out: Any) -> None:
    """Add the back-projection of ``filtered`` (slices, angles, width) into ``out``.

    ``out`` is (slices, width, width) float32, C-contiguous, in the same namespace (NumPy or
    CuPy); the sum is not weighted (see :func:`angle_weight`). Angles are on the host.
    """
    xp = array_namespace(filtered)
    n_slices, n_angles, width = filtered.shape
    if (out.shape != (n_slices, width, width) or out.dtype != np.float32
            or not out.flags.c_contiguous):
        raise ConfigError(f"back-projection needs a contiguous float32 {(n_slices, width, width)}"
                          f" output, got {out.dtype} {out.shape}")
    if len(angles_deg) != n_angles:
        raise ScanError(f"{len(angles_deg)} angles for {n_angles} projections")
    if width < 2:
        raise ConfigError(f"a sinogram needs at least 2 detector columns, got {width}")
    centre = check_centre(centre, width)
    radius = min(centre, width - 1 - centre)
    origin = width // 2
    theta = np.radians(np.asarray(angles_deg, dtype=np.float64))
    cos_a = xp.asarray(np.cos(theta), dtype=xp.float32)
    sin_a = xp.asarray(np.sin(theta), dtype=xp.float32)
    filtered = xp.ascontiguousarray(filtered, dtype=xp.float32)
    if xp is np:
        with _CPU_KERNEL_LOCK:
            _backproject_cpu(filtered, cos_a, sin_a, centre, origin, radius, out)
        return
    grid = (-(-width // _CUDA_BLOCK[0]), -(-width // _CUDA_BLOCK[1]), n_slices)
    _cuda_kernel(xp)(grid, _CUDA_BLOCK, (
        filtered, cos_a, sin_a, np.int32(n_slices), np.int32(n_angles), np.int32(width),
        np.float32(centre), np.float32(origin), np.float32(radius), out))


def fbp(sinograms: Any, angles_deg: Any, centre: float, filter_name: str = "ram-lak") -> Any:
    """Slices (rows, width, width) from absorption sinograms (rows, angles, width), float32.

    A single sinogram (angles, width) gives a single slice (width, width).
    """
    xp = array_namespace(sinograms)
    single = sinograms.ndim == 2
    stack = sinograms[None] if single else sinograms
    n_rows, n_angles, width = stack.shape
    slices = xp.zeros((n_rows, width, width), dtype=xp.float32)
    backproject(filter_rows(stack, filter_name), angles_deg, centre, slices)
    slices *= xp.float32(angle_weight(n_angles))
    return slices[0] if single else slices
