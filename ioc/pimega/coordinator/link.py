"""One module node as the coordinator sees it: its IOC's PVs over Channel Access.

A :class:`ModuleLink` lives in the coordinator's event loop (caproto's asyncio client). It
monitors the PVs the array's status is made of, keeping the newest value of each, and makes
the coordinator's puts: settings written and read back, busy records (``Acquire``,
``Capture``) whose put-callback completes when the module's action ends. Losing the module's
circuit ends every such wait at once with :class:`ModuleLost` — caproto would otherwise
retry the put on the next circuit, starting a restarted module anew.

Callbacks are coroutines: caproto's asyncio client awaits those on the loop, in order (plain
functions would run on its thread pool, in any order). :class:`ClientContext` is caproto's
client context with one change: a put the server refuses completes (caproto 1.3 drops the
server's ErrorResponse, leaving the put waiting forever).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from caproto import CASeverity, ChannelType, ErrorResponse, native_type
from caproto.asyncio.client import PV, Context, VirtualCircuitManager

from pimega.core.errors import PimegaError
from pimega.runtime import NODE_STAGES

from .config import ModuleNode

#: Seconds a put-callback of a setting (or a read) may take.
PUT_TIMEOUT_S = 10.0

STATS = ("Total_RBV", "Net_RBV", "MinValue_RBV", "MaxValue_RBV", "MeanValue_RBV", "Sigma_RBV",
         "MinX_RBV", "MinY_RBV", "MaxX_RBV", "MaxY_RBV", "CentroidX_RBV", "CentroidY_RBV",
         "SigmaX_RBV", "SigmaY_RBV", "SigmaXY_RBV", "UniqueId_RBV")
STAGE = ("State_RBV", "Frames_RBV", "TimePerFrame_RBV", "QueueDepth_RBV", "QueueSize_RBV",
         "Dropped_RBV")
RECEIVER = ("RxFrameCount_RBV", "LostFrameCount_RBV", "RxError_RBV", "IdleFrameCount_RBV",
            "Backend_BufferUsed_RBV", "LastError_RBV")
#: Setpoints the coordinator writes; each is checked back on its ``_RBV``.
SETTINGS = (
    *(f"cam1:{name}" for name in ("ImageMode", "NumImages", "AcquireTime", "AcquirePeriod",
                                  "CounterDepth", "TriggerMode")),
    *(f"image1:{name}" for name in ("PreviewBinning", "MinCallbackTime")),
    *(f"ROI1:{name}" for name in ("MinX", "MinY", "SizeX", "SizeY", "BinX", "BinY")),
    *(f"HDF1:{name}" for name in (
        "FilePath", "FileName", "FileTemplate", "AutoIncrement", "FileNumber", "FileWriteMode",
        "NumCapture", "LazyOpen", "SWMRMode", "Compression", "ZLevel", "BloscCompressor",
        "BloscLevel", "BloscShuffle", "NumDataBits", "DataBitsOffset", "SZipNumPixels",
        "SampleName")),
)
#: Busy records and other PVs only written.
ACTIONS = ("cam1:Acquire", "cam1:TriggerSoftware", "HDF1:Capture", "HDF1:FlushNow")
MONITORED = (
    *(f"{name}_RBV" for name in SETTINGS),
    *(f"cam1:{name}" for name in (
        "Acquire_RBV", "DetectorState_RBV", "StatusMessage_RBV", "NumImagesCounter_RBV",
        "UniqueId_RBV", "FrameRate_RBV", "Throughput_RBV", "DroppedFrames_RBV",
        "CorruptFrames_RBV", "Backend_RBV", "Backend_BufferUsed_RBV", "MaxSizeX_RBV",
        "MaxSizeY_RBV")),
    *(f"cam1:M1:{name}" for name in RECEIVER),
    *(f"HDF1:{name}" for name in ("Capture_RBV", "NumCaptured_RBV", "FullFileName_RBV",
                                  "WriteMessage")),
    *(f"Pipe:{name}" for name in ("FramesProcessed_RBV", "FramesWritten_RBV")),
    *(f"Pipe:{stage[:1].upper()}{stage[1:]}:{name}" for stage in NODE_STAGES for name in STAGE),
    *(f"Stats1:{name}" for name in STATS),
    *(f"ROI1:{name}" for name in ("ArraySize0_RBV", "ArraySize1_RBV")),
    *(f"image1:{name}" for name in ("ArrayData", "ArraySize0_RBV", "ArraySize1_RBV")),
)
#: Where a group's IOC says why it refused a put.
_REASON = {"cam1:": "cam1:StatusMessage_RBV", "HDF1:": "HDF1:WriteMessage"}


class ClientContext(Context):
    """caproto's asyncio client context, whose refused reads and puts complete: with the
    server's ErrorResponse as their response."""

    def get_circuit_manager(self, address: Any, priority: int) -> VirtualCircuitManager:
        manager = super().get_circuit_manager(address, priority)
        if not hasattr(manager, "_process_refusals"):
            process = manager._process_command

            async def process_refusals(command: Any) -> None:
                if isinstance(command, ErrorResponse):  # header parameter2: the request's ioid
                    pending = manager.ioids.pop(command.original_request.parameter2, {})
                    if (event := pending.get("event")) is not None:
                        pending["response"] = command
                        event.set()
                await process(command)

            manager._process_refusals = process_refusals  # type: ignore[attr-defined]
            manager._process_command = process_refusals  # type: ignore[method-assign]
        return manager


class ModuleError(PimegaError):
    """A module node refused or failed; the message names the module."""


class ModuleLost(ModuleError):
    """The module's IOC went away (its Channel Access circuit closed)."""


class ModuleLink:
    """The PVs of one module node's IOC (see the module docstring)."""

    def __init__(self, node: ModuleNode) -> None:
        self.node = node
        self.label = node.label
        self.values: dict[str, Any] = {}
        self.updates: Counter[str] = Counter()  # monitor updates of each PV
        self._pvs: dict[str, PV] = {}
        self._up: set[str] = set()
        self._unseen = set(MONITORED)  # monitors without a first value yet
        self._down = asyncio.Event()
        self._down.set()
        self._changed = asyncio.Condition()

    @property
    def connected(self) -> bool:
        """Every channel connected."""
        return bool(self._pvs) and len(self._up) == len(self._pvs)

    @property
    def ready(self) -> bool:
        """Connected, and every monitor has brought a value."""
        return self.connected and not self._unseen

    async def connect(self, context: Context) -> None:
        """Search the module's PVs and monitor them (connections come when the IOC answers)."""
        suffixes = (*SETTINGS, *ACTIONS, *MONITORED)
        pvs = await context.get_pvs(*(self.node.prefix + s for s in suffixes),
                                    connection_state_callback=self._connection)
        self._pvs = dict(zip(suffixes, pvs, strict=True))
        for suffix in MONITORED:
            # arrays: only the elements in use (count 0); scalars with their enum strings
            sub = (self._pvs[suffix].subscribe(data_count=0) if suffix == "image1:ArrayData"
                   else self._pvs[suffix].subscribe(data_type="control"))
            sub.add_callback(self._update)

    async def _connection(self, pv: PV, state: str) -> None:
        suffix = pv.name[len(self.node.prefix):]
        if state == "connected":
            self._up.add(suffix)
            if self.connected:
                self._down.clear()
        else:
            self._up.discard(suffix)
            self._down.set()
        async with self._changed:
            self._changed.notify_all()

    async def _update(self, sub: Any, response: Any) -> None:
        suffix = sub.pv.name[len(self.node.prefix):]
        self.values[suffix] = ca_value(response)
        self.updates[suffix] += 1
        self._unseen.discard(suffix)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, suffix: str, value: Any = None, timeout: float = PUT_TIMEOUT_S,
                       since: int = -1) -> None:
        """Until the monitor of ``suffix`` reads ``value`` (None: any value) in an update
        after the first ``since`` of them, the module is lost, or ``timeout`` passes.

        The module's IOC sends its monitors in the order it posts them, so once a busy
        record's readback reads Done, every value posted before it has arrived too.
        """
        def reached() -> bool:
            return ((value is None or self.values.get(suffix) == value)
                    and self.updates[suffix] > since)

        async def seen() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: reached() or self._down.is_set())
            if self._down.is_set():
                raise self._lost()

        try:
            await asyncio.wait_for(seen(), timeout)
        except TimeoutError:
            raise ModuleError(f"{self.label}: {suffix} did not read {value!r} within "
                              f"{timeout:g} s (it reads {self.values.get(suffix)!r})") from None

    async def read(self, suffix: str) -> Any:
        """The value of ``suffix`` now (a read, not the monitor)."""
        pv = self._pvs[suffix]
        return ca_value(await self._guard(pv, pv.read(data_type="control"),
                                        f"read {suffix}"))

    async def refresh(self, suffixes: Iterable[str]) -> None:
        """Read ``suffixes`` now into :attr:`values` (a monitor may lag a put-callback)."""
        suffixes = tuple(suffixes)
        values = await asyncio.gather(*(self.read(suffix) for suffix in suffixes))
        self.values.update(zip(suffixes, values, strict=True))

    async def put(self, suffix: str, value: Any, timeout: float | None = PUT_TIMEOUT_S) -> None:
        """Write ``value`` and wait for the put-callback; a refusal raises the module's reason."""
        pv = self._pvs[suffix]
        if self._down.is_set():
            raise self._lost()
        data, data_type = _encode(pv, value)
        # caproto types ``timeout`` as its default's sentinel; a number or None is what it takes
        write = pv.write(data, data_type=data_type, wait=True,
                         timeout=timeout)  # pyright: ignore[reportArgumentType]
        response = await self._guard(pv, write, f"put {suffix}={value!r}")
        if response.status.severity is not CASeverity.SUCCESS:
            reason = response.status.description
            for group, message in _REASON.items():
                if suffix.startswith(group):
                    reason = await self.read(message)
            raise ModuleError(f"{self.label}: {suffix}={value!r} refused: {reason}")

    async def apply(self, settings: Mapping[str, Any]) -> None:
        """Write each setting whose readback differs, then check every one of those back."""
        changed = {s: v for s, v in settings.items() if self.values.get(f"{s}_RBV") != v}
        await asyncio.gather(*(self.put(s, v) for s, v in changed.items()))
        readbacks = await asyncio.gather(*(self.read(f"{s}_RBV") for s in changed))
        for (suffix, value), got in zip(changed.items(), readbacks, strict=True):
            if got != value:
                raise ModuleError(f"{self.label}: {suffix} reads back {got!r}, not {value!r}")

    async def _guard(self, pv: PV, operation: Any, what: str) -> Any:
        """Await a read or put of ``pv`` unless the module is lost first: then, or when the
        operation failed on a circuit that died (caproto wakes it without a response),
        :class:`ModuleLost`."""
        task = asyncio.ensure_future(operation)
        lost = asyncio.ensure_future(self._down.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if task not in done:
            task.cancel()
            raise self._lost()
        try:
            return task.result()
        except TimeoutError as exc:
            raise ModuleError(f"{self.label}: no answer to {what}: {exc}") from None
        except Exception as exc:
            manager = pv.circuit_manager
            if manager is None or manager.dead.is_set():
                raise self._lost() from exc
            raise

    def _lost(self) -> ModuleLost:
        return ModuleLost(f"{self.label} lost: its IOC went away (Channel Access disconnected)")


def ca_value(response: Any) -> Any:
    """The value of a monitor's or read's response (``control`` type for enums): enum
    strings and text as str, one number as a Python scalar, several as an array."""
    if not response.data_count:  # an array monitored at its length in use, empty now
        return "" if native_type(response.data_type) == ChannelType.CHAR else np.zeros(0)
    data = response.data
    strings = getattr(response.metadata, "enum_strings", None)
    if strings:
        return strings[int(data[0])].decode()
    if isinstance(data, np.ndarray) and data.dtype == np.uint8:
        return bytes(data).split(b"\0", 1)[0].decode("latin-1")
    if len(data) == 1:
        value = data[0]
        return value.decode("latin-1") if isinstance(value, bytes) else value.item()
    return np.asarray(data)


def _encode(pv: PV, value: Any) -> tuple[Any, ChannelType | None]:
    """``value`` as a put needs it: text into a CHAR waveform, strings of an enum by name."""
    if not isinstance(value, str):
        return [value], None
    if pv.channel is not None and pv.channel.native_data_type == ChannelType.CHAR:
        return np.frombuffer(value.encode("latin-1") + b"\0", dtype=np.uint8), None
    return [value], ChannelType.STRING
