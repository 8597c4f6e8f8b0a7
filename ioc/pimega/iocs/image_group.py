"""``image1:`` (NDStdArrays): the latest preview image as a waveform, for many viewers.

ArrayData's element type (FTVL) is fixed for the IOC's life, as an NDStdArrays IOC's
``$(TYPE)``/``$(FTVL)`` macros are at load time: SHORT when the node's frames are ≤ 16 bit
when the IOC is built, LONG when they are 24 bit (UInt32). UInt16 arrays go out as SHORT
bit for bit, as ADCore's NDStdArrays sends them (a client casts the elements to
``DataType_RBV``: ``data.astype(np.uint16)``). An array the waveform cannot hold exactly
(UInt32 in SHORT, floating point, 64-bit) is not put in ArrayData: it is counted in
DroppedArrays_RBV, ArrayData goes to an INVALID alarm and the log says why; Pva1:Image
still carries it. See docs/decisions/0012-preview-waveform-type.md.

One update costs one conversion whatever the number of viewers: the image is converted once
(off the event loop) into a :class:`WireArray`, the big-endian bytes Channel Access sends;
caproto sends a ``bytes`` payload as it is, so every subscription shares those bytes. Each
subscription keeps at most one update waiting (``max_subscription_backlog`` 1): a viewer
slower than the preview gets the newest image, never a queue of old ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, SupportsIndex, cast

import numpy as np
from caproto import (
    AlarmSeverity,
    AlarmStatus,
    ChannelAlarm,
    ChannelType,
    native_type,
    native_types,
)
from caproto._dbr import DBR_TYPES
from caproto.server import PvpropertyIntegerRO, pvproperty

from pimega.core.errors import ConfigError

from .base import data_type_name
from .catalog import IMAGE_STACK
from .factory import make_group, on_put
from .pimega_specs import PIMEGA_IMAGE
from .plugins import PluginGroup
from .record_fields import LazyRecordFields

log = logging.getLogger(__name__)

#: Shortest preview interval (50 Hz): a waveform monitor must never go unpaced.
PREVIEW_FLOOR_S = 0.02
#: How often a long preview wait looks at MinCallbackTime again.
PREVIEW_RECHECK_S = 0.1

#: ArrayData's FTVL → the big-endian element type Channel Access sends, and its DBR type.
WAVEFORM_DTYPES = {"SHORT": np.dtype(">i2"), "LONG": np.dtype(">i4")}
_CA_TYPES = {"SHORT": ChannelType.INT, "LONG": ChannelType.LONG}


def waveform_type(dtype: np.dtype) -> str:
    """ArrayData's FTVL for frames of ``dtype``: SHORT for integers of ≤ 16 bit, else LONG."""
    dtype = np.dtype(dtype)
    return "SHORT" if dtype.kind in "iu" and dtype.itemsize <= 2 else "LONG"


def carries(ftvl: str, dtype: np.dtype) -> bool:
    """Whether a waveform of ``ftvl`` holds every array of ``dtype`` exactly: integers no
    wider than its elements (an unsigned type of the same width as its two's complement,
    which the client's cast to ``DataType_RBV`` turns back)."""
    dtype = np.dtype(dtype)
    return dtype.kind in "iu" and dtype.itemsize <= WAVEFORM_DTYPES[ftvl].itemsize


class WireArray(bytes):
    """The Channel Access payload of a numeric array: its elements big-endian, made once.

    caproto puts a ``bytes`` payload on the wire as it is (no per-subscriber conversion).
    ``len()`` counts elements, as caproto expects of a value; ``nbytes`` counts bytes, as
    caproto measures a payload; slicing slices elements.
    """

    dtype: np.dtype

    def __new__(cls, data: Any, dtype: np.dtype) -> WireArray:
        wire = super().__new__(cls, data)
        wire.dtype = np.dtype(dtype)
        if wire.dtype.byteorder != ">" and wire.dtype.itemsize > 1:
            raise ValueError(f"Channel Access sends big-endian elements, not {wire.dtype}")
        if bytes.__len__(wire) % wire.dtype.itemsize:
            raise ValueError(f"{bytes.__len__(wire)} bytes are no whole {wire.dtype} elements")
        return wire

    @classmethod
    def of(cls, values: np.ndarray, dtype: np.dtype) -> WireArray:
        """``values`` (any shape, row-major) cast to ``dtype`` as C casts (an unsigned type
        of the same width keeps its bits)."""
        wire = np.ascontiguousarray(values).reshape(-1).astype(dtype, casting="unsafe")
        return cls(wire.data, dtype)

    def array(self) -> np.ndarray:
        """The elements, read-only, sharing these bytes."""
        return np.frombuffer(self, self.dtype)

    @property
    def nbytes(self) -> int:
        return bytes.__len__(self)

    def __len__(self) -> int:
        return bytes.__len__(self) // self.dtype.itemsize

    def __getitem__(self, index: Any) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]
        if isinstance(index, slice):
            return WireArray(self.array()[index].tobytes(), self.dtype)
        return self.array()[cast(SupportsIndex, index)]

    def __reduce__(self) -> tuple[Any, ...]:
        return WireArray, (bytes(self), self.dtype.str)

    def __repr__(self) -> str:
        return f"WireArray({len(self)} x {self.dtype.str})"


class PreviewWaveform(LazyRecordFields, PvpropertyIntegerRO):
    """ArrayData: a read-only integer waveform whose element type (SHORT or LONG) is set once,
    before the server starts (:meth:`set_type`), and whose images, posted with
    :meth:`post_image`, are sent as their :class:`WireArray` to every reader."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ftvl = "LONG"
        # the newest image, not a queue of old ones, for a viewer slower than the preview
        self.max_subscription_backlog = 1
        self._wire: WireArray | None = None
        self._wire_values: np.ndarray | None = None  # the value those bytes hold

    def set_type(self, ftvl: str) -> None:
        """The element type: before any client connects (CA clients learn it then)."""
        self.ftvl = ftvl
        self.data_type = _CA_TYPES[ftvl]  # pyright: ignore[reportAttributeAccessIssue]

    async def post_image(self, wire: WireArray) -> None:
        """Post an image converted by :meth:`WireArray.of` to this waveform's type; clears
        an alarm left by :meth:`mark_stale`."""
        if wire.dtype != WAVEFORM_DTYPES[self.ftvl]:
            raise ConfigError(f"ArrayData is {self.ftvl}, not {wire.dtype}")
        values = wire.array()
        self._wire, self._wire_values = wire, values
        await self.write(values, verify_value=False, status=AlarmStatus.NO_ALARM,
                         severity=AlarmSeverity.NO_ALARM)

    async def mark_stale(self) -> None:
        """INVALID: the image held is no longer the newest (one the waveform cannot hold
        came after it)."""
        if self.severity != AlarmSeverity.INVALID_ALARM:
            await self.write(self.value, verify_value=False, status=AlarmStatus.READ,
                             severity=AlarmSeverity.INVALID_ALARM)

    def calculate_length(self, value: Any) -> int:
        if isinstance(value, WireArray):
            return len(value)
        return super().calculate_length(value)

    async def _read(self, data_type: Any) -> Any:
        """As caproto reads a channel, except that the native element type (of any DBR form:
        plain, TIME, CTRL...) comes from the image's wire bytes, without a conversion."""
        wire = self._wire
        if (wire is None or self._data["value"] is not self._wire_values
                or native_type(data_type) != self.data_type):
            return await super()._read(data_type)
        if data_type in native_types:
            return b"", wire
        metadata = DBR_TYPES[data_type]()
        self._read_metadata(metadata)
        alarm = await cast(ChannelAlarm, self.alarm).read()
        for field, *_ in alarm._fields_:
            if hasattr(metadata, field):
                setattr(metadata, field, getattr(alarm, field))
        return metadata, wire


def _as_waveform(image: np.ndarray, ftvl: str) -> WireArray:
    """An image as ArrayData of ``ftvl`` sends it: row-major, big-endian, made once."""
    return WireArray.of(image, WAVEFORM_DTYPES[ftvl])


ImageBase = make_group("ImageBase", *IMAGE_STACK, PIMEGA_IMAGE)


def _array_data_property() -> pvproperty:
    """The catalog's ArrayData, served by :class:`PreviewWaveform` with an alarm of its own."""
    prop: pvproperty = vars(ImageBase)["array_data"]
    spec = prop.pvspec._replace(dtype=PreviewWaveform, alarm_group="ArrayData")
    return pvproperty.from_pvspec(spec, record=spec.record, doc=prop.__doc__)


class ImageGroup(PluginGroup, ImageBase):
    """NDStdArrays: the latest image, binned to fit, at most once per MinCallbackTime."""

    port_name = "IMAGE1"
    array_data = _array_data_property()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._published_id = 0
        self._published = 0
        self._refused_dtype: np.dtype | None = None
        self.waveform_type = waveform_type(self.node.image_dtype)
        self.waveform.set_type(self.waveform_type)

    @property
    def waveform(self) -> PreviewWaveform:
        return cast(PreviewWaveform, self.pv("ArrayData"))

    @on_put("MinCallbackTime")
    async def _min_callback_time(self, name: str, value: float) -> float:
        if value < 0:
            raise ConfigError(f"MinCallbackTime must be ≥ 0 s, got {value}")
        # the pipeline makes previews twice as often as shown
        self.node.configure(preview_interval_s=max(float(value), PREVIEW_FLOOR_S) / 2)
        return value

    @on_put("PreviewBinning")
    async def _preview_binning(self, name: str, value: int) -> int:
        node = self.node
        node.set_preview_binning(int(value))  # refuses < 0 or larger than the image
        await self.post_array_geometry(node.preview_shape, node.image_dtype)
        return value

    async def run_preview(self) -> None:
        """Publish previews forever, one per MinCallbackTime at most, paced on deadlines; a
        changed MinCallbackTime takes effect within ``PREVIEW_RECHECK_S``."""
        due = time.monotonic()
        while True:
            await self.publish_preview()
            while (wait := due + self._preview_interval() - time.monotonic()) > 0:
                await asyncio.sleep(min(wait, PREVIEW_RECHECK_S))
            due += self._preview_interval()
            if time.monotonic() - due > self._preview_interval():  # fell behind: no burst
                due = time.monotonic()

    def _preview_interval(self) -> float:
        return max(self.pv("MinCallbackTime").value, PREVIEW_FLOOR_S)

    async def startup(self) -> None:
        """Post the preview's geometry before the first frame (ophyd's ImagePlugin reads it)
        and ArrayData's FTVL."""
        await super().startup()
        node = self.node
        await self.post_array_geometry(node.preview_shape, node.image_dtype)
        fields: Any = self.waveform.record_fields()
        await fields.field_type_of_value.write(self.waveform_type)

    async def publish_preview(self) -> None:
        """Publish the node's newest preview if it is new (``run_preview`` paces this)."""
        if self.pv("EnableCallbacks").value != "Enable":
            return
        preview = self.node.latest_preview()
        if preview is None or preview[0] == self._published_id:
            return
        unique_id, image = preview
        self._published_id = unique_id
        if carries(self.waveform_type, image.dtype):
            await self.post_array_geometry(image.shape, image.dtype)
            # the one conversion of this update, off the event loop (NumPy drops the GIL)
            wire = await asyncio.get_running_loop().run_in_executor(
                None, _as_waveform, image, self.waveform_type)
            await self.waveform.post_image(wire)
            self._refused_dtype = None
            self._published += 1
            await self.publish_arrays(self._published, unique_id - self._published, unique_id)
        else:
            await self._not_shown(image.dtype, unique_id)
        await self.root.pva_group.publish(image, unique_id)

    async def _not_shown(self, dtype: np.dtype, unique_id: int) -> None:
        """An array ArrayData cannot hold: counted as dropped, ArrayData INVALID, said once."""
        if self._refused_dtype != dtype:
            self._refused_dtype = dtype
            log.warning("image1:ArrayData is a %s waveform (its type is fixed when the IOC "
                        "starts, from the counter depth then): %s arrays are not shown there "
                        "(counted in image1:DroppedArrays_RBV); Pva1:Image shows them",
                        self.waveform_type, data_type_name(dtype))
        await self.waveform.mark_stale()
        self._dropped = unique_id - self._published
        await self.post("DroppedArrays_RBV", self._dropped - self._dropped_base)
