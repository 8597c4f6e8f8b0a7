"""``cam1:M1:`` … ``cam1:Mn:``: one module's receiver, with ADPimega's PV names."""

from __future__ import annotations

from typing import Any

from caproto import ChannelType
from caproto.server import PVGroup

from .publish import readback, update


class ModuleGroup(PVGroup):
    """Receive counters of one module (one TCP connection, one frame ring)."""

    rx_frames = readback(0, record="longin", doc="frames received", name="RxFrameCount_RBV")
    lost_frames = readback(0, record="longin", doc="frames missing in the sequence",
                           name="LostFrameCount_RBV")
    rx_error = readback(0, record="longin", doc="corrupt frames received", name="RxError_RBV")
    rx_acquisitions = readback(0, record="longin", doc="acquisitions received",
                               name="RxAcquisitionCount_RBV")
    dropped_idle = readback(0, record="longin", doc="frames that arrived while not acquiring",
                            name="IdleFrameCount_RBV")
    buffer_used = readback(0.0, record="ai", doc="frame ring in use, %",
                           name="Backend_BufferUsed_RBV", precision=1, units="%")
    connected = readback(0, record="bi", doc="sender connected", name="Connected_RBV",
                         dtype=ChannelType.ENUM, enum_strings=("No", "Yes"))
    last_error = readback("", record="waveform", doc="last receive error",
                          name="LastError_RBV", dtype=ChannelType.CHAR, max_length=256,
                          report_as_string=True)

    async def publish(self, counters: dict[str, Any], acquisitions: int,
                      buffer_used_pct: float) -> None:
        await update((
            (self.rx_frames, counters["frames"]), (self.lost_frames, counters["gaps"]),
            (self.rx_error, counters["corrupt"]), (self.rx_acquisitions, acquisitions),
            (self.dropped_idle, counters["dropped_idle"]),
            (self.buffer_used, buffer_used_pct), (self.connected, int(counters["connected"])),
            (self.last_error, counters["last_error"][:255]),
        ))
