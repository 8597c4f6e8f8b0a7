"""Pipeline stages: decode + assemble (fast kernel vs reference), corrections, stats, ROI."""

import dataclasses

import numpy as np
import pytest

from pimega.core import bitpack
from pimega.core.errors import ConfigError
from pimega.core.geometry import BIT_DEPTHS, ArrayLayout, ModuleGeometry
from pimega.pipeline import kernels, stats_kernel
from pimega.pipeline.assemble import assemble_reference, decode_assemble
from pimega.pipeline.correct import Corrections, apply_corrections, output_dtype
from pimega.pipeline.stats import (
    Stats,
    bin_for_preview,
    compute_stats,
    preview_factor,
    reference_stats,
    roi,
)


def payloads_from_image(image, layout, bit_depth):
    """The wire payloads a detector sends for ``image``, written from DESIGN.md directly.

    Module m sits at grid (m // modules_x, m % modules_x). Chips go out in chip-major order;
    a chip of the top half of the chip rows is sent rotated by 180°.
    """
    module = layout.module
    s = module.chip_size
    payloads = []
    for m in range(layout.modules_x * layout.modules_y):
        grid_row, grid_col = divmod(m, layout.modules_x)
        top, left = grid_row * module.height, grid_col * module.width
        chips = []
        for r in range(module.chips_y):
            for c in range(module.chips_x):
                tile = image[top + r * s : top + (r + 1) * s, left + c * s : left + (c + 1) * s]
                if r < module.chips_y // 2:
                    tile = np.rot90(tile, 2)
                chips.append(bitpack.pack(np.ascontiguousarray(tile).reshape(-1), bit_depth))
        payloads.append(np.concatenate(chips))
    return np.stack(payloads)


def random_image(layout, bit_depth, seed):
    rng = np.random.default_rng(seed)
    dtype = bitpack.dtype_for_depth(bit_depth)
    return rng.integers(0, 1 << bit_depth, size=layout.shape, dtype=np.uint64).astype(dtype)


LAYOUTS = {
    "2x2 chips of 16": ArrayLayout(ModuleGeometry(2, 2, 16)),
    "3x2 chips of 8": ArrayLayout(ModuleGeometry(3, 2, 8)),
    "2x3 chips of 5": ArrayLayout(ModuleGeometry(2, 3, 5)),
    "2x2 modules of 2x3 chips of 8": ArrayLayout(ModuleGeometry(2, 3, 8), 2, 2),
    "2x2 modules of 2x2 chips of 5": ArrayLayout(ModuleGeometry(2, 2, 5), 2, 2),
    "2x1 modules of 1x4 chips of 12": ArrayLayout(ModuleGeometry(1, 4, 12), 2, 1),
}


@pytest.mark.parametrize("bit_depth", BIT_DEPTHS)
@pytest.mark.parametrize("name", LAYOUTS)
def test_fast_path_matches_reference_and_image(name, bit_depth):
    layout = LAYOUTS[name]
    image = random_image(layout, bit_depth, seed=bit_depth)
    payloads = payloads_from_image(image, layout, bit_depth)
    reference = assemble_reference(payloads, layout, bit_depth)
    fast = decode_assemble(payloads, layout, bit_depth)
    assert reference.dtype == fast.dtype == bitpack.dtype_for_depth(bit_depth)
    np.testing.assert_array_equal(reference, image)
    np.testing.assert_array_equal(fast, image)


def test_top_chips_arrive_rotated_by_180_degrees():
    """2x2 chips of 2 at 24 bit, written out by hand from DESIGN.md's rule."""
    layout = ArrayLayout(ModuleGeometry(2, 2, 2))
    # chip (r, c) sends pixels 10·(2r + c) + i, i = 0..3, each 3 bytes little-endian
    # with 0x020000 added so the byte order matters
    stream = [10 * chip + i + 0x020000 for chip in range(4) for i in range(4)]
    payload = np.array([[v & 0xFF, (v >> 8) & 0xFF, v >> 16] for v in stream], dtype=np.uint8)
    expected = np.array([
        [3, 2, 13, 12],  # top chips: stream row 1 reversed lands on image row 0
        [1, 0, 11, 10],
        [20, 21, 30, 31],  # bottom chips as sent
        [22, 23, 32, 33],
    ]) + 0x020000
    payloads = payload.reshape(1, -1)
    np.testing.assert_array_equal(decode_assemble(payloads, layout, 24), expected)
    np.testing.assert_array_equal(assemble_reference(payloads, layout, 24), expected)


def test_strided_payloads_and_preallocated_out():
    """Payloads as rows of ring slots (header bytes in between), written into a given out."""
    layout = ArrayLayout(ModuleGeometry(2, 2, 16), 2, 1)
    image = random_image(layout, 12, seed=3)
    payloads = payloads_from_image(image, layout, 12)
    slots = np.zeros((2, 40 + payloads.shape[1] + 8), dtype=np.uint8)
    slots[:, 40 : 40 + payloads.shape[1]] = payloads
    out = np.zeros(layout.shape, dtype=np.uint16)
    assert decode_assemble(slots[:, 40 : 40 + payloads.shape[1]], layout, 12, out=out) is out
    np.testing.assert_array_equal(out, image)
    backwards = payloads[::-1].copy()[::-1]  # same rows, stored last to first
    assert backwards.strides[0] < 0
    np.testing.assert_array_equal(decode_assemble(backwards, layout, 12), image)
    received = np.frombuffer(payloads.tobytes(), dtype=np.uint8).reshape(payloads.shape)
    assert not received.flags.writeable
    np.testing.assert_array_equal(decode_assemble(received, layout, 12), image)


def test_decode_assemble_rejects_wrong_shapes():
    layout = ArrayLayout(ModuleGeometry(2, 2, 8))
    size = layout.module.payload_size(12)
    with pytest.raises(ConfigError, match=r"shape \(1, 10\), expected \(1, 384\)"):
        decode_assemble(np.zeros((1, 10), np.uint8), layout, 12)
    with pytest.raises(ConfigError, match=r"shape \(2, 384\)"):
        decode_assemble(np.zeros((2, size), np.uint8), layout, 12)
    with pytest.raises(ConfigError, match="uint8"):
        decode_assemble(np.zeros((1, size), np.uint16), layout, 12)
    with pytest.raises(ConfigError, match="expected uint16"):
        decode_assemble(np.zeros((1, size), np.uint8), layout, 12, out=np.zeros((16, 16)))
    with pytest.raises(ConfigError, match="C-contiguous"):
        out = np.zeros((16, 32), np.uint16)[:, ::2]
        decode_assemble(np.zeros((1, size), np.uint8), layout, 12, out=out)
    with pytest.raises(ConfigError, match="counter depth 7"):
        decode_assemble(np.zeros((1, size), np.uint8), layout, 7)


def test_warm_up_compiles_every_kernel():
    kernels.warm_up()
    for kernel in (*kernels.FAST_KERNELS.values(), kernels.assemble_any):
        assert any(signature[0].mutable for signature in kernel.signatures)


# --- corrections -----------------------------------------------------------------------


def test_output_dtype():
    none, dark = Corrections(), Corrections(dark=np.zeros((2, 2)))
    assert [output_dtype(d, none) for d in BIT_DEPTHS] == [np.uint8, np.uint8, np.uint16,
                                                           np.uint32]
    assert output_dtype(12, dark) == np.float32
    assert output_dtype(24, Corrections(flat=np.ones((2, 2)))) == np.float32
    assert output_dtype(12, Corrections(bad_pixel_mask=np.zeros((2, 2), bool))) == np.uint16


def test_raw_image_with_mask_keeps_dtype():
    image = np.arange(1, 7, dtype=np.uint16).reshape(2, 3)
    mask = np.array([[False, True, False], [False, False, True]])
    corrected = apply_corrections(image, Corrections(bad_pixel_mask=mask))
    assert corrected.dtype == np.uint16
    np.testing.assert_array_equal(corrected, [[1, 0, 3], [4, 5, 0]])
    np.testing.assert_array_equal(image, np.arange(1, 7).reshape(2, 3))  # input untouched
    assert apply_corrections(image, Corrections()) is image
    assert apply_corrections(image, Corrections(bad_pixel_mask=mask), out=image) is image
    np.testing.assert_array_equal(image, [[1, 0, 3], [4, 5, 0]])


def test_dark_only_subtracts_into_float32():
    image = np.array([[10, 20], [30, 40]], dtype=np.uint32)
    dark = np.array([[1, 25], [0, 0]], dtype=np.uint16)
    mask = np.array([[False, False], [False, True]])
    corrected = apply_corrections(image, Corrections(dark=dark, bad_pixel_mask=mask))
    assert corrected.dtype == np.float32
    np.testing.assert_array_equal(corrected, [[9, -5], [30, 0]])


def test_flat_field_with_zero_and_negative_denominators():
    image = np.array([[10, 20, 30], [40, 50, 60]], dtype=np.uint16)
    dark = np.array([[2, 4, 5], [5, 5, 5]], dtype=np.float32)
    flat = np.array([[6, 4, 3], [15, 25, 45]], dtype=np.float32)  # flat − dark: 4 0 −2 10 20 40
    mask = np.array([[False, False, False], [False, True, False]])
    corrected = apply_corrections(image, Corrections(dark=dark, flat=flat, bad_pixel_mask=mask))
    assert corrected.dtype == np.float32
    np.testing.assert_allclose(corrected, [[2, 0, 0], [3.5, 0, 55 / 40]], rtol=1e-6)
    flat_only = apply_corrections(image, Corrections(flat=np.array([[2, 0, 4]] * 2, np.uint16)))
    np.testing.assert_allclose(flat_only, [[5, 0, 7.5], [20, 0, 15]])


def test_corrections_reject_mismatched_shapes():
    with pytest.raises(ConfigError, match="differ in shape"):
        Corrections(dark=np.zeros((2, 2)), flat=np.ones((2, 3)))
    with pytest.raises(ConfigError, match="must be bool"):
        Corrections(bad_pixel_mask=np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="does not match"):
        apply_corrections(np.zeros((3, 3), np.uint16), Corrections(dark=np.zeros((2, 2))))
    with pytest.raises(ConfigError, match="expected float32"):
        apply_corrections(np.zeros((2, 2), np.uint16), Corrections(dark=np.zeros((2, 2))),
                          out=np.zeros((2, 2), np.uint16))


# --- statistics ------------------------------------------------------------------------


def test_stats_of_two_spots():
    image = np.zeros((5, 6), dtype=np.uint16)
    image[2, 1] = 4  # (x=1, y=2)
    image[2, 3] = 4  # (x=3, y=2)
    image[4, 5] = 1  # below the threshold of 2
    stats = compute_stats(image, centroid_threshold=2)
    assert (stats.centroid_x, stats.centroid_y) == (2.0, 2.0)
    assert (stats.sigma_x, stats.sigma_y, stats.sigma_xy) == (1.0, 0.0, 0.0)
    assert stats.total == stats.net == 9
    assert (stats.max_value, stats.max_x, stats.max_y) == (4, 1, 2)  # first of the two maxima
    assert (stats.min_value, stats.min_x, stats.min_y) == (0, 0, 0)
    # threshold 0: the weak pixel counts too
    assert compute_stats(image).centroid_x == pytest.approx((4 + 12 + 5) / 9)


def test_stats_against_plain_numpy():
    rng = np.random.default_rng(7)
    image = rng.integers(0, 1000, size=(20, 30)).astype(np.uint32)
    threshold = 300
    stats = compute_stats(image, centroid_threshold=threshold)
    values = image.astype(float)
    weights = np.where(values >= threshold, values, 0)
    ys, xs = np.indices(image.shape)
    cx = np.average(xs, weights=weights)
    cy = np.average(ys, weights=weights)
    sx = np.sqrt(np.average((xs - cx) ** 2, weights=weights))
    sy = np.sqrt(np.average((ys - cy) ** 2, weights=weights))
    sxy = np.average((xs - cx) * (ys - cy), weights=weights) / (sx * sy)
    got = [stats.total, stats.mean, stats.sigma, stats.centroid_x, stats.centroid_y,
           stats.sigma_x, stats.sigma_y, stats.sigma_xy]
    want = [values.sum(), values.mean(), values.std(), cx, cy, sx, sy, sxy]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    i_min, i_max = np.argmin(image), np.argmax(image)
    assert (stats.min_y, stats.min_x) == np.unravel_index(i_min, image.shape)
    assert (stats.max_y, stats.max_x) == np.unravel_index(i_max, image.shape)
    assert (stats.min_value, stats.max_value) == (image.min(), image.max())
    region = compute_stats(roi(image, 3, 2, 10, 8))  # a strided view
    assert region.total == image[2:10, 3:13].sum()
    assert (region.max_y, region.max_x) == np.unravel_index(image[2:10, 3:13].argmax(), (8, 10))


def test_stats_of_an_empty_image_are_zero():
    stats = compute_stats(np.zeros((4, 4), dtype=np.uint8))
    assert stats.total == stats.sigma == stats.centroid_x == stats.sigma_xy == 0
    above_everything = compute_stats(np.ones((4, 4), np.float32), centroid_threshold=5)
    assert above_everything.centroid_y == 0 and above_everything.total == 16


# --- statistics kernel vs reference --------------------------------------------------

EXACT_FIELDS = ("min_value", "max_value", "min_x", "min_y", "max_x", "max_y")


@pytest.fixture
def kernel_only(monkeypatch):
    """compute_stats with its reference fallback made to fail: the kernel must answer."""

    def no_fallback(*args):
        raise AssertionError("compute_stats fell back to reference_stats")

    monkeypatch.setattr("pimega.pipeline.stats.reference_stats", no_fallback)


def assert_same_stats(got: Stats, want: Stats):
    """Extremes and their positions equal; sums and moments to 1e-9 relative."""
    for name in EXACT_FIELDS:
        assert getattr(got, name) == getattr(want, name), name
    for field in dataclasses.fields(Stats):
        if field.name not in EXACT_FIELDS:
            got_value, want_value = getattr(got, field.name), getattr(want, field.name)
            assert got_value == pytest.approx(want_value, rel=1e-9, abs=0), field.name


def ramp_and_noise(shape, dtype, seed, high):
    """A slope plus noise in ``dtype``: ties at the extremes, a non-trivial centroid."""
    rng = np.random.default_rng(seed)
    ys, xs = np.indices(shape)
    values = rng.integers(0, high, size=shape) * (2 + xs / shape[1] + ys / shape[0]) / 4
    return (values // 1).astype(dtype) if np.dtype(dtype).kind == "u" else values.astype(dtype)


KERNEL_CASES = {"uint8": (np.uint8, 150), "uint16": (np.uint16, 30000),
                "uint32": (np.uint32, 4_000_000_000), "float32": (np.float32, 1e6)}


@pytest.mark.usefixtures("kernel_only")
@pytest.mark.parametrize("case", KERNEL_CASES)
def test_stats_kernel_matches_reference(case):
    dtype, high = KERNEL_CASES[case]
    image = ramp_and_noise((97, 131), dtype, seed=len(case), high=high)
    values = np.sort(image, axis=None)
    for threshold in (0.0, float(values[values.size // 2]), float(values[-1]), 2.0 * high, np.nan):
        assert_same_stats(compute_stats(image, threshold), reference_stats(image, threshold))


@pytest.mark.usefixtures("kernel_only")
def test_stats_kernel_on_a_full_frame_of_large_counts():
    image = ramp_and_noise((1536, 1536), np.uint32, seed=1, high=1 << 31)
    assert_same_stats(compute_stats(image, 1e9), reference_stats(image, 1e9))


@pytest.mark.usefixtures("kernel_only")
def test_stats_kernel_float_extremes_negatives_and_signed_zeros():
    image = np.zeros((4, 5), np.float32)
    image[1, 2] = -0.0  # ties with the +0.0 before it: not the first minimum
    assert (compute_stats(image).min_x, compute_stats(image).min_y) == (0, 0)
    image[0, 3] = -1e-45  # the smallest negative (denormal) float32
    image[2, 1] = -1e-45
    image[3, 4] = 2.5
    image[0, 0] = 2.5
    want = reference_stats(image, -1.0)
    assert (want.min_x, want.min_y, want.max_x, want.max_y) == (3, 0, 0, 0)
    assert_same_stats(compute_stats(image, -1.0), want)
    negatives = ramp_and_noise((20, 30), np.float32, seed=5, high=100) - 120
    for threshold in (-200.0, -60.0, 0.0):  # all weights negative at −200: Σw < 0, centroid 0
        assert_same_stats(compute_stats(negatives, threshold), reference_stats(negatives,
                                                                               threshold))
    assert compute_stats(negatives, -200.0).centroid_x == 0


@pytest.mark.usefixtures("kernel_only")
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_stats_kernel_on_views(dtype):
    """ROI views read in place; column steps and reversed rows through a copy; same results."""
    image = ramp_and_noise((60, 70), dtype, seed=9, high=1000)
    views = [roi(image, 3, 5, 40, 30), roi(image, 69, 0, 0, 0), roi(image, 0, 59, 0, 1),
             image[:, ::3], image[::-1], image.T]
    for view in views:
        assert_same_stats(compute_stats(view, 500.0), reference_stats(view, 500.0))
    region = roi(image, 3, 5, 40, 30)
    assert not region.flags.c_contiguous
    want_total = image[5:35, 3:43].sum(dtype=np.float64)
    assert compute_stats(region).total == pytest.approx(want_total, rel=1e-12)


@pytest.mark.usefixtures("kernel_only")
def test_stats_kernel_of_an_all_zero_image():
    for dtype in (np.uint8, np.uint16, np.uint32, np.float32):
        stats = compute_stats(np.zeros((3, 7), dtype))
        assert stats == Stats(*[0] * len(dataclasses.fields(Stats)))


@pytest.mark.usefixtures("kernel_only")
def test_stats_kernel_of_a_single_bright_pixel():
    image = np.zeros((9, 11), np.uint32)
    image[6, 4] = 4_000_000_000
    for threshold in (0.0, 1.0, 4e9):
        stats = compute_stats(image, threshold)
        assert (stats.centroid_x, stats.centroid_y) == (4.0, 6.0)
        assert (stats.sigma_x, stats.sigma_y, stats.sigma_xy) == (0.0, 0.0, 0.0)
        assert (stats.max_value, stats.max_x, stats.max_y) == (4e9, 4, 6)
        assert (stats.min_value, stats.min_x, stats.min_y) == (0, 0, 0)
        assert stats.total == 4e9 and stats.mean == 4e9 / 99
    assert compute_stats(image, 4e9 + 1).centroid_x == 0  # nothing reaches the threshold


def test_stats_with_nan_or_inf_pixels_come_from_the_reference():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    image[1, 2] = np.nan
    image[2, 0] = -np.inf
    with np.errstate(invalid="ignore"):  # the reference's NaN moments warn
        got, want = compute_stats(image), reference_stats(image)
    assert np.isnan(got.total) and (got.min_x, got.min_y) == (2, 1)  # NumPy: NaN comes first
    for field in dataclasses.fields(Stats):
        np.testing.assert_equal(getattr(got, field.name), getattr(want, field.name))


def test_stats_of_other_dtypes_come_from_the_reference():
    image = np.array([[3, -7], [2, 5]], dtype=np.int16)
    stats = compute_stats(image)
    assert (stats.min_value, stats.min_x, stats.min_y, stats.total) == (-7, 1, 0, 3)
    assert stats_kernel.kernel_moments(image, 0.0) is None
    binned = roi(ramp_and_noise((8, 8), np.uint16, seed=2, high=1000), 0, 0, 0, 0, 2, 2)
    assert binned.dtype == np.uint64 and stats_kernel.kernel_moments(binned, 0.0) is None
    assert compute_stats(binned, 900.0) == reference_stats(binned, 900.0)


def test_stats_kernel_warm_up_compiles_every_dtype():
    stats_kernel.warm_up()
    compiled = {str(signature[0].dtype) for signature in stats_kernel.stats_moments.signatures}
    assert compiled >= {dtype.name for dtype in stats_kernel.KERNEL_DTYPES}


# --- ROI and preview -------------------------------------------------------------------


def test_roi_clips_and_runs_to_the_edge():
    image = np.arange(48, dtype=np.uint16).reshape(6, 8)
    np.testing.assert_array_equal(roi(image, 2, 1, 3, 2), image[1:3, 2:5])
    np.testing.assert_array_equal(roi(image, 5, 4, 0, 0), image[4:, 5:])
    np.testing.assert_array_equal(roi(image, -3, 2, 100, 1), image[2:3, :])
    np.testing.assert_array_equal(roi(image, 50, 50, 4, 4), image[5:, 7:])


def test_roi_binning_sums_into_a_wider_dtype_and_drops_edges():
    image = np.full((5, 7), 200, dtype=np.uint8)
    binned = roi(image, 0, 0, 0, 0, bin_x=3, bin_y=2)
    assert binned.dtype == np.uint64 and binned.shape == (2, 2)
    np.testing.assert_array_equal(binned, 1200)
    ramp = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(roi(ramp, 1, 0, 3, 3, bin_x=2, bin_y=5),
                                  [[1 + 2 + 5 + 6 + 9 + 10]])  # bin_y clipped to the ROI


def test_bin_for_preview_means_in_the_image_dtype():
    image = np.arange(35, dtype=np.uint16).reshape(5, 7)
    preview = bin_for_preview(image, 2)
    assert preview.dtype == np.uint16 and preview.shape == (2, 3)
    expected = image[:4, :6].reshape(2, 2, 3, 2).mean(axis=(1, 3)).astype(np.uint16)
    np.testing.assert_array_equal(preview, expected)
    floats = bin_for_preview(np.array([[1, 2], [3, 5]], np.float32), 2)
    np.testing.assert_array_equal(floats, [[2.75]])
    assert bin_for_preview(image, 1) is image


def test_preview_factor():
    assert preview_factor((1536, 1536), 1536 * 1536) == 1
    assert preview_factor((1536, 1536), 768 * 768) == 2
    assert preview_factor((1536, 1536), 768 * 768 - 1) == 3
    assert preview_factor((3072, 3072), 1_000_000) == 4
    assert preview_factor((10, 10), 1) == 10
    with pytest.raises(ConfigError):
        preview_factor((10, 10), 0)
