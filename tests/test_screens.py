"""Phoebus screens in opi/: generated from the PVGroups and checked in up to date, valid
Phoebus XML, laid out without overlaps, and every PV they reference (macros expanded as
the main screen's links pass them) is served by a running IOC with a record type that fits
its widget."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from caproto import AccessRights
from caproto.threading.client import Context

from pimega.iocs.app import ioc_class
from pimega.iocs.catalog import OUTPUT_RECORDS
from pimega.iocs.factory import all_pv_names
from pimega.screens import commands
from pimega.screens.files import differences
from pimega.screens.layout import Context as LayoutContext
from pimega.screens.layout import Form, ScreenError
from pimega.screens.opi import MAIN, opi_files
from pimega.screens.pvs import ServedPVs

OPI = Path(__file__).resolve().parents[1] / "opi"
MAIN_MACROS = {"P": "PMTEST:", "R": "cam1:"}

#: Widget types of Phoebus's display builder (org.csstudio.display.builder.model.widgets).
PHOEBUS_WIDGET_TYPES = frozenset({
    "action_button", "arc", "array", "bool_button", "byte_monitor", "checkbox", "choice",
    "combo", "databrowser", "ellipse", "embedded", "fileselector", "group", "image", "label",
    "led", "meter", "multi_state_led", "navtabs", "picture", "polygon", "polyline",
    "progressbar", "radio", "rectangle", "scaledslider", "scrollbar", "slide_button",
    "spinner", "stripchart", "symbol", "table", "tabs", "tank", "text-symbol", "textentry",
    "textupdate", "thermometer", "webbrowser", "xyplot",
})
#: Record types a widget may show; None: any record.
FITS: dict[str, frozenset[str] | None] = {
    "image": frozenset({"waveform"}),
    "combo": frozenset({"mbbo", "bo", "busy"}),
    "textentry": OUTPUT_RECORDS | {"waveform"},
    "led": frozenset({"bi", "bo", "busy"}),
    "write_pv": OUTPUT_RECORDS,
    "textupdate": None,
    "action_button": None,
    "rule": None,
}
WRITES = frozenset({"textentry", "combo", "write_pv"})


@dataclass(frozen=True)
class Reference:
    screen: str
    pv: str
    role: str  # a widget type, "write_pv" (an action) or "rule" (a rule's input PV)
    value: str | None = None  # what a write_pv action writes


def expand(text: str, macros: dict[str, str]) -> str:
    """Phoebus macro expansion; an undefined macro is an error here, not an empty string."""
    return re.sub(r"\$\((\w+)\)", lambda m: macros[m.group(1)], text)


def parse(name: str) -> ET.Element:
    return ET.parse(OPI / name).getroot()


def widgets(element: ET.Element) -> Iterator[ET.Element]:
    """Every widget, groups' children included."""
    for child in element.findall("widget"):
        yield child
        yield from widgets(child)


def visits() -> dict[str, dict[str, str]]:
    """Each screen reached from the main one, with the macros its opening button passes."""
    reached = {MAIN: MAIN_MACROS}
    todo = [MAIN]
    while todo:
        screen = todo.pop()
        for action in parse(screen).iter("action"):
            if action.get("type") != "open_display":
                continue
            macros = dict(reached[screen])
            for macro in action.findall("macros/*"):
                macros[macro.tag] = expand(macro.text or "", reached[screen])
            target = action.findtext("file") or ""
            assert (OPI / target).is_file(), f"{screen} opens {target}, which is not in opi/"
            if target not in reached:
                reached[target] = macros
                todo.append(target)
    return reached


def references() -> list[Reference]:
    found = []
    for screen, macros in visits().items():
        for widget in widgets(parse(screen)):
            kind = widget.get("type") or ""
            if (pv := widget.findtext("pv_name")) is not None:
                found.append(Reference(screen, expand(pv, macros), kind))
            for rule_pv in widget.findall("rules/rule/pv_name"):
                found.append(Reference(screen, expand(rule_pv.text or "", macros), "rule"))
            for action in widget.findall("actions/action[@type='write_pv']"):
                found.append(Reference(screen, expand(action.findtext("pv_name") or "", macros),
                                       "write_pv", action.findtext("value")))
    return found


def test_checked_in_screens_are_the_generated_ones():
    found = differences(opi_files(), OPI, commands.OPI_PATTERNS)
    assert not found, "opi/ is out of date; regenerate with `pimega opi opi/`:\n" + "\n".join(
        found)


def test_check_option_finds_an_edited_screen_and_a_write_repairs_it(tmp_path, capsys):
    copy = tmp_path / "opi"
    shutil.copytree(OPI, copy)
    edited = copy / "pimega_cam.bob"
    edited.write_text(edited.read_text().replace("AcquireTime", "AcquireTyme"))
    assert commands.opi([str(copy), "--check"]) == 1
    err = capsys.readouterr().err
    assert "pimega_cam.bob: differs" in err and f"pimega opi {copy}" in err
    assert commands.opi([str(copy)]) == 0
    assert commands.opi([str(copy), "--check"]) == 0


def test_every_screen_is_phoebus_display_xml_with_known_widgets():
    for path in sorted(OPI.glob("*.bob")):
        root = ET.parse(path).getroot()
        assert root.tag == "display" and root.get("version") == "2.0.0", path.name
        for widget in widgets(root):
            assert widget.get("type") in PHOEBUS_WIDGET_TYPES, (path.name, widget.get("type"))
            assert re.fullmatch(r"\d+\.\d+\.\d+", widget.get("version") or ""), path.name
            for prop in ("x", "y", "width", "height"):
                assert int(widget.findtext(prop) or "x") >= 0, (path.name, prop)


def test_widgets_neither_overlap_nor_leave_their_group():
    def box(widget: ET.Element) -> tuple[int, int, int, int]:
        x, y, w, h = (int(widget.findtext(p) or 0) for p in ("x", "y", "width", "height"))
        return x, y, x + w, y + h

    for path in sorted(OPI.glob("*.bob")):
        root = ET.parse(path).getroot()
        for parent in [root, *(w for w in widgets(root) if w.get("type") == "group")]:
            boxes = [box(child) for child in parent.findall("widget")]
            if parent is not root:  # a group's children live inside its 18-pixel insets
                x0, y0, x1, y1 = box(parent)
                inside = all(b[2] <= x1 - x0 - 36 and b[3] <= y1 - y0 - 36 for b in boxes)
                assert inside, f"{path.name}: a widget leaves group {parent.findtext('name')}"
            for i, a in enumerate(boxes):
                for b in boxes[i + 1:]:
                    apart = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
                    assert apart, f"{path.name}: {a} overlaps {b} in {parent.findtext('name')}"


def test_every_screen_is_reached_from_the_main_screen_with_p_and_r():
    reached = visits()
    assert set(reached) == {p.name for p in OPI.glob("*.bob")}
    expected_r = {"pimega_cam.bob": "cam1:", "pimega_hdf5.bob": "HDF1:",
                  "pimega_stats.bob": "Stats1:", "pimega_roi.bob": "ROI1:",
                  "pimega_image.bob": "image1:", "pimega_pipeline.bob": "Pipe:"}
    for screen, r in expected_r.items():
        assert reached[screen] == {"P": "PMTEST:", "R": r}, screen


def test_main_screen_has_the_operator_essentials():
    refs = {(ref.pv.removeprefix("PMTEST:"), ref.role, ref.value) for ref in references()
            if ref.screen == MAIN}
    for needed in [("cam1:Acquire", "write_pv", "1"), ("cam1:Acquire", "write_pv", "0"),
                   ("cam1:ImageMode", "combo", None), ("cam1:NumImages", "textentry", None),
                   ("cam1:AcquireTime", "textentry", None),
                   ("cam1:AcquirePeriod", "textentry", None),
                   ("cam1:CounterDepth", "combo", None),
                   ("cam1:DetectorState_RBV", "textupdate", None),
                   ("cam1:StatusMessage_RBV", "textupdate", None),
                   ("cam1:FrameRate_RBV", "textupdate", None),
                   ("cam1:Throughput_RBV", "textupdate", None),
                   ("cam1:DroppedFrames_RBV", "textupdate", None),
                   ("HDF1:FilePath", "textentry", None), ("HDF1:FileName", "textentry", None),
                   ("HDF1:Capture", "write_pv", "1"),
                   ("HDF1:FullFileName_RBV", "textupdate", None),
                   ("image1:ArrayData", "image", None)]:
        assert needed in refs, needed
    (image,) = [w for w in widgets(parse(MAIN)) if w.get("type") == "image"]
    bound = {rule.get("prop_id"): rule.findtext("pv_name") for rule in image.iter("rule")}
    assert bound == {"data_width": "$(P)image1:ArraySize0_RBV",
                     "data_height": "$(P)image1:ArraySize1_RBV"}


def test_reconstruction_screen_shows_the_settings_state_and_a_slice():
    root = parse("pimega_recon.bob")
    names = {element.text for element in root.iter("pv_name")}
    assert {"$(P)$(R)Enable", "$(P)$(R)State_RBV", "$(P)$(R)Slice1:Row",
            "$(P)$(R)Slice1:ArrayData"} <= names


def test_module_table_has_a_row_per_module():
    cam = opi_files(4)["pimega_cam.bob"]
    assert all(f"$(P)$(R)M{m}:RxFrameCount_RBV" in cam for m in (1, 2, 3, 4))
    assert "M2:" not in opi_files(1)["pimega_cam.bob"]


def test_a_section_naming_a_pv_the_ioc_does_not_serve_is_refused():
    ctx = LayoutContext(ServedPVs.of(1), "cam1:")
    with pytest.raises(ScreenError, match="cam1:NoSuchPV"):
        Form("Broken", ("AcquireTime", "NoSuchPV")).layout(ctx)


def test_settings_point_channel_access_at_this_machine():
    lines = set((OPI / "settings.ini").read_text().splitlines())
    assert {"org.phoebus.pv.ca/addr_list=127.0.0.1",
            "org.phoebus.pv.ca/auto_addr_list=false"} <= lines


@pytest.mark.slow
def test_every_referenced_pv_is_served_with_a_record_that_fits_its_widget(small_ioc):
    refs = references()
    names = sorted({ref.pv for ref in refs})
    enum_strings = {name: strings for name, _, strings in all_pv_names(ioc_class(1), "PMTEST:")}
    unknown = [f"{ref.screen}: {ref.pv}" for ref in refs if ref.pv not in enum_strings]
    assert not unknown, "not in the IOC's PV list:\n" + "\n".join(unknown)
    context = Context()
    try:
        pvs = context.get_pvs(*names, *(f"{name}.RTYP" for name in names), timeout=10)
        by_name = {pv.name: pv for pv in pvs}
        for pv in pvs:
            pv.wait_for_connection(timeout=10)
        record = {name: by_name[f"{name}.RTYP"].read(timeout=10).data[0].decode()
                  for name in names}
        writable = {name: AccessRights.WRITE in by_name[name].access_rights for name in names}
    finally:
        context.disconnect()
    problems = []
    for ref in refs:
        fits = FITS[ref.role]
        if fits is not None and record[ref.pv] not in fits:
            problems.append(f"{ref.screen}: {ref.role} on {ref.pv}, a {record[ref.pv]}")
        if ref.role in WRITES and not writable[ref.pv]:
            problems.append(f"{ref.screen}: {ref.role} on read-only {ref.pv}")
        strings = enum_strings[ref.pv]
        if ref.value is not None and strings and not 0 <= int(ref.value) < len(strings):
            problems.append(f"{ref.screen}: writes {ref.value} to {ref.pv} {strings}")
    assert not problems, "\n".join(problems)
