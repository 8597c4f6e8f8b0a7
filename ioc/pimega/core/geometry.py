"""Detector geometry: chips in a module, modules in an array.

A module is ``chips_y`` × ``chips_x`` chips of ``chip_size``² pixels. Chip (r, c) covers image
rows ``r·s … r·s+s−1`` and columns ``c·s … c·s+s−1``. Chips of the top half
(``r < chips_y // 2``) are mounted rotated by 180°: their pixel stream arrives with rows
and columns reversed relative to the image.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

BIT_DEPTHS = (1, 6, 12, 24)
PIXEL_PITCH_M = 55e-6
MAX_FRAME_RATE_HZ = {1: 2000.0, 6: 2000.0, 12: 2000.0, 24: 1000.0}


def check_bit_depth(bit_depth: int) -> int:
    if bit_depth not in BIT_DEPTHS:
        raise ConfigError(f"counter depth {bit_depth} bit is not one of {BIT_DEPTHS}")
    return bit_depth


def chip_stream_bytes(chip_size: int, bit_depth: int) -> int:
    """Bytes of one chip's little-endian bit stream (each chip starts on a byte boundary)."""
    return (chip_size * chip_size * check_bit_depth(bit_depth) + 7) // 8


@dataclass(frozen=True)
class ModuleGeometry:
    """One module: ``chips_x`` chips across, ``chips_y`` down, ``chip_size`` pixels a side."""

    chips_x: int = 6
    chips_y: int = 6
    chip_size: int = 256

    def __post_init__(self) -> None:
        if self.chips_x < 1 or self.chips_y < 1 or self.chip_size < 1:
            raise ConfigError(f"module geometry must be positive, got {self}")

    @property
    def width(self) -> int:
        return self.chips_x * self.chip_size

    @property
    def height(self) -> int:
        return self.chips_y * self.chip_size

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def n_chips(self) -> int:
        return self.chips_x * self.chips_y

    def chip_rotated(self, chip_row: int) -> bool:
        """Whether chips of this row arrive rotated by 180°."""
        return chip_row < self.chips_y // 2

    def chip_bytes(self, bit_depth: int) -> int:
        return chip_stream_bytes(self.chip_size, bit_depth)

    def payload_size(self, bit_depth: int) -> int:
        """Payload bytes of one frame of this module at ``bit_depth``."""
        return self.n_chips * self.chip_bytes(bit_depth)


@dataclass(frozen=True)
class ArrayLayout:
    """Modules on a grid, ``modules_x`` across and ``modules_y`` down, row-major, no gaps."""

    module: ModuleGeometry = ModuleGeometry()
    modules_x: int = 1
    modules_y: int = 1

    def __post_init__(self) -> None:
        if self.modules_x < 1 or self.modules_y < 1:
            raise ConfigError(f"array layout must have at least one module, got {self}")

    @classmethod
    def square(cls, n_modules: int, module: ModuleGeometry | None = None) -> ArrayLayout:
        """1 module → 1×1, 4 → 2×2, otherwise one row of ``n_modules``."""
        side = round(n_modules**0.5)
        across, down = (side, side) if side * side == n_modules else (n_modules, 1)
        return cls(module or ModuleGeometry(), across, down)

    @property
    def n_modules(self) -> int:
        return self.modules_x * self.modules_y

    @property
    def width(self) -> int:
        return self.modules_x * self.module.width

    @property
    def height(self) -> int:
        return self.modules_y * self.module.height

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def module_origin(self, module_id: int) -> tuple[int, int]:
        """Image (row, column) of the top-left pixel of module ``module_id``."""
        if not 0 <= module_id < self.n_modules:
            raise ConfigError(f"module {module_id} is outside the {self.n_modules}-module array")
        row, col = divmod(module_id, self.modules_x)
        return (row * self.module.height, col * self.module.width)
