"""Helpers the PVGroups share to publish engine state without flooding monitors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from caproto import ChannelType
from caproto.server import pvproperty


async def update(pairs: Iterable[tuple[Any, Any]]) -> None:
    """Write each (PV instance, value) whose value changed: unchanged values post no monitor."""
    for prop, value in pairs:
        if prop.value != value:
            await prop.write(value)


def readback(value: Any, *, record: str, doc: str, **kwargs: Any) -> pvproperty:
    """A read-only input-record PV (``ai``, ``longin``, ``stringin``, ``mbbi``, ``bi``)."""
    if isinstance(value, str) and "dtype" not in kwargs:
        kwargs["dtype"] = ChannelType.STRING
    return pvproperty(value=value, record=record, read_only=True, doc=doc, **kwargs)
