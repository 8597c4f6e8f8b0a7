"""Scan files (this project's, NXtomo, DXchange) and ``pimega recon``: the volume it writes
equals the direct reconstruction; bad input stops it with a reason and writes nothing."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from pimega.cli import recon
from pimega.core.errors import ConfigError
from pimega.core.geometry import ModuleGeometry
from pimega.core.wire import ImageKey
from pimega.sim.phantom import PhantomScan
from pimega.tomo import (
    ScanError,
    ScanFile,
    absorption,
    centre_of_scan,
    fbp,
    sinograms,
    suppress_rings,
)
from pimega.tomo.normalize import mean_frame

from .test_tomo import cupy_or_reason

TINY = ModuleGeometry(2, 2, 32)  # 64 × 64 frames
N_PROJECTIONS = 90
NO_DEVICE = cupy_or_reason()


@pytest.fixture(scope="module")
def scan() -> dict[str, np.ndarray]:
    """Frames, image keys and angles of a phantom scan: 3 darks, 3 flats, 90 projections
    over 180°, and one invalid frame among the projections."""
    frames = list(PhantomScan(TINY, 12, N_PROJECTIONS, n_darks=3, n_flats=3, seed=4))
    images = np.stack([f.image for f in frames])
    keys = np.array([f.image_key for f in frames], dtype=np.uint8)
    angles = np.array([f.angle_deg for f in frames])
    invalid = images[10:11] // 2
    return {"data": np.concatenate([images[:10], invalid, images[10:]]),
            "image_key": np.concatenate([keys[:10], [ImageKey.INVALID], keys[10:]]),
            "rotation_angle": np.concatenate([angles[:10], [angles[10]], angles[10:]])}


def write_pimega(path: Path, data: np.ndarray, image_key: np.ndarray,
                 rotation_angle: np.ndarray) -> Path:
    """A file in the layout this project's writer makes."""
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", data=data, chunks=(1, *data.shape[1:]))
        f["entry/instrument/detector/image_key"] = image_key
        f["entry/sample/rotation_angle"] = rotation_angle
    return path


def write_nxtomo(path: Path, data: np.ndarray, image_key: np.ndarray,
                 rotation_angle: np.ndarray) -> Path:
    """NXtomo as other software writes it: another entry name, the data linked into
    ``data``, the keys and the angles (in radians) under ``data``."""
    with h5py.File(path, "w") as f:
        entry = f.create_group("scan_1")
        entry.attrs["NX_class"] = "NXentry"
        entry["instrument/detector/data"] = data
        entry["data/data"] = h5py.SoftLink("/scan_1/instrument/detector/data")
        entry["data/image_key"] = image_key
        entry["data/rotation_angle"] = np.radians(rotation_angle)
        entry["data/rotation_angle"].attrs["units"] = "rad"
    return path


def write_dxchange(path: Path, data: np.ndarray, image_key: np.ndarray,
                   rotation_angle: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        projections = image_key == ImageKey.PROJECTION
        f["exchange/data"] = data[projections]
        f["exchange/data_white"] = data[image_key == ImageKey.FLAT]
        f["exchange/data_dark"] = data[image_key == ImageKey.DARK]
        f["exchange/theta"] = rotation_angle[projections]
    return path


WRITERS = {"pimega": write_pimega, "NXtomo": write_nxtomo, "DXchange": write_dxchange}


def direct_fbp(scan: dict[str, np.ndarray], rows: slice, centre: float,
               filter_name: str = "ram-lak", ring_removal: bool = False) -> np.ndarray:
    """FBP of ``rows`` straight from the arrays, without any file."""
    keys, data = scan["image_key"], scan["data"]
    dark, flat = (mean_frame(data[keys == k][:, rows]) for k in (ImageKey.DARK, ImageKey.FLAT))
    projections = keys == ImageKey.PROJECTION
    sino = sinograms(absorption(data[projections][:, rows], dark, flat))
    if ring_removal:
        sino = suppress_rings(sino)
    return fbp(sino, scan["rotation_angle"][projections], centre, filter_name)


def stored(path: Path, name: str) -> Any:
    """The value of dataset ``name`` in the HDF5 file ``path``."""
    with h5py.File(path) as f:
        item = f[name]
        assert isinstance(item, h5py.Dataset), f"{name} is not a dataset"
        return item[()]


def attributes(path: Path, name: str) -> dict[str, Any]:
    with h5py.File(path) as f:
        return dict(f[name].attrs)


def run_recon(*argv: str | Path) -> int:
    return recon.main([str(a) for a in argv] + ["--no-progress"])


# -- files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", WRITERS)
def test_every_layout_reads_the_same_scan(tmp_path, scan, layout):
    path = WRITERS[layout](tmp_path / "scan.h5", **scan)
    projections = scan["image_key"] == ImageKey.PROJECTION
    with ScanFile(path) as opened:
        assert opened.layout == ("DXchange" if layout == "DXchange" else "NXtomo")
        assert opened.shape == TINY.shape
        np.testing.assert_allclose(opened.angles_deg, scan["rotation_angle"][projections])
        band = slice(20, 25)
        np.testing.assert_array_equal(opened.projections.read(band),
                                      scan["data"][projections][:, band])
        dark, flat = opened.references(band)
        np.testing.assert_allclose(dark, scan["data"][:3, band].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(flat, scan["data"][3:6, band].mean(axis=0), rtol=1e-6)
        assert centre_of_scan(opened) == pytest.approx(31.5, abs=0.25)  # the phantom's axis


# -- pimega recon ----------------------------------------------------------------------------


def test_recon_writes_the_direct_reconstruction_as_nexus(tmp_path, scan, capsys):
    path = write_pimega(tmp_path / "scan.h5", **scan)
    output = tmp_path / "volume.h5"
    assert run_recon(path, "--output", output, "--rows", "20:27", "--chunk-rows", "3") == 0
    assert attributes(output, "entry")["default"] == "data"
    nxdata = attributes(output, "entry/data")
    assert nxdata["NX_class"] == "NXdata" and nxdata["signal"] == "data"
    assert list(nxdata["axes"]) == ["row", "y", "x"]
    np.testing.assert_array_equal(stored(output, "entry/data/row"), np.arange(20, 27))
    volume = stored(output, "entry/data/data")
    parameters = "entry/reconstruction/parameters/"
    centre = float(stored(output, parameters + "centre"))
    assert stored(output, parameters + "filter") == b"ram-lak"
    assert not stored(output, parameters + "centre_given")
    assert stored(output, parameters + "source").decode() == str(path)
    assert len(stored(output, parameters + "rotation_angle")) == N_PROJECTIONS
    assert centre == pytest.approx(31.5, abs=0.25)
    np.testing.assert_allclose(volume, direct_fbp(scan, slice(20, 27), centre), atol=1e-6)
    out = capsys.readouterr().out
    assert "7 slices of 64×64 (rows 20:27)" in out and "(found)" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.h5", "volume.h5"]


@pytest.mark.parametrize("layout", ["NXtomo", "DXchange"])
def test_recon_of_other_layouts_with_options(tmp_path, scan, layout):
    path = WRITERS[layout](tmp_path / "scan.h5", **scan)
    assert run_recon(path, "--rows", "32", "--centre", "31.25", "--filter", "hann",
                     "--ring-removal") == 0
    output = tmp_path / "scan_recon.h5"
    volume = stored(output, "entry/data/data")
    assert stored(output, "entry/reconstruction/parameters/ring_removal")
    assert volume.shape == (1, 64, 64)
    np.testing.assert_allclose(volume, direct_fbp(scan, slice(32, 33), 31.25, "hann", True),
                               atol=1e-6)
    plain = direct_fbp(scan, slice(32, 33), 31.25)
    assert np.abs(volume - plain).max() > 1e-3, "ring removal and the Hann window act"


def test_recon_on_a_dask_local_cluster_equals_in_process(tmp_path, scan):
    path = write_pimega(tmp_path / "scan.h5", **scan)
    assert run_recon(path, "--output", tmp_path / "dask.h5", "--rows", "10:20",
                     "--chunk-rows", "4", "--dask", "--centre", "31.5") == 0
    volume = stored(tmp_path / "dask.h5", "entry/data/data")
    np.testing.assert_allclose(volume, direct_fbp(scan, slice(10, 20), 31.5), atol=1e-6)


def test_recon_on_a_running_dask_cluster_with_threaded_workers(tmp_path, scan):
    from dask.distributed import LocalCluster

    path = write_pimega(tmp_path / "scan.h5", **scan)
    cluster = LocalCluster(n_workers=1, threads_per_worker=3, processes=False,
                           dashboard_address=":0")
    with cluster:
        assert run_recon(path, "--chunk-rows", "5", "--centre", "31.5",
                         "--scheduler", cluster.scheduler_address) == 0
    volume = stored(tmp_path / "scan_recon.h5", "entry/data/data")
    np.testing.assert_allclose(volume, direct_fbp(scan, slice(0, 64), 31.5), atol=1e-6)


# -- bad input -------------------------------------------------------------------------------


def without(scan: dict[str, np.ndarray], key: ImageKey) -> dict[str, np.ndarray]:
    keep = scan["image_key"] != key
    return {name: values[keep] for name, values in scan.items()}


BAD_FILES = {
    "no darks": (lambda s: without(s, ImageKey.DARK), ScanError, "has no dark frames"),
    "no flats": (lambda s: without(s, ImageKey.FLAT), ScanError, "has no flat frames"),
    "angles short": (lambda s: {**s, "rotation_angle": s["rotation_angle"][:-2]}, ScanError,
                     "95 rotation angles for 97 frames"),
    "keys short": (lambda s: {**s, "image_key": s["image_key"][1:]}, ScanError,
                   "96 image keys for 97 frames"),
    "no projection at 180°": (lambda s: {**s, "rotation_angle": s["rotation_angle"] / 2},
                              ScanError, "closest pair is 89° apart; give the centre"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_stop_with_a_reason_and_write_nothing(tmp_path, scan, case):
    change, error, message = BAD_FILES[case]
    path = write_pimega(tmp_path / "scan.h5", **change(scan))
    with pytest.raises(error, match=message):
        run_recon(path)
    assert [p.name for p in tmp_path.iterdir()] == ["scan.h5"]


BAD_OPTIONS = {
    "rows beyond": (["--rows", "60:70"], "rows 60:70 are not a band of the detector's rows 0:64"),
    "rows empty": (["--rows", "30:30"], "rows 30:30 are not a band"),
    "centre beyond": (["--centre", "64"], "rotation centre 64.0 is outside the image's columns"),
    "chunk rows": (["--chunk-rows", "0"], "--chunk-rows must be ≥ 1"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_options_stop_with_a_reason_and_write_nothing(tmp_path, scan, case):
    argv, message = BAD_OPTIONS[case]
    path = write_pimega(tmp_path / "scan.h5", **scan)
    with pytest.raises(ConfigError, match=message):
        run_recon(path, *argv)
    assert [p.name for p in tmp_path.iterdir()] == ["scan.h5"]


def test_the_output_may_not_replace_the_scan(tmp_path, scan):
    path = write_pimega(tmp_path / "scan.h5", **scan)
    with pytest.raises(ConfigError, match="would replace the scan file"):
        run_recon(path, "--output", path)
    assert [p.name for p in tmp_path.iterdir()] == ["scan.h5"]


def test_missing_or_foreign_files_are_refused(tmp_path):
    with pytest.raises(ScanError, match="cannot open"):
        run_recon(tmp_path / "absent.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["something"] = 1
    with pytest.raises(ScanError, match="neither an /entry"):
        run_recon(tmp_path / "other.h5")


def test_a_failure_midway_leaves_no_file(tmp_path, scan, monkeypatch):
    path = write_pimega(tmp_path / "scan.h5", **scan)
    real_chunk = recon.reconstruct_chunk

    def failing_chunk(file, rows, settings, backend):
        if rows.start >= 24:
            raise OSError("disk went away")
        return real_chunk(file, rows, settings, backend)

    monkeypatch.setattr(recon, "reconstruct_chunk", failing_chunk)
    with pytest.raises(OSError, match="disk went away"):
        run_recon(path, "--rows", "20:30", "--chunk-rows", "2", "--centre", "31.5")
    assert [p.name for p in tmp_path.iterdir()] == ["scan.h5"]


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        recon.main(["scan.h5", "--rows", "a:b"])
    assert exit_info.value.code == 2
    assert "rows must look like START:STOP" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None,
                    reason="CuPy is installed: test_recon_on_the_gpu runs instead")
def test_gpu_backend_without_cupy_is_refused(tmp_path, scan):
    path = write_pimega(tmp_path / "scan.h5", **scan)
    with pytest.raises(ConfigError, match="--backend gpu needs CuPy"):
        run_recon(path, "--backend", "gpu")
    assert [p.name for p in tmp_path.iterdir()] == ["scan.h5"]


@pytest.mark.gpu
@pytest.mark.skipif(NO_DEVICE is not None, reason=NO_DEVICE or "")
def test_recon_on_the_gpu(tmp_path, scan):
    path = write_pimega(tmp_path / "scan.h5", **scan)
    assert run_recon(path, "--backend", "gpu", "--rows", "20:30", "--centre", "31.5",
                     "--ring-removal") == 0
    assert run_recon(path, "--output", tmp_path / "cpu.h5", "--rows", "20:30", "--centre",
                     "31.5", "--ring-removal") == 0
    np.testing.assert_allclose(stored(tmp_path / "scan_recon.h5", "entry/data/data"),
                               stored(tmp_path / "cpu.h5", "entry/data/data"), atol=1e-4)
