"""What the IOC serves, PV by PV, read from its PVGroup classes (no IOC is started)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from caproto import ChannelChar, ChannelType
from caproto.server import PVGroup

from pimega.core.geometry import ArrayLayout
from pimega.iocs.app import ioc_class


@dataclass(frozen=True)
class ServedPV:
    """One PV as a client sees it."""

    name: str
    record: str
    enum_strings: tuple[str, ...]
    writable: bool
    text: bool  # a CHAR waveform holding a string (FilePath, StatusMessage_RBV, ...)
    echoed: bool  # a setpoint whose value the IOC echoes in NAME_RBV
    doc: str

    @property
    def access(self) -> str:
        return "read-write" if self.writable else "read-only"


class ServedPVs(dict[str, ServedPV]):
    """The PVs of one IOC class by name, in the order the IOC declares them."""

    @classmethod
    def of(cls, n_modules: int, prefix: str = "") -> ServedPVs:
        """The PVs of the IOC with ``n_modules`` modules, names starting with ``prefix``."""
        root = ioc_class(n_modules, ArrayLayout.square(n_modules).width)
        return cls((pv.name, pv) for pv in served_pvs(root, prefix))

    def readback(self, name: str) -> ServedPV | None:
        """The ``NAME_RBV`` echo of setpoint ``name``, if it has one (not a PV that only
        shares the name, such as Stats' ``MinValue_RBV`` beside the ``MinValue`` reset)."""
        return self.get(f"{name}_RBV") if self[name].echoed else None


def served_pvs(group_class: type[PVGroup], prefix: str) -> Iterator[ServedPV]:
    """Every PV of ``group_class`` and its subgroups, as ``all_pv_names`` lists them, with
    the access, text and readback flags the screens and the PV list need."""
    catalog = getattr(group_class, "specs", {})  # a CatalogGroup's PVSpecs, by PV suffix
    for attr, prop in group_class._pvs_.items():
        if "." in attr:  # a subgroup's property: listed with its subgroup below
            continue
        spec: Any = prop.pvspec
        record = getattr(spec.record, "_record_type", spec.record) or ""
        suffix = spec.name or attr
        yield ServedPV(
            name=prefix + suffix,
            record=record,
            enum_strings=tuple(spec.cls_kwargs.get("enum_strings") or ()),
            writable=not spec.read_only,
            text=record == "waveform" and _is_char(spec.dtype),
            echoed=suffix in catalog and catalog[suffix].readback,
            doc=spec.doc or "",
        )
    for sub_prefix, sub_class in subgroups(group_class).values():
        yield from served_pvs(sub_class, prefix + sub_prefix)


def subgroups(group_class: type[PVGroup]) -> dict[str, tuple[str, type[PVGroup]]]:
    """Attribute → (PV prefix, class) of each direct subgroup (``"cam": ("cam1:", ...)``)."""
    return {attr: (subgroup.prefix or "", subgroup.group_cls)
            for attr, subgroup in group_class._subgroups_.items()
            if "." not in attr and subgroup.group_cls is not None}


def _is_char(dtype: Any) -> bool:
    """A CHAR waveform: by channel type, or by a PvpropertyChar subclass given as dtype."""
    return dtype == ChannelType.CHAR or (isinstance(dtype, type) and issubclass(dtype, ChannelChar))
