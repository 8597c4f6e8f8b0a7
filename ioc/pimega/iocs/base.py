"""What every π-MEGA PVGroup shares: the node it drives and the array geometry it shows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pimega.core.errors import ConfigError

from .catalog import DATA_TYPES
from .factory import CatalogGroup, on_put

if TYPE_CHECKING:
    from pimega.runtime import NodeControl

    from .events import Completions


_ASCII = str.maketrans({"≥": ">=", "≤": "<=", "²": "^2", "×": "x", "µ": "u", "π": "pi",
                        "…": "...", "—": "-", "–": "-", "→": "->"})


def ascii_text(text: str, limit: int = 255) -> str:
    """A message fit for a CA string/CHAR PV: ASCII (clients decode Latin-1), within NELM."""
    return text.translate(_ASCII).encode("ascii", "replace").decode()[:limit]


#: Seconds from the Unix epoch (1970) to the EPICS epoch (1990), ADCore's time origin.
EPICS_EPOCH_S = 631152000


def frame_time_values(timestamp_ns: int | None) -> dict[str, Any]:
    """NDArrayBase's TimeStamp_RBV (s), EpicsTSSec_RBV and EpicsTSNsec_RBV (EPICS epoch) of
    a frame's time in ns since the Unix epoch; nothing when it is unknown."""
    if not timestamp_ns:
        return {}
    seconds, nanoseconds = divmod(int(timestamp_ns), 1_000_000_000)
    epics_seconds = seconds - EPICS_EPOCH_S
    return {"TimeStamp_RBV": epics_seconds + nanoseconds / 1e9,
            "EpicsTSSec_RBV": epics_seconds, "EpicsTSNsec_RBV": nanoseconds}


def data_type_name(dtype: np.dtype) -> str:
    """ADCore's DataType string of a numpy dtype (UInt16, Float32, ...)."""
    return next(name for name in DATA_TYPES if name.lower() == np.dtype(dtype).name)


class NodeGroup(CatalogGroup):
    """A catalog group that finds the node (and its completions) on the IOC's root group."""

    @property
    def root(self) -> Any:
        """The IOC's root group (it holds the node and publishes everything)."""
        group: Any = self
        while getattr(group, "parent", None) is not None:
            group = group.parent
        return group

    @property
    def node(self) -> NodeControl:
        return self.root.node

    @on_put("NDimensions", "Dimensions")
    async def _array_shape(self, name: str, value: Any) -> Any:
        """The arrays' shape follows the module geometry; a put would make the readback lie."""
        raise ConfigError(f"{name} is set by the arrays this port outputs")

    @property
    def completions(self) -> Completions:
        return self.root.completions

    async def post(self, name: str, value: Any) -> None:
        """As CatalogGroup.post, with text made safe for Channel Access."""
        await super().post(name, ascii_text(value) if isinstance(value, str) else value)

    async def post_many(self, values: dict[str, Any]) -> None:
        """Post each value that differs from what the PV holds (no needless monitors)."""
        for name, value in values.items():
            pv = self.pv(name)
            current = pv.value
            strings = getattr(pv, "enum_strings", None)
            if strings is not None and isinstance(value, int):
                current = strings.index(current)
            elif isinstance(value, str):
                value = ascii_text(value)
            if current != value:
                await self.post(name, value)

    async def post_array_geometry(self, shape: tuple[int, int], dtype: np.dtype) -> None:
        """NDArrayBase geometry of the arrays this port outputs (primes file plugins)."""
        height, width = shape
        values: dict[str, Any] = {
            "ArraySizeX_RBV": width, "ArraySizeY_RBV": height, "ArraySizeZ_RBV": 0,
            "ArraySize0_RBV": width, "ArraySize1_RBV": height, "ArraySize2_RBV": 0,
            "ArraySize_RBV": width * height * np.dtype(dtype).itemsize,
            "NDimensions": 2, "DataType": data_type_name(dtype), "ColorMode": "Mono",
            "ArraySize0": width, "ArraySize1": height,  # file plugins serve these too
        }  # NDimensions, DataType and ColorMode: setpoint and readback say the same
        await self.post_many({k: v for k, v in values.items() if self.prefix + k in self.pvdb})
