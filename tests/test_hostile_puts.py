"""Hostile puts on the newer PV groups — ``Recon:``, ``Proc1:``, HDF1's NeXus/NXmx metadata
and ``AS:`` — against a real ``pimega-ioc --sim``, with pyepics and with caproto's threading
client: NaN, infinities, huge and negative numbers, enum states that do not exist, text too
long or not ASCII, paths outside the data roots or to what is not a file.

Whatever comes in, the IOC keeps answering, each setpoint and its _RBV agree, a value the
IOC keeps is the value put, a refused put changes nothing else and says why in the group's
message PV, naming the PV (``Recon:LastError_RBV``, ``HDF1:WriteMessage``, ``AS:Status_RBV``;
NDPluginProcess has none in ADCore, so Proc1's refusals go to ``cam1:StatusMessage_RBV``).
Values refused before any group sees them (NaN, infinities, enum states that do not exist,
numbers a LONG cannot hold, text where a number goes: the factory's checks and caproto's
conversions) change nothing and say why all the same.

And a settings file damaged by hand restores only what a client could have put.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import epics
import h5py
import numpy as np
import pytest
from caproto import ChannelType
from caproto.threading.client import Context

from pimega.iocs.autosave import FILE_NAME, FORMAT, VERSION, Autosave
from pimega.iocs.catalog import ao, longout, mbbo, stringout, text
from pimega.iocs.factory import make_group
from pimega.screens.pvs import ServedPV, ServedPVs

from .conftest import RunningIOC, start_ioc, stop_ioc

pytestmark = pytest.mark.slow

PREFIX = "PMHOSTILE:"
SIDE = 32  # 2x2 chips of 16: 32x32 images
#: Where each group says why a put was refused.
MESSAGE = {"Recon:": "Recon:LastError_RBV", "Proc1:": "cam1:StatusMessage_RBV",
           "HDF1:": "HDF1:WriteMessage", "AS:": "AS:Status_RBV", "Pipe:": "Pipe:GpuMessage_RBV"}
#: HDF1's π-MEGA NeXus metadata: the definition, the sample and the NXmx geometry.
NEXUS = ("NexusDefinition", "SampleName", "DetDist", "BeamX", "BeamY", "Wavelength",
         "SensorMaterial", "SensorThickness", "SourceName")
#: PVs that change by themselves or say why (left out of "nothing else changed").
MOVING = ("Heartbeat_RBV", "TimeStamp_RBV", "EpicsTSSec_RBV", "EpicsTSNsec_RBV",
          "ArrayRate_RBV", "MaxArrayRate_RBV", "QueueUse", "QueueFree", "WriteStatus",
          *(name.split(":", 1)[1] for name in MESSAGE.values()))
#: Writable PVs that act rather than hold a setting: only refused values are put on them.
ACTIONS = ("Acquire", "PreAllocBuffers", "AutoOffsetScale", "EmptyFreeList", "PoolPollStats",
           "ProcessPlugin", "SaveBackground", "SaveFlatField", "ResetFilter", "Reload",
           "ReadBackgroundTIFFSeq", "ReadFlatFieldTIFFSeq", "FilterTypeSeq", "RecursiveAveSeq",
           "AverageSeq", "SumSeq", "DifferenceSeq", "RecursiveAveDiffSeq", "CopyToFilterSeq")

ACF = """
ASG(DEFAULT) {
    RULE(1, WRITE)
}
"""


# --- the IOC and its clients -------------------------------------------------------------


@dataclass(frozen=True)
class Files:
    """A data root holding good and bad masks, and a directory outside it."""

    root: Path
    outside: Path
    acf: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    base = tmp_path_factory.mktemp("hostile")
    root, outside = base / "data", base / "outside"
    root.mkdir()
    outside.mkdir()
    good = np.zeros((SIDE, SIDE), dtype=bool)
    good[3, 4] = True
    np.save(root / "mask.npy", good)
    np.save(outside / "mask.npy", good)  # a good mask, but not in a data root
    (root / "escape.npy").symlink_to(outside / "mask.npy")
    np.save(root / "small.npy", np.zeros((3, 3), dtype=bool))
    np.save(root / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(root / "two.npz", a=good, b=good)
    (root / "notes.npy").write_text("not an array\n")
    (root / "empty.npy").write_bytes(b"")
    (root / "directory.npy").mkdir()
    os.mkfifo(root / "fifo.npy")  # opening it would wait for a writer: the IOC must not
    acf = base / "pimega.acf"
    acf.write_text(ACF)
    return Files(root, outside, acf)


@pytest.fixture(scope="module")
def ioc(files: Files, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningIOC]:
    # caproto's threading client drops the error a server answers a refused put with (its
    # put callback never comes), so its puts are sent without callback and fenced by a read
    # on the same circuit, which the server holds back until the put has run (given time)
    ioc = start_ioc(PREFIX, tmp_path_factory.mktemp("hostile-ioc") / "ioc.log", "--sim",
                    "--chips", "2x2", "--chip-size", "16", "--data-root", str(files.root),
                    "--access", str(files.acf), "--no-autosave",
                    env={"CAPROTO_SERVER_WRITE_LOCK_TIMEOUT_SEC": "5"})
    yield ioc
    stop_ioc(ioc)


class Client:
    """caproto's threading client on the IOC's PVs (reads, raw puts, snapshots) beside
    pyepics (puts as a CA tool makes them)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.context = Context()
        self.pvs: dict[str, Any] = {}
        self.epics_pvs: dict[str, epics.PV] = {}

    def pv(self, suffix: str) -> Any:
        self.connect([suffix])
        return self.pvs[suffix]

    def connect(self, suffixes: list[str]) -> None:
        missing = [s for s in suffixes if s not in self.pvs]
        if not missing:
            return
        search: Any = 2.0  # caproto types get_pvs's timeout as a sentinel
        for suffix, pv in zip(missing, self.context.get_pvs(
                *(self.prefix + s for s in missing), timeout=search), strict=True):
            self.pvs[suffix] = pv
        for suffix in missing:
            self.pvs[suffix].wait_for_connection(timeout=10)

    @staticmethod
    def _read_type(pv: Any) -> ChannelType | None:
        native = pv.channel.native_data_type
        return ChannelType.STRING if native in (ChannelType.ENUM, ChannelType.STRING) else None

    @staticmethod
    def _decode(pv: Any, data: Any) -> Any:
        native = pv.channel.native_data_type
        if native == ChannelType.CHAR:
            return bytes(data).split(b"\0", 1)[0].decode("latin-1")
        if native in (ChannelType.ENUM, ChannelType.STRING):
            return data[0].decode("latin-1")
        if len(data) == 1:
            return data[0].item()
        return tuple(np.asarray(data).tolist())

    def get(self, suffix: str) -> Any:
        pv = self.pv(suffix)
        return self._decode(pv, pv.read(timeout=10, data_type=self._read_type(pv)).data)

    def put_raw(self, suffix: str, value: Any, data_type: ChannelType) -> None:
        """A put of ``value`` as DBR type ``data_type``, whatever the PV's type; returns once
        the IOC has handled it (see the ``ioc`` fixture)."""
        pv = self.pv(suffix)
        data = (np.frombuffer(value, dtype=np.uint8) if data_type == ChannelType.CHAR
                else [value])
        pv.write(data, data_type=data_type, wait=False, notify=False)
        pv.read(timeout=10)

    def snapshot(self, suffixes: list[str]) -> dict[str, Any]:
        """The values of ``suffixes``, read all at once."""
        self.connect(suffixes)
        values: dict[str, Any] = {}
        done = threading.Event()
        lock = threading.Lock()

        def reader(suffix: str, pv: Any):
            def read(response: Any) -> None:
                with lock:
                    values[suffix] = self._decode(pv, response.data)
                    if len(values) == len(suffixes):
                        done.set()
            return read

        for suffix in suffixes:
            pv = self.pvs[suffix]
            pv.read(wait=False, callback=reader(suffix, pv), data_type=self._read_type(pv))
        assert done.wait(20), "a snapshot read went unanswered"
        return values

    def answers(self) -> bool:
        """The IOC answers, and its poll loop runs (not blocked by a put)."""
        first = self.get("Heartbeat_RBV")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.get("Heartbeat_RBV") != first:
                return True
            time.sleep(0.02)
        return False


@pytest.fixture(scope="module")
def client(ioc: RunningIOC) -> Iterator[Client]:
    client = Client(ioc.prefix)
    yield client
    client.context.disconnect()
    for pv in client.epics_pvs.values():
        pv.disconnect()


def put(client: Client, suffix: str, value: Any) -> None:
    """A pyepics put that waits for the IOC's answer (refused or not). Its PVs do not
    monitor: pyepics decodes text as UTF-8 in its monitor callback, and chokes on the
    non-UTF-8 bytes some of these puts leave in PVs that take any text."""
    if suffix not in client.epics_pvs:
        client.epics_pvs[suffix] = epics.PV(client.prefix + suffix, auto_monitor=False,
                                            connection_timeout=10)
    pv = client.epics_pvs[suffix]
    assert pv.wait_for_connection(timeout=10), f"{suffix} did not connect"
    assert pv.put(value, wait=True, timeout=10) is not None, f"put {suffix} timed out"


# --- what is put ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Put:
    """One hostile put: by pyepics (``data_type`` None: as pyepics converts ``value`` for the
    PV) or by caproto as DBR ``data_type``. ``screened``: refused before any group's put hook
    sees it (the factory's checks, caproto's conversion)."""

    value: Any
    data_type: ChannelType | None = None
    screened: bool = False

    def send(self, client: Client, suffix: str) -> None:
        if self.data_type is None:
            array = (client.pv(suffix).channel.native_data_count > 1
                     and not isinstance(self.value, str))
            put(client, suffix, [self.value] if array else self.value)
        else:
            client.put_raw(suffix, self.value, self.data_type)

    def sent_text(self, native: ChannelType) -> str:
        """The text as the IOC receives it (bytes read as Latin-1, as caproto's server).
        pyepics sends a CHAR waveform's non-ASCII bytes as 0xFD each (its U+FFFD, cut to a
        byte), as many elements as the text has characters, and one: what the IOC holds
        then is what it was sent."""
        raw = self.value if isinstance(self.value, bytes) else str(self.value).encode()
        if self.data_type is None and native == ChannelType.CHAR:
            mangled = bytes(ord(c) & 0xFF for c in raw.decode("ascii", "replace"))
            raw = mangled[:len(self.value) + 1]
        return raw.split(b"\0", 1)[0].decode("latin-1")

    def __str__(self) -> str:
        how = "pyepics" if self.data_type is None else f"caproto {self.data_type.name}"
        return f"{self.value!r:.40} ({how})"


D, L, S, C = ChannelType.DOUBLE, ChannelType.LONG, ChannelType.STRING, ChannelType.CHAR
NON_ASCII = "Sièmens λ→∞"

NUMBER_PUTS = (
    Put(1e308), Put(-1e308), Put(-1.0), Put(3.5e38),
    Put(math.nan, screened=True), Put(b"-1e999", S, screened=True),  # the string is -inf
)
WHOLE_PUTS = (
    Put(2**31 - 1), Put(-(2**31 - 1)), Put(-1),
    Put(math.inf, D, screened=True), Put(1e12, D, screened=True),
)
ENUM_PUTS = (
    Put(99, screened=True), Put(b"No such state", S, screened=True),
    Put(math.nan, D, screened=True),
)
STRING_PUTS = (
    Put("x" * 39), Put(b"y" * 100, S), Put(NON_ASCII), Put("tab\there\x01"),
    Put(b"\xff\xfe", S), Put(""),
)
TEXT_PUTS = (
    Put("/" + "x" * 1000), Put(NON_ASCII), Put("bell\x07"), Put(b"\xff\xfe\x00", C),
    Put(b"y" * 300, C, screened=True),
)


def hostile_puts(pv: Any) -> tuple[Put, ...]:
    native = pv.channel.native_data_type
    if native == ChannelType.ENUM:
        return ENUM_PUTS
    if native == ChannelType.CHAR:
        return TEXT_PUTS
    if native == ChannelType.STRING:
        return STRING_PUTS
    if native in (ChannelType.LONG, ChannelType.INT):
        return WHOLE_PUTS
    return NUMBER_PUTS


def refused_only(puts: tuple[Put, ...]) -> tuple[Put, ...]:
    """What may be put on a PV that acts: values refused whatever the IOC's state."""
    return tuple(p for p in puts if p.screened)


# --- the sweep ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(ioc: RunningIOC) -> ServedPVs:
    return ServedPVs.of(1, "")


def writable(served: ServedPVs, group: str) -> list[ServedPV]:
    if group == "HDF1:":
        return [served[group + name] for name in NEXUS]
    return [pv for name, pv in served.items() if name.startswith(group) and pv.writable]


def watched(served: ServedPVs, client: Client, group: str) -> list[str]:
    """What "nothing else changed" looks at: the group's PVs (and the DataType every plugin
    after Proc1 shows), less what moves by itself."""
    names = [name for name in served if name.startswith(group)
             and name.rsplit(":", 1)[-1] not in MOVING and not name.endswith("ArrayData")]
    if group == "Proc1:":
        names += [f"{plugin}:DataType_RBV" for plugin in ("image1", "HDF1", "Stats1", "ROI1")]
    first = client.snapshot(names)
    time.sleep(0.3)
    second = client.snapshot(names)
    return [name for name in names if same(first[name], second[name])]


def same(held: Any, before: Any) -> bool:
    if isinstance(held, float) and isinstance(before, float):
        return held == before or (math.isnan(held) and math.isnan(before))
    return held == before


def kept_as_put(held: Any, sent: Put, pv: Any) -> bool:
    """Whether ``held`` is the value ``sent`` (text: as the client sent it, or its first 39
    characters or more where the client cut it to the field's size)."""
    native = pv.channel.native_data_type
    if native in (ChannelType.CHAR, ChannelType.STRING):
        text = sent.sent_text(native)
        return isinstance(held, str) and (
            held == text or (len(held) >= 39 and text.startswith(held)))
    if native == ChannelType.ENUM:
        return False  # every hostile enum put is a state that does not exist
    return isinstance(held, (int, float)) and float(held) == float(sent.value)


def restore(client: Client, suffix: str, value: Any) -> None:
    put(client, suffix, value)
    assert same(client.get(suffix), value), f"{suffix} not put back to {value!r}"


@pytest.mark.parametrize("group", list(MESSAGE))
def test_every_writable_pv_survives_hostile_puts(client, served, group):
    """Each writable PV of the group takes every hostile value or refuses it: either way the
    IOC answers, setpoint and _RBV agree, a value kept is the value put (then put back), a
    refusal names the PV in the group's message PV (screened values: see the module), and
    once each kept value is put back, every PV of the group reads as before."""
    targets = writable(served, group)
    assert targets, group
    look = watched(served, client, group)
    message = MESSAGE[group]
    problems: list[str] = []
    start = client.snapshot(look)
    for target in targets:
        suffix = target.name
        name = suffix.removeprefix(group)
        readback = served.readback(suffix)
        rbv = readback.name if readback is not None else None
        pv = client.pv(suffix)
        puts = hostile_puts(pv)
        if name in ACTIONS or target.record == "busy":
            puts = refused_only(puts)
        original = client.get(suffix)
        for sent in puts:
            before = client.get(suffix)
            sent.send(client, suffix)
            held = client.get(suffix)
            shown = client.get(rbv) if rbv else held
            where = f"{suffix} = {sent}"
            if not same(held, shown):
                problems.append(f"{where}: setpoint {held!r} but {rbv} {shown!r}")
            if same(held, before):  # refused (or the value it held already)
                told = client.get(message)
                if not sent.screened and not kept_as_put(held, sent, pv) and name not in told:
                    problems.append(f"{where}: refused without a reason in {message} "
                                    f"({told!r})")
            elif not kept_as_put(held, sent, pv):
                problems.append(f"{where}: holds {held!r}")
            if not same(held, original):
                restore(client, suffix, original)
    end = client.snapshot(look)  # every PV is as it was: what changed, no put undid
    changed = [f"{n}: {start[n]!r} -> {end[n]!r}" for n in look if not same(end[n], start[n])]
    if changed:
        problems.append(f"hostile puts changed {changed[:10]}")
    assert client.answers(), "the IOC's poll loop stopped"
    assert not problems, "\n".join(problems)


# --- what each group must refuse, and say why --------------------------------------------


def refused_with_reason(client: Client, suffix: str, value: Any, reason: str) -> None:
    group = suffix.split(":", 1)[0] + ":"
    name = suffix.removeprefix(group)
    readback = f"{suffix}_RBV" if suffix != "AS:Reload" else suffix
    before = client.get(suffix), client.get(readback)
    put(client, suffix, value)
    assert (client.get(suffix), client.get(readback)) == before, f"{suffix} = {value!r} kept"
    told = client.get(MESSAGE[group])
    assert name in told and reason in told, f"{MESSAGE[group]}: {told!r}"
    assert client.answers()


@pytest.mark.parametrize(("suffix", "value", "reason"), [
    ("Recon:Slice1:Row", -5, "row is >= 0, or -1"),
    ("Recon:Slice2:Row", SIDE, "must lie within 0"),
    ("Recon:Slice3:Row", 2**31 - 1, "must lie within 0"),
    ("Recon:Centre", -0.5, "outside the image's columns"),
    ("Recon:Centre", 1e308, "outside the image's columns"),
    ("Recon:StartAngle", 1e308, "beyond"),
    ("Recon:StartAngle", -2e6, "beyond"),
    ("Recon:AngleStep", 361.0, "beyond"),
    ("Recon:AngleStep", -1e300, "beyond"),
    ("Proc1:NumFilter", 0, "NumFilter must be >= 1"),
    ("Proc1:NumFilter", -(2**31 - 1), "NumFilter must be >= 1"),
    ("HDF1:DetDist", 0.0, "must be > 0"),
    ("HDF1:Wavelength", -1e308, "must be > 0"),
    ("HDF1:SensorThickness", -5.0, "must be > 0"),
    ("HDF1:SensorMaterial", "", "must not be empty"),
    ("HDF1:SensorMaterial", NON_ASCII, "printable ASCII"),
    ("HDF1:SourceName", "beam\tline", "printable ASCII"),
    ("HDF1:SampleName", "sample\x01", "printable ASCII"),
    ("AS:Reload", 5, "write 1"),
    ("AS:Reload", -(2**31 - 1), "write 1"),
])
def test_a_refused_setting_says_why_and_changes_nothing(client, suffix, value, reason):
    refused_with_reason(client, suffix, value, reason)


def test_recon_centre_out_of_range_is_refused_in_auto_mode_too(client):
    put(client, "Recon:CentreMode", "Auto")
    refused_with_reason(client, "Recon:Centre", float(SIDE), "outside the image's columns")
    put(client, "Recon:Centre", 10.5)  # in range: kept for Manual mode
    put(client, "Recon:CentreMode", "Manual")
    assert client.get("Recon:CentreMode_RBV") == "Manual"
    assert client.get("Recon:Centre_RBV") == 10.5
    put(client, "Recon:CentreMode", "Auto")


def test_two_slices_on_one_row_are_both_served(client):
    put(client, "Recon:Slice1:Row", 7)
    put(client, "Recon:Slice2:Row", 7)
    assert client.get("Recon:Slice1:Row_RBV") == client.get("Recon:Slice2:Row_RBV") == 7
    put(client, "Recon:Slice1:Row", -1)
    put(client, "Recon:Slice2:Row", -1)


@pytest.mark.parametrize(("path", "reason"), [
    ("/etc/passwd", "outside the data directories"),
    ("{outside}/mask.npy", "outside the data directories"),
    ("{root}/../outside/mask.npy", "outside the data directories"),
    ("{root}/escape.npy", "outside the data directories"),  # a link out of the root
    ("{root}/directory.npy", "is not a file"),
    ("{root}/fifo.npy", "is not a file"),
    ("{root}/missing.npy", "cannot read a mask"),
    ("{root}/notes.npy", "cannot read a mask"),
    ("{root}/empty.npy", "cannot read a mask"),
    ("{root}/objects.npy", "cannot read a mask"),
    ("{root}/two.npz", "several arrays"),
    ("{root}/small.npy", "the mask in"),
    ("{root}/" + NON_ASCII + ".npy", "cannot read a mask"),
])
def test_bad_pixel_file_outside_the_data_roots_or_not_a_mask_is_refused(
        client, files, path, reason):
    path = path.format(root=files.root, outside=files.outside)
    refused_with_reason(client, "Proc1:BadPixelFile", path, reason)
    assert client.get("Proc1:ValidBadPixels_RBV") == "Invalid"


def test_a_good_mask_in_the_data_root_is_taken(client, files):
    put(client, "Proc1:BadPixelFile", str(files.root / "mask.npy"))
    assert client.get("Proc1:BadPixelFile_RBV") == str(files.root / "mask.npy")
    assert client.get("Proc1:ValidBadPixels_RBV") == "Valid"
    put(client, "Proc1:BadPixelFile", "")
    assert client.get("Proc1:ValidBadPixels_RBV") == "Invalid"


def test_a_failed_access_reload_keeps_the_rules_and_says_why(client, files):
    files.acf.write_text("ASG(DEFAULT) {\n    RULE(1, WRITE\n}\n")
    try:
        put(client, "AS:Reload", 1)
        assert "reload failed, previous rules kept" in client.get("AS:Status_RBV")
        put(client, "Recon:AngleStep", 0.5)  # writes are still granted
        assert client.get("Recon:AngleStep_RBV") == 0.5
    finally:
        files.acf.write_text(ACF)
    put(client, "AS:Reload", 1)
    assert client.get("AS:Status_RBV") == f"rules from {files.acf}"
    put(client, "Recon:AngleStep", 0.0)


def test_extreme_settings_that_are_kept_do_not_stop_an_acquisition(client, files):
    """Accepted values at the edges (Proc1's scale and offset near the largest double, the
    longest filter, NXmx numbers beyond reason): the acquisition ends and its file holds the
    frames, with the NXmx values as they were put."""
    settings = [("Proc1:EnableCallbacks", "Enable"), ("Proc1:EnableOffsetScale", "Enable"),
                ("Proc1:Offset", 1e308), ("Proc1:Scale", -1e308),
                ("Proc1:EnableHighClip", "Enable"), ("Proc1:HighClipThresh", -1e308),
                ("Proc1:HighClipValue", 1e308), ("Proc1:EnableFilter", "Enable"),
                ("Proc1:NumFilter", 2**31 - 1), ("Proc1:DataTypeOut", "Int8"),
                ("HDF1:NexusDefinition", "NXmx"), ("HDF1:DetDist", 1e308),
                ("HDF1:BeamX", -1e308), ("HDF1:Wavelength", 1e-300),
                ("HDF1:SensorThickness", 1e308), ("HDF1:SourceName", "x" * 39),
                ("HDF1:FilePath", f"{files.root}/"), ("HDF1:FileName", "extreme"),
                ("HDF1:FileWriteMode", "Stream"), ("HDF1:NumCapture", 0),
                ("cam1:ImageMode", "Multiple"), ("cam1:NumImages", 3),
                ("cam1:AcquireTime", 0.001), ("cam1:AcquirePeriod", 0.001)]
    originals = [(suffix, client.get(suffix)) for suffix, _ in settings]
    try:
        for suffix, value in settings:
            put(client, suffix, value)
            assert same(client.get(suffix), value), f"{suffix} = {value!r} not kept"
        capture = Client(PREFIX)  # the capture's put holds its circuit until it ends
        try:
            capture.pv("HDF1:Capture").write([1], wait=False, notify=False)
            deadline = time.monotonic() + 10
            while client.get("HDF1:Capture_RBV") != "Capturing":
                assert time.monotonic() < deadline, client.get("HDF1:WriteMessage")
                time.sleep(0.02)
            put(client, "cam1:Acquire", 1)  # ends with the acquisition
            deadline = time.monotonic() + 10
            while client.get("HDF1:NumCaptured_RBV") < 3:
                assert time.monotonic() < deadline, client.get("HDF1:WriteMessage")
                time.sleep(0.02)
            put(client, "HDF1:Capture", 0)
        finally:
            capture.context.disconnect()
        assert client.answers()
        assert client.get("cam1:DetectorState_RBV") == "Idle"
        filename = client.get("HDF1:FullFileName_RBV")
        with h5py.File(filename, "r") as f:
            data: Any = f["/entry/data/data"]
            distance: Any = f["/entry/instrument/detector/distance"]
            assert data.shape == (3, SIDE, SIDE) and data.dtype == np.int8
            assert distance[()] == pytest.approx(1e305)
    finally:
        for suffix, value in reversed(originals):
            put(client, suffix, value)


# --- refused before the group's own hook: it says why all the same ------------------------


@pytest.mark.parametrize(("suffix", "sent", "other"), [
    ("Recon:Centre", Put(math.nan), ("Recon:AngleStep", 400.0)),
    ("Proc1:DataTypeOut", Put(99), ("Proc1:NumFilter", 0)),
    ("Recon:Slice1:Row", Put(1e12, D), ("Recon:AngleStep", 400.0)),
    ("Pipe:Backend", Put(9), ("Pipe:Backend", "GPU")),
])
def test_a_value_refused_before_the_groups_hook_says_why(client, suffix, sent, other):
    group = suffix.split(":", 1)[0] + ":"
    name = suffix.removeprefix(group)
    put(client, *other)  # refused by a hook: the message names that PV, not this one
    assert name not in client.get(MESSAGE[group])
    sent.send(client, suffix)
    assert name in client.get(MESSAGE[group])


# --- autosave: a settings file damaged by hand ------------------------------------------


DamagedBase = make_group(
    "DamagedBase",
    (longout("Count", 1), ao("Gain", 1.0), mbbo("Mode", ("Off", "On"), "Off"),
     text("Path", 256, writable=True, readback=True), stringout("Label", "label")))


def test_a_damaged_settings_file_restores_only_what_a_client_could_put(tmp_path):
    """Values no client could have put (a LONG of 1e12, a DOUBLE of "abc", NaN, an enum state
    that does not exist, text longer than the PV, a list for a number) are skipped with the
    reason; the PVs keep serving what they held. Good values beside them are restored."""
    group = DamagedBase(prefix="D:")
    saved = {
        "D:Count": 1e12, "D:Gain": "abc", "D:Mode": 7, "D:Path": "p" * 300, "D:Label": [1],
    }
    (tmp_path / FILE_NAME).write_text(json.dumps(
        {"format": FORMAT, "version": VERSION, "prefix": "D:", "values": saved}))
    autosave = Autosave(group.pvdb, list(saved), tmp_path / FILE_NAME, "D:")
    before = autosave.values()
    assert asyncio.run(autosave.restore()) == 0
    assert autosave.values() == before

    for name, value in [("D:Count", math.nan), ("D:Gain", math.inf), ("D:Count", True),
                        ("D:Mode", "Maybe"), ("D:Count", 2.5), ("D:Gain", [1.0, 2.0])]:
        (tmp_path / FILE_NAME).write_text(json.dumps(
            {"format": FORMAT, "version": VERSION, "prefix": "D:", "values": {name: value}}))
        assert asyncio.run(autosave.restore()) == 0, (name, value)
    assert autosave.values() == before

    good = {"D:Count": 7, "D:Gain": -2.5, "D:Mode": "On", "D:Path": "/data/x/",
            "D:Label": "beamline"}
    (tmp_path / FILE_NAME).write_text(json.dumps(
        {"format": FORMAT, "version": VERSION, "prefix": "D:", "values": good}))
    assert asyncio.run(autosave.restore()) == len(good)
    assert autosave.values() == good
    assert group.pvdb["D:Count_RBV"].value == 7
