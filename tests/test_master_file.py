"""The array's master file (``pimega.writer.master``): a virtual dataset of the whole array
over the module nodes' files, read back with plain h5py."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.sim.patterns import counter_array_image, counter_image
from pimega.writer.hdf5 import DATA_PATH, NexusMetadata, NexusWriter
from pimega.writer.master import ModuleFile, write_master

LAYOUT = ArrayLayout(ModuleGeometry(2, 2, 16), 2, 2)
MODULE_SHAPE = LAYOUT.module.shape


def metadata(definition: str = "NXtomo") -> NexusMetadata:
    return NexusMetadata(bit_depth=12, count_time_s=0.001, frame_time_s=0.001, n_modules=4,
                         module_shape=MODULE_SHAPE, layout="2x2 modules",
                         module_origins=tuple(map(LAYOUT.module_origin, range(4))),
                         definition=definition)


def node_files(directory: Path) -> list[str]:
    return [str(directory / f"scan_m{i + 1}.h5") for i in range(LAYOUT.n_modules)]


def write_nodes(files: list[str], frames: list[int]) -> None:
    """Each module's counter pattern, as its node writes it."""
    for module_id, (name, count) in enumerate(zip(files, frames, strict=True)):
        with NexusWriter(name, MODULE_SHAPE, np.uint16,
                         NexusMetadata(bit_depth=12, count_time_s=0.001,
                                       frame_time_s=0.001)) as writer:
            for i in range(count):
                writer.write(counter_image(module_id, i, LAYOUT.module, 12), i, 1000 + i)


def master(path: Path, files: list[str], frames: int | None, held: list[int | None],
           mapped: tuple[bool, ...] = (True,) * 4, definition: str = "NXtomo") -> None:
    modules = [ModuleFile(name, LAYOUT.module_origin(i), count, keep)
               for i, (name, count, keep) in enumerate(zip(files, held, mapped, strict=True))]
    write_master(str(path), modules, frames, MODULE_SHAPE, LAYOUT.shape, np.uint16,
                 metadata(definition))


def test_a_growing_master_shows_the_frames_the_nodes_have_written(tmp_path, monkeypatch):
    files = node_files(tmp_path)
    master(tmp_path / "scan.h5", files, None, [None] * 4)  # before any node file exists
    with h5py.File(tmp_path / "scan.h5", "r") as f:
        assert f[DATA_PATH].shape == (0, *LAYOUT.shape)
    write_nodes(files, [5, 5, 5, 5])
    monkeypatch.chdir("/")  # node files are found beside the master, not in the cwd
    with h5py.File(tmp_path / "scan.h5", "r") as f:
        data = f[DATA_PATH]
        assert data.is_virtual and data.shape == (5, *LAYOUT.shape)
        for i in range(5):
            np.testing.assert_array_equal(data[i], counter_array_image(LAYOUT, i, 12))
        assert list(f["/entry/instrument/detector/frame_number"]) == list(range(5))
        assert list(f["/entry/instrument/detector/timestamp"]) == [1000 + i for i in range(5)]
        assert f["/entry/instrument/M3/data/data"].shape == (5, *MODULE_SHAPE)
        collection = f["/entry/instrument/detector/collection"]
        assert [name.decode() for name in collection["module_files"]] == [
            os.path.basename(name) for name in files]
        assert "module_frames" not in collection
        assert f["/entry/data"].attrs["signal"] == "data"


def test_the_final_master_holds_a_fixed_number_of_frames(tmp_path):
    files = node_files(tmp_path)
    write_nodes(files, [6, 6, 4, 6])
    master(tmp_path / "scan.h5", files, 6, [6, 6, 4, 6])
    with h5py.File(tmp_path / "scan.h5", "r", swmr=True) as f:
        data = f[DATA_PATH]
        assert data.shape == (6, *LAYOUT.shape)
        assert list(f["/entry/instrument/detector/collection/module_frames"]) == [6, 6, 4, 6]
        for i in range(6):
            expected = counter_array_image(LAYOUT, i, 12)
            if i >= 4:  # module 2 holds 4 frames: its part of the later ones reads 0
                expected[32:, :32] = 0
            np.testing.assert_array_equal(data[i], expected)


def test_an_unreadable_module_file_is_left_out(tmp_path):
    files = node_files(tmp_path)
    write_nodes(files, [3, 3, 3, 3])
    Path(files[1]).write_bytes(b"not HDF5")  # a node killed before its file was whole
    master(tmp_path / "scan.h5", files, 3, [3, None, 3, 3], mapped=(True, False, True, True))
    with h5py.File(tmp_path / "scan.h5", "r") as f:
        data = f[DATA_PATH][:]
        assert list(f["/entry/instrument/detector/collection/module_frames"]) == [3, 0, 3, 3]
    expected = np.stack([counter_array_image(LAYOUT, i, 12) for i in range(3)])
    expected[:, :32, 32:] = 0  # module 1 (top right) reads 0
    np.testing.assert_array_equal(data, expected)


def test_rewriting_the_master_leaves_a_reader_of_the_old_one_whole(tmp_path):
    files = node_files(tmp_path)
    write_nodes(files, [4, 4, 4, 4])
    master(tmp_path / "scan.h5", files, None, [None] * 4)
    with h5py.File(tmp_path / "scan.h5", "r") as old:
        master(tmp_path / "scan.h5", files, 2, [4, 4, 4, 4])
        assert old[DATA_PATH].shape[0] == 4
        np.testing.assert_array_equal(old[DATA_PATH][3], counter_array_image(LAYOUT, 3, 12))
    with h5py.File(tmp_path / "scan.h5", "r") as new:
        assert new[DATA_PATH].shape[0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["scan.h5", *(os.path.basename(name) for name in files)])


def test_nxmx_master_describes_each_module_of_the_array(tmp_path):
    files = node_files(tmp_path)
    write_nodes(files, [1, 1, 1, 1])
    master(tmp_path / "scan.h5", files, 1, [1] * 4, definition="NXmx")
    with h5py.File(tmp_path / "scan.h5", "r") as f:
        detector = f["/entry/instrument/detector"]
        origins = [list(detector[f"module{i + 1}/data_origin"]) for i in range(4)]
        assert origins == [list(LAYOUT.module_origin(i)) for i in range(4)]
        assert f["/entry/definition"][()] == b"NXmx"
        assert "image_key" not in f["/entry/data"]


@pytest.mark.parametrize("elsewhere", [True, False])
def test_source_names_are_relative_only_under_the_masters_directory(tmp_path, elsewhere):
    directory = tmp_path / ("nodes" if not elsewhere else "../elsewhere")
    directory.mkdir(parents=True, exist_ok=True)
    files = node_files(directory.resolve())
    write_nodes(files, [1, 1, 1, 1])
    master(tmp_path / "scan.h5", files, 1, [1] * 4)
    with h5py.File(tmp_path / "scan.h5", "r") as f:
        first = f["/entry/instrument/detector/collection/module_files"][0].decode()
        np.testing.assert_array_equal(f[DATA_PATH][0], counter_array_image(LAYOUT, 0, 12))
    assert first == (files[0] if elsewhere else "nodes/scan_m1.h5")
