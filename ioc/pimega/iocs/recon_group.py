"""``Recon:``: the live reconstruction — settings, state, and its slices as images.

Each of ``Recon:Slice1:`` … ``SliceN:`` holds a detector row to reconstruct (``Row``, -1:
none) and that row's slice as a CA waveform with its sizes (like ``image1:``) and as an
NTNDArray over PV Access (``Recon:SliceN:Image``). Slices are published at most every
``SLICE_INTERVAL_S``: a 1536² float32 slice is 9.4 MB.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from caproto.server import SubGroup

from pimega.core.errors import ConfigError
from pimega.runtime import MAX_SLICES

from .base import NodeGroup
from .catalog import (
    NO_YES,
    PVSpec,
    ai,
    ao,
    array,
    bo,
    longin,
    longout,
    mbbi,
    mbbo,
    stringin,
    text,
)
from .factory import make_group, on_put

SLICE_INTERVAL_S = 0.5
#: Largest StartAngle magnitude (degrees): thousands of turns, far from where the angles of a
#: scan (start + step · n) lose their precision or overflow.
MAX_START_ANGLE_DEG = 1e6
#: Largest AngleStep magnitude (degrees): a step of more than a turn is a typing error.
MAX_ANGLE_STEP_DEG = 360.0
FILTER_NAMES = ("Ram-Lak", "Shepp-Logan", "Cosine", "Hamming", "Hann")
RECON_STATES = ("Idle", "Waiting", "Reconstructing", "Error")

RECON_SPECS: tuple[PVSpec, ...] = (
    bo("Enable", NO_YES, "No", doc="Reconstruct the chosen rows live during acquisitions"),
    mbbo("CentreMode", ("Auto", "Manual"), "Auto",
         doc="Auto: found from projections 180 degrees apart; Manual: Centre"),
    ai("CentreInUse_RBV", precision=2, units="px", doc="Rotation centre in use"),
    mbbo("Filter", FILTER_NAMES, "Ram-Lak", doc="Ramp filter window"),
    mbbi("State_RBV", RECON_STATES, doc="Idle, waiting for darks and flats, reconstructing"),
    longin("ProjectionsUsed_RBV", doc="Projections reconstructed so far"),
    longin("SliceProjections_RBV", doc="Projections in the published slices"),
    longin("Skipped_RBV", doc="Projections skipped (behind, or before darks and flats)"),
    ai("TimePerUpdate_RBV", precision=3, units="ms", doc="Time one projection takes"),
    text("LastError_RBV", 256, doc="Why the reconstruction stopped"),
    longin("UniqueId_RBV", doc="Slice updates published"),
)


ANGLE_SPECS: tuple[PVSpec, ...] = (
    ao("Centre", 0.0, precision=2, units="px", doc="Rotation centre (Manual mode)"),
    ao("StartAngle", 0.0, precision=3, units="deg",
       doc="Angle of the first projection, for senders without angles"),
    ao("AngleStep", 0.0, precision=4, units="deg",
       doc="Angle between projections, for senders without angles"),
)


def slice_specs(width: int) -> tuple[PVSpec, ...]:
    return (
        longout("Row", -1, doc="Detector row to reconstruct (-1: none)"),
        array("ArrayData", "FLOAT", width * width, doc="The slice, row-major float32"),
        longin("ArraySize0_RBV", doc="Slice width"),
        longin("ArraySize1_RBV", doc="Slice height"),
        stringin("DataType_RBV", "Float32", doc="Element type of ArrayData"),
        longin("UniqueId_RBV", doc="Update of this slice"),
    )


class SliceGroup(NodeGroup):
    """One slice: its row and its image (see :func:`recon_group_class`)."""

    index = 0

    @property
    def recon(self) -> ReconGroup:
        recon = self.parent
        assert isinstance(recon, ReconGroup)
        return recon

    async def refused(self, name: str, reason: str) -> None:
        await self.recon.refused(f"Slice{self.index}:{name}", reason)

    @on_put("Row")
    async def _row(self, name: str, value: int) -> int:
        if value < -1:
            raise ConfigError(f"Row {value}: a detector row is ≥ 0, or -1 for none")
        rows = [value if group is self else group.pv("Row").value
                for group in self.recon.slices]
        # two slices on one row share its reconstruction
        self.node.configure_recon(rows=tuple(dict.fromkeys(row for row in rows if row >= 0)))
        return value

    async def publish(self, image: np.ndarray, update: int) -> None:
        flat = await asyncio.get_running_loop().run_in_executor(None, _as_waveform, image)
        await self.pv("ArrayData").write(flat, verify_value=False)
        height, width = image.shape
        await self.post_many({"ArraySize0_RBV": width, "ArraySize1_RBV": height,
                              "UniqueId_RBV": update})


def _as_waveform(image: np.ndarray) -> np.ndarray:
    return image.ravel().astype(">f4")


class ReconGroup(NodeGroup, make_group("ReconBase", RECON_SPECS, ANGLE_SPECS)):
    """Live reconstruction settings and state; slices in ``slices``."""

    slices: tuple[SliceGroup, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slices = tuple(getattr(self, f"slice{i}") for i in range(1, MAX_SLICES + 1))
        self._published = 0
        self._last_publish = 0.0
        self._error = ""  # the reconstruction's error as last shown in LastError_RBV

    async def refused(self, name: str, reason: str) -> None:
        """LastError_RBV says why (until the reconstruction's own state says otherwise)."""
        await self.post("LastError_RBV", f"{name} refused: {reason}")

    @on_put("Enable")
    async def _enable(self, name: str, value: str) -> str:
        self.node.configure_recon(enabled=value == "Yes")
        return value

    @on_put("CentreMode", "Centre")
    async def _centre(self, name: str, value: Any) -> Any:
        mode = value if name == "CentreMode" else self.pv("CentreMode").value
        centre = float(value if name == "Centre" else self.pv("Centre").value)
        width = self.node.image_shape[1]
        # a Centre put is checked in Auto mode too (Manual would refuse it); Auto always goes
        if (name == "Centre" or mode == "Manual") and not 0 <= centre <= width - 1:
            raise ConfigError(f"Centre {centre:g} lies outside the image's columns "
                              f"0 … {width - 1}")
        self.node.configure_recon(centre=None if mode == "Auto" else centre)
        return value

    @on_put("Filter")
    async def _filter(self, name: str, value: str) -> str:
        self.node.configure_recon(filter_name=value.lower())
        return value

    @on_put("StartAngle", "AngleStep")
    async def _angles(self, name: str, value: float) -> float:
        limit = MAX_START_ANGLE_DEG if name == "StartAngle" else MAX_ANGLE_STEP_DEG
        if not abs(value) <= limit:
            raise ConfigError(f"{name} {value:g} deg is beyond +-{limit:g} deg")
        field = {"StartAngle": "start_angle_deg", "AngleStep": "angle_step_deg"}[name]
        self.node.configure_recon(**{field: float(value)})
        return value

    async def publish(self, pva: Any) -> None:
        """State always; the slices when they changed and ``SLICE_INTERVAL_S`` has passed."""
        status = self.node.recon_status()
        await self.post_many({
            "State_RBV": RECON_STATES.index(status.state),
            "ProjectionsUsed_RBV": status.projections_used, "Skipped_RBV": status.skipped,
            "TimePerUpdate_RBV": status.time_per_update_ms, "CentreInUse_RBV": status.centre,
        })
        if status.error != self._error:  # a new error, or cleared: a refusal's reason goes too
            self._error = status.error
            await self.post("LastError_RBV", status.error)
        now = time.monotonic()
        if now - self._last_publish < SLICE_INTERVAL_S:
            return
        latest = await asyncio.get_running_loop().run_in_executor(None, self.node.latest_slices)
        if latest is None or latest.update == self._published:
            return
        self._published, self._last_publish = latest.update, now
        for row, image in zip(latest.rows, latest.images, strict=True):
            # none if the row was changed since (its slice has no place now); more than one
            # if slices share the row
            for group in (g for g in self.slices if g.pv("Row").value == row):
                await group.publish(image, latest.update)
                if pva is not None:
                    pva.post(slice_image_suffix(group.index), image, latest.update)
        # after the slices: a client that sees these sees those slices
        await self.post_many({"SliceProjections_RBV": latest.projections,
                              "UniqueId_RBV": latest.update})


def slice_image_suffix(index: int) -> str:
    """The PV Access NTNDArray of slice ``index`` (1-based), under the IOC's prefix."""
    return f"Recon:Slice{index}:Image"


def recon_group_class(width: int) -> type[ReconGroup]:
    """ReconGroup with ``MAX_SLICES`` slice subgroups of ``width``² images."""
    base = make_group("SliceBase", slice_specs(width))
    slices = {f"slice{i}": SubGroup(type(f"Slice{i}Group", (SliceGroup, base), {"index": i}),
                                    prefix=f"Slice{i}:")
              for i in range(1, MAX_SLICES + 1)}
    return type(f"Recon{width}Group", (ReconGroup,), slices)
