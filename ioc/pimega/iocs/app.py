"""The π-MEGA IOC: one root PVGroup over the engine, with ADCore's plugin prefixes."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

from caproto.server import PVGroup, SubGroup, pvproperty

from pimega.runtime.engine import Acquisition

from .cam import CamGroup, cam_group_class
from .pipeline_group import PipelineGroup
from .plugins import HDF5Group, ImageGroup, ROIGroup, StatsGroup

log = logging.getLogger(__name__)

#: Period of the status poll that refreshes counters and the preview.
POLL_S = 0.05


class PimegaIOC(PVGroup):
    """π-MEGA back-end: ``cam1:``, ``image1:``, ``HDF1:``, ``Stats1:``, ``ROI1:``, ``Pipe:``.

    ``cam1:`` depends on the number of modules: build the class with :func:`ioc_class`.
    """

    cam: CamGroup
    image = SubGroup(ImageGroup, prefix="image1:")
    hdf = SubGroup(HDF5Group, prefix="HDF1:")
    stats = SubGroup(StatsGroup, prefix="Stats1:")
    roi = SubGroup(ROIGroup, prefix="ROI1:")
    pipe = SubGroup(PipelineGroup, prefix="Pipe:")

    def __init__(self, *args: Any, engine: Acquisition, **kwargs: Any) -> None:
        self.engine_ = engine
        super().__init__(*args, **kwargs)

    async def _poll(self, instance: Any, async_lib: Any) -> None:
        """Post start-up values, then refresh every group from the engine, forever."""
        for group in (self.cam, self.image, self.hdf, self.stats, self.roi):
            await group.startup()
        # ~50k long-lived PV and record-field objects: keep them out of every GC pass, or a
        # full collection stalls the event loop (and control-PV round trips) for tens of ms
        gc.freeze()
        previews = asyncio.get_running_loop().create_task(self.image.run_preview())
        while True:
            try:
                await self.publish()
            except Exception:  # a failed refresh must not end the poll loop
                log.exception("status refresh failed")
            await instance.write(instance.value + 1)
            await asyncio.sleep(POLL_S)
            if previews.done():  # a failure there must not pass silently
                previews.result()

    heartbeat = pvproperty(
        value=0, name="Heartbeat_RBV", record="longin", read_only=True,
        startup=_poll,  # pyright: ignore[reportArgumentType] - caproto types self as PVGroup
        doc="Counts status polls: a live IOC keeps it moving")

    async def publish(self) -> None:
        """Refresh every group from one engine status."""
        engine = self.engine_
        status = engine.status()
        await self.hdf.post_array_geometry(engine.image_shape, engine.image_dtype)
        await self.stats.post_array_geometry(await self.roi.publish_region(), engine.image_dtype)
        await self.cam.publish_status(status)
        await self.pipe.publish(status)
        await self.stats.publish_stats(engine.latest_stats(), status.unique_id)
        if status.capture.active:
            await self.hdf.publish_capture(status)


def ioc_class(n_modules: int) -> type[PimegaIOC]:
    """The root group for ``n_modules`` modules (``cam1:M1:`` … ``cam1:Mn:``)."""
    cam = SubGroup(cam_group_class(n_modules), prefix="cam1:")
    return type(f"Pimega{n_modules}IOC", (PimegaIOC,), {"cam": cam})
