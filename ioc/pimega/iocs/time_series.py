"""``Stats1:TS:``: NDTimeSeries of the statistics, as ADCore's NDStats screens drive it.

TSAcquire 1 starts a series: every statistics result the pipeline computes (at its rate,
``Stats1:`` publishes the same ones) becomes one point of the ``Stats1:TS<Name>`` arrays, up
to TSNumPoints; "Fixed length" then stops (TSAcquire and TSAcquiring fall to 0), "Circ.
buffer" keeps the newest points. TSAcquire 0 stops; TSRead publishes the arrays at once
(they are also published at each point).
"""

from __future__ import annotations

import time
from typing import Any, cast

import numpy as np

from pimega.runtime import Stats

from .base import NodeGroup
from .catalog import TIME_SERIES_STACK, TS_POINTS
from .factory import CatalogGroup, make_group, on_put

#: Stats1:TS<Name> array → the Stats field (or "timestamp") it collects.
SERIES = {
    "MinValue": "min_value", "MinX": "min_x", "MinY": "min_y", "MaxValue": "max_value",
    "MaxX": "max_x", "MaxY": "max_y", "MeanValue": "mean", "Sigma": "sigma", "Total": "total",
    "Net": "net", "CentroidX": "centroid_x", "CentroidY": "centroid_y", "SigmaX": "sigma_x",
    "SigmaY": "sigma_y", "SigmaXY": "sigma_xy", "Timestamp": "timestamp",
}

TimeSeriesBase = make_group("TimeSeriesBase", *TIME_SERIES_STACK)


class TimeSeriesGroup(NodeGroup, TimeSeriesBase):
    """The time series; its points go to the parent ``Stats1:`` group's TS arrays."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._points: dict[str, list[float]] = {name: [] for name in SERIES}
        self._started = 0.0
        self._elapsed: list[float] = []

    async def startup(self) -> None:
        await self.post_many({"PortName_RBV": "STATS1_TS", "NDArrayPort": "STATS1",
                              "EnableCallbacks": "Enable",
                              "PluginType_RBV": self.pv("PluginType_RBV").value})

    @property
    def acquiring(self) -> bool:
        return self.pv("TSAcquiring").value == "Acquiring"

    @on_put("TSAcquire")
    async def _acquire(self, name: str, value: str) -> str:
        if value == "Acquire":
            self._points = {key: [] for key in SERIES}
            self._elapsed = []
            self._started = time.monotonic()
            await self.post_many({"TSCurrentPoint": 0, "TSAcquiring": "Acquiring"})
            await self.publish_arrays()
        else:
            await self.post_many({"TSAcquiring": "Done"})
        return value

    @on_put("TSNumPoints")
    async def _num_points(self, name: str, value: int) -> int:
        if not 1 <= value <= TS_POINTS:
            raise ValueError(f"TSNumPoints must be 1..{TS_POINTS}, got {value}")
        return value

    @on_put("TSRead")
    async def _read(self, name: str, value: str) -> str:
        await self.publish_arrays()
        return value

    async def add_point(self, stats: Stats, timestamp_s: float) -> None:
        """One statistics result becomes a point while a series is collected."""
        if not self.acquiring:
            return
        for name, field in SERIES.items():
            self._points[name].append(timestamp_s if field == "timestamp"
                                      else float(getattr(stats, field)))
        self._elapsed.append(time.monotonic() - self._started)
        limit = self.pv("TSNumPoints").value
        circular = self.pv("TSAcquireMode").value == "Circ. buffer"
        if len(self._elapsed) > limit:  # only in a circular buffer
            self._elapsed = self._elapsed[-limit:]
            self._points = {k: v[-limit:] for k, v in self._points.items()}
        await self.post_many({"TSCurrentPoint": len(self._elapsed),
                              "TSElapsedTime": self._elapsed[-1]})
        await self.publish_arrays()
        if len(self._elapsed) >= limit and not circular:
            await self.post_many({"TSAcquiring": "Done"})
            await self.post("TSAcquire", 0)

    async def publish_arrays(self) -> None:
        stats_group = cast(CatalogGroup, self.parent)
        for name, values in self._points.items():
            await stats_group.pv(f"TS{name}").write(np.asarray(values, np.float64),
                                                    verify_value=False)
        await self.pv("TSTimeAxis").write(np.asarray(self._elapsed, np.float64),
                                          verify_value=False)
