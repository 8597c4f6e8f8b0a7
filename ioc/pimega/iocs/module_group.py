"""``cam1:M1:`` … ``cam1:Mn:``: one module's receiver, with ADPimega's PV names."""

from __future__ import annotations

from typing import Any

from .base import NodeGroup
from .catalog import NO_YES, PVSpec, ai, bi, longin, text
from .factory import make_group

MODULE_SPECS: tuple[PVSpec, ...] = (
    longin("RxFrameCount_RBV", doc="Frames received in this acquisition"),
    longin("LostFrameCount_RBV", doc="Frames missing in the sequence"),
    longin("RxError_RBV", doc="Corrupt frames received"),
    longin("RxAcquisitionCount_RBV", doc="Acquisitions received"),
    longin("IdleFrameCount_RBV", doc="Frames that arrived while not acquiring (dropped)"),
    ai("Backend_BufferUsed_RBV", precision=1, units="%", doc="Frame ring in use"),
    bi("Connected_RBV", NO_YES, doc="Sender connected"),
    text("LastError_RBV", 256, doc="Last receive error"),
)


class ModuleGroup(NodeGroup, make_group("ModuleBase", MODULE_SPECS)):
    """Receive counters of one module (one TCP connection, one frame ring)."""

    async def publish(self, counters: dict[str, Any], acquisitions: int) -> None:
        await self.post_many({
            "RxFrameCount_RBV": counters["frames"], "LostFrameCount_RBV": counters["gaps"],
            "RxError_RBV": counters["corrupt"], "RxAcquisitionCount_RBV": acquisitions,
            "IdleFrameCount_RBV": counters["dropped_idle"],
            "Backend_BufferUsed_RBV": 100.0 * counters["ring_used"] / counters["ring_size"],
            "Connected_RBV": int(counters["connected"]),
            "LastError_RBV": counters["last_error"],
        })
