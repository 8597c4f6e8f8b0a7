"""Phoebus display files (``.bob``) as plain XML: the few widget types the screens use.

Every builder returns an ``xml.etree`` element with the properties Phoebus reads; geometry
is absolute (x, y, width, height in pixels, relative to the enclosing group). Widget versions
are the ones Phoebus writes itself (3.0.0 for action buttons and text entries, 2.0.0 else).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DISPLAY_VERSION = "2.0.0"
_WIDGET_VERSIONS = {"action_button": "3.0.0", "textentry": "3.0.0"}
#: Phoebus ``format`` of a text field: 6 shows a CHAR waveform as a string.
FORMAT_STRING = "6"
#: ``horizontal_alignment`` values.
LEFT, CENTER, RIGHT = "0", "1", "2"


@dataclass(frozen=True)
class Box:
    """Where a widget sits, in pixels."""

    x: int
    y: int
    width: int
    height: int


def display(name: str, width: int, height: int, children: Iterable[ET.Element]) -> ET.Element:
    display_xml = ET.Element("display", version=DISPLAY_VERSION)
    _props(display_xml, name=name, width=width, height=height)
    display_xml.extend(children)
    return display_xml


def to_text(display_xml: ET.Element, comment: str) -> str:
    """The file's text: XML declaration, a comment line, two-space indentation."""
    ET.indent(display_xml, space="  ")
    body = ET.tostring(display_xml, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<!-- {comment} -->\n{body}\n'


def widget(kind: str, name: str, box: Box, **props: str | int | None) -> ET.Element:
    """A widget of Phoebus type ``kind``; ``None`` properties are left out."""
    element = ET.Element("widget", type=kind, version=_WIDGET_VERSIONS.get(kind, "2.0.0"))
    _props(element, name=name, x=box.x, y=box.y, width=box.width, height=box.height)
    _props(element, **props)
    return element


def label(text: str, box: Box, *, bold: bool = False, size: float = 14.0,
          align: str = LEFT) -> ET.Element:
    element = widget("label", text or "Label", box, text=text, horizontal_alignment=align,
                     vertical_alignment="1")
    if bold or size != 14.0:
        element.append(_font(bold=bold, size=size))
    return element


def text_update(pv: str, box: Box, *, text: bool = False, tooltip: str | None = None) -> ET.Element:
    return widget("textupdate", pv, box, pv_name=pv, tooltip=tooltip,
                  format=FORMAT_STRING if text else None, horizontal_alignment=CENTER,
                  vertical_alignment="1")


def text_entry(pv: str, box: Box, *, text: bool = False, tooltip: str | None = None) -> ET.Element:
    return widget("textentry", pv, box, pv_name=pv, tooltip=tooltip,
                  format=FORMAT_STRING if text else None, horizontal_alignment=CENTER)


def combo(pv: str, box: Box, *, tooltip: str | None = None) -> ET.Element:
    return widget("combo", pv, box, pv_name=pv, tooltip=tooltip)


def led(pv: str, box: Box) -> ET.Element:
    return widget("led", pv, box, pv_name=pv)


def write_button(pv: str, value: int, text: str, box: Box) -> ET.Element:
    """A button that writes ``value`` to ``pv`` (Start/Stop of a busy record)."""
    button = widget("action_button", f"{text} button", box, pv_name=pv, text=text)
    action = _action(button, "write_pv", text)
    _props(action, pv_name=pv, value=value)
    return button


def open_display_button(text: str, file: str, macros: Mapping[str, str], box: Box) -> ET.Element:
    """A button that opens ``file`` in a new tab with ``macros``."""
    button = widget("action_button", f"Open {file}", box, text=text)
    action = _action(button, "open_display", text)
    _props(action, file=file)
    macros_xml = ET.SubElement(action, "macros")
    _props(macros_xml, **macros)
    _props(action, target="tab")
    return button


def group(name: str, box: Box, children: Iterable[ET.Element]) -> ET.Element:
    """A titled frame; children are placed relative to its inside."""
    element = widget("group", name, box)
    element.extend(children)
    return element


def image(pv: str, box: Box, *, width_pv: str, height_pv: str, data_width: int,
          data_height: int) -> ET.Element:
    """An image of waveform ``pv`` whose data width and height follow two PVs (rules)."""
    element = widget("image", pv, box, pv_name=pv, data_width=data_width,
                     data_height=data_height, unsigned="true", autoscale="true")
    color_map = ET.SubElement(element, "color_map")
    _props(color_map, name="GRAY")
    rules = ET.SubElement(element, "rules")
    for prop, source in (("data_width", width_pv), ("data_height", height_pv)):
        rule = ET.SubElement(rules, "rule", name=f"{prop} from PV", prop_id=prop, out_exp="true")
        expression = ET.SubElement(rule, "exp", bool_exp="pvInt0 > 0")
        _props(expression, expression="pvInt0")
        _props(rule, pv_name=source)
    return element


def _action(button: ET.Element, kind: str, description: str) -> ET.Element:
    actions = ET.SubElement(button, "actions")
    action = ET.SubElement(actions, "action", type=kind)
    _props(action, description=description)
    return action


def _font(*, bold: bool, size: float) -> ET.Element:
    outer = ET.Element("font")
    ET.SubElement(outer, "font", family="Liberation Sans", style="BOLD" if bold else "REGULAR",
                  size=f"{size:.1f}")
    return outer


def _props(element: ET.Element, **props: str | int | None) -> None:
    for key, value in props.items():
        if value is not None:
            ET.SubElement(element, key).text = str(value)
