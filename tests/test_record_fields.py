"""Record fields built when first named (``iocs.record_fields``), in a group of its own."""

from __future__ import annotations

import asyncio

from caproto.server import pvproperty

from pimega.iocs.app import ioc_class
from pimega.iocs.record_fields import LazyFieldsGroup, LazyRecordFields


class Records(LazyFieldsGroup):
    exposure = pvproperty(value=0.5, name="Exposure", record="ao", doc="exposure time")
    shutter = pvproperty(value=False, name="Shutter", record="bo")
    counter = pvproperty(value=0, name="Counter_RBV", record="longin", read_only=True)
    processed = pvproperty(value=0, name="Processed", record="longout")
    plain = pvproperty(value=0, name="Plain")

    @processed.fields.process_record.putter
    async def processed(fields, instance, value):  # caproto passes the record's fields group
        await fields.parent.write(fields.parent.value + 1)


def test_no_field_exists_until_one_is_named_and_the_record_type_is_reported() -> None:
    group = Records(prefix="R:")
    exposure = group.pvdb["R:Exposure"]
    assert exposure.field_inst is None and exposure.fields == {}
    assert exposure.reported_record_type == "ao"
    assert exposure.get_field("NAME").value == "R:Exposure"
    assert exposure.get_field("RTYP").value == "ao"
    assert exposure.fields["EGU"] is exposure.get_field("EGU")  # built once
    assert group.pvdb["R:Counter_RBV"].field_inst is None  # the others still have none
    plain = group.pvdb["R:Plain"]
    assert plain.record_fields() is None and plain.get_field("VAL") is plain


def test_a_group_built_late_shows_the_value_and_alarm_of_before() -> None:
    group = Records(prefix="R:")
    shutter = group.pvdb["R:Shutter"]
    counter = group.pvdb["R:Counter_RBV"]

    async def scenario() -> tuple[object, object, object]:
        await shutter.write(True)
        await counter.alarm.write(status=3, severity=2)  # HIHI, MAJOR
        raw, severity = shutter.get_field("RVAL"), counter.get_field("SEVR")
        for _ in range(3):  # the posting task runs before a client's next request would
            await asyncio.sleep(0)
        return raw.value, severity.value, counter.get_field("STAT").value

    assert asyncio.run(scenario()) == (1, "MAJOR", "HIHI")


def test_a_pvproperty_that_customises_its_fields_keeps_them() -> None:
    group = Records(prefix="R:")
    processed = group.pvdb["R:Processed"]
    assert processed.field_inst is not None  # built with the PV, as caproto does

    async def scenario() -> int:
        await processed.get_field("PROC").write(1)
        return processed.value

    assert asyncio.run(scenario()) == 1


def test_every_pv_of_the_ioc_builds_its_fields_on_demand() -> None:
    """A group or data class added without the mixin would bring back the eager fields."""

    def groups(cls: type) -> list[type]:
        return [cls, *(group for sub in cls._subgroups_.values() if sub.group_cls is not None
                       for group in groups(sub.group_cls))]

    eager = [f"{group.__name__}.{attr}" for group in groups(ioc_class(2))
             for attr, prop in group._pvs_.items()
             if "." not in attr and prop.pvspec.record and not prop.pvspec.fields
             and not issubclass(prop.pvspec.get_data_class(group), LazyRecordFields)]
    assert eager == []
