"""Record fields (``.DESC``, ``.HOPR``, ``.PROC``, …) built when a client first names one.

caproto builds every field of a PV's record type with the PV, 43 to 114 ChannelData each:
this IOC's 1391 PVs made 92 191 objects, 2.4 s and 180 MB of its start, for the handful of
fields screens and clients name. A PV of `LazyRecordFields` reports its record type as
always (``DBR_CLASS_NAME``, ``.RTYP``) and builds its field group the first time a field is
looked up (a client's channel, the access check, :meth:`~LazyRecordFields.record_fields`),
then brought up to date with the PV's alarm and raw value (what caproto's write hooks would
have posted). Until then a write updates no field (there is none) and the PV's alarm limits
use caproto's default severities (this IOC sets no alarm limits). A PV whose pvproperty
customises fields (``prop.fields…``) keeps caproto's eager group.
"""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any, ClassVar, cast

from caproto import ChannelData
from caproto.server import PVGroup
from caproto.server.records import RecordFieldGroup
from caproto.server.server import PvpropertyData, get_record_class

#: The tasks posting new field groups' first values (the loop keeps weak references only).
_POSTING: set[asyncio.Task[None]] = set()


class LazyRecordFields(PvpropertyData):
    """Mixin, before caproto's data class: the record's field group, built on demand."""

    def __init__(self, *args: Any, record: str | None = None, **kwargs: Any) -> None:
        pvspec = kwargs.get("pvspec")
        if pvspec is not None and pvspec.fields:
            super().__init__(*args, record=record, **kwargs)  # caproto's own, customised
            return
        super().__init__(*args, record=None, **kwargs)
        self.record_type = record
        self.reported_record_type = record or "caproto"

    def get_field(self, field: str) -> Any:
        if field and field != "VAL":
            self.record_fields()
        return super().get_field(field)

    def record_fields(self) -> RecordFieldGroup | None:
        """The record's field group, built now if it was not (None: the PV has no record)."""
        if self.field_inst is None and self.record_type is not None:
            group = get_record_class(self.record_type)(
                prefix="", parent=self, name=f"{self.name}.fields")
            self.field_inst = group  # caproto's attributes, as its __init__ sets them
            self.fields = cast(dict[str, ChannelData], group.pvdb)
            self._post_first_values(group)
        return self.field_inst

    def _post_first_values(self, group: RecordFieldGroup) -> None:
        """Post what the group would show had it been built with the PV: the alarm fields
        and the raw value (RVAL of bi/bo/mbbi/mbbo); in the server's loop, before the
        client that named the field can read it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not served (yet): the group's defaults stand until a write
            return

        async def post() -> None:
            await group.publish(0)
            await group.value_write_hook(self, self.value)

        task = loop.create_task(post())
        _POSTING.add(task)
        task.add_done_callback(_POSTING.discard)


@cache
def lazy_class(data_class: type[PvpropertyData]) -> type[PvpropertyData]:
    """``data_class`` with its record fields built on demand."""
    if issubclass(data_class, LazyRecordFields):
        return data_class
    return type(data_class.__name__, (LazyRecordFields, data_class), {})


class LazyFieldsGroup(PVGroup):
    """A PVGroup whose pvproperties of caproto's own data classes build their record fields
    on demand (the IOC's own data classes derive from `LazyRecordFields`)."""

    type_map: ClassVar[dict[Any, type]] = {
        dtype: lazy_class(cls) for dtype, cls in PVGroup.type_map.items()}
    type_map_read_only: ClassVar[dict[Any, type]] = {
        dtype: lazy_class(cls) for dtype, cls in PVGroup.type_map_read_only.items()}
