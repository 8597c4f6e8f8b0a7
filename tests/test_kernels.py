"""The 12/24-bit block kernel (``kernels.assemble_blocks``) against the reference decoder.

It writes 64-byte blocks with raw vector loads and stores (no bounds checks), streams whole
cache lines past the cache, and stitches lines that span two chips or two image rows, so it
is checked where that logic branches: chip sizes that a block does or does not divide, every
position of the image within a cache line, modules side by side (rows that do not continue
into the next image row), one module per call (as the CPU backend calls it), runs of rows
that do not divide the chip, and payloads that end or start right at an unmapped page.
"""

from __future__ import annotations

import ctypes
import mmap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pimega.core import bitpack
from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.pipeline import kernels
from pimega.pipeline.assemble import assemble_reference, decode_assemble


def random_payloads(layout: ArrayLayout, bit_depth: int, seed: int) -> np.ndarray:
    """Random bytes: every value of every pixel is valid at 12 and 24 bit."""
    size = layout.module.payload_size(bit_depth)
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(layout.n_modules, size), dtype=np.uint8)


def out_at(layout: ArrayLayout, bit_depth: int, offset: int) -> np.ndarray:
    """An image buffer starting ``offset`` bytes past a cache line, filled with junk."""
    dtype = bitpack.dtype_for_depth(bit_depth)
    nbytes = layout.shape[0] * layout.shape[1] * dtype.itemsize
    buffer = np.empty(nbytes + 2 * kernels.LINE, dtype=np.uint8)
    start = (-buffer.ctypes.data) % kernels.LINE + offset
    out = buffer[start : start + nbytes].view(dtype).reshape(layout.shape)
    out[...] = 0xA5A5A5A5 & np.iinfo(dtype).max
    return out


def per_module(payloads, layout, bit_depth, out, streaming=True):
    """Each module in its own call, as ``CpuProcessor`` does."""
    offsets = np.zeros(1, dtype=np.int64)
    for m in range(layout.n_modules):
        origin = np.array([layout.module_origin(m)], dtype=np.int64)
        kernels.run_assemble(payloads[m], offsets, out, origin, layout, bit_depth, streaming)
    return out


def test_which_chip_sizes_take_blocks():
    assert kernels.uses_blocks(256, 12) and kernels.uses_blocks(256, 24)
    assert kernels.uses_blocks(32, 12) and kernels.uses_blocks(34, 12)
    assert not kernels.uses_blocks(30, 12)  # less than a block
    assert not kernels.uses_blocks(33, 12)  # rows end inside a 3-byte group
    assert kernels.uses_blocks(16, 24) and kernels.uses_blocks(17, 24)
    assert not kernels.uses_blocks(15, 24)
    assert not any(kernels.uses_blocks(256, depth) for depth in (1, 6))


@pytest.mark.parametrize(("bit_depth", "chip_size"),
                         [(12, 32), (12, 34), (12, 48), (12, 66), (24, 16), (24, 17), (24, 34)])
@pytest.mark.parametrize("modules", [(1, 1), (2, 1), (1, 2)])
def test_every_offset_in_a_cache_line(bit_depth, chip_size, modules):
    layout = ArrayLayout(ModuleGeometry(3, 2, chip_size), *modules)
    payloads = random_payloads(layout, bit_depth, seed=chip_size)
    expected = assemble_reference(payloads, layout, bit_depth)
    stream = payloads.reshape(-1)
    offsets = np.arange(layout.n_modules, dtype=np.int64) * payloads.shape[1]
    origins = np.array([layout.module_origin(m) for m in range(layout.n_modules)], np.int64)
    itemsize = expected.itemsize
    for offset in range(0, kernels.LINE, itemsize):  # 2 mod 4 at 12 bit: the plain stores
        for streaming in (True, False):
            out = out_at(layout, bit_depth, offset)
            kernels.run_assemble(stream, offsets, out, origins, layout, bit_depth, streaming)
            np.testing.assert_array_equal(out, expected, err_msg=f"{offset=} {streaming=}")
    np.testing.assert_array_equal(per_module(payloads, layout, bit_depth,
                                             out_at(layout, bit_depth, 16)), expected)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bit_depth=st.sampled_from([12, 24]), chips_x=st.integers(1, 4),
       chips_y=st.integers(1, 4), chip_size=st.integers(16, 80),
       modules_x=st.integers(1, 2), modules_y=st.integers(1, 2),
       offset=st.integers(0, 15), streaming=st.booleans(), one_call=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_blocks_match_the_reference(bit_depth, chips_x, chips_y, chip_size, modules_x,
                                    modules_y, offset, streaming, one_call, seed):
    if bit_depth == 12:
        chip_size = max(32, chip_size - chip_size % 2)
    layout = ArrayLayout(ModuleGeometry(chips_x, chips_y, chip_size), modules_x, modules_y)
    assert kernels.uses_blocks(chip_size, bit_depth)
    payloads = random_payloads(layout, bit_depth, seed)
    expected = assemble_reference(payloads, layout, bit_depth)
    out = out_at(layout, bit_depth, offset * expected.itemsize)
    if one_call:
        stream = payloads.reshape(-1)
        offsets = np.arange(layout.n_modules, dtype=np.int64) * payloads.shape[1]
        origins = np.array([layout.module_origin(m) for m in range(layout.n_modules)], np.int64)
        kernels.run_assemble(stream, offsets, out, origins, layout, bit_depth, streaming)
    else:
        per_module(payloads, layout, bit_depth, out, streaming)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("bit_depth", [12, 24])
def test_full_module(bit_depth):
    """The real geometry, through ``decode_assemble`` (the pipeline's and the bench's path)."""
    layout = ArrayLayout(ModuleGeometry())
    payloads = random_payloads(layout, bit_depth, seed=bit_depth)
    expected = assemble_reference(payloads, layout, bit_depth)
    np.testing.assert_array_equal(decode_assemble(payloads, layout, bit_depth), expected)
    out = out_at(layout, bit_depth, 16)  # where numpy puts a large array: 16 past a line
    assert decode_assemble(payloads, layout, bit_depth, out=out) is out
    np.testing.assert_array_equal(out, expected)
    out = out_at(layout, bit_depth, 0)
    kernels.run_assemble(payloads.reshape(-1), np.zeros(1, np.int64), out,
                         np.zeros((1, 2), np.int64), layout, bit_depth, streaming=False)
    np.testing.assert_array_equal(out, expected)


def test_read_only_payloads():
    """Payloads straight from ``bytes`` (a read-only array: its own numba specialisation)."""
    layout = ArrayLayout(ModuleGeometry(2, 2, 32))
    payloads = random_payloads(layout, 12, seed=5)
    received = np.frombuffer(payloads.tobytes(), dtype=np.uint8).reshape(payloads.shape)
    assert not received.flags.writeable
    np.testing.assert_array_equal(decode_assemble(received, layout, 12),
                                  assemble_reference(payloads, layout, 12))


def _guarded(nbytes: int, at_end: bool):
    """``nbytes`` of a fresh mapping that end (or start) right at an unmapped page (the array
    keeps the mapping alive)."""
    page = mmap.PAGESIZE
    pages = -(-nbytes // page)
    mapping = mmap.mmap(-1, (pages + 2) * page)
    whole = np.frombuffer(mapping, dtype=np.uint8)
    base = whole.ctypes.data
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for guard in (base, base + (pages + 1) * page):
        if libc.mprotect(guard, page, 0) != 0:  # PROT_NONE
            pytest.skip("mprotect is not available")
    start = (pages + 1) * page - nbytes if at_end else page
    return whole[start : start + nbytes]


@pytest.mark.skipif(not hasattr(mmap, "PAGESIZE") or not hasattr(ctypes, "CDLL"),
                    reason="needs mmap and libc")
@pytest.mark.parametrize("bit_depth", [12, 24])
@pytest.mark.parametrize("at_end", [True, False])
def test_reads_stay_inside_the_payload(bit_depth, at_end):
    """A payload right against an unmapped page: any read past its ends would crash."""
    layout = ArrayLayout(ModuleGeometry(2, 2, 34 if bit_depth == 12 else 17))
    payloads = random_payloads(layout, bit_depth, seed=7)
    expected = assemble_reference(payloads, layout, bit_depth)
    stream = _guarded(payloads.size, at_end)
    stream[:] = payloads.reshape(-1)
    for streaming in (True, False):
        out = out_at(layout, bit_depth, 16)
        kernels.run_assemble(stream, np.zeros(1, np.int64), out, np.zeros((1, 2), np.int64),
                             layout, bit_depth, streaming)
        np.testing.assert_array_equal(out, expected)


def test_warm_up_compiles_the_block_kernel_for_both_depths():
    kernels.warm_up()
    images = {signature[2].dtype.name for signature in kernels.assemble_blocks.signatures
              if signature[0].mutable}
    assert images >= {"uint16", "uint32"}
