"""Screen sections laid out from PV metadata: the widget of each PV follows from its record.

A section names PVs by suffix under a prefix (``$(R)``, or a fixed plugin prefix such as
``HDF1:``); the IOC's own PV list says what each one is. A setpoint gets a control (combo
for enums, text entry otherwise, Start/Stop buttons for busy records) and, when the IOC
serves ``NAME_RBV``, its readback beside it; a read-only PV gets a text update (an LED too
for a ``bi``). A name the IOC does not serve is an error, so a renamed PV breaks the build
of the screens, not the operator's screen.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from . import bob
from .bob import Box
from .pvs import ServedPV, ServedPVs

ROW_HEIGHT = 20
ROW_STEP = 24
GAP = 4
LABEL_WIDTH = 210
FIELD_WIDTH = 120
LED_SIZE = 20
#: Space a Phoebus group box takes around its children (2 + 1.2 x 14 pt on each side).
GROUP_INSET = 18
SECTION_GAP = 8
TITLE_HEIGHT = 32
MARGIN = 8

ENUM_RECORDS = frozenset({"bo", "mbbo"})
TWO_STATE = frozenset({"bi", "busy"})
SHOWN_SETPOINT_RECORDS = frozenset(
    {"ao", "longout", "bo", "mbbo", "busy", "sseq", "stringout", "waveform"})


class ScreenError(ValueError):
    """A screen names a PV the IOC does not serve, or one it cannot show."""


@dataclass(frozen=True)
class Context:
    """What a section needs to lay itself out: the IOC's PVs and the screen's ``R``."""

    pvs: ServedPVs
    r: str

    def resolve(self, prefix: str, suffix: str) -> tuple[str, ServedPV]:
        """The macro name (``$(P)$(R)X``) and the served PV of ``prefix + suffix``."""
        name = prefix.replace("$(R)", self.r) + suffix
        served = self.pvs.get(name)
        if served is None:
            raise ScreenError(f"{name} (from {prefix}{suffix}) is not served by the IOC")
        return f"$(P){prefix}{suffix}", served


class Section(Protocol):
    """A titled block of widgets; coordinates inside it start at (0, 0)."""

    @property
    def title(self) -> str: ...

    def layout(self, ctx: Context) -> tuple[list[ET.Element], int, int]:
        """Its widgets, and the width and height they cover."""
        ...


def words(pv_suffix: str) -> str:
    """``"NumImagesCounter_RBV"`` → ``"Num images counter"``, ``"MaxSizeX"`` → ``"Max size X"``."""
    stem = pv_suffix.removesuffix("_RBV").replace("_", "")
    parts = re.split(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", stem)
    first, *rest = [p for p in parts if p]
    return " ".join([first, *(p if p.isupper() else p.lower() for p in rest)])


def tooltip(served: ServedPV) -> str:
    return f"$(pv_name)\n{served.doc}" if served.doc else "$(pv_name)"


def indicator(pv: str, served: ServedPV, box: Box) -> list[ET.Element]:
    """Widgets that show a PV's value in ``box``: an LED first for a two-state record (only
    the LED where the box is narrow), else a text update."""
    if served.record not in TWO_STATE:
        return [bob.text_update(pv, box, text=served.text, tooltip=tooltip(served))]
    if box.width < 2 * LED_SIZE + GAP:
        return [bob.led(pv, Box(box.x + (box.width - LED_SIZE) // 2, box.y, LED_SIZE, LED_SIZE))]
    text_box = Box(box.x + LED_SIZE + GAP, box.y, box.width - LED_SIZE - GAP, box.height)
    return [bob.led(pv, Box(box.x, box.y, LED_SIZE, LED_SIZE)),
            bob.text_update(pv, text_box, tooltip=tooltip(served))]


def control(pv: str, served: ServedPV, box: Box, *, stoppable: bool = False) -> list[ET.Element]:
    """Widgets that set a writable PV in ``box``; a busy record gets a button that starts it
    (named by its active state) and, when ``stoppable``, one that writes 0 to stop it."""
    if served.record not in SHOWN_SETPOINT_RECORDS:
        raise ScreenError(f"{pv}: a {served.record} record is not shown as a control")
    if served.record == "sseq":  # ADCore's action sequences: one button runs it
        return [bob.write_button(pv, 1, "Run", box)]
    if served.record == "busy":
        active = served.enum_strings[1]
        if not stoppable:
            return [bob.write_button(pv, 1, active, box)]
        half = (box.width - GAP) // 2
        return [bob.write_button(pv, 1, active, Box(box.x, box.y, half, box.height)),
                bob.write_button(pv, 0, "Stop", Box(box.x + half + GAP, box.y, half, box.height))]
    if served.record in ENUM_RECORDS:
        return [bob.combo(pv, box, tooltip=tooltip(served))]
    return [bob.text_entry(pv, box, text=served.text, tooltip=tooltip(served))]


@dataclass(frozen=True)
class Form:
    """One row per PV: label, then control and readback (or the read-only value)."""

    title: str
    names: Sequence[str]
    prefix: str = "$(R)"

    def layout(self, ctx: Context) -> tuple[list[ET.Element], int, int]:
        first = LABEL_WIDTH + GAP
        second = first + FIELD_WIDTH + GAP
        wide = 2 * FIELD_WIDTH + GAP
        widgets: list[ET.Element] = []
        y = 0
        for suffix in self.names:
            pv, served = ctx.resolve(self.prefix, suffix)
            widgets.append(bob.label(words(suffix), Box(0, y, LABEL_WIDTH, ROW_HEIGHT)))
            readback = ctx.pvs.readback(served.name) if served.writable else None
            if not served.writable:
                width = wide if served.text else FIELD_WIDTH
                widgets += indicator(pv, served, Box(first, y, width, ROW_HEIGHT))
            elif served.text:  # a long string: entry and readback across both fields
                widgets += control(pv, served, Box(first, y, wide, ROW_HEIGHT))
                if readback is not None:
                    y += ROW_STEP
                    widgets += indicator(f"{pv}_RBV", readback, Box(first, y, wide, ROW_HEIGHT))
            else:
                widgets += control(pv, served, Box(first, y, FIELD_WIDTH, ROW_HEIGHT),
                                   stoppable=readback is not None)
                if readback is not None:
                    widgets += indicator(f"{pv}_RBV", readback,
                                         Box(second, y, FIELD_WIDTH, ROW_HEIGHT))
                elif served.record == "busy":  # no readback: the busy record shows its state
                    widgets += indicator(pv, served, Box(second, y, FIELD_WIDTH, ROW_HEIGHT))
            y += ROW_STEP
        return widgets, second + FIELD_WIDTH, y - GAP


@dataclass(frozen=True)
class Table:
    """A grid of PVs: ``name(row_key, column_key)`` is the suffix of each cell's PV."""

    title: str
    rows: Sequence[tuple[str, str]]  # (label, key)
    columns: Sequence[tuple[str, str]]  # (header, key)
    name: Callable[[str, str], str]
    prefix: str = "$(R)"
    row_label_width: int = 80
    cell_width: int = 80
    text_width: int = 240
    header_height: int = 36

    def layout(self, ctx: Context) -> tuple[list[ET.Element], int, int]:
        cells = {(row, col): ctx.resolve(self.prefix, self.name(row, col))
                 for _, row in self.rows for _, col in self.columns}
        widths = {col: max(self._width(cell) for (_, c), cell in cells.items() if c == col)
                  for _, col in self.columns}
        widgets: list[ET.Element] = []
        x = self.row_label_width + GAP
        lefts: dict[str, int] = {}
        for header, col in self.columns:
            lefts[col] = x
            box = Box(x, 0, widths[col], self.header_height)
            widgets.append(bob.label(header, box, bold=True, size=12.0, align=bob.CENTER))
            x += widths[col] + GAP
        y = self.header_height + GAP
        for row_label, row in self.rows:
            widgets.append(bob.label(row_label, Box(0, y, self.row_label_width, ROW_HEIGHT),
                                     bold=True))
            for _, col in self.columns:
                pv, served = cells[row, col]
                widgets += self._widgets(ctx, pv, served, Box(lefts[col], y, widths[col],
                                                               ROW_HEIGHT))
            y += ROW_STEP
        return widgets, x - GAP, y - GAP

    def _width(self, cell: tuple[str, ServedPV]) -> int:
        served = cell[1]
        if served.text:
            return self.text_width
        return 2 * self.cell_width + GAP if served.writable else self.cell_width

    def _widgets(self, ctx: Context, pv: str, served: ServedPV, box: Box) -> list[ET.Element]:
        if not served.writable:
            return indicator(pv, served, box)
        half = (box.width - GAP) // 2
        readback = ctx.pvs.readback(served.name)
        widgets = control(pv, served, Box(box.x, box.y, half, box.height),
                          stoppable=readback is not None)
        if readback is not None:
            widgets += indicator(f"{pv}_RBV", readback, Box(box.x + half + GAP, box.y, half,
                                                             box.height))
        return widgets


@dataclass(frozen=True)
class Links:
    """Buttons that open other screens: (text, file, macros) each, two a row."""

    title: str
    links: Sequence[tuple[str, str, Mapping[str, str]]]
    per_row: int = 2

    def layout(self, ctx: Context) -> tuple[list[ET.Element], int, int]:
        width = (LABEL_WIDTH + 2 * FIELD_WIDTH + GAP) // self.per_row - GAP
        widgets = []
        for index, (text, file, macros) in enumerate(self.links):
            row, column = divmod(index, self.per_row)
            box = Box(column * (width + GAP), row * (ROW_HEIGHT + 2 * GAP), width,
                      ROW_HEIGHT + GAP)
            widgets.append(bob.open_display_button(text, file, macros, box))
        rows = -(-len(self.links) // self.per_row)
        return widgets, self.per_row * (width + GAP) - GAP, rows * (ROW_HEIGHT + 2 * GAP) - GAP


@dataclass(frozen=True)
class ImageView:
    """The live image of a plugin's ``ArrayData``, sized from its ``ArraySize0/1_RBV``."""

    title: str
    prefix: str
    size: int
    default_shape: tuple[int, int]  # (width, height) until the size PVs connect

    def layout(self, ctx: Context) -> tuple[list[ET.Element], int, int]:
        data, served = ctx.resolve(self.prefix, "ArrayData")
        if served.record != "waveform" or served.text:
            raise ScreenError(f"{data}: an image needs a numeric waveform, not {served.record}")
        width_pv, _ = ctx.resolve(self.prefix, "ArraySize0_RBV")
        height_pv, _ = ctx.resolve(self.prefix, "ArraySize1_RBV")
        widgets = [bob.image(data, Box(0, 0, self.size, self.size), width_pv=width_pv,
                             height_pv=height_pv, data_width=self.default_shape[0],
                             data_height=self.default_shape[1])]
        y = self.size + GAP
        cell = (self.size - LABEL_WIDTH - GAP) // 2
        widgets += [bob.label("Width x height", Box(0, y, LABEL_WIDTH, ROW_HEIGHT)),
                    bob.text_update(width_pv, Box(LABEL_WIDTH, y, cell, ROW_HEIGHT)),
                    bob.text_update(height_pv, Box(LABEL_WIDTH + cell + GAP, y, cell,
                                                   ROW_HEIGHT))]
        return widgets, self.size, y + ROW_HEIGHT


@dataclass(frozen=True)
class Note:
    """Plain text, no PVs (a placeholder for what the IOC does not serve yet)."""

    title: str
    lines: Sequence[str]
    width: int = 520

    def layout(self, ctx: Context) -> tuple[list[ET.Element], int, int]:
        widgets = [bob.label(line, Box(0, i * ROW_STEP, self.width, ROW_HEIGHT))
                   for i, line in enumerate(self.lines)]
        return widgets, self.width, len(self.lines) * ROW_STEP - GAP


@dataclass(frozen=True)
class Screen:
    """One ``.bob`` file: a title, columns of sections and sections below them, each section
    in a group box."""

    file: str
    title: str
    r: str  # the R it is opened with (for the PV look-ups); "" when it takes no R
    columns: Sequence[Sequence[Section]] = ()
    below: Sequence[Section] = ()

    def render(self, pvs: ServedPVs, comment: str) -> str:
        ctx = Context(pvs, self.r)
        children: list[ET.Element] = []
        x, bottom = MARGIN, TITLE_HEIGHT + SECTION_GAP
        for column in self.columns:
            boxes = _stack(ctx, column, x, TITLE_HEIGHT + SECTION_GAP, children)
            x = max(x, max(box.x + box.width for box in boxes) + SECTION_GAP)
            bottom = max(bottom, max(box.y + box.height for box in boxes) + SECTION_GAP)
        for box in _stack(ctx, self.below, MARGIN, bottom, children):
            x = max(x, box.x + box.width + SECTION_GAP)
            bottom = box.y + box.height + SECTION_GAP
        width = max(x - SECTION_GAP + MARGIN, 400)
        heading = bob.label(self.title, Box(MARGIN, 0, width - 2 * MARGIN, TITLE_HEIGHT),
                            bold=True, size=18.0)
        return bob.to_text(bob.display(self.title, width, bottom - SECTION_GAP + MARGIN,
                                       [heading, *children]), comment)


def _stack(ctx: Context, sections: Sequence[Section], x: int, y: int,
           out: list[ET.Element]) -> list[Box]:
    """Put each section in a group box, one under the other from (x, y); return the boxes."""
    boxes = []
    for section in sections:
        widgets, width, height = section.layout(ctx)
        box = Box(x, y, width + 2 * GROUP_INSET, height + 2 * GROUP_INSET)
        out.append(bob.group(section.title, box, widgets))
        boxes.append(box)
        y += box.height + SECTION_GAP
    return boxes
