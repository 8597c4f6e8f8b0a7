"""The π-MEGA IOC: one root PVGroup over a node, with ADCore's plugin prefixes."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from caproto.server import SubGroup, pvproperty

from pimega.core.geometry import ArrayLayout
from pimega.runtime import MAX_SLICES, NODE_STAGES, NodeControl

from .access import AccessGroup
from .autosave import Autosave
from .cam import CamGroup, cam_group_class
from .events import Completions
from .image_group import ImageGroup
from .pipeline_group import PipelineGroup, pipeline_group_class
from .plugins import HDF5Group, PvaGroup, ROIGroup, StatsGroup
from .proc_group import ProcessGroup
from .pva import PVA_IMAGE_SUFFIX, PvaImages
from .recon_group import ReconGroup, recon_group_class, slice_image_suffix
from .record_fields import LazyFieldsGroup

log = logging.getLogger(__name__)

#: Period of the status poll that refreshes counters (completions come as events).
POLL_S = 0.1


class PimegaIOC(LazyFieldsGroup):
    """π-MEGA back-end: ``cam1:``, ``Proc1:``, ``image1:``, ``Pva1:``, ``HDF1:``,
    ``Stats1:`` (with ``Stats1:TS:``), ``ROI1:``, ``Pipe:``.

    ``cam1:`` and ``Pipe:`` depend on the node (modules, stages): build the class with
    :func:`ioc_class`.
    """

    cam: CamGroup
    pipe: PipelineGroup
    recon: ReconGroup
    access = SubGroup(AccessGroup, prefix="AS:")
    image = SubGroup(ImageGroup, prefix="image1:")
    hdf = SubGroup(HDF5Group, prefix="HDF1:")
    stats = SubGroup(StatsGroup, prefix="Stats1:")
    roi = SubGroup(ROIGroup, prefix="ROI1:")
    proc = SubGroup(ProcessGroup, prefix="Proc1:")
    pva_group = SubGroup(PvaGroup, prefix="Pva1:")

    def __init__(self, *args: Any, node: NodeControl, data_roots: Sequence[str] = (),
                 **kwargs: Any) -> None:
        self.node = node
        self.data_roots = tuple(data_roots)  # HDF1:FilePath must lie in one (none: anywhere)
        self.completions = Completions()
        self.autosave: Autosave | None = None  # set before the server starts
        self.pva: PvaImages | None = None  # set where p4p is installed
        super().__init__(*args, **kwargs)

    async def _poll(self, instance: Any, async_lib: Any) -> None:
        """Route the node's events, post start-up values, then refresh counters forever."""
        events = async_lib.ThreadsafeQueue()
        loop = asyncio.get_running_loop()

        def route(event: Any) -> None:
            """From the node's threads; once the server has stopped (the node closes after
            it, ending an acquisition) there is no one left to tell."""
            if loop.is_running():
                events.put(event)

        self.node.subscribe(route)
        tasks = [loop.create_task(self.completions.run(events))]
        for group in (self.cam, self.proc, self.image, self.pva_group, self.hdf, self.stats,
                      self.roi):
            await group.startup()
        if self.autosave is not None:  # after the start-up values, which it overrides
            await self.autosave.restore()
            tasks.append(loop.create_task(self.autosave.run()))
        # ~50k long-lived PV and record-field objects: keep them out of every GC pass, or a
        # full collection stalls the event loop (and control-PV round trips) for tens of ms
        gc.freeze()
        tasks.append(loop.create_task(self.image.run_preview()))
        while True:
            try:
                await self.publish()
            except Exception:  # a failed refresh must not end the poll loop
                log.exception("status refresh failed")
            await instance.write(instance.value + 1)
            await asyncio.sleep(POLL_S)
            for task in tasks:
                if task.done():  # a failure there must not pass silently
                    task.result()

    heartbeat = pvproperty(
        value=0, name="Heartbeat_RBV", record="longin", read_only=True,
        startup=_poll,  # pyright: ignore[reportArgumentType] - caproto types self as PVGroup
        doc="Counts status polls: a live IOC keeps it moving")

    async def publish_geometry(self) -> None:
        """The shape and data type of the arrays each port outputs."""
        node = self.node
        await self.cam.publish_settings()
        for group in (self.proc, self.hdf):
            await group.post_array_geometry(node.image_shape, node.image_dtype)
        await self.stats.post_array_geometry(await self.roi.publish_region(), node.image_dtype)

    async def publish(self) -> None:
        """Refresh every group from one node status, letting the loop in between (a put
        waits for one group's refresh, not for all of them: ~1.4 ms in one go)."""
        node = self.node
        status = node.status()
        latest = node.latest_stats()
        stats = next((s for s in status.stages if s.name == "stats"), None)
        refreshes: list[Callable[[], Awaitable[Any]]] = [
            self.publish_geometry, partial(self.cam.publish_status, status),
            partial(self.pipe.publish, status), partial(self.proc.publish_process, status),
            partial(self.stats.publish_stats, latest)]
        if stats is not None and latest is not None:
            refreshes += [partial(group.publish_arrays, stats.total, stats.skipped, latest[0])
                          for group in (self.roi, self.stats)]  # ROI1 feeds Stats1
        refreshes += [partial(self.recon.publish, self.pva),
                      partial(self.hdf.publish_capture, status)]
        for refresh in refreshes:
            await refresh()
            await asyncio.sleep(0)


def ioc_class(n_modules: int, width: int | None = None,
              stage_names: tuple[str, ...] = NODE_STAGES) -> type[PimegaIOC]:
    """The root group for ``n_modules`` modules (``cam1:M1:`` …), images ``width`` wide
    (the reconstruction's slices; default the square array of full modules) and the node's
    stages."""
    if width is None:
        width = ArrayLayout.square(n_modules).width
    cam = SubGroup(cam_group_class(n_modules), prefix="cam1:")
    pipe = SubGroup(pipeline_group_class(stage_names), prefix="Pipe:")
    recon = SubGroup(recon_group_class(width), prefix="Recon:")
    return type(f"Pimega{n_modules}IOC", (PimegaIOC,), {"cam": cam, "pipe": pipe, "recon": recon})


def pva_suffixes() -> list[str]:
    """The NTNDArray PVs the IOC serves over PV Access, under its prefix."""
    return [PVA_IMAGE_SUFFIX, *(slice_image_suffix(i) for i in range(1, MAX_SLICES + 1))]
