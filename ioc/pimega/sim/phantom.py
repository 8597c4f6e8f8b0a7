"""Tomography scan of a 3-D Shepp–Logan phantom: darks, flats and noisy projections.

The phantom is the standard 10-ellipsoid 3-D Shepp–Logan head in its modified (Toft,
high-contrast) densities, in coordinates where the head fills the unit ball: x, y across
the axial plane, z up the head axis. Each ellipsoid is rotated about its own centre by the
z-x-z Euler angles (phi, theta, psi) of the usual table.

Parallel beam, the sample rotating about the vertical axis: at angle θ the beam runs along
(−sin θ, cos θ, 0) and detector column u lies along (cos θ, sin θ, 0). Image row 0 is the top
(+z); the rotation axis is the image's central column ((width − 1) / 2) and the unit ball
spans ``min(height, width)`` pixels. Line integrals are analytic (chord lengths of
ellipsoids), so a 1536² projection costs a few vectorised passes, not a voxel volume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from pimega.core.bitpack import dtype_for_depth
from pimega.core.geometry import ArrayLayout, ModuleGeometry, check_bit_depth
from pimega.core.wire import ImageKey

# density, semi-axes a b c, centre x0 y0 z0, Euler angles phi theta psi (degrees)
MODIFIED_SHEPP_LOGAN_3D = np.array([
    [1.0, 0.6900, 0.920, 0.810, 0.00, 0.0000, 0.00, 0.0, 0.0, 0.0],
    [-0.8, 0.6624, 0.874, 0.780, 0.00, -0.0184, 0.00, 0.0, 0.0, 0.0],
    [-0.2, 0.1100, 0.310, 0.220, 0.22, 0.0000, 0.00, -18.0, 0.0, 10.0],
    [-0.2, 0.1600, 0.410, 0.280, -0.22, 0.0000, 0.00, 18.0, 0.0, 10.0],
    [0.1, 0.2100, 0.250, 0.410, 0.00, 0.3500, -0.15, 0.0, 0.0, 0.0],
    [0.1, 0.0460, 0.046, 0.050, 0.00, 0.1000, 0.25, 0.0, 0.0, 0.0],
    [0.1, 0.0460, 0.046, 0.050, 0.00, -0.1000, 0.25, 0.0, 0.0, 0.0],
    [0.1, 0.0460, 0.023, 0.050, -0.08, -0.6050, 0.00, 0.0, 0.0, 0.0],
    [0.1, 0.0230, 0.023, 0.020, 0.00, -0.6060, 0.00, 0.0, 0.0, 0.0],
    [0.1, 0.0230, 0.046, 0.020, 0.06, -0.6050, 0.00, 0.0, 0.0, 0.0],
])

# Largest mean count kept below the top of a counter, so Poisson noise rarely clips.
HEADROOM = 0.6


def _rotation_zxz(phi: float, theta: float, psi: float) -> np.ndarray:
    def rz(a: float) -> np.ndarray:
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    c, s = math.cos(theta), math.sin(theta)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return rz(phi) @ rx @ rz(psi)


def _pixel_span(centre: float, radius: float, axis: np.ndarray) -> slice:
    """Indices of the increasing coordinate ``axis`` within ``centre ± radius``."""
    start = int(np.searchsorted(axis, centre - radius))
    return slice(start, int(np.searchsorted(axis, centre + radius, side="right")))


def line_integrals(
    shape: tuple[int, int], angle_deg: float, ellipsoids: np.ndarray = MODIFIED_SHEPP_LOGAN_3D
) -> np.ndarray:
    """Density-weighted path length through the phantom for every pixel (phantom units).

    ``shape`` is (height, width) of the detector image; see the module docstring for the
    beam geometry and the pixel scale. Returns float32.
    """
    height, width = shape
    scale = min(height, width) / 2.0
    u = (np.arange(width) - (width - 1) / 2.0) / scale
    v_down = (np.arange(height) - (height - 1) / 2.0) / scale  # v = −v_down, row 0 at the top
    theta = math.radians(angle_deg)
    along_u = np.array([math.cos(theta), math.sin(theta), 0.0])
    beam = np.array([-math.sin(theta), math.cos(theta), 0.0])
    up = np.array([0.0, 0.0, 1.0])
    total = np.zeros(shape, dtype=np.float32)
    for density, a, b, c, x0, y0, z0, phi, th, psi in ellipsoids:
        centre = np.array([x0, y0, z0])
        radius = max(a, b, c)
        rows = _pixel_span(-z0, radius, v_down)
        cols = _pixel_span(float(centre @ along_u), radius, u)
        if rows.start >= rows.stop or cols.start >= cols.stop:
            continue
        # q = Q·(p − centre) maps the ellipsoid to the unit ball; a ray p = u·along_u + v·up
        # + t·beam has q = u·α + v·β + γ + t·e, and its chord is 2·√disc / |e|² with
        # disc = [u v 1]·G·[u v 1]ᵀ + |e|², G = (V·e)(V·e)ᵀ − |e|²·V·Vᵀ, V = [α; β; γ].
        rot = _rotation_zxz(*np.radians([phi, th, psi]))
        q = np.diag([1.0 / a, 1.0 / b, 1.0 / c]) @ rot.T
        vecs = np.stack([q @ along_u, q @ up, -(q @ centre)])
        e = q @ beam
        e2 = float(e @ e)
        ve = vecs @ e
        g = np.outer(ve, ve) - e2 * (vecs @ vecs.T)
        uu = u[cols]
        vv = -v_down[rows]
        col_part = (g[0, 0] * uu + 2.0 * g[0, 2]) * uu + g[2, 2] + e2
        cross = 2.0 * (g[0, 1] * uu + g[1, 2])
        disc = np.multiply.outer(vv.astype(np.float32), cross.astype(np.float32))
        disc += (g[1, 1] * vv * vv).astype(np.float32)[:, None]
        disc += col_part.astype(np.float32)[None, :]
        np.maximum(disc, 0.0, out=disc)
        np.sqrt(disc, out=disc)
        disc *= np.float32(2.0 * density / e2)
        total[rows, cols] += disc
    return total


class ScanFrame(NamedTuple):
    image_key: ImageKey
    angle_deg: float
    image: np.ndarray


class PhantomScan:
    """The frames of one simulated tomography scan, in NXtomo order.

    ``n_darks`` darks (key 2, angle 0), ``n_flats`` flats (key 1, angle 0), then
    ``n_projections`` projections (key 0) at angles ``angle_range·k / n_projections``.
    Counts are Poisson (seeded ``numpy.random.Generator``) with mean
    ``dark_level + flat_level·exp(−attenuation·L)`` (the transmission is 0 for a dark and 1
    for a flat), clipped to the counter's range. At 1 bit a pixel is that count thresholded
    at half the flat mean (1 = bright); at other depths both levels are scaled down, if
    needed, so the flat mean stays below ``HEADROOM`` of the counter's full scale.
    """

    def __init__(
        self,
        target: ModuleGeometry | ArrayLayout,
        bit_depth: int,
        n_projections: int,
        n_darks: int = 10,
        n_flats: int = 10,
        flat_level: float = 1000.0,
        dark_level: float = 2.0,
        angle_range: float = 180.0,
        seed: int = 0,
        attenuation: float = 4.0,
    ) -> None:
        if min(n_projections, n_darks, n_flats) < 0:
            raise ValueError("frame counts of a scan cannot be negative")
        if flat_level <= 0 or dark_level < 0:
            raise ValueError(f"need flat_level > 0 and dark_level ≥ 0, got {flat_level}, "
                             f"{dark_level}")
        self.shape = target.shape
        self.bit_depth = check_bit_depth(bit_depth)
        self.n_projections, self.n_darks, self.n_flats = n_projections, n_darks, n_flats
        self.angle_range = angle_range
        self.seed = seed
        self.attenuation = attenuation
        full_scale = (1 << bit_depth) - 1
        fit = 1.0 if bit_depth == 1 else min(1.0, HEADROOM * full_scale / (flat_level + dark_level))
        self.flat_level, self.dark_level = flat_level * fit, dark_level * fit

    def __len__(self) -> int:
        return self.n_darks + self.n_flats + self.n_projections

    def angles(self) -> np.ndarray:
        """Projection angles in degrees, over [0, angle_range)."""
        return self.angle_range * np.arange(self.n_projections) / max(self.n_projections, 1)

    def __iter__(self) -> Iterator[ScanFrame]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.n_darks):
            yield ScanFrame(ImageKey.DARK, 0.0, self._counts(rng, 0.0))
        for _ in range(self.n_flats):
            yield ScanFrame(ImageKey.FLAT, 0.0, self._counts(rng, 1.0))
        for angle in self.angles():
            path = line_integrals(self.shape, float(angle))
            path *= np.float32(-self.attenuation)
            transmission = np.exp(path, out=path)
            yield ScanFrame(ImageKey.PROJECTION, float(angle), self._counts(rng, transmission))

    def _counts(self, rng: np.random.Generator, transmission: np.ndarray | float) -> np.ndarray:
        mean = self.dark_level + self.flat_level * np.broadcast_to(transmission, self.shape)
        counts = rng.poisson(mean)
        if self.bit_depth == 1:
            return (counts > (self.dark_level + self.flat_level) / 2).astype(np.uint8)
        np.minimum(counts, (1 << self.bit_depth) - 1, out=counts)
        return counts.astype(dtype_for_depth(self.bit_depth))
