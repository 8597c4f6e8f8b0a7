"""HDF5/NeXus writer: NDFile naming rules, layout, bitshuffle-LZ4 chunks, SWMR, full disks."""

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from pimega.core.errors import ConfigError, WriterError
from pimega.core.naming import ensure_directory, full_file_name, normalise_path, path_exists
from pimega.writer.bitshuffle import BitshuffleLZ4Compressor
from pimega.writer.filters import CompressionOptions
from pimega.writer.hdf5 import DATA_PATH, DETECTOR_PATH, NexusMetadata, NexusWriter

SHAPE = (64, 64)
META = NexusMetadata(bit_depth=24, count_time_s=0.001, frame_time_s=0.0011, n_modules=4,
                     module_shape=(1536, 1536), layout="2x2", title="scan 7",
                     extra={"threshold_kev": 8.5, "operator": "tomo", "binned": False})


def frames(count: int, dtype: str = "u4", shape: tuple[int, int] = SHAPE,
           seed: int = 0) -> np.ndarray:
    """Poisson counts, compressible like real data."""
    return np.random.default_rng(seed).poisson(5, (count, *shape)).astype(dtype)


def noise_frames(count: int, seed: int = 0) -> np.ndarray:
    """Full-range uint32 noise: incompressible, so bslz4 chunks are as large as they get."""
    return np.random.default_rng(seed).integers(0, 2**32, (count, *SHAPE), dtype=np.uint32)


# --- naming -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("template", "expected"), [
    ("%s%s_%6.6d.h5", "/data/scan_000042.h5"),
    ("%s%s.h5", "/data/scan.h5"),
    ("%s%s_%3.3d.h5", "/data/scan_042.h5"),
    ("%s%s_%d.nxs", "/data/scan_42.nxs"),
    ("%s%s_100%%_%04d.h5", "/data/scan_100%_0042.h5"),
])
def test_full_file_name_follows_the_template(template: str, expected: str) -> None:
    assert full_file_name("/data/", "scan", template, 42) == expected


@pytest.mark.parametrize("template", [
    "%s.h5", "%d%s%s.h5", "%s%s_%s.h5", "%s%s_%d_%d.h5", "%s%s_%*d.h5", "%s%s_%f.h5",
    "%(path)s%s.h5", "%s%s_%",
])
def test_bad_templates_are_refused_with_the_reason(template: str) -> None:
    with pytest.raises(ConfigError, match="FileTemplate"):
        full_file_name("/data/", "scan", template, 1)


@pytest.mark.parametrize(("path", "expected"), [
    ("/data", "/data/"), ("/data/", "/data/"), ("", ""), ("rel/dir", "rel/dir/"),
])
def test_normalise_path_leaves_one_trailing_separator(path: str, expected: str) -> None:
    assert normalise_path(path) == expected


def test_path_exists_only_for_directories(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert path_exists(str(tmp_path))
    assert not path_exists(str(tmp_path / "file"))
    assert not path_exists(str(tmp_path / "missing"))


def _depth(path: Path) -> int:
    """Components of an absolute path below the root (ADCore's num_parts)."""
    return len(path.parts) - 1


@pytest.mark.parametrize(("relative", "create_directory", "created"), [
    ("a", -1, True),            # one missing level, up to one may be created
    ("a/b/c", -3, True),        # three missing levels, up to three
    ("a/b/c", -2, False),       # three missing, only two allowed: a is not created
    ("a/b/c", 1, True),         # 1: everything below the first level may be created
    ("a/b/c", "here", True),    # N = depth of tmp_path: create from tmp_path's children on
    ("a/b/c", "below", False),  # N = depth + 1: tmp_path/a must exist, and it does not
])
def test_create_directory_follows_adcore(tmp_path: Path, relative: str,
                                         create_directory: int | str, created: bool) -> None:
    target = tmp_path / relative
    depth = {"here": _depth(tmp_path), "below": _depth(tmp_path) + 1}.get(
        str(create_directory), create_directory)
    assert isinstance(depth, int)
    if created:
        ensure_directory(normalise_path(str(target)), depth)
        assert target.is_dir()
    else:
        with pytest.raises(ConfigError, match="cannot create directory"):
            ensure_directory(str(target), depth)
        assert not (tmp_path / "a").exists()


def test_create_directory_positive_depth_needs_the_first_levels(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    ensure_directory(str(tmp_path / "a" / "b" / "c"), _depth(tmp_path) + 1)
    assert (tmp_path / "a" / "b" / "c").is_dir()


def test_ensure_directory_refusals_say_why(tmp_path: Path) -> None:
    ensure_directory(str(tmp_path), 0)
    with pytest.raises(ConfigError, match="CreateDirectory is 0"):
        ensure_directory(str(tmp_path / "missing"), 0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        ensure_directory(str(tmp_path / "file"), -1)
    with pytest.raises(ConfigError, match="empty"):
        ensure_directory("", -1)


# --- layout -------------------------------------------------------------------------------------

def write_file(path: Path, data: np.ndarray, compression: str = "none",
               **kwargs: object) -> NexusWriter:
    with NexusWriter(path, data.shape[1:], data.dtype, META, compression=compression,
                     **kwargs) as writer:  # type: ignore[arg-type]
        for index, frame in enumerate(data):
            writer.write(frame, frame_number=10 + 2 * index, timestamp_ns=1_000_000 * index,
                         image_key=(2, 1, 0, 0, 0)[index % 5])
    return writer


def test_nexus_layout_reads_back(tmp_path: Path) -> None:
    data = frames(5, "u2")
    writer = write_file(tmp_path / "scan.h5", data)
    assert writer.frames_written == 5
    with h5py.File(tmp_path / "scan.h5", "r") as file:
        for path, nx_class in [("/entry", "NXentry"), ("/entry/instrument", "NXinstrument"),
                               (DETECTOR_PATH, "NXdetector"), ("/entry/data", "NXdata"),
                               (f"{DETECTOR_PATH}/collection", "NXcollection")]:
            assert file[path].attrs["NX_class"] == nx_class
            assert isinstance(file[path].attrs["NX_class"], str)
        assert file["/entry"].attrs["default"] == "data"
        assert file["/entry/data"].attrs["signal"] == "data"
        assert file["/entry/definition"].asstr()[()] == "NXtomo"
        assert file["/entry/title"].asstr()[()] == "scan 7"
        detector = file[DETECTOR_PATH]
        for name, value, units in [("x_pixel_size", 55e-6, "m"), ("y_pixel_size", 55e-6, "m"),
                                   ("count_time", 0.001, "s"), ("frame_time", 0.0011, "s")]:
            assert detector[name][()] == pytest.approx(value)
            assert detector[name].attrs["units"] == units
        assert detector["bit_depth_readout"][()] == 24
        assert detector["description"].asstr()[()] == "π-MEGA (Medipix3RX)"
        collection = detector["collection"]
        assert collection["n_modules"][()] == 4
        assert list(collection["module_shape"][()]) == [1536, 1536]
        assert collection["layout"].asstr()[()] == "2x2"
        assert collection["threshold_kev"][()] == 8.5
        assert collection["operator"].asstr()[()] == "tomo"
        assert not collection["binned"][()]

        dataset = file[DATA_PATH]
        assert (dataset.shape, dataset.dtype) == ((5, 64, 64), np.uint16)
        assert (dataset.chunks, dataset.maxshape) == ((1, 64, 64), (None, 64, 64))
        np.testing.assert_array_equal(dataset[()], data)
        for link in (f"{DETECTOR_PATH}/data", "/entry/data/image_key"):
            assert isinstance(file.get(link, getlink=True), h5py.HardLink)
        assert detector["data"] == dataset
        assert file["/entry/data/image_key"] == detector["image_key"]
        np.testing.assert_array_equal(detector["image_key"][()], [2, 1, 0, 0, 0])
        np.testing.assert_array_equal(detector["frame_number"][()], [10, 12, 14, 16, 18])
        np.testing.assert_array_equal(detector["timestamp"][()], np.arange(5) * 1_000_000)
        assert detector["timestamp"].attrs["units"] == "ns"
        assert detector["frame_number"].dtype == np.uint64


@pytest.mark.parametrize("dtype", ["u1", "u2", "u4", "f4"])
@pytest.mark.parametrize("shape", [SHAPE, (61, 67)])
def test_plain_and_bslz4_files_read_back_identical(tmp_path: Path, dtype: str,
                                                   shape: tuple[int, int]) -> None:
    data = frames(4, dtype, shape)
    write_file(tmp_path / "plain.h5", data, swmr=False)
    write_file(tmp_path / "bslz4.h5", data, "bslz4")
    with h5py.File(tmp_path / "plain.h5", "r") as plain, \
            h5py.File(tmp_path / "bslz4.h5", "r") as packed:
        assert "32008" in packed[DATA_PATH]._filters
        assert not plain[DATA_PATH]._filters
        np.testing.assert_array_equal(plain[DATA_PATH][()], data)
        np.testing.assert_array_equal(packed[DATA_PATH][()], data)
        assert os.path.getsize(tmp_path / "bslz4.h5") < os.path.getsize(tmp_path / "plain.h5")


@pytest.mark.parametrize("dtype", ["u1", "u2", "u4"])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_bslz4_chunks_are_byte_identical_to_the_hdf5_filter(tmp_path: Path, dtype: str,
                                                            workers: int) -> None:
    data = frames(2, dtype, (61, 67 * 64))  # >= 3 parts of 64 KiB, a tail of < 8 elements
    with h5py.File(tmp_path / "ref.h5", "w") as file:
        reference = file.create_dataset("d", data=data, chunks=(1, *data.shape[1:]),
                                        **hdf5plugin.Bitshuffle(cname="lz4"))
        expected = [reference.id.read_direct_chunk((index, 0, 0))[1] for index in range(2)]
    compressor = BitshuffleLZ4Compressor(workers)
    try:
        assert [compressor.compress(frame) for frame in data] == expected
    finally:
        compressor.close()


def test_writer_refuses_misuse_with_reasons(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="compression"):
        NexusWriter(tmp_path / "x.h5", SHAPE, "u4", META, compression="gzip")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="reserve_bytes"):
        NexusWriter(tmp_path / "x.h5", SHAPE, "u4", META, reserve_bytes=0)
    with pytest.raises(ConfigError, match="scalar"):
        NexusMetadata(bit_depth=12, count_time_s=1.0, frame_time_s=1.0, extra={"a": [1, 2]})
    with pytest.raises(WriterError, match="cannot create"):
        NexusWriter(tmp_path / "missing" / "x.h5", SHAPE, "u4", META).open()
    writer = NexusWriter(tmp_path / "x.h5", SHAPE, "u4", META)
    with pytest.raises(WriterError, match="not open"):
        writer.write(frames(1)[0], 0, 0)
    with writer:
        with pytest.raises(WriterError, match="open"):
            writer.open()
        with pytest.raises(WriterError, match="uint16"):
            writer.write(frames(1, "u2")[0], 0, 0)
        writer.write(frames(1)[0], 0, 0)
    writer.close()
    with pytest.raises(WriterError, match="closed"):
        writer.write(frames(1)[0], 1, 0)
    with h5py.File(tmp_path / "x.h5", "r") as file:
        assert file[DATA_PATH].shape == (1, *SHAPE)


# --- SWMR ---------------------------------------------------------------------------------------

SWMR_READER = textwrap.dedent("""
    import sys
    import h5py, hdf5plugin
    with h5py.File(sys.argv[1], "r", swmr=True) as file:
        data = file[sys.argv[2]]
        numbers = file[sys.argv[3]]
        print("ready", flush=True)
        for _ in sys.stdin:
            data.refresh()
            numbers.refresh()
            count = data.shape[0]
            last = int(data[count - 1].sum()) if count else -1
            print(count, numbers.shape[0], last, flush=True)
""")


def ask(reader: subprocess.Popen[str]) -> list[int]:
    """One request/answer round with the SWMR reader process."""
    assert reader.stdin is not None and reader.stdout is not None
    reader.stdin.write("look\n")
    reader.stdin.flush()
    line = reader.stdout.readline()
    assert line, f"SWMR reader died: {reader.stderr.read() if reader.stderr else ''}"
    return [int(word) for word in line.split()]


@pytest.mark.parametrize("compression", ["none", "bslz4"])
def test_swmr_reader_process_sees_frames_grow(tmp_path: Path, compression: str) -> None:
    path = tmp_path / "swmr.h5"
    data = frames(9)
    # flush_interval_s=0: every write() flushes, the path a long acquisition takes every 0.5 s.
    with NexusWriter(path, SHAPE, "u4", META, compression=compression,  # type: ignore[arg-type]
                     flush_interval_s=0.0, swmr=True) as writer, subprocess.Popen(
            [sys.executable, "-c", SWMR_READER, str(path), DATA_PATH,
             f"{DETECTOR_PATH}/frame_number"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True) as reader:
        assert reader.stdout is not None and reader.stdin is not None
        assert reader.stdout.readline().strip() == "ready"
        assert ask(reader) == [0, 0, -1]
        written = 0
        for batch in (1, 3, 5):
            for frame in data[written:written + batch]:
                writer.write(frame, written, 0)
                written += 1
            assert ask(reader) == [written, written, int(data[written - 1].sum())]
        reader.stdin.close()
        assert reader.wait(timeout=60) == 0


# --- full disks ---------------------------------------------------------------------------------

def fill_until_error(writer: NexusWriter, data: np.ndarray, first: int = 0) -> WriterError:
    for index, frame in enumerate(data, first):
        try:
            writer.write(frame, index, index)
        except WriterError as error:
            return error
    raise AssertionError(f"the disk never filled up in {len(data)} frames")


def assert_holds_exactly(path: Path, data: np.ndarray, count: int) -> None:
    with h5py.File(path, "r") as file:
        assert file[DATA_PATH].shape == (count, *SHAPE)
        np.testing.assert_array_equal(file[DATA_PATH][()], data[:count])
        np.testing.assert_array_equal(file[f"{DETECTOR_PATH}/frame_number"][()], range(count))


def fill_filesystem(directory: Path) -> None:
    """Another writer takes every byte left on the filesystem."""
    with open(directory / "hog", "wb", buffering=0) as hog, contextlib.suppress(OSError):
        while True:
            hog.write(os.urandom(1 << 16))


@pytest.mark.parametrize("compression", ["none", "bslz4"])
@pytest.mark.parametrize("scenario", ["alone", "other-writer", "hdf5-meets-enospc"])
def test_full_disk_leaves_a_closed_readable_file(small_tmpfs: Path, compression: str,
                                                 scenario: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """alone: the free-space check stops the writer before the disk is full.
    other-writer: another file takes the last bytes mid-acquisition; the check stops the writer
    and the ballast gives the metadata room. hdf5-meets-enospc: the check is blinded (statvfs
    reports plenty), HDF5 itself fails to write a chunk, the writer drops the ballast and closes.
    """
    path = small_tmpfs / "full.h5"
    data = noise_frames(400)  # 6.5 MB of incompressible frames for a 4 MiB filesystem
    if scenario == "hdf5-meets-enospc":
        plenty = os.statvfs_result((4096, 4096, 1 << 30, 1 << 30, 1 << 30, 1 << 20, 1 << 20,
                                    1 << 20, 0, 255))
        monkeypatch.setattr(os, "statvfs", lambda _path: plenty)
    writer = NexusWriter(path, SHAPE, "u4", META, compression=compression,  # type: ignore[arg-type]
                         reserve_bytes=256 << 10)
    writer.open()
    assert [name for name in os.listdir(small_tmpfs) if name.endswith(".reserve")]
    if scenario == "other-writer":
        for index, frame in enumerate(data[:20]):
            writer.write(frame, index, index)
        fill_filesystem(small_tmpfs)
    error = fill_until_error(writer, data[writer.frames_written:], writer.frames_written)
    count = writer.frames_written
    assert f"disk full after {count} frames" in str(error)
    assert f"the file is closed and holds those {count} frames" in str(error)
    assert count == 20 if scenario == "other-writer" else count > 150
    writer.close()
    assert not [name for name in os.listdir(small_tmpfs) if name.endswith(".reserve")]
    assert_holds_exactly(path, data, count)


FSIZE_WRITER = textwrap.dedent("""
    import json, resource, signal, sys
    import numpy as np
    from pimega.core.errors import WriterError
    from pimega.writer.hdf5 import NexusMetadata, NexusWriter
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
    data = np.random.default_rng(0).integers(0, 2**32, (400, 64, 64), dtype=np.uint32)
    writer = NexusWriter(sys.argv[1], (64, 64), np.uint32,
                         NexusMetadata(bit_depth=24, count_time_s=1.0, frame_time_s=1.0))
    writer.open()
    message = ""
    try:
        for index, frame in enumerate(data):
            writer.write(frame, index, index)
    except WriterError as error:
        message = str(error)
    writer.close()
    print(json.dumps({"frames": writer.frames_written, "error": message}))
""")


def test_file_size_limit_stops_the_writer_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "limited.h5"
    limit = 3_000_000
    result = subprocess.run([sys.executable, "-c", FSIZE_WRITER, str(path), str(limit)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    count = report["frames"]
    assert f"disk full after {count} frames" in report["error"]
    assert "file-size limit" in report["error"]
    assert 100 < count < limit // (64 * 64 * 4)
    assert os.path.getsize(path) <= limit
    assert_holds_exactly(path, noise_frames(400), count)


# --- compression choices and the NeXus layout -------------------------------------------


@pytest.mark.parametrize(("compression", "options"), [
    ("nbit", CompressionOptions()), ("nbit", CompressionOptions(nbit_bits=10, nbit_offset=2)),
    ("szip", CompressionOptions(szip_pixels=8)), ("zlib", CompressionOptions(zlib_level=9)),
    ("blosc", CompressionOptions(blosc_compressor="zstd", blosc_shuffle="bit")),
    ("lz4", CompressionOptions()),
])
def test_each_hdf5_filter_stores_frames_that_read_back_equal(tmp_path: Path, compression: str,
                                                             options: CompressionOptions):
    data = np.arange(3 * 32 * 32, dtype=np.uint16).reshape(3, 32, 32) % 1000  # fits 10 bits
    meta = NexusMetadata(bit_depth=12, count_time_s=0.1, frame_time_s=0.1)
    with NexusWriter(tmp_path / "f.h5", (32, 32), np.uint16, meta, compression=compression,  # type: ignore[arg-type]
                     compression_options=options) as writer:
        for index, frame in enumerate(data):
            writer.write(frame, index, 0)
    with h5py.File(tmp_path / "f.h5") as f:
        assert f[DATA_PATH]._filters  # a filter is really on the dataset
        np.testing.assert_array_equal(f[DATA_PATH][()], data)


def test_a_compression_nothing_here_provides_is_refused_with_its_reason(tmp_path: Path):
    with pytest.raises(ConfigError, match="JPEG compression is not available"):
        NexusWriter(tmp_path / "x.h5", SHAPE, "u2", META, compression="jpeg")


def test_frame_numbers_and_ids_of_the_file_keep_their_meaning(tmp_path: Path):
    """frame_number counts the file's frames, detector_frame_number is the detector's,
    unique_id the node's; the file has a root @default, start_time and end_time."""
    with NexusWriter(tmp_path / "n.h5", SHAPE, "u4", META) as writer:
        for index in range(3):
            writer.write(np.zeros(SHAPE, np.uint32), index, 1_700_000_000 * 10**9 + index,
                         unique_id=40 + index, detector_frame_number=0)
    with h5py.File(tmp_path / "n.h5") as f:
        detector = f[DETECTOR_PATH]
        np.testing.assert_array_equal(detector["frame_number"][()], [0, 1, 2])
        np.testing.assert_array_equal(detector["detector_frame_number"][()], [0, 0, 0])
        np.testing.assert_array_equal(detector["unique_id"][()], [40, 41, 42])
        assert f.attrs["default"] == "entry"
        assert f["entry/end_time"].asstr()[()] >= f["entry/start_time"].asstr()[()]
        assert f["entry/data/data"].attrs["target"] == f"{DETECTOR_PATH}/data"
