"""Tomography stages: normalisation, filters, FBP, centre search, rings, live reconstruction;
the phantom simulator at scan speed and the reconstruction bench on tiny data."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, rescale

from pimega.cli import bench_recon
from pimega.core.errors import ConfigError
from pimega.core.geometry import ModuleGeometry
from pimega.core.wire import ImageKey
from pimega.sim import phantom
from pimega.sim.phantom import PhantomScan, density_slice, line_integrals
from pimega.tomo import (
    FILTERS,
    LiveReconstruction,
    ScanError,
    absorption,
    angle_weight,
    backproject,
    centre_from_pair,
    fbp,
    filter_rows,
    find_centre,
    sinograms,
    suppress_rings,
)
from pimega.tomo.filters import filter_response, padded_length
from pimega.tomo.normalize import MIN_TRANSMISSION, mean_frame

SIZE = 128
ANGLES = np.arange(180) * 1.0  # degrees, 0 … 179
# FBP error against the phantom (RMSE inside the disc) for these sizes: the discretisation
# of the sharp edges dominates; iradon's, on the same data, is 0.0370.
SHEPP_LOGAN_RMSE = 0.040
TINY = ModuleGeometry(2, 2, 32)  # 64 × 64 images
SKIMAGE_FILTERS = {"ram-lak": "ramp"}


def cupy_or_reason() -> str | None:
    try:
        import cupy  # pyright: ignore[reportMissingImports]
    except ImportError:
        return "CuPy not installed"
    try:
        return None if cupy.cuda.runtime.getDeviceCount() else "no CUDA device"
    except cupy.cuda.runtime.CUDARuntimeError:
        return "no CUDA device"


NO_DEVICE = cupy_or_reason()


@pytest.fixture(scope="module")
def shepp_logan() -> np.ndarray:
    """scikit-image's Shepp–Logan phantom, SIZE × SIZE."""
    return rescale(shepp_logan_phantom(), SIZE / 400)


@pytest.fixture(scope="module")
def sinogram(shepp_logan) -> np.ndarray:
    """Its (angles, columns) sinogram by scikit-image's radon: the axis at column SIZE // 2."""
    return np.ascontiguousarray(radon(shepp_logan, ANGLES).T)


def disc(size: int, margin: int = 2) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size // 2
    return x**2 + y**2 <= (size // 2 - margin) ** 2


def rmse(a: np.ndarray, b: np.ndarray, margin: int = 2) -> float:
    inside = disc(a.shape[-1], margin)
    return float(np.sqrt(np.mean((a[..., inside] - b[..., inside]) ** 2)))


def shifted(sinogram: np.ndarray, columns: float) -> np.ndarray:
    """The sinogram moved by ``columns`` (sub-pixel, by the Fourier shift theorem)."""
    n = sinogram.shape[-1]
    phase = np.exp(-2j * np.pi * np.fft.rfftfreq(n) * columns)
    return np.fft.irfft(np.fft.rfft(sinogram, axis=-1) * phase, n=n, axis=-1)


# -- normalisation ---------------------------------------------------------------------------


def test_absorption_by_hand():
    dark = np.array([[10.0, 10.0, 5.0, 10.0]])
    flat = np.array([[110.0, 210.0, 5.0, 110.0]])
    projection = np.array([[[30, 210, 7, 3]]], dtype=np.uint16)
    expected = [-math.log(0.2), 0.0, 0.0, -math.log(MIN_TRANSMISSION)]  # dead pixel: 0
    result = absorption(projection, dark, flat)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result[0, 0], expected, rtol=1e-6)


def test_mean_frame_and_sinograms():
    frames = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    np.testing.assert_array_equal(mean_frame(frames), frames.mean(axis=0))
    stack = sinograms(frames)
    assert stack.shape == (3, 2, 4) and stack.flags.c_contiguous
    np.testing.assert_array_equal(stack[1], frames[:, 1, :])


# -- filters ---------------------------------------------------------------------------------


def test_ram_lak_response_is_the_ramp():
    n_fft = padded_length(100)
    assert n_fft == 256
    nu = np.fft.rfftfreq(n_fft)
    response = filter_response("ram-lak", n_fft)
    np.testing.assert_allclose(response[1:], nu[1:], atol=2e-3)
    assert 0 < response[0] < 2e-3  # the band-limited kernel keeps a small DC term
    for name in FILTERS[1:]:
        windowed = filter_response(name, n_fft)
        assert (windowed <= response + 1e-7).all(), f"{name} only attenuates"
        assert windowed[-1] < 0.75 * response[-1], f"{name} damps the highest frequency"


@pytest.mark.parametrize("name", FILTERS)
def test_fbp_matches_iradon_with_every_filter(sinogram, name: str):
    ours = fbp(sinogram, ANGLES, SIZE // 2, name)
    theirs = iradon(sinogram.T, ANGLES, filter_name=SKIMAGE_FILTERS.get(name, name))
    # iradon samples the Hamming and Hann windows at slightly other frequencies
    tolerance = 1e-3 if name in ("hamming", "hann") else 2e-5
    np.testing.assert_allclose(ours[disc(SIZE)], theirs[disc(SIZE)], atol=tolerance)


def test_unknown_filter_is_refused(sinogram):
    with pytest.raises(ConfigError, match=r"unknown filter 'ramp'; choose one of ram-lak"):
        fbp(sinogram, ANGLES, SIZE // 2, "ramp")


# -- filtered back-projection ---------------------------------------------------------------


def test_fbp_reconstructs_shepp_logan_within_stated_error(shepp_logan, sinogram):
    slice_ = fbp(sinogram, ANGLES, SIZE // 2)
    assert slice_.shape == (SIZE, SIZE) and slice_.dtype == np.float32
    assert rmse(slice_, shepp_logan) < SHEPP_LOGAN_RMSE
    assert rmse(fbp(sinogram, ANGLES, SIZE // 2 + 3), shepp_logan) > 2 * SHEPP_LOGAN_RMSE, (
        "a wrong centre must show")
    assert (slice_[~disc(SIZE, margin=-1)] == 0).all(), "nothing outside the covered disc"


def test_fbp_of_a_batch_equals_slice_by_slice(sinogram):
    batch = np.stack([sinogram, 2 * sinogram[:, ::-1]])
    slices = fbp(batch, ANGLES, 63.5)
    for stack, one in zip(slices, batch, strict=True):
        np.testing.assert_array_equal(stack, fbp(one, ANGLES, 63.5))


def test_backprojection_adds_up_projection_by_projection(sinogram):
    filtered = filter_rows(sinogram)[None]
    whole = np.zeros((1, SIZE, SIZE), np.float32)
    backproject(filtered, ANGLES, 64.25, whole)
    parts = np.zeros_like(whole)
    for k, angle in enumerate(ANGLES):
        backproject(filtered[:, k : k + 1], [angle], 64.25, parts)
    np.testing.assert_allclose(parts, whole, atol=1e-5)
    np.testing.assert_allclose(whole * angle_weight(len(ANGLES)),
                               fbp(sinogram, ANGLES, 64.25)[None], atol=1e-6)


def test_backprojection_needs_a_fitting_output(sinogram):
    filtered = filter_rows(sinogram)[None]
    for wrong in (np.zeros((1, SIZE, SIZE)), np.zeros((1, SIZE, SIZE + 1), np.float32),
                  np.zeros((1, SIZE, 2 * SIZE), np.float32)[..., ::2]):
        with pytest.raises(ConfigError, match=r"contiguous float32 \(1, 128, 128\) output"):
            backproject(filtered, ANGLES, 64.0, wrong)


@pytest.mark.parametrize("centre", [-0.5, SIZE - 0.5, float("nan")])
def test_centre_outside_the_image_is_refused(sinogram, centre):
    with pytest.raises(ConfigError, match="outside the image's columns 0 … 127"):
        fbp(sinogram, ANGLES, centre)


def test_angles_that_do_not_match_the_projections_are_refused(sinogram):
    with pytest.raises(ScanError, match="179 angles for 180 projections"):
        fbp(sinogram, ANGLES[:-1], SIZE // 2)


def test_phantom_slice_is_what_fbp_gives_back():
    shape, row, n_angles = (96, 97), 40, 200  # width 97: the axis at column 48 = 96 // 2
    angles = 180.0 * np.arange(n_angles) / n_angles
    sino = np.stack([line_integrals(shape, a, rows=slice(row, row + 1))[0] for a in angles])
    truth = density_slice(shape, row)
    assert truth.max() == pytest.approx(1.0) and truth.min() > -1e-6
    slice_ = fbp(sino * np.float32(48), angles, 48)
    assert rmse(slice_, truth) < 0.09  # the thin dense skull, 2 pixels wide, dominates
    assert rmse(slice_, truth[::-1]) > 0.12, "the slice is upright"


# -- centre search ---------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-7.5, -2.25, 0.0, 3.5, 6.75])
def test_centre_search_finds_a_shifted_centre_within_half_a_pixel(sinogram, offset):
    noise = np.random.default_rng(1).normal(0, 0.02 * sinogram.max(), sinogram.shape)
    moved = shifted(sinogram, offset) + noise
    found = find_centre(moved, ANGLES)
    assert abs(found - (SIZE // 2 + offset)) < 0.5
    # the axis found lands at the slice's centre: the same slice as from the unshifted data
    # inside the smaller disc an off-centre axis leaves, but for the interpolation at
    # shifted detector positions (a centre 1 pixel off gives 0.1)
    noiseless = fbp(shifted(sinogram, offset), ANGLES, found)
    assert rmse(noiseless, fbp(sinogram, ANGLES, SIZE // 2), margin=10) < 0.02


def test_centre_from_a_pair_of_images():
    image = np.zeros((20, 90))
    image[:, 30:52] = np.random.default_rng(3).random((20, 22))
    # the image at 180° is the one at 0° mirrored about the axis, column 47.5: u → 95 − u
    opposite = image[:, np.minimum(95 - np.arange(90), 89)]
    assert centre_from_pair(image, opposite) == pytest.approx(47.5, abs=0.05)
    assert centre_from_pair(image[0], opposite[0]) == pytest.approx(47.5, abs=0.1)


def test_centre_search_needs_projections_180_degrees_apart(sinogram):
    with pytest.raises(ScanError, match="closest pair is 90° apart; give the centre"):
        find_centre(sinogram[:91], ANGLES[:91])


# -- rings -----------------------------------------------------------------------------------


def test_ring_suppression_removes_stripes_and_keeps_the_image(shepp_logan, sinogram):
    rng = np.random.default_rng(2)
    stripes = np.zeros(SIZE)
    bad = rng.choice(np.arange(20, SIZE - 20), 8, replace=False)
    stripes[bad] = rng.choice([-1, 1], 8) * 0.2 * sinogram.max()
    striped = sinogram + stripes
    clean_error = rmse(fbp(sinogram, ANGLES, SIZE // 2), shepp_logan)
    striped_error = rmse(fbp(striped, ANGLES, SIZE // 2), shepp_logan)
    repaired_error = rmse(fbp(suppress_rings(striped), ANGLES, SIZE // 2), shepp_logan)
    assert striped_error > 2 * clean_error
    assert repaired_error < 1.1 * clean_error
    untouched = rmse(fbp(suppress_rings(sinogram), ANGLES, SIZE // 2), shepp_logan)
    assert untouched < 1.1 * clean_error
    with pytest.raises(ConfigError, match="odd number"):
        suppress_rings(sinogram, width=4)


# -- live reconstruction ---------------------------------------------------------------------


def scan_frames(n_projections: int, angle_range: float = 180.0, **kw) -> list:
    return list(PhantomScan(TINY, 12, n_projections, n_darks=3, n_flats=3,
                            angle_range=angle_range, **kw))


def offline_fbp(frames: list, rows: list[int], centre: float,
                filter_name: str = "ram-lak") -> np.ndarray:
    """FBP of ``rows`` from the whole list of frames at once."""
    keys = np.array([f.image_key for f in frames])
    images = np.stack([f.image for f in frames])
    angles = np.array([f.angle_deg for f in frames])[keys == ImageKey.PROJECTION]
    dark, flat = mean_frame(images[keys == ImageKey.DARK]), mean_frame(images[keys == 1])
    sino = sinograms(absorption(images[keys == ImageKey.PROJECTION][:, rows], dark[rows],
                                flat[rows]))
    return fbp(sino, angles, centre, filter_name)


@pytest.mark.parametrize("centre", [31.5, 33.0, None], ids=["middle", "given", "auto"])
def test_live_slices_after_a_scan_equal_the_offline_fbp(centre):
    frames = scan_frames(90)
    rows = [20, 32, 45]
    live = LiveReconstruction(TINY.shape, rows, centre=centre, filter_name="shepp-logan")
    for frame in frames:
        live.add(frame.image, frame.image_key, frame.angle_deg)
    assert live.projections_used == 90 and live.projections_skipped == 0
    assert live.last_update_s > 0
    # the simulator's axis is the middle column, 31.5
    assert live.centre == (pytest.approx(31.5, abs=0.25) if centre is None else centre)
    offline = offline_fbp(frames, rows, live.centre, "shepp-logan")
    # the same normalisation, filter, kernel and order of sums: equal to float32 rounding
    np.testing.assert_allclose(live.slices(), offline, atol=1e-5 * np.abs(offline).max())


def test_live_centre_search_over_a_full_turn():
    frames = scan_frames(120, angle_range=360.0)
    live = LiveReconstruction(TINY.shape, [32], angle_range=360.0)
    seen = []
    for frame in frames:
        live.add(frame.image, frame.image_key, frame.angle_deg)
        seen.append(live.centre)
    found_at = seen.index(live.centre)
    assert frames[found_at].angle_deg == 180.0, "paired with the projection exactly opposite"
    assert live.centre == pytest.approx(31.5, abs=0.25)


def test_live_slices_grow_with_the_scan_and_are_weighted_as_an_fbp():
    frames = scan_frames(60)
    live = LiveReconstruction(TINY.shape, [30], centre=31.5)
    assert live.slices().shape == (1, 64, 64) and not live.slices().any()
    live.add(frames[6].image, ImageKey.PROJECTION, 0.0)
    assert live.projections_skipped == 1, "no references yet"
    for frame in frames[:40]:
        live.add(frame.image, frame.image_key, frame.angle_deg)
    live.add(frames[0].image, ImageKey.INVALID, 0.0)
    assert live.projections_used == 34
    partial = live.slices()
    assert partial.max() > 0
    expected = offline_fbp(frames[:40], [30], 31.5)
    np.testing.assert_allclose(partial, expected, atol=1e-5 * np.abs(expected).max())


def test_live_refuses_bad_settings_and_images():
    with pytest.raises(ConfigError, match="rows \\[64\\] are not all within"):
        LiveReconstruction(TINY.shape, [64])
    with pytest.raises(ConfigError, match="outside the image's columns"):
        LiveReconstruction(TINY.shape, [3], centre=70.0)
    with pytest.raises(ConfigError, match="unknown filter"):
        LiveReconstruction(TINY.shape, [3], filter_name="ramp")
    live = LiveReconstruction(TINY.shape, [3])
    with pytest.raises(ConfigError, match="image of shape \\(64, 65\\)"):
        live.add(np.zeros((64, 65)), ImageKey.DARK, 0.0)
    with pytest.raises(ConfigError, match="unknown image_key 7"):
        live.add(np.zeros((64, 64)), 7, 0.0)


# -- GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(NO_DEVICE is not None, reason=NO_DEVICE or "")
def test_gpu_fbp_and_centre_match_the_cpu(sinogram):
    import cupy  # pyright: ignore[reportMissingImports]

    on_device = cupy.asarray(sinogram)
    slice_ = fbp(on_device, ANGLES, 64.25, "hann")
    assert isinstance(slice_, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(slice_), fbp(sinogram, ANGLES, 64.25, "hann"),
                               atol=1e-4)
    assert find_centre(on_device, ANGLES) == pytest.approx(find_centre(sinogram, ANGLES),
                                                           abs=1e-3)
    np.testing.assert_allclose(cupy.asnumpy(suppress_rings(on_device)),
                               suppress_rings(sinogram), atol=1e-5)


# -- phantom at scan speed -------------------------------------------------------------------


def test_phantom_repeats_its_frames_at_scan_speed():
    geometry = ModuleGeometry(4, 4, 64)  # 256²
    first = list(PhantomScan(geometry, 12, 300, n_darks=10, n_flats=10, seed=11))
    start = time.perf_counter()
    again = list(PhantomScan(geometry, 12, 300, n_darks=10, n_flats=10, seed=11))
    rate = len(again) / (time.perf_counter() - start)
    assert rate > 1000, f"{rate:.0f} frames/s"
    for a, b in zip(first, again, strict=True):
        assert a.image is b.image and not b.image.flags.writeable
    darks = [f.image for f in first[:10]]
    assert darks[0] is darks[phantom.NOISE_REALISATIONS] and darks[0] is not darks[1]


def test_phantom_shares_frames_between_neighbouring_angles_when_they_do_not_fit(monkeypatch):
    scan = PhantomScan(TINY, 12, 100, n_darks=0, n_flats=0, seed=12)
    frame_bytes = TINY.height * TINY.width * 2
    fixed = phantom.NOISE_REALISATIONS * (2 * frame_bytes + TINY.height * TINY.width * 4)
    monkeypatch.setattr(phantom, "CACHE_BYTES", fixed + 25 * frame_bytes)
    assert scan.distinct_projections() == 25
    frames = list(scan)
    assert [f.angle_deg for f in frames] == list(scan.angles()), "angles stay exact"
    images = [f.image for f in frames]
    assert len({id(image) for image in images}) == 25
    assert all(images[k] is images[4 * (k // 4)] for k in range(100)), "4 a frame, in order"
    exact = PhantomScan(TINY, 12, 100, n_darks=0, n_flats=0, seed=12)
    monkeypatch.undo()
    middle = list(exact)[2].image  # frames 0-3 share the one computed at projection 2's angle
    assert np.abs(images[0].astype(float) - middle).mean() < 40, "same angle, other noise"


# -- bench -----------------------------------------------------------------------------------


def test_bench_on_tiny_data_reports_each_method():
    figures = bench_recon.run(width=64, n_angles=90, n_slices=2, reference_slices=1)
    methods = figures["methods"]
    assert figures["threads"] >= 1 and methods["pimega"]["slices"] == 2
    for name in ("pimega", "iradon"):
        assert methods[name]["slices_per_s"] > 0
        assert 0 < methods[name]["rmse"] < 0.15
    assert methods["pimega"]["rmse"] == pytest.approx(methods["iradon"]["rmse"], rel=1e-3)
    astra = methods["astra"]
    if "skipped" in astra:
        assert "astra" in astra["skipped"] and figures["speedup_vs_astra"] is None
    else:
        assert astra["rmse"] == pytest.approx(methods["pimega"]["rmse"], rel=0.05)
        assert figures["speedup_vs_astra"] > 0
    with pytest.raises(ConfigError, match="≥ 1 slice"):
        bench_recon.run(width=64, n_angles=90, n_slices=0)
