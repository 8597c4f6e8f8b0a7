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
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
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
# Bytes of frames kept for reuse by all scans of a process (see PhantomScan).
CACHE_BYTES = 1_800_000_000
# Distinct noise draws of the darks, of the flats and of the projections' noise fields.
NOISE_REALISATIONS = 4
NOISE_STREAM = 7  # seeds the projections' noise fields apart from the darks' and flats'


def _rotation_zxz(phi: float, theta: float, psi: float) -> np.ndarray:
    def rz(a: float) -> np.ndarray:
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    c, s = math.cos(theta), math.sin(theta)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return rz(phi) @ rx @ rz(psi)


def _to_unit_ball(a: float, b: float, c: float, phi: float, theta: float,
                  psi: float) -> np.ndarray:
    """Q with |Q·(p − centre)| ≤ 1 exactly inside the ellipsoid (semi-axes, Euler angles°)."""
    rot = _rotation_zxz(*np.radians([phi, theta, psi]))
    return np.diag([1.0 / a, 1.0 / b, 1.0 / c]) @ rot.T


def _pixel_span(centre: float, radius: float, axis: np.ndarray) -> slice:
    """Indices of the increasing coordinate ``axis`` within ``centre ± radius``."""
    start = int(np.searchsorted(axis, centre - radius))
    return slice(start, int(np.searchsorted(axis, centre + radius, side="right")))


def line_integrals(
    shape: tuple[int, int], angle_deg: float, ellipsoids: np.ndarray = MODIFIED_SHEPP_LOGAN_3D,
    rows: slice = slice(None),
) -> np.ndarray:
    """Density-weighted path length through the phantom for every pixel (phantom units).

    ``shape`` is (height, width) of the detector image; see the module docstring for the
    beam geometry and the pixel scale. ``rows`` (a slice with a positive step) limits the
    result to those image rows. Returns float32 (rows, width).
    """
    height, width = shape
    scale = min(height, width) / 2.0
    u = (np.arange(width) - (width - 1) / 2.0) / scale
    v_down = ((np.arange(height) - (height - 1) / 2.0) / scale)[rows]  # v = −v_down, row 0 top
    theta = math.radians(angle_deg)
    along_u = np.array([math.cos(theta), math.sin(theta), 0.0])
    beam = np.array([-math.sin(theta), math.cos(theta), 0.0])
    up = np.array([0.0, 0.0, 1.0])
    total = np.zeros((v_down.size, width), dtype=np.float32)
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
        q = _to_unit_ball(a, b, c, phi, th, psi)
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


def density_slice(
    shape: tuple[int, int], row: int, ellipsoids: np.ndarray = MODIFIED_SHEPP_LOGAN_3D
) -> np.ndarray:
    """Phantom density in the plane seen by detector ``row``, as a reconstruction sees it.

    A width × width float32 grid with the rotation axis at its centre ((width − 1) / 2 both
    ways), x along its columns and y up its rows, at the pixel scale of
    :func:`line_integrals` for the same ``shape``: the FBP of that row's line integrals,
    multiplied by the scale (pixels per phantom unit), gives this image.
    """
    height, width = shape
    scale = min(height, width) / 2.0
    z = ((height - 1) / 2.0 - row) / scale
    x = (np.arange(width) - (width - 1) / 2.0) / scale
    total = np.zeros((width, width), dtype=np.float32)
    for density, a, b, c, x0, y0, z0, phi, th, psi in ellipsoids:
        q = _to_unit_ball(a, b, c, phi, th, psi)
        across, up = q[:, 0, None] * (x - x0), q[:, 1, None] * (-x - y0)  # (3, width) each
        along = q[:, 2] * (z - z0)
        radius2 = sum(np.add.outer(up[m] + along[m], across[m]) ** 2 for m in range(3))
        total[radius2 <= 1.0] += np.float32(density)
    return total


class ScanFrame(NamedTuple):
    image_key: ImageKey
    angle_deg: float
    image: np.ndarray


class _FrameCache:
    """Arrays by key up to a byte budget, the least recently used dropped first; thread-safe.

    Shared by every scan of the process, so a simulator that builds a scan per acquisition
    computes each frame once for all its acquisitions. Arrays are read-only.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._arrays: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            if key in self._arrays:
                self._arrays.move_to_end(key)
                return self._arrays[key]
        array = make()
        array.flags.writeable = False
        with self._lock:
            if key not in self._arrays:
                self._arrays[key] = array
                self._bytes += array.nbytes
                while self._bytes > self.max_bytes and len(self._arrays) > 1:
                    self._bytes -= self._arrays.popitem(last=False)[1].nbytes
            return self._arrays[key]


_FRAMES = _FrameCache(CACHE_BYTES)


class PhantomScan:
    """The frames of one simulated tomography scan, in NXtomo order, at scan speed.

    ``n_darks`` darks (key 2, angle 0), ``n_flats`` flats (key 1, angle 0), then
    ``n_projections`` projections (key 0) at angles ``angle_range·k / n_projections``.
    Counts have mean ``dark_level + flat_level·exp(−attenuation·L)`` (the transmission is 0
    for a dark and 1 for a flat), clipped to the counter's range: Poisson for darks and
    flats, for projections a Gaussian of the same mean and variance drawn from one of
    ``NOISE_REALISATIONS`` seeded standard-normal fields. At 1 bit a pixel is that count
    thresholded at half the flat mean (1 = bright); at other depths both levels are scaled
    down, if needed, so the flat mean stays below ``HEADROOM`` of the counter's full scale.

    Frames are computed when first needed and kept, read-only, in a process-wide cache of
    ``CACHE_BYTES``, so iterating again (or another scan with the same settings) only hands
    out arrays. Darks and flats cycle through ``NOISE_REALISATIONS`` frames each. When the
    projections do not all fit, consecutive projections share the frame computed at their
    middle angle (the noise repeats with it); their angles stay exact.
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
        self._dtype = np.dtype(np.uint8) if bit_depth == 1 else dtype_for_depth(bit_depth)
        self._settings = (self.shape, bit_depth, self.flat_level, self.dark_level, attenuation,
                          seed)

    def __len__(self) -> int:
        return self.n_darks + self.n_flats + self.n_projections

    def angles(self) -> np.ndarray:
        """Projection angles in degrees, over [0, angle_range)."""
        return self.angle_range * np.arange(self.n_projections) / max(self.n_projections, 1)

    def distinct_projections(self) -> int:
        """How many projection frames this scan computes: all, or as many as the cache holds
        beside its darks, flats and noise fields."""
        pixels = self.shape[0] * self.shape[1]
        frame_bytes = pixels * self._dtype.itemsize
        fixed_bytes = NOISE_REALISATIONS * (2 * frame_bytes + pixels * 4)
        return min(self.n_projections, max(1, (CACHE_BYTES - fixed_bytes) // frame_bytes))

    def __iter__(self) -> Iterator[ScanFrame]:
        for key, count in ((ImageKey.DARK, self.n_darks), (ImageKey.FLAT, self.n_flats)):
            for index in range(count):
                yield ScanFrame(key, 0.0, self._reference(key, index % NOISE_REALISATIONS))
        angles = self.angles()
        n_bins = self.distinct_projections()
        bins = np.arange(self.n_projections) * n_bins // max(self.n_projections, 1)
        first = np.searchsorted(bins, np.arange(n_bins))
        middle = (first + np.searchsorted(bins, np.arange(n_bins), side="right") - 1) // 2
        for angle, group in zip(angles, bins, strict=True):
            image = self._projection(float(angles[middle[group]]), int(group) % NOISE_REALISATIONS)
            yield ScanFrame(ImageKey.PROJECTION, float(angle), image)

    def _reference(self, key: ImageKey, realisation: int) -> np.ndarray:
        def make() -> np.ndarray:
            rng = np.random.default_rng([self.seed, int(key), realisation])
            level = 1.0 if key == ImageKey.FLAT else 0.0
            counts = rng.poisson(self.dark_level + self.flat_level * level, self.shape)
            return self._fit_depth(counts.astype(np.float32))

        return _FRAMES.get((*self._settings, int(key), realisation), make)

    def _projection(self, angle: float, realisation: int) -> np.ndarray:
        def make() -> np.ndarray:
            mean = line_integrals(self.shape, angle)
            mean *= np.float32(-self.attenuation)
            np.exp(mean, out=mean)
            mean *= np.float32(self.flat_level)
            mean += np.float32(self.dark_level)
            counts = np.sqrt(mean)
            counts *= self._noise(realisation)
            counts += mean
            return self._fit_depth(counts)

        return _FRAMES.get((*self._settings, int(ImageKey.PROJECTION), angle, realisation), make)

    def _noise(self, realisation: int) -> np.ndarray:
        def make() -> np.ndarray:
            rng = np.random.default_rng([self.seed, NOISE_STREAM, realisation])
            return rng.standard_normal(self.shape, dtype=np.float32)

        return _FRAMES.get((self.shape, self.seed, NOISE_STREAM, realisation), make)

    def _fit_depth(self, counts: np.ndarray) -> np.ndarray:
        """Float counts as the counter reports them: thresholded at 1 bit, else rounded and
        clipped to the depth's range."""
        if self.bit_depth == 1:
            return (counts > (self.dark_level + self.flat_level) / 2).astype(np.uint8)
        np.rint(counts, out=counts)
        np.clip(counts, 0, (1 << self.bit_depth) - 1, out=counts)
        return counts.astype(self._dtype)
