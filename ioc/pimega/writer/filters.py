"""HDF5 compression of the frame dataset, as ADCore's NDFileHDF5 offers it (its
``Compression`` choices), through h5py and hdf5plugin so that any reader with both decodes it.

``bslz4`` chunks are compressed by the writer itself and stored with ``write_direct_chunk``
(decision 5); the other filters run inside HDF5 when a frame is written. JPEG has no HDF5
filter in h5py or hdf5plugin: it is refused with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import h5py
import numpy as np

from pimega.core.errors import ConfigError

Compression = Literal["none", "nbit", "szip", "zlib", "blosc", "bslz4", "lz4", "jpeg"]
COMPRESSIONS: tuple[str, ...] = get_args(Compression)
#: Blosc's sub-compressors in ADCore's BloscCompressor order.
BLOSC_COMPRESSORS = ("blosclz", "lz4", "lz4hc", "snappy", "zlib", "zstd")
#: Blosc's shuffles in ADCore's BloscShuffle order.
BLOSC_SHUFFLES = ("none", "byte", "bit")
#: hdf5plugin's Blosc shuffle values (NOSHUFFLE, SHUFFLE, BITSHUFFLE).
_BLOSC_SHUFFLE = {"none": 0, "byte": 1, "bit": 2}
#: Compressions whose HDF5 filters come from hdf5plugin (imported when one is used: a
#: machine without it still writes the others).
_PLUGIN_FILTERS = frozenset({"lz4", "blosc", "bslz4"})
#: Bytes a compressor may add to a frame that does not compress, beyond 1/8 of it.
_EXPANSION_BYTES = 4096


@dataclass(frozen=True)
class CompressionOptions:
    """ADCore's ZLevel, Blosc{Compressor,Level,Shuffle}, NumDataBits/DataBitsOffset (N-bit:
    0 bits stores the counter depth) and SZipNumPixels."""

    zlib_level: int = 6
    blosc_compressor: str = "blosclz"
    blosc_level: int = 5
    blosc_shuffle: str = "none"
    nbit_bits: int = 0
    nbit_offset: int = 0
    szip_pixels: int = 16

    def __post_init__(self) -> None:
        if not 0 <= self.zlib_level <= 9:
            raise ConfigError(f"zlib level must be 0..9, got {self.zlib_level}")
        if not 0 <= self.blosc_level <= 9:
            raise ConfigError(f"Blosc level must be 0..9, got {self.blosc_level}")
        if self.blosc_compressor not in BLOSC_COMPRESSORS:
            raise ConfigError(f"Blosc compressor {self.blosc_compressor!r} is not one of "
                              f"{BLOSC_COMPRESSORS}")
        if self.blosc_shuffle not in BLOSC_SHUFFLES:
            raise ConfigError(f"Blosc shuffle {self.blosc_shuffle!r} is not one of "
                              f"{BLOSC_SHUFFLES}")
        if self.nbit_bits < 0 or self.nbit_offset < 0:
            raise ConfigError("N-bit precision and offset must be ≥ 0")
        if self.szip_pixels < 2 or self.szip_pixels > 32 or self.szip_pixels % 2:
            raise ConfigError(f"szip pixels per block must be even, 2..32, got "
                              f"{self.szip_pixels}")


def check_compression(name: str) -> None:
    """Refuse, with the reason, a compression this writer cannot provide."""
    if name not in COMPRESSIONS:
        raise ConfigError(f"compression {name!r} is not one of {COMPRESSIONS}")
    if name == "jpeg":
        raise ConfigError("JPEG compression is not available: neither h5py nor hdf5plugin "
                          "provides an HDF5 JPEG filter")
    if name == "szip" and not h5py.h5z.filter_avail(h5py.h5z.FILTER_SZIP):
        raise ConfigError("szip compression is not available: this HDF5 has no szip encoder")
    if name in _PLUGIN_FILTERS:
        _hdf5plugin()


def _hdf5plugin() -> Any:
    """hdf5plugin, its filters registered with HDF5; refused with the reason when missing."""
    try:
        import hdf5plugin
    except ImportError as exc:
        raise ConfigError(f"LZ4, Blosc and BSLZ4 need hdf5plugin, which does not load here: "
                          f"{exc}") from None
    return hdf5plugin


def chunk_bound(compression: str, frame_nbytes: int) -> int:
    """The most bytes a frame's chunk may take on disk with this compression."""
    if compression == "none":
        return frame_nbytes
    return frame_nbytes + frame_nbytes // 8 + _EXPANSION_BYTES


def filter_arguments(compression: str, options: CompressionOptions) -> dict[str, Any]:
    """``create_dataset`` keyword arguments of an HDF5 filter (not for ``nbit``)."""
    if compression == "zlib":
        return {"compression": "gzip", "compression_opts": options.zlib_level}
    if compression == "szip":
        return {"compression": "szip", "compression_opts": ("nn", options.szip_pixels)}
    if compression not in _PLUGIN_FILTERS:
        return {}
    plugin = _hdf5plugin()
    if compression == "lz4":
        return dict(plugin.LZ4())
    if compression == "blosc":
        return dict(plugin.Blosc(cname=options.blosc_compressor, clevel=options.blosc_level,
                                 shuffle=_BLOSC_SHUFFLE[options.blosc_shuffle]))
    return dict(plugin.Bitshuffle(cname="lz4"))


def create_nbit_dataset(group: h5py.Group, name: str, frame_shape: tuple[int, int],
                        dtype: np.dtype, bits: int, offset: int) -> h5py.Dataset:
    """An extensible frame dataset stored with HDF5's N-bit filter: each pixel keeps
    ``bits`` bits from bit ``offset`` of an integer type (ADCore's NumDataBits/DataBitsOffset).
    """
    if dtype.kind not in "ui":
        raise ConfigError(f"N-bit compression needs integer frames, not {dtype}")
    if bits < 1 or offset + bits > 8 * dtype.itemsize:
        raise ConfigError(f"N-bit: {bits} bits from bit {offset} do not fit {dtype}")
    file_type = h5py.h5t.py_create(dtype).copy()
    file_type.set_precision(bits)
    file_type.set_offset(offset)
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_chunk((1, *frame_shape))
    plist.set_filter(h5py.h5z.FILTER_NBIT, h5py.h5z.FLAG_OPTIONAL)
    space = h5py.h5s.create_simple((0, *frame_shape), (h5py.h5s.UNLIMITED, *frame_shape))
    return h5py.Dataset(h5py.h5d.create(group.id, name.encode(), file_type, space, dcpl=plist))
