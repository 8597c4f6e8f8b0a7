"""Bitshuffle-LZ4 chunks byte-identical to what HDF5 filter 32008 writes, for direct chunk writes.

The filter's chunk is a 12-byte big-endian header (uncompressed size u64, block size in bytes
u32) followed by independently compressed blocks. Because blocks are independent, a frame cut
at block boundaries compresses in parts on the calling thread and a small thread pool
(``bitshuffle.compress_lz4`` releases the GIL), and the parts simply concatenate: the frame is
finished when ``compress`` returns, so the caller may reuse its buffer at once.

These threads run bitshuffle's OpenMP loops single-threaded (an OpenMP setting of the thread,
in the OpenMP runtime bitshuffle links): on a busy machine with few cores, its spinning OpenMP
team costs three to four times the CPU of the work itself.
"""

import ctypes
import itertools
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import bitshuffle.ext as bitshuffle_ext
import numpy as np

_TARGET_BLOCK_BYTES = 8192  # bitshuffle's BSHUF_TARGET_BLOCK_SIZE_B
_BLOCK_MULTIPLE = 8  # BSHUF_BLOCKED_MULT
_MIN_BLOCK = 128  # BSHUF_MIN_RECOMMEND_BLOCK
_MIN_PART_BYTES = 1 << 16  # smaller parts cost more in thread hand-offs than they save


def default_block_size(itemsize: int) -> int:
    """Elements per block that filter 32008 picks when its block size option is 0."""
    block = _TARGET_BLOCK_BYTES // itemsize // _BLOCK_MULTIPLE * _BLOCK_MULTIPLE
    return max(block, _MIN_BLOCK)


def chunk_bound(nbytes: int) -> int:
    """An upper bound of the compressed chunk size for ``nbytes`` of input (LZ4 worst case)."""
    return 12 + nbytes + nbytes // 128 + 1024


class BitshuffleLZ4Compressor:
    """Compresses frames into filter-32008 chunks, each frame split over ``workers`` threads:
    the caller's and ``workers - 1`` pool threads."""

    def __init__(self, workers: int = 2) -> None:
        self._workers = max(workers, 1)
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max(self._workers - 1, 1), "bslz4", initializer=_single_threaded_openmp)

    def compress(self, frame: np.ndarray) -> bytes:
        """The chunk for one C-contiguous frame: header + bitshuffled LZ4 blocks."""
        if self._pool is None:
            raise RuntimeError("compressor is closed")
        _single_threaded_openmp()
        flat = frame.reshape(-1)
        block = default_block_size(flat.itemsize)
        parts = min(self._workers, max(flat.nbytes // _MIN_PART_BYTES, 1))
        *others, last = _split_at_blocks(flat, block, parts)
        futures = [self._pool.submit(bitshuffle_ext.compress_lz4, part, block) for part in others]
        last_compressed = bitshuffle_ext.compress_lz4(last, block)
        header = struct.pack(">QI", flat.nbytes, block * flat.itemsize)
        return b"".join([header, *(future.result() for future in futures), last_compressed])

    def close(self) -> None:
        """Stop the worker threads (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


_openmp_configured = threading.local()


def _single_threaded_openmp() -> None:
    """Give this thread an OpenMP team of one in the OpenMP runtime bitshuffle links (once)."""
    if getattr(_openmp_configured, "done", False):
        return
    _openmp_configured.done = True
    try:
        set_num_threads = ctypes.CDLL(bitshuffle_ext.__file__).omp_set_num_threads
    except (OSError, AttributeError):
        return  # bitshuffle built without OpenMP
    set_num_threads(1)


def _split_at_blocks(flat: np.ndarray, block: int, parts: int) -> list[np.ndarray]:
    """At most ``parts`` consecutive non-empty pieces, all but the last whole blocks."""
    step = (-(-(flat.size // block) // parts) or 1) * block
    bounds = [min(index * step, flat.size) for index in range(parts)] + [flat.size]
    return [flat[start:stop] for start, stop in itertools.pairwise(bounds) if stop > start]
