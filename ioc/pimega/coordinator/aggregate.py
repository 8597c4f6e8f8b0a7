"""The array from its modules' parts: statistics merged, ROI split, preview assembled, stages
summed. Pure functions of what the module nodes report (no Channel Access here)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pimega.core.geometry import ArrayLayout
from pimega.runtime import RoiSettings, StageStatus, Stats


@dataclass(frozen=True)
class StatsPart:
    """One module's NDStats of its share of the ROI: ``pixels`` in it, and where its (0, 0)
    lies in the array ROI's output (``offset`` x, y)."""

    stats: Stats
    pixels: int
    offset: tuple[int, int]


def merge_stats(parts: Sequence[StatsPart]) -> Stats:
    """NDStats of the union of the parts, as :func:`~pimega.pipeline.stats.compute_stats`
    of the whole region would give (centroid threshold 0: every pixel weighs its value).

    Each part's sums are rebuilt from its mean, sigma, centroid and second moments; where
    parts tie on the min or max value, the first part's pixel is taken (NDStats takes the
    first in the whole image's row-major order).
    """
    n = sum(p.pixels for p in parts)
    total = sum(p.stats.total for p in parts)
    mean = total / n
    sum_sq = sum(p.pixels * (p.stats.sigma**2 + p.stats.mean**2) for p in parts)
    low = min(parts, key=lambda p: p.stats.min_value)
    high = max(parts, key=lambda p: p.stats.max_value)
    moments = [0.0] * 5  # Σw·x, Σw·y, Σw·x², Σw·y², Σw·x·y
    for p in parts:
        s, (dx, dy) = p.stats, p.offset
        cx, cy = s.centroid_x + dx, s.centroid_y + dy
        xy = s.sigma_xy * s.sigma_x * s.sigma_y + cx * cy
        for i, value in enumerate((cx, cy, s.sigma_x**2 + cx * cx, s.sigma_y**2 + cy * cy, xy)):
            moments[i] += s.total * value
    if total > 0:
        cx, cy, xx, yy, xy = (m / total for m in moments)
        sigma_x = math.sqrt(max(xx - cx * cx, 0.0))
        sigma_y = math.sqrt(max(yy - cy * cy, 0.0))
        sigma_xy = (xy - cx * cy) / (sigma_x * sigma_y) if sigma_x > 0 and sigma_y > 0 else 0.0
    else:
        cx = cy = sigma_x = sigma_y = sigma_xy = 0.0
    return Stats(
        total=total, net=sum(p.stats.net for p in parts),
        min_value=low.stats.min_value, max_value=high.stats.max_value, mean=mean,
        sigma=math.sqrt(max(sum_sq / n - mean * mean, 0.0)),
        min_x=low.stats.min_x + low.offset[0], min_y=low.stats.min_y + low.offset[1],
        max_x=high.stats.max_x + high.offset[0], max_y=high.stats.max_y + high.offset[1],
        centroid_x=cx, centroid_y=cy, sigma_x=sigma_x, sigma_y=sigma_y, sigma_xy=sigma_xy,
    )


@dataclass(frozen=True)
class RoiShare:
    """A module's share of the array ROI: its own ROI settings and where that region's
    output lies in the array ROI's output (x, y)."""

    roi: RoiSettings
    offset: tuple[int, int]


def split_roi(roi: RoiSettings, layout: ArrayLayout) -> list[RoiShare | None]:
    """Each module's share of the array ``roi`` (None: the region misses the module).

    Binning is applied by each module to its share, so bins straddling a module edge are
    cut there (exact without binning, or when shares start on the bin grid).
    """
    height, width = layout.shape
    x0, y0 = min(roi.min_x, width - 1), min(roi.min_y, height - 1)
    x1, y1 = min(x0 + (roi.size_x or width), width), min(y0 + (roi.size_y or height), height)
    module_h, module_w = layout.module.shape
    shares: list[RoiShare | None] = []
    for module_id in range(layout.n_modules):
        top, left = layout.module_origin(module_id)
        ix0, ix1 = max(x0, left), min(x1, left + module_w)
        iy0, iy1 = max(y0, top), min(y1, top + module_h)
        if ix0 >= ix1 or iy0 >= iy1:
            shares.append(None)
            continue
        share = RoiSettings(ix0 - left, iy0 - top, ix1 - ix0, iy1 - iy0, roi.bin_x, roi.bin_y)
        shares.append(RoiShare(share, ((ix0 - x0) // roi.bin_x, (iy0 - y0) // roi.bin_y)))
    return shares


def assemble_preview(layout: ArrayLayout, factor: int, previews: Sequence[np.ndarray | None],
                     dtype: np.dtype) -> np.ndarray:
    """The array's preview binned by ``factor`` from each module's preview binned by the same
    factor, placed at its module's origin; a module without one (or of another shape) stays
    0."""
    module_h, module_w = (side // factor for side in layout.module.shape)
    image = np.zeros((layout.modules_y * module_h, layout.modules_x * module_w), dtype)
    for module_id, preview in enumerate(previews):
        if preview is None or preview.shape != (module_h, module_w):
            continue
        row, column = divmod(module_id, layout.modules_x)
        image[row * module_h:(row + 1) * module_h,
              column * module_w:(column + 1) * module_w] = preview
    return image


def merge_stages(name: str, stages: Sequence[StageStatus]) -> StageStatus:
    """One stage of the array from the same stage of every module: running or failed where
    any is, frames of the slowest, the longest time a frame, queues and losses summed."""
    return StageStatus(
        name=name, running=any(s.running for s in stages),
        frames=min((s.frames for s in stages), default=0),
        time_per_frame_ms=max((s.time_per_frame_ms for s in stages), default=0.0),
        queue_depth=sum(s.queue_depth for s in stages),
        queue_size=sum(s.queue_size for s in stages),
        dropped=sum(s.dropped for s in stages), error=any(s.error for s in stages),
    )
