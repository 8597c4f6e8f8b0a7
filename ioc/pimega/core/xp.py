"""Array-namespace lookup: stage code takes ``xp`` from its inputs, NumPy or CuPy alike."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def array_namespace(array: Any) -> ModuleType:
    """``cupy`` for a CuPy array, ``numpy`` for anything else."""
    if type(array).__module__.startswith("cupy"):
        import cupy  # pyright: ignore[reportMissingImports]

        return cupy
    return np
