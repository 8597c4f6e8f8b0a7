"""The ADCore catalog and the groups made from it, checked against the installed clients.

Completeness and enum strings are checked statically against ophyd (v1) and ophyd-async
(0.21); a caproto server in a subprocess then serves all five groups and the caproto
clients check record types, enum strings, long strings, readback echo, refusals, and the
type checks ophyd-async runs when it connects.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest
from caproto import ChannelType, ErrorResponseReceived, SkipWrite
from caproto.server import PVGroup, SubGroup
from caproto.server.records import get_record_registry

from pimega.cli.loopback import loopback_environment
from pimega.iocs import catalog
from pimega.iocs.catalog import PVSpec
from pimega.iocs.factory import (
    CatalogGroup,
    all_pv_names,
    attr_name,
    make_group,
    on_put,
    override,
)

PREFIX = "PCAT:"
STACKS = {
    "cam1:": catalog.CAM_STACK,
    "image1:": catalog.IMAGE_STACK,
    "HDF1:": catalog.HDF5_STACK,
    "Stats1:": catalog.STATS_STACK,
    "ROI1:": catalog.ROI_STACK,
}


def served_specs(stack: tuple[tuple[PVSpec, ...], ...]) -> dict[str, PVSpec]:
    """Every PV a stack serves (readbacks included), by suffix."""
    served = {}
    for spec in make_group("Probe", *stack).specs.values():
        served[spec.name] = spec
        if spec.readback:
            served[spec.readback_name] = spec.readback_spec()
    return served


def record_fields(record: str) -> set[str]:
    return {prop.pvspec.name for prop in get_record_registry()[record]._pvs_.values()}


def unserved(names: set[str], stack: tuple[tuple[PVSpec, ...], ...]) -> list[str]:
    """The names (``X`` or ``X.FIELD``) that a group of ``stack`` would not serve."""
    served = served_specs(stack)
    missing = []
    for name in sorted(names):
        base, _, field = name.partition(".")
        spec = served.get(base)
        if spec is None or (field and field not in record_fields(spec.record)):
            missing.append(name)
    return missing


# --- ophyd v1: PV suffixes of a device class, without connecting -------------------------


def ophyd_suffixes(device_cls: type, prefix: str = "") -> set[str]:
    """Read and write PV suffixes of every EPICS signal component, recursively."""
    from ophyd import Device, EpicsSignal, EpicsSignalRO, EpicsSignalWithRBV
    from ophyd.areadetector.paths import EpicsPathSignal
    from ophyd.device import DynamicDeviceComponent
    from ophyd.signal import EpicsSignalBase

    names: set[str] = set()
    for cpt in device_cls._sig_attrs.values():
        if isinstance(cpt, DynamicDeviceComponent):
            members = list(cpt.defn.values())
        else:
            members = [(cpt.cls, cpt.suffix, cpt.kwargs)]
        for cls, suffix, kwargs in members:
            if issubclass(cls, Device):
                names |= ophyd_suffixes(cls, prefix + (suffix or ""))
            elif not issubclass(cls, EpicsSignalBase):
                continue  # derived or attribute signals have no PV
            elif issubclass(cls, (EpicsSignalWithRBV, EpicsPathSignal)):
                names |= {prefix + suffix, f"{prefix}{suffix}_RBV"}
            elif cls in (EpicsSignal, EpicsSignalRO):
                names |= {prefix + suffix, *([kwargs["write_pv"]] if "write_pv" in kwargs else [])}
            else:
                raise AssertionError(f"{device_cls.__name__}: unknown signal class {cls}")
    return names


def ophyd_classes() -> dict[str, type]:
    from ophyd.areadetector.cam import AreaDetectorCam
    from ophyd.areadetector.filestore_mixins import FileStoreHDF5IterativeWrite
    from ophyd.areadetector.plugins import HDF5Plugin, ImagePlugin, ROIPlugin, StatsPlugin

    class HDF5Writer(FileStoreHDF5IterativeWrite, HDF5Plugin):
        """The file plugin as bluesky profiles declare it."""

    return {
        "cam1:": AreaDetectorCam,
        "HDF1:": HDF5Writer,
        "image1:": ImagePlugin,
        "Stats1:": StatsPlugin,
        "ROI1:": ROIPlugin,
    }


@pytest.mark.parametrize("suffix", list(STACKS))
def test_every_ophyd_pv_is_served(suffix: str) -> None:
    names = ophyd_suffixes(ophyd_classes()[suffix])
    assert len(names) > 40
    assert unserved(names, STACKS[suffix]) == []


# --- ophyd-async: the signals of each IO class, instantiated without connecting ----------


@dataclass(frozen=True)
class AsyncSignal:
    read_pv: str
    write_pv: str
    datatype: Any


def ophyd_async_signals(suffix: str) -> list[AsyncSignal]:
    from ophyd_async.epics import adcore

    io_class = {
        "cam1:": adcore.ADBaseIO,
        "image1:": adcore.NDPluginBaseIO,
        "HDF1:": adcore.NDFileHDF5IO,
        "Stats1:": adcore.NDStatsIO,
        "ROI1:": adcore.NDROIIO,
    }[suffix]
    signals = []
    for _, signal in io_class(PREFIX + suffix).children():
        backend = signal._connector.backend
        strip = len(PREFIX + suffix)
        signals.append(AsyncSignal(backend.read_pv[strip:], backend.write_pv[strip:],
                                   backend.datatype))
    return signals


@pytest.mark.parametrize("suffix", list(STACKS))
def test_every_ophyd_async_pv_is_served(suffix: str) -> None:
    signals = ophyd_async_signals(suffix)
    names = {pv for signal in signals for pv in (signal.read_pv, signal.write_pv)}
    assert len(signals) >= 18
    assert unserved(names, STACKS[suffix]) == []


@pytest.mark.parametrize("suffix", list(STACKS))
def test_enum_strings_satisfy_ophyd_async_enums(suffix: str) -> None:
    from ophyd_async.core import StrictEnum, SubsetEnum, SupersetEnum

    served = served_specs(STACKS[suffix])
    checked, wrong = 0, []
    for signal in ophyd_async_signals(suffix):
        enum_cls = signal.datatype
        if not (isinstance(enum_cls, type)
                and issubclass(enum_cls, StrictEnum | SubsetEnum | SupersetEnum)):
            continue
        wanted = {member.value for member in enum_cls}
        for pv in {signal.read_pv, signal.write_pv}:
            strings = set(served[pv].enum_strings or ())
            checked += 1
            if issubclass(enum_cls, SupersetEnum):
                ok = strings <= wanted
            elif issubclass(enum_cls, SubsetEnum):
                ok = wanted <= strings
            else:
                ok = wanted == strings
            if not ok:
                wrong.append(f"{pv}: {sorted(strings)} vs {enum_cls.__name__} {sorted(wanted)}")
    assert checked >= 3  # ColorMode_RBV, DataType_RBV and the group's own
    assert wrong == []


def test_enum_strings_are_adcores_in_order() -> None:
    served = served_specs(catalog.HDF5_STACK) | served_specs(catalog.CAM_STACK)
    assert served["DetectorState_RBV"].enum_strings == (
        "Idle", "Acquire", "Readout", "Correct", "Saving", "Aborting", "Error", "Waiting",
        "Initializing", "Disconnected", "Aborted",
    )
    assert served["Acquire_RBV"].enum_strings == ("Done", "Acquiring")
    assert served["Capture"].enum_strings == ("Done", "Capture")
    assert served["Capture_RBV"].enum_strings == ("Done", "Capturing")
    assert served["FlushNow"].record == "busy"
    assert served["Compression_RBV"].enum_strings[5] == "BSLZ4"
    assert served["DataType"].enum_strings[3] == "UInt16"
    assert served["WriteStatus"].enum_strings == ("Write OK", "Write error")


# --- The catalog's own rules and the factory, in process ----------------------------------


def test_specs_refuse_inconsistent_definitions() -> None:
    with pytest.raises(ValueError, match="not one of"):
        catalog.mbbo("ImageMode", catalog.IMAGE_MODES, "Burst")
    with pytest.raises(ValueError, match="no _RBV"):
        PVSpec("X", "ai", readback=True)
    with pytest.raises(ValueError, match="needs dtype"):
        PVSpec("X", "waveform", ())
    with pytest.raises(ValueError, match="readback strings"):
        catalog.bo("X", ("A", "B"), readback_strings=("A",))


def test_later_template_redefines_a_record() -> None:
    hdf5 = make_group("HDF5", *catalog.HDF5_STACK).specs
    assert hdf5["FileFormat"].enum_strings == ("HDF5", "Invalid")
    assert hdf5["PluginType_RBV"].value == "NDFileHDF5"
    for suffix, plugin in (("image1:", "image"), ("Stats1:", "stats"), ("ROI1:", "roi")):
        specs = make_group("Plugin", *STACKS[suffix]).specs
        assert specs["PluginType_RBV"].value == catalog.PLUGIN_TYPES[plugin]


def test_attribute_names_are_unique_identifiers() -> None:
    assert attr_name("AcquireTime_RBV") == "acquire_time_rbv"
    assert attr_name("NDArrayPort") == "nd_array_port"
    assert attr_name("Name") == "name_"  # PVGroup.name is taken
    for stack in STACKS.values():
        group = make_group("G", *stack)
        assert all(attr.isidentifier() for attr in group._pvs_)
        assert {prop.pvspec.name for prop in group._pvs_.values()} == set(served_specs(stack))


def test_all_pv_names_follows_subgroups() -> None:
    cam_group = make_group("Cam", catalog.ND_ARRAY_BASE)

    class Detector(PVGroup):
        cam = SubGroup(cam_group, prefix="cam1:")

    rows = {name: (record, strings) for name, record, strings in all_pv_names(Detector, "P:")}
    assert rows["P:cam1:Acquire"] == ("busy", ("Done", "Acquire"))
    assert rows["P:cam1:Acquire_RBV"] == ("bi", ("Done", "Acquiring"))
    assert rows["P:cam1:PortName_RBV"] == ("stringin", ())
    assert len(rows) == len(served_specs((catalog.ND_ARRAY_BASE,)))


def small_group(*names: str) -> CatalogGroup:
    """An instance serving only the named cam1: specs (record fields make instances slow)."""
    specs = [s for s in (*catalog.ND_ARRAY_BASE, *catalog.AD_BASE) if s.name in names]
    return make_group("Small", specs)(prefix="T:")


def value_of(group: CatalogGroup, name: str) -> Any:
    return group.pv(name).value


def test_put_runs_hook_then_echoes_readback() -> None:
    seen = []

    class Checked(make_group("Base", [s for s in catalog.AD_BASE if s.name == "AcquireTime"])):
        @on_put("AcquireTime")
        async def check(self, name: str, value: Any) -> Any:
            seen.append((name, value))
            if value <= 0:
                raise ValueError("AcquireTime must be > 0")
            return round(value, 3)

    group = Checked(prefix="T:")

    async def scenario() -> None:
        await group.pv("AcquireTime").write(0.25004)
        with pytest.raises(ValueError, match="> 0"):
            await group.pv("AcquireTime").write(-1.0)

        with pytest.raises(ValueError, match="finite"):
            await group.pv("AcquireTime").write(float("nan"))

    asyncio.run(scenario())
    assert seen == [("AcquireTime", 0.25004), ("AcquireTime", -1.0)]  # NaN never reached it
    assert value_of(group, "AcquireTime") == value_of(group, "AcquireTime_RBV") == 0.25


def test_enum_put_echoes_the_index_and_refuses_unknown_values() -> None:
    group = small_group("Acquire", "ImageMode")

    async def scenario() -> None:
        await group.pv("Acquire").write(1)
        await group.pv("ImageMode").write("Multiple")
        for bad in (3, "Burst"):
            with pytest.raises(ValueError, match="not one of"):
                await group.pv("ImageMode").write(bad)

    asyncio.run(scenario())
    assert value_of(group, "Acquire_RBV") == "Acquiring"
    assert value_of(group, "ImageMode") == value_of(group, "ImageMode_RBV") == "Multiple"


def test_post_sets_setpoint_and_readback_without_the_hook() -> None:
    class Refusing(make_group("Base", [s for s in catalog.ND_ARRAY_BASE if s.name == "Acquire"])):
        @on_put("Acquire")
        async def refuse(self, name: str, value: Any) -> Any:
            raise AssertionError("post must not run the put hook")

    group = Refusing(prefix="T:")
    asyncio.run(group.post("Acquire", 1))
    assert (value_of(group, "Acquire"), value_of(group, "Acquire_RBV")) == ("Acquire", "Acquiring")
    asyncio.run(group.post("Acquire_RBV", "Done"))
    assert value_of(group, "Acquire_RBV") == "Done"
    with pytest.raises(ValueError, match="not one of"):
        asyncio.run(group.post("Acquire", 2))


def test_subclass_overrides_a_generated_putter() -> None:
    base = make_group("Base", [s for s in catalog.ND_ARRAY_BASE if s.name == "Acquire"])
    calls = []

    class Busy(base):
        async def _put_acquire(self, instance, value):
            calls.append(value)
            await self.post("Acquire", value)
            await self.post("Acquire", 0)
            return SkipWrite

        acquire = override(base, "acquire", put=_put_acquire)

    busy_group, plain_group = Busy(prefix="B:"), base(prefix="P:")

    async def scenario() -> None:
        await busy_group.pv("Acquire").write(1)
        await plain_group.pv("Acquire").write(1)

    asyncio.run(scenario())
    assert calls == ["Acquire"]
    assert busy_group.pv("Acquire").get_field("RTYP").value == "busy"
    assert value_of(busy_group, "Acquire_RBV") == "Done"
    assert value_of(plain_group, "Acquire_RBV") == "Acquiring"  # the base keeps its putter


def test_replace_adapts_a_spec() -> None:
    pimega_modes = (*catalog.TRIGGER_MODES, "Alignment")
    specs = [replace(s, enum_strings=pimega_modes) if s.name == "TriggerMode" else s
             for s in catalog.AD_BASE]
    served = make_group("Pimega", specs).specs
    assert served["TriggerMode"].readback_spec().enum_strings == pimega_modes


# --- Served over Channel Access ----------------------------------------------------------

SERVER = """
import sys
from caproto.asyncio.server import run
from pimega.iocs import catalog
from pimega.iocs.factory import make_group

stacks = {"cam1:": catalog.CAM_STACK, "image1:": catalog.IMAGE_STACK,
          "HDF1:": catalog.HDF5_STACK, "Stats1:": catalog.STATS_STACK,
          "ROI1:": catalog.ROI_STACK}
pvdb = {}
for suffix, stack in stacks.items():
    pvdb.update(make_group("G", *stack)(prefix=sys.argv[1] + suffix).pvdb)

async def ready(async_lib):
    print("READY", flush=True)

run(pvdb, interfaces=["127.0.0.1"], startup_hook=ready)
"""


@pytest.fixture(scope="module")
def ca_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A caproto threading client Context talking to the catalog server on loopback."""
    from caproto.threading.client import Context

    env = loopback_environment()
    log_path = tmp_path_factory.mktemp("ca") / "server.log"
    with pytest.MonkeyPatch.context() as patch, open(log_path, "w") as log:
        for key, value in env.items():
            patch.setenv(key, value)
        server = subprocess.Popen([sys.executable, "-c", SERVER, PREFIX], env=os.environ.copy(),
                                  stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            line = server.stdout.readline() if server.stdout else ""
            assert line.strip() == "READY", f"server did not start:\n{log_path.read_text()}"
            context = Context()
            yield context
            context.disconnect()
        finally:
            server.terminate()
            server.wait()
            if server.stdout:
                server.stdout.close()


def connect(context: Any, *names: str) -> list[Any]:
    pvs = context.get_pvs(*(PREFIX + name for name in names), timeout=10)
    for pv in pvs:
        pv.wait_for_connection(timeout=60)
    return pvs


def read_str(context: Any, name: str) -> str:
    (pv,) = connect(context, name)
    data = pv.read(data_type=ChannelType.STRING).data
    return data[0].decode()


def test_record_types_and_fields_are_served(ca_context: Any) -> None:
    expected = {
        "cam1:Acquire.RTYP": "busy",
        "cam1:Acquire_RBV.RTYP": "bi",
        "cam1:AcquireTime.RTYP": "ao",
        "cam1:AcquireTime_RBV.RTYP": "ai",
        "cam1:ImageMode.RTYP": "mbbo",
        "cam1:DetectorState_RBV.RTYP": "mbbi",
        "cam1:NumImages.RTYP": "longout",
        "HDF1:FilePath.RTYP": "waveform",
        "HDF1:NDArrayPort.RTYP": "stringout",
        "HDF1:FlushNow.RTYP": "busy",
        "HDF1:FlushNow.ONAM": "Flush",
        "Stats1:Histogram_RBV.RTYP": "waveform",
        "cam1:DataType_RBV.DISA": "0",
        "HDF1:PluginType_RBV": "NDFileHDF5",
        "ROI1:PluginType_RBV": "NDPluginROI",
    }
    assert {name: read_str(ca_context, name) for name in expected} == expected


def test_enum_strings_are_served(ca_context: Any) -> None:
    state, compression = connect(ca_context, "cam1:DetectorState_RBV", "HDF1:Compression_RBV")
    served = [tuple(s.decode() for s in pv.read(data_type="control").metadata.enum_strings)
              for pv in (state, compression)]
    assert served == [catalog.DETECTOR_STATES, catalog.COMPRESSIONS]


def test_long_string_round_trips_through_char_waveform(ca_context: Any) -> None:
    path = "/data/pimega/2026/a-directory-name-longer-than-forty-characters/"
    setpoint, readback = connect(ca_context, "HDF1:FilePath", "HDF1:FilePath_RBV")
    assert (setpoint.channel.native_data_type, setpoint.channel.native_data_count) == (
        ChannelType.CHAR, 256)
    setpoint.write(path.encode() + b"\0", wait=True)
    assert bytes(readback.read().data).rstrip(b"\0").decode() == path


def test_put_updates_readback(ca_context: Any) -> None:
    time_sp, time_rb, mode_sp, mode_rb, acq_sp, acq_rb = connect(
        ca_context, "cam1:AcquireTime", "cam1:AcquireTime_RBV", "cam1:ImageMode",
        "cam1:ImageMode_RBV", "Stats1:Acquire", "Stats1:Acquire_RBV")
    time_sp.write([0.125], wait=True)
    mode_sp.write([1], wait=True)
    acq_sp.write([1], wait=True)
    assert time_rb.read().data[0] == 0.125
    assert mode_rb.read(data_type=ChannelType.STRING).data[0] == b"Multiple"
    assert acq_rb.read(data_type=ChannelType.STRING).data[0] == b"Acquiring"


def test_out_of_range_enum_put_is_refused(ca_context: Any) -> None:
    from caproto.sync.client import write

    (mode,) = connect(ca_context, "cam1:TriggerMode")
    for bad, data_type in (([5], ChannelType.ENUM), (["Burst"], ChannelType.STRING)):
        with pytest.raises(ErrorResponseReceived):
            write(PREFIX + "cam1:TriggerMode", bad, data_type=data_type, notify=True,
                  repeater=False, timeout=30)
    assert mode.read(data_type=ChannelType.STRING).data[0] == b"Internal"


@dataclass(frozen=True)
class ServedValue:
    """The parts of an aioca AugmentedValue that ophyd-async's type check reads."""

    datatype: int
    element_count: int
    enums: tuple[str, ...]
    precision: int


@pytest.mark.parametrize("suffix", list(STACKS))
def test_ophyd_async_type_checks_accept_the_served_pvs(ca_context: Any, suffix: str) -> None:
    """Runs ophyd-async's own connect-time type check on what the server reports."""
    from ophyd_async.epics.core._aioca import make_converter

    known = served_specs(STACKS[suffix])  # a missing PV fails the completeness test instead
    signals = [s for s in ophyd_async_signals(suffix) if {s.read_pv, s.write_pv} <= known.keys()]
    names = sorted({pv for s in signals for pv in (s.read_pv, s.write_pv)})
    served = {}
    for name, pv in zip(names, connect(ca_context, *(suffix + n for n in names)), strict=True):
        metadata = pv.read(data_type="control").metadata
        served[name] = ServedValue(
            datatype=int(pv.channel.native_data_type),
            element_count=pv.channel.native_data_count,
            enums=tuple(s.decode() for s in getattr(metadata, "enum_strings", ())),
            precision=getattr(metadata, "precision", 0),
        )
    refused = []
    for signal in signals:
        values = {pv: served[pv] for pv in (signal.read_pv, signal.write_pv)}
        try:
            make_converter(signal.datatype, values)
        except TypeError as error:
            refused.append(f"{signal.read_pv}: {error}")
    assert refused == []


# --- ADCore's own screens (ADApp/op/bob/autoconvert, 2026-07) -------------------------

#: PVs (``$(P)$(R)`` removed) that ADCore's screens for the plugins this IOC serves reference:
#: NDStats.bob + NDStatsTimeSeriesBasicAll.bob, NDFileHDF5.bob + NDFileBase.bob,
#: NDProcess.bob, NDPva.bob; NDPluginBaseFull.bob for every plugin.
ADCORE_SCREEN_PVS = {
    "Stats1:": """
        BgdWidth BgdWidth_RBV CentroidThreshold CentroidThreshold_RBV CentroidTotal_RBV
        CentroidX_RBV CentroidY_RBV ComputeCentroid ComputeCentroid_RBV ComputeHistogram
        ComputeHistogram_RBV ComputeProfiles ComputeProfiles_RBV ComputeStatistics
        ComputeStatistics_RBV CursorX CursorX_RBV CursorY CursorY_RBV Eccentricity_RBV
        HistAbove_RBV HistBelow_RBV HistEntropy_RBV HistMax HistMax_RBV HistMin HistMin_RBV
        HistSize HistSize_RBV KurtosisX_RBV KurtosisY_RBV MaxValue_RBV MaxX_RBV MaxY_RBV
        MeanValue_RBV MinValue_RBV MinX_RBV MinY_RBV Net_RBV Orientation_RBV ProfileSizeX_RBV
        ProfileSizeY_RBV Reset.PROC SigmaXY_RBV SigmaX_RBV SigmaY_RBV Sigma_RBV SkewX_RBV
        SkewY_RBV TS:TSAcquire TS:TSAcquireMode TS:TSAcquiring TS:TSCurrentPoint TS:TSNumPoints
        TS:TSRead.PROC TS:TSRead.SCAN TS:TSTimeAxis TSMaxValue TSMaxX TSMaxY TSMeanValue
        TSMinValue TSMinX TSMinY TSNet TSSigma TSTimestamp TSTotal Total_RBV
    """,
    "HDF1:": """
        AutoIncrement AutoIncrement_RBV AutoSave AutoSave_RBV BloscCompressor
        BloscCompressor_RBV BloscLevel BloscLevel_RBV BloscShuffle BloscShuffle_RBV
        BoundaryAlign BoundaryAlign_RBV BoundaryThreshold BoundaryThreshold_RBV Capture
        Capture_RBV ChunkSize2 ChunkSize2_RBV ChunkSizeAuto ChunkSizeAuto_RBV Compression
        Compression_RBV CreateDirectory CreateDirectory_RBV DataBitsOffset DataBitsOffset_RBV
        DeleteDriverFile DeleteDriverFile_RBV FileName FileName_RBV FileNumber FileNumber_RBV
        FilePath FilePathExists_RBV FilePath_RBV FileTemplate FileTemplate_RBV FileWriteMode
        FileWriteMode_RBV FillValue FillValue_RBV FlushNow FreeCapture FullFileName_RBV IOSpeed
        JPEGQuality JPEGQuality_RBV LazyOpen LazyOpen_RBV NumCapture NumCapture_RBV
        NumCaptured_RBV NumColChunks NumColChunks_RBV NumDataBits NumDataBits_RBV
        NumFramesChunks NumFramesChunks_RBV NumFramesFlush NumFramesFlush_RBV NumRowChunks
        NumRowChunks_RBV ReadFile ReadFile_RBV RunTime SWMRActive_RBV SWMRCbCounter_RBV SWMRMode
        SWMRMode_RBV SWMRSupported_RBV SZipNumPixels SZipNumPixels_RBV StoreAttr StoreAttr_RBV
        StorePerform StorePerform_RBV TempSuffix TempSuffix_RBV WriteFile WriteFile_RBV
        WriteMessage WriteStatus XMLErrorMsg_RBV XMLFileName XMLFileName_RBV XMLValid_RBV ZLevel
        ZLevel_RBV
    """,
    "Proc1:": """
        AutoOffsetScale AutoResetFilter DataTypeOut DataTypeOut_RBV EnableBackground
        EnableBackground_RBV EnableFilter EnableFilter_RBV EnableFlatField EnableFlatField_RBV
        EnableHighClip EnableHighClip_RBV EnableLowClip EnableLowClip_RBV EnableOffsetScale
        EnableOffsetScale_RBV FC1 FC1_RBV FC2 FC2_RBV FC3 FC3_RBV FC4 FC4_RBV FOffset
        FOffset_RBV FScale FScale_RBV FilterCallbacks FilterType HighClipThresh
        HighClipThresh_RBV HighClipValue HighClipValue_RBV LowClipThresh LowClipThresh_RBV
        LowClipValue LowClipValue_RBV NumFilter NumFilter_RBV NumFiltered_RBV OC1 OC1_RBV OC2
        OC2_RBV OC3 OC3_RBV OC4 OC4_RBV OOffset OOffset_RBV OScale OScale_RBV Offset Offset_RBV
        RC1 RC1_RBV RC2 RC2_RBV ROffset ROffset_RBV ReadBackgroundTIFFSeq.PROC
        ReadFlatFieldTIFFSeq ResetFilter SaveBackground SaveFlatField Scale ScaleFlatField
        ScaleFlatField_RBV Scale_RBV ValidBackground_RBV ValidFlatField_RBV
    """,
    "Pva1:": """
        PvName_RBV
    """,
}
ADCORE_PLUGIN_BASE_PVS = """
    ADCoreVersion_RBV ArrayCallbacks ArrayCallbacks_RBV ArrayCounter ArrayCounter_RBV
    ArrayRate_RBV ArraySize0_RBV ArraySize1_RBV ArraySize2_RBV BayerPattern_RBV
    BlockingCallbacks BlockingCallbacks_RBV Codec_RBV ColorMode_RBV CompressedSize_RBV
    DataType_RBV DisorderedArrays DisorderedArrays_RBV DriverVersion_RBV DroppedArrays
    DroppedArrays_RBV DroppedOutputArrays DroppedOutputArrays_RBV EnableCallbacks
    EnableCallbacks_RBV ExecutionTime_RBV MaxArrayRate MaxArrayRate_RBV MaxByteRate
    MaxByteRate_RBV MaxThreads_RBV MinCallbackTime MinCallbackTime_RBV NDArrayAddress
    NDArrayAddress_RBV NDArrayPort NDArrayPort_RBV NDimensions_RBV NumThreads NumThreads_RBV
    PluginType_RBV PortName_RBV ProcessPlugin QueueFree QueueSize SortFree SortMode SortMode_RBV
    SortSize SortTime SortTime_RBV TimeStamp_RBV UniqueId_RBV
"""


@pytest.mark.parametrize("prefix", ["Stats1:", "HDF1:", "Proc1:", "Pva1:", "ROI1:", "image1:"])
def test_every_pv_of_adcores_screens_for_a_plugin_is_served(prefix: str) -> None:
    from pimega.screens.pvs import ServedPVs

    served = ServedPVs.of(1, "")
    wanted = [*ADCORE_SCREEN_PVS.get(prefix, "").split(), *ADCORE_PLUGIN_BASE_PVS.split()]
    missing = []
    for name in wanted:
        base, _, field = name.partition(".")
        pv = served.get(prefix + base)
        if pv is None or (field and field not in record_fields(pv.record)):
            missing.append(name)
    assert missing == []


def test_stock_ophyd_process_and_pva_plugins_find_every_pv() -> None:
    from ophyd.areadetector.plugins import ProcessPlugin, PvaPlugin

    from pimega.iocs.pimega_specs import PIMEGA_PROCESS

    assert unserved(ophyd_suffixes(ProcessPlugin), (*catalog.PROCESS_STACK, PIMEGA_PROCESS)) == []
    assert unserved(ophyd_suffixes(PvaPlugin), catalog.PVA_STACK) == []
