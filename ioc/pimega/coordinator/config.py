"""What the array coordinator drives: the module nodes' IOC prefixes and where each module
sits in the array.

A small TOML file (every key has the default shown; ``[[module]]`` tables in row-major order
need no ``position``)::

    modules_x = 2            # modules across
    modules_y = 2            # modules down
    chips = [6, 6]           # chips across, down, per module
    chip_size = 256          # pixels per chip side

    [[module]]
    prefix = "PIMEGA:N1:"    # the module node's IOC
    position = [0, 0]        # [row, column] in the array, from the top left

Without a file (:func:`default_config`) the nodes are ``<prefix>N1:`` … ``<prefix>N4:`` of a
2×2 array, row-major. A module's id is its row-major place (``row · modules_x + column``), as
:meth:`~pimega.core.geometry.ArrayLayout.module_origin` counts; whole modules are not rotated
(the layout has no module rotation: each node assembles its module upright).
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pimega.core.errors import ConfigError
from pimega.core.geometry import ArrayLayout, ModuleGeometry

_KEYS = {"modules_x", "modules_y", "chips", "chip_size", "module"}


@dataclass(frozen=True)
class ModuleNode:
    """One module node: its IOC's PV prefix and its module id (row-major place)."""

    prefix: str
    module_id: int

    @property
    def label(self) -> str:
        """``M1 (PIMEGA:N1:)``: the module as the coordinator's PVs (``cam1:M1:``) name it."""
        return f"M{self.module_id + 1} ({self.prefix})"


@dataclass(frozen=True)
class ArrayConfig:
    """The array's layout and one node per module, in module-id order."""

    layout: ArrayLayout
    modules: tuple[ModuleNode, ...]

    def __post_init__(self) -> None:
        ids = [m.module_id for m in self.modules]
        if sorted(ids) != list(range(self.layout.n_modules)):
            raise ConfigError(f"the {self.layout.modules_x}x{self.layout.modules_y} array needs "
                              f"one node for each of modules 0 … {self.layout.n_modules - 1}, "
                              f"got modules {sorted(ids)}")
        prefixes = [m.prefix for m in self.modules]
        if len(set(prefixes)) != len(prefixes) or not all(prefixes):
            raise ConfigError(f"module prefixes must be distinct and not empty, got {prefixes}")
        object.__setattr__(self, "modules",
                           tuple(sorted(self.modules, key=lambda m: m.module_id)))


def default_config(prefix: str, module: ModuleGeometry | None = None) -> ArrayConfig:
    """2×2 modules ``<prefix>N1:`` … ``<prefix>N4:``, row-major."""
    layout = ArrayLayout(module or ModuleGeometry(), 2, 2)
    return ArrayConfig(layout, tuple(ModuleNode(f"{prefix}N{i + 1}:", i)
                                     for i in range(layout.n_modules)))


def load_config(path: Path) -> ArrayConfig:
    """Read a configuration file (see the module docstring); refuse it with the reason."""
    try:
        return parse_config(tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the array configuration {path}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_config(data: dict[str, Any]) -> ArrayConfig:
    """The configuration a parsed TOML document describes."""
    if unknown := sorted(set(data) - _KEYS):
        raise ConfigError(f"unknown keys {unknown}; known: {sorted(_KEYS)}")
    across, down = _ints(data.get("chips", [6, 6]), 2, "chips")
    module = ModuleGeometry(across, down, _ints([data.get("chip_size", 256)], 1, "chip_size")[0])
    layout = ArrayLayout(module, _ints([data.get("modules_x", 2)], 1, "modules_x")[0],
                         _ints([data.get("modules_y", 2)], 1, "modules_y")[0])
    entries = data.get("module", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("modules are [[module]] tables")
    return ArrayConfig(layout, tuple(_module(entry, index, layout)
                                     for index, entry in enumerate(entries)))


def _module(entry: dict[str, Any], index: int, layout: ArrayLayout) -> ModuleNode:
    if unknown := sorted(set(entry) - {"prefix", "position"}):
        raise ConfigError(f"module {index + 1}: unknown keys {unknown}")
    prefix = entry.get("prefix")
    if not isinstance(prefix, str):
        raise ConfigError(f"module {index + 1}: needs a prefix (a string)")
    if "position" not in entry:
        return ModuleNode(prefix, index)
    row, column = _ints(entry["position"], 2, f"module {index + 1} position")
    if not (0 <= row < layout.modules_y and 0 <= column < layout.modules_x):
        raise ConfigError(f"module {prefix} position [{row}, {column}] lies outside the "
                          f"{layout.modules_y} rows x {layout.modules_x} columns")
    return ModuleNode(prefix, row * layout.modules_x + column)


def _ints(values: Any, count: int, what: str) -> Sequence[int]:
    """``values``, a list of ``count`` whole numbers (one wrapped in a list by the caller)."""
    if (not isinstance(values, list) or len(values) != count
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)):
        shown = values[0] if count == 1 and isinstance(values, list) else values
        raise ConfigError(f"{what} must be {count} whole number{'s' * (count > 1)}, "
                          f"got {shown!r}")
    return values
