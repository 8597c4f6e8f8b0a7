"""Stages: what the pipeline thread does to every processed frame, in order, after decode.

A :class:`Stage` works on the pooled image in place or reads it; it must not keep the image
past :meth:`Stage.process`. Stages that only feed displays (statistics, the preview) are
rate-limited by the engine (``interval_s``); a stage of every frame has ``interval_s`` None.
When the backend's processor is a conveyor (the GPU), the engine asks it for the statistics
of :attr:`StatsStage.region` and the preview binned by :attr:`PreviewStage.factor` of the
frames these stages are due on, and hands the results to their ``accept``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from pimega.core.frame import Frame
from pimega.pipeline.stats import RoiSettings, Stats, bin_for_preview, compute_stats, roi

#: The stages every node has, in order: ingest, decode (+ corrections), the rate-limited
#: display stages, then its consumers, the file writer and the live reconstruction; consumers
#: added to a node follow these.
NODE_STAGES = ("ingest", "decode", "stats", "preview", "write", "recon")


class Stage(Protocol):
    name: str

    def interval_s(self) -> float | None:
        """Shortest time between two runs (None: every frame); the last frame always runs."""
        ...

    def process(self, frame: Frame) -> None: ...


class StatsStage:
    """NDStats of the NDROI region; :attr:`latest` is (unique id, stats) of the newest."""

    name = "stats"

    def __init__(self, region: Callable[[], RoiSettings], interval: Callable[[], float]) -> None:
        self._region = region
        self._interval = interval
        self.latest: tuple[int, Stats] | None = None

    def interval_s(self) -> float:
        return self._interval()

    @property
    def region(self) -> RoiSettings:
        """The region the next statistics cover (a GPU computes them from it)."""
        return self._region()

    def process(self, frame: Frame) -> None:
        r = self._region()
        region = roi(frame.image, r.min_x, r.min_y, r.size_x, r.size_y, r.bin_x, r.bin_y)
        self.latest = (frame.info.unique_id, compute_stats(region))

    def accept(self, unique_id: int, stats: Stats) -> None:
        """Statistics of frame ``unique_id`` computed elsewhere (on the GPU)."""
        self.latest = (unique_id, stats)


class PreviewStage:
    """The newest image binned for display; :attr:`latest` is (unique id, image copy)."""

    name = "preview"

    def __init__(self, factor: Callable[[], int], interval: Callable[[], float]) -> None:
        self._factor = factor
        self._interval = interval
        self.latest: tuple[int, np.ndarray] | None = None

    def interval_s(self) -> float:
        return self._interval()

    @property
    def factor(self) -> int:
        """The binning of the next preview (a GPU bins it)."""
        return self._factor()

    def process(self, frame: Frame) -> None:
        preview = bin_for_preview(frame.image, self._factor())
        if preview is frame.image:  # unbinned: the pooled buffer will be reused, keep a copy
            preview = preview.copy()
        self.latest = (frame.info.unique_id, preview)

    def accept(self, unique_id: int, preview: np.ndarray) -> None:
        """The preview of frame ``unique_id`` binned elsewhere (on the GPU): kept as given."""
        self.latest = (unique_id, preview)
