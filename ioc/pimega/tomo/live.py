"""Live reconstruction: slices of a few detector rows, updated frame by frame during a scan.

FBP is linear, so each projection's filtered rows are back-projected into running sums as
they arrive; :meth:`LiveReconstruction.slices` scales the sums as a full FBP over the
projections so far would, and after the last projection of a scan they equal the offline
FBP of the same rows (same normalisation, filter and kernel, same summation order).

Plain single-threaded code: the caller's thread runs every step (the back-projection itself
uses numba's threads). It must not run while another thread is in a parallel numba kernel
unless numba's threading layer allows that (``omp`` or ``tbb``; ``workqueue`` does not).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from pimega.core.errors import ConfigError
from pimega.core.wire import ImageKey

from .centre import centre_from_pair
from .fbp import angle_weight, backproject, check_centre
from .filters import check_filter, filter_rows
from .normalize import absorption


class _Reference:
    """Running mean of dark or flat frames."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self._sum = np.zeros(shape, dtype=np.float64)
        self.count = 0
        self._mean: np.ndarray | None = None

    def add(self, image: np.ndarray) -> None:
        self._sum += image
        self.count += 1
        self._mean = None

    @property
    def mean(self) -> np.ndarray:
        if self._mean is None:
            self._mean = (self._sum / max(self.count, 1)).astype(np.float32)
        return self._mean


class LiveReconstruction:
    """Slices of detector ``rows`` of (H, W) images, grown one projection at a time.

    ``centre`` is the rotation axis's detector column; None finds it from the first
    projection and the one 180° from it — the first within 1.5 angular steps of 180°, or,
    when ``angle_range`` (degrees) says the scan goes beyond 180°, within half a step. Until
    then the image's middle column stands in, and the filtered rows are kept so the slices
    can be redone with the centre found. Darks (key 2) and flats (key 1) are averaged into
    the references as they come; a projection (key 0) before at least one of each is not
    used (:attr:`projections_skipped`), invalid frames (key 3) are ignored.
    """

    def __init__(self, shape: tuple[int, int], rows: Sequence[int], centre: float | None = None,
                 filter_name: str = "ram-lak", angle_range: float | None = None) -> None:
        height, width = self.shape = (int(shape[0]), int(shape[1]))
        self.rows = np.asarray(rows, dtype=np.intp).reshape(-1)
        if not self.rows.size or self.rows.min() < 0 or self.rows.max() >= height:
            raise ConfigError(f"rows {list(rows)} are not all within the image's rows "
                              f"0 … {height - 1}")
        if angle_range is not None and not angle_range > 0:
            raise ConfigError(f"angle range must be > 0°, got {angle_range}")
        self.filter_name = check_filter(filter_name)
        self.angle_range = angle_range
        self._centre = (width - 1) / 2 if centre is None else check_centre(centre, width)
        self._searching = centre is None
        self._dark = _Reference(self.shape)
        self._flat = _Reference(self.shape)
        self._sums = np.zeros((self.rows.size, width, width), dtype=np.float32)
        self._used = 0
        self.projections_skipped = 0
        self._last_update_s = 0.0
        self._angles: list[float] = []
        self._kept_rows: list[np.ndarray] = []  # filtered rows, while the centre is searched
        self._first: tuple[float, np.ndarray] | None = None  # angle and absorption image

    @property
    def projections_used(self) -> int:
        """Projections back-projected into the slices so far."""
        return self._used

    @property
    def centre(self) -> float:
        """Rotation centre in use (detector column); provisional while it is searched."""
        return self._centre

    @property
    def last_update_s(self) -> float:
        """Seconds the last projection took to enter the slices (a one-off redo included)."""
        return self._last_update_s

    def add(self, image: np.ndarray, image_key: int, angle_deg: float) -> None:
        """Take one frame of the scan: a dark, a flat or a projection."""
        if image.shape != self.shape:
            raise ConfigError(f"image of shape {image.shape}, expected {self.shape}")
        if image_key == ImageKey.DARK:
            self._dark.add(image)
        elif image_key == ImageKey.FLAT:
            self._flat.add(image)
        elif image_key == ImageKey.PROJECTION:
            if self._dark.count and self._flat.count:
                self._add_projection(image, float(angle_deg))
            else:
                self.projections_skipped += 1
        elif image_key != ImageKey.INVALID:
            raise ConfigError(f"unknown image_key {image_key}")

    def slices(self) -> np.ndarray:
        """Current slices (rows, W, W) float32, weighted as an FBP of the projections used."""
        return self._sums * np.float32(angle_weight(self._used))

    def _add_projection(self, image: np.ndarray, angle: float) -> None:
        start = time.perf_counter()
        dark, flat = self._dark.mean, self._flat.mean
        filtered = filter_rows(
            absorption(image[self.rows], dark[self.rows], flat[self.rows]), self.filter_name)
        if self._searching:
            self._search_centre(image, angle, dark, flat, filtered)
        else:
            backproject(filtered[:, None, :], [angle], self._centre, self._sums)
        self._angles.append(angle)
        self._used += 1
        self._last_update_s = time.perf_counter() - start

    def _search_centre(self, image: np.ndarray, angle: float, dark: np.ndarray,
                       flat: np.ndarray, filtered: np.ndarray) -> None:
        """Keep the filtered rows; at the projection opposite the first, find the centre and
        redo the slices with it, else back-project with the provisional centre."""
        self._kept_rows.append(filtered)
        if self._first is None:
            self._first = (angle, absorption(image, dark, flat))
        elif self._opposite(self._first[0], angle):
            self._centre = centre_from_pair(self._first[1], absorption(image, dark, flat))
            self._searching, self._first = False, None
            self._sums[:] = 0
            kept = np.stack(self._kept_rows, axis=1)
            self._kept_rows = []
            backproject(kept, [*self._angles, angle], self._centre, self._sums)
            return
        backproject(filtered[:, None, :], [angle], self._centre, self._sums)

    def _opposite(self, first_angle: float, angle: float) -> bool:
        """Whether ``angle`` is the projection to pair with the first one (see the class)."""
        step = abs(angle - self._angles[-1])
        beyond_half_turn = self.angle_range is not None and self.angle_range > 180
        tolerance = (0.5 if beyond_half_turn else 1.5) * step
        return abs((angle - first_angle) % 360.0 - 180.0) <= tolerance
