"""Ramp filters for filtered back-projection, applied along detector rows with an FFT.

The ramp is built from its band-limited spatial kernel (Kak & Slaney, eq. 3.61:
``h[0] = 1/4``, ``h[n] = −1/(πn)²`` for odd n, 0 for even n), not sampled as ``|ν|`` in
frequency: sampling ``|ν|`` loses the kernel's DC term and shifts the reconstruction's
mean. Its spectrum is ``|ν|`` (ν in cycles per pixel, up to ½), which the apodising
windows then shape. Rows are zero-padded to a power of two ≥ twice their width, so the
circular convolution equals the linear one over the detector.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

from pimega.core.errors import ConfigError
from pimega.core.xp import array_namespace

from .normalize import as_float32

# Window of each filter as a function of frequency ν in cycles per pixel (0 … ½).
WINDOWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "ram-lak": np.ones_like,
    "shepp-logan": np.sinc,
    "cosine": lambda nu: np.cos(np.pi * nu),
    "hamming": lambda nu: 0.54 + 0.46 * np.cos(2 * np.pi * nu),
    "hann": lambda nu: 0.5 + 0.5 * np.cos(2 * np.pi * nu),
}
FILTERS = tuple(WINDOWS)


def check_filter(name: str) -> str:
    """``name`` if it is a known filter, else :class:`ConfigError` listing them."""
    if name not in WINDOWS:
        raise ConfigError(f"unknown filter {name!r}; choose one of {', '.join(FILTERS)}")
    return name


def padded_length(width: int) -> int:
    """FFT length for rows of ``width`` pixels: a power of two ≥ 2·width (at least 64)."""
    return max(64, 1 << (2 * width - 1).bit_length())


@cache
def filter_response(name: str, n_fft: int) -> np.ndarray:
    """Real response of filter ``name`` at the ``n_fft // 2 + 1`` frequencies of an rfft."""
    kernel = np.zeros(n_fft)
    kernel[0] = 0.25
    odd = np.arange(1, n_fft, 2)
    distance = np.minimum(odd, n_fft - odd)
    kernel[odd] = -1.0 / (np.pi * distance) ** 2
    ramp = np.fft.rfft(kernel).real
    response = (ramp * WINDOWS[check_filter(name)](np.fft.rfftfreq(n_fft))).astype(np.float32)
    response.flags.writeable = False
    return response


def filter_rows(rows: Any, name: str = "ram-lak") -> Any:
    """Ramp-filter every row (last axis) of ``rows``; float32, same shape and namespace."""
    xp = array_namespace(rows)
    width = rows.shape[-1]
    n_fft = padded_length(width)
    spectrum = xp.fft.rfft(as_float32(rows), n=n_fft, axis=-1)
    spectrum *= xp.asarray(filter_response(name, n_fft))
    return as_float32(xp.fft.irfft(spectrum, n=n_fft, axis=-1)[..., :width])
