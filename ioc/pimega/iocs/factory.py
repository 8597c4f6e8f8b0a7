"""Build caproto PVGroups from catalog specs.

`make_group` turns stacks of `PVSpec` into a `CatalogGroup` subclass: one pvproperty per
record (attribute = `attr_name` of the PV name, ``name=`` the real suffix), served as the
record type the spec names (``.RTYP``, ``.DISA`` and the other fields come from caproto's
record support; ``busy`` is registered here as a ``bo`` look-alike).

A client put on a generated setpoint runs, in order: the enum check (an index or string
outside the record's strings is refused), the number check (NaN and infinities refused),
the group's put hook for that PV if it has one — a method marked with :func:`on_put`,
``async (self, name, value) -> value`` (return the value to keep, raise to refuse: then
nothing changes) — the echo to ``NAME_RBV`` (the same index for enums, whose readback
strings may differ) and the commit. Server-side updates
(state, counters, geometry) go through ``await group.post(name, value)``, which writes a PV
and its readback without running a put hook. A PV with its own semantics (the busy records
Acquire, Capture, FlushNow) takes caproto's usual route, a putter of its own, set on a
copy of the generated property made by `override` (caproto's ``copy.copy`` of a record
property recurses forever in caproto 1.3)::

    CamBase = make_group("CamBase", *CAM_STACK)

    class CamGroup(CamBase):
        @on_put("AcquireTime", "AcquirePeriod")
        async def _check_time(self, name, value):
            if value <= 0:
                raise ValueError(f"{name} must be > 0")
            return value

        async def _put_acquire(self, instance, value):
            await self.post("Acquire", value)   # Acquire and Acquire_RBV now read 1
            ...                                 # the put-callback completes on return
            await self.post("Acquire", 0)
            return SkipWrite                    # already posted

        acquire = override(CamBase, "acquire", put=_put_acquire)
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping
from numbers import Integral
from typing import Any, ClassVar, cast

import caproto as ca
import numpy as np
from caproto import ChannelData, ChannelEnum, ChannelType
from caproto.server import (
    PVGroup,
    PvpropertyChar,
    PvpropertyData,
    PvpropertyEnum,
    PvpropertyInteger,
    pvproperty,
)
from caproto.server.records import BoFields, get_record_registry, register_record
from caproto.server.typing import Putter

from pimega.iocs.catalog import PVSpec

from .record_fields import LazyFieldsGroup, LazyRecordFields

_DTYPES = {
    "ENUM": ChannelType.ENUM,
    "DOUBLE": ChannelType.DOUBLE,
    "FLOAT": ChannelType.FLOAT,
    "LONG": ChannelType.LONG,
    "SHORT": ChannelType.INT,
    "STRING": ChannelType.STRING,
    "CHAR": ChannelType.CHAR,
}
_NUMERIC = frozenset({"DOUBLE", "FLOAT", "LONG", "SHORT"})


class BusyFields(BoFields):
    """Fields of the synApps ``busy`` record: a ``bo`` whose put completes when work ends."""

    _record_type = "busy"


if "busy" not in get_record_registry():
    register_record(BusyFields)


class TextData(LazyRecordFields, PvpropertyChar):
    """A writable CHAR waveform holding a string. A client's empty string (all zero bytes,
    as ophyd-async writes ``XMLFileName=""``) is taken as "": caproto 1.3 refuses it."""

    async def write_from_dbr(self, data: Any, data_type: Any, metadata: Any, *,
                             flags: int = 0) -> Any:
        if data_type == ChannelType.CHAR and not np.asarray(data).any():
            return await self.write("")
        return await super().write_from_dbr(data, data_type, metadata, flags=flags)


PutHook = Callable[[Any, str, Any], Awaitable[Any]]


def on_put(*names: str) -> Callable[[PutHook], PutHook]:
    """Mark a group method as the put hook of the setpoints ``names`` (enums arrive as their
    string): ``async def hook(self, name, value)`` returns the value to keep or raises."""

    def mark(hook: PutHook) -> PutHook:
        hook._put_names = names  # type: ignore[attr-defined]
        return hook

    return mark


class _RawValueCheck:
    """Refuse, before caproto converts it, a client's number that the PV cannot hold: NaN or
    infinity (to a LONG it would become -2147483648, to an enum state 0), a value out of the
    LONG range, a fraction or a state the enum has not; the group's ``refused`` says why."""

    async def write_from_dbr(self, data: Any, data_type: Any, metadata: Any, *,
                             flags: int = 0) -> Any:
        native = ca.native_type(data_type)
        if native in (ChannelType.DOUBLE, ChannelType.FLOAT, ChannelType.LONG,
                      ChannelType.INT, ChannelType.ENUM) and len(data):
            values = np.asarray(data, dtype=np.float64)
            states = len(getattr(self, "enum_strings", None) or ()) or None
            reason = ("is not a finite number" if not np.isfinite(values).all() else
                      "is not a whole number" if (values != np.round(values)).any() else
                      "is outside the LONG range"
                      if ((values > _INT32_MAX) | (values < _INT32_MIN)).any() else
                      f"is not a state (0 … {states - 1})"
                      if states and ((values < 0) | (values >= states)).any() else "")
            if reason:
                await self._refuse(f"{values.tolist()} {reason}")
        return await super().write_from_dbr(  # pyright: ignore[reportAttributeAccessIssue]
            data, data_type, metadata, flags=flags)

    async def _refuse(self, reason: str) -> None:
        """Tell the group (its message PV), then refuse the put."""
        group = getattr(self, "group", None)
        if isinstance(group, CatalogGroup):
            name = self.pvname.removeprefix(group.prefix)  # pyright: ignore[reportAttributeAccessIssue]
            await group.refused(name, f"{name}: {reason}")
        raise ValueError(reason)


class CheckedInteger(_RawValueCheck, LazyRecordFields, PvpropertyInteger):
    """A LONG/SHORT setpoint that refuses values it cannot hold (see :class:`_RawValueCheck`)."""


class CheckedEnum(_RawValueCheck, LazyRecordFields, PvpropertyEnum):  # pyright: ignore[reportIncompatibleMethodOverride] - write_metadata resolves to ChannelEnum's
    """An enum setpoint that refuses non-finite or fractional states."""


_INT32_MAX = 2**31 - 1
_INT32_MIN = -(2**31)


class CatalogGroup(LazyFieldsGroup):
    """Base of the generated groups: catalog lookup, put hooks and server-side posting."""

    specs: ClassVar[Mapping[str, PVSpec]] = types.MappingProxyType({})
    #: PV name → name of the method marked with :func:`on_put` for it (collected per class).
    put_hooks: ClassVar[Mapping[str, str]] = types.MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hooks: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attr, member in vars(klass).items():
                for name in getattr(member, "_put_names", ()):
                    hooks[name] = attr
        cls.put_hooks = types.MappingProxyType(hooks)

    def pv(self, name: str) -> PvpropertyData:
        """The served PV with suffix ``name`` (e.g. ``"FilePath_RBV"``)."""
        return self.pvdb[self.prefix + name]

    async def refused(self, name: str, reason: str) -> None:
        """Called when a put on ``name`` is refused: show ``reason`` where users look for it."""

    async def post(self, name: str, value: Any) -> None:
        """Publish a value the server decided on PV ``name`` and, for a setpoint, its
        readback (enums take an index or a string); no put hook runs."""
        setpoint = self.pv(name)
        await _force(setpoint, value)
        spec = self.specs.get(name)
        if spec is not None and spec.readback:
            await _force(self.pv(spec.readback_name), _echo_value(setpoint, value))


def attr_name(pv_name: str) -> str:
    """The Python attribute of PV suffix ``pv_name``: snake_case, clear of PVGroup's names."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", pv_name)
    attr = re.sub(r"\W+", "_", words).lower()
    return f"{attr}_" if attr in _RESERVED else attr


def pvproperties(specs: Iterable[PVSpec]) -> dict[str, pvproperty]:
    """One pvproperty per spec, plus the ``_RBV`` readback of each setpoint, by attribute."""
    props: dict[str, pvproperty] = {}
    for spec in specs:
        served = [spec, spec.readback_spec()] if spec.readback else [spec]
        for one in served:
            attr = attr_name(one.name)
            if attr in props:
                raise ValueError(f"{one.name}: attribute {attr!r} is taken by another PV")
            props[attr] = _pvproperty(one)
    return props


def make_group(class_name: str, *spec_groups: Iterable[PVSpec]) -> type[CatalogGroup]:
    """A `CatalogGroup` subclass serving the specs; a later spec replaces an earlier one
    of the same name, as a later ADCore template redefines a record."""
    specs = {spec.name: spec for group in spec_groups for spec in group}
    readbacks = {spec.readback_name for spec in specs.values() if spec.readback}
    if clash := sorted(readbacks & specs.keys()):
        raise ValueError(f"{class_name}: served both as readback and as a spec: {clash}")
    namespace: dict[str, Any] = {
        **pvproperties(specs.values()),
        "specs": types.MappingProxyType(specs),
        "__doc__": f"PVs of {class_name}, generated from the ADCore catalog.",
    }
    return types.new_class(class_name, (CatalogGroup,), exec_body=lambda ns: ns.update(namespace))


def override(group: type[PVGroup], attr: str, *, put: Callable[..., Awaitable[Any]]) -> pvproperty:
    """A copy of ``group``'s generated property ``attr`` with its own putter, leaving the
    base class's property as it is."""
    prop: pvproperty = vars(group)[attr]
    spec = prop.pvspec._replace(put=put)
    return pvproperty.from_pvspec(spec, record=spec.record, doc=prop.__doc__)


def all_pv_names(group_class: type[PVGroup], prefix: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(PV name, record type, enum strings) of every PV a group class serves, subgroups
    included, in declaration order (for ``--list-pvs`` and the generated db/)."""
    rows = []
    for attr, prop in group_class._pvs_.items():
        if "." in attr:  # a subgroup's property, listed below with the subgroup's prefix
            continue
        spec = prop.pvspec
        record = getattr(spec.record, "_record_type", spec.record) or ""
        strings = tuple(spec.cls_kwargs.get("enum_strings") or ())
        rows.append((prefix + (spec.name or attr), record, strings))
    for attr, subgroup in group_class._subgroups_.items():
        if "." not in attr and subgroup.group_cls is not None:
            rows += all_pv_names(subgroup.group_cls, prefix + (subgroup.prefix or ""))
    return rows


def _pvproperty(spec: PVSpec) -> pvproperty:
    kwargs: dict[str, Any] = {"dtype": _DTYPES[spec.ca_type], "value": spec.value}
    if spec.ca_type == "ENUM":
        kwargs["enum_strings"] = spec.enum_strings
    if spec.is_text:
        kwargs["max_length"] = spec.max_length
        if spec.writable:
            kwargs["dtype"] = TextData
    elif spec.writable and (spec.max_length or 1) == 1 and spec.ca_type in _CHECKED:
        kwargs["dtype"] = _CHECKED[spec.ca_type]
    elif (spec.max_length or 1) > 1:  # a waveform; a one-element subArray stays a scalar
        kwargs.update(max_length=spec.max_length, value=list(spec.value))
    if spec.ca_type in _NUMERIC:
        kwargs["units"] = spec.units
    if spec.ca_type in {"DOUBLE", "FLOAT"}:
        kwargs["precision"] = spec.precision
    return pvproperty(
        put=_putter(spec) if spec.writable else None,
        name=spec.name,
        record=spec.record,
        read_only=not spec.writable,
        doc=spec.doc or None,
        **kwargs,
    )


def _putter(spec: PVSpec) -> Putter:
    """The caproto putter of a setpoint: enum and number checks, put hook, readback echo."""

    async def put(self: PVGroup, instance: ChannelData, value: Any) -> Any:
        group = cast(CatalogGroup, self)
        hook = group.put_hooks.get(spec.name)
        try:
            if isinstance(instance, ChannelEnum):
                try:
                    _enum_index(instance, value)
                except ValueError as exc:
                    raise ValueError(f"{spec.name}: {exc}") from None
            elif isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{spec.name} needs a finite number, got {value}")
            if hook is not None:
                value = await getattr(group, hook)(spec.name, value)
        except ValueError as exc:  # ConfigError is one: the reason goes to a message PV
            await group.refused(spec.name, str(exc))
            raise
        if isinstance(instance, ChannelEnum):
            value = instance.enum_strings[_enum_index(instance, value)]
        if spec.readback:
            await _force(group.pv(spec.readback_name), _echo_value(instance, value))
        return value

    return put


def _enum_index(instance: ChannelEnum, value: Any) -> int:
    """Index of ``value`` (a string or an index) among the PV's enum strings, or refuse it."""
    strings = instance.enum_strings
    if isinstance(value, str) and value in strings:
        return strings.index(value)
    if isinstance(value, Integral) and 0 <= int(value) < len(strings):
        return int(value)
    raise ValueError(f"{value!r} is not one of {list(strings)}")


def _echo_value(setpoint: ChannelData, value: Any) -> Any:
    """What the readback of ``setpoint`` shows for ``value``: the same index for enums."""
    return _enum_index(setpoint, value) if isinstance(setpoint, ChannelEnum) else value


async def _force(instance: ChannelData, value: Any) -> None:
    """Write a server-side value, bypassing the putter (enum indices become strings)."""
    if isinstance(instance, ChannelEnum):
        value = instance.enum_strings[_enum_index(instance, value)]
    await instance.write(value, verify_value=False)


_CHECKED = {"LONG": CheckedInteger, "SHORT": CheckedInteger, "ENUM": CheckedEnum}

_RESERVED = frozenset(dir(CatalogGroup)) | frozenset(vars(CatalogGroup(prefix="")))
