"""``pimega recon FILE``: reconstruct a scan file into a NeXus volume, band by band.

Reads this project's files, NXtomo and DXchange (``pimega.tomo.files``). Bands of
``--chunk-rows`` detector rows are reconstructed in this process (the numba kernel uses
every core), or as Dask tasks: ``--dask`` starts a ``LocalCluster``, ``--scheduler ADDRESS``
uses a running cluster whose workers see FILE at the same path. ``--backend gpu`` runs the
stages on CuPy arrays. The output is written under a temporary name and renamed when every
slice is in; bad input stops before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from tqdm import tqdm

from pimega.core.errors import ConfigError
from pimega.tomo.fbp import check_centre
from pimega.tomo.files import ScanFile
from pimega.tomo.filters import FILTERS
from pimega.tomo.volume import (
    ReconSettings,
    VolumeWriter,
    centre_of_scan,
    check_rows,
    reconstruct_band,
)

log = logging.getLogger(__name__)

BACKENDS = ("cpu", "gpu")
CHUNK_BYTES = 1 << 30  # working memory a band may take, for the default --chunk-rows
# Per projection pixel of a band: raw counts, absorption, sinogram, its padded spectrum and
# inverse FFT (FFT length ~2.7 × the width), filtered rows.
BYTES_PER_SAMPLE = 40


@dataclass(frozen=True)
class ReconSummary:
    """What a reconstruction wrote."""

    output: Path
    rows: range
    width: int
    centre: float
    centre_given: bool
    seconds: float


def parse_rows(text: str) -> tuple[int | None, int | None]:
    """``START:STOP`` (either may be left out) or a single ``ROW``."""
    try:
        if ":" not in text:
            row = int(text)
            return row, row + 1
        start, stop = text.split(":")
        return (int(start) if start.strip() else None, int(stop) if stop.strip() else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rows must look like START:STOP, got {text!r}") from None


def default_chunk_rows(n_projections: int, width: int) -> int:
    """Rows per band so that a band's working memory stays near :data:`CHUNK_BYTES`."""
    per_row = n_projections * width * BYTES_PER_SAMPLE + width * width * 4
    return max(1, CHUNK_BYTES // per_row)


def _cupy() -> ModuleType:
    """CuPy with a CUDA device, or :class:`ConfigError` saying what is missing."""
    from pimega.pipeline.gpu.device import cupy_on_a_device

    try:
        return cupy_on_a_device()
    except ConfigError as exc:
        raise ConfigError(f"--backend gpu needs CuPy on a CUDA device: {exc}; "
                          "pip install 'pimega[gpu]'") from None


def reconstruct_chunk(path: str, rows: range, settings: ReconSettings,
                      backend: str) -> tuple[int, np.ndarray]:
    """First row and slices (rows, width, width) of one band; runs here or on a Dask worker."""
    band = slice(rows.start, rows.stop)
    with ScanFile(path) as scan:
        dark, flat = scan.references(band)
        projections = scan.projections.read(band)
        angles = scan.angles_deg
    if backend == "gpu":
        cupy = _cupy()
        slices = reconstruct_band(cupy.asarray(projections), cupy.asarray(dark),
                                  cupy.asarray(flat), angles, settings)
        return rows.start, cupy.asnumpy(slices)
    return rows.start, reconstruct_band(projections, dark, flat, angles, settings)


@contextmanager
def _dask_client(scheduler: str | None) -> Iterator[Any]:
    """A client of ``scheduler``, or of a LocalCluster of one single-threaded worker (the
    kernel already uses every core) when it is None."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise ConfigError(f"--dask and --scheduler need Dask distributed ({exc}); "
                          "pip install 'dask[distributed]'") from None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=30)
        except OSError as exc:
            raise ConfigError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from None
        with client:
            yield client
        return
    with (LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster,
          Client(cluster) as client):
        yield client


Bands = Iterator[tuple[int, np.ndarray]]


def _bands_here(path: str, chunks: list[range], settings: ReconSettings, backend: str) -> Bands:
    """Bands reconstructed in this process, one after the other."""
    for chunk in chunks:
        yield reconstruct_chunk(path, chunk, settings, backend)


def _bands_on_dask(client: Any, path: str, chunks: list[range], settings: ReconSettings,
                   backend: str) -> Bands:
    """Bands as Dask tasks, yielded as they finish; the rest are cancelled on an error."""
    from dask.distributed import as_completed

    futures = [client.submit(reconstruct_chunk, path, chunk, settings, backend, pure=False)
               for chunk in chunks]
    try:
        for future in as_completed(futures):
            yield future.result()
            future.release()
    finally:
        client.cancel(futures)


@contextmanager
def _band_runner(scheduler: str | None, use_dask: bool) -> Iterator[Callable[..., Bands]]:
    """What reconstructs the bands: this process, or Dask when asked for."""
    if scheduler is None and not use_dask:
        yield _bands_here
        return
    with _dask_client(scheduler) as client:
        yield partial(_bands_on_dask, client)


def reconstruct_file(
    path: str | Path, output: str | Path | None = None, rows: tuple[int | None, int | None] =
    (None, None), centre: float | None = None, filter_name: str = "ram-lak",
    ring_removal: bool = False, backend: str = "cpu", chunk_rows: int | None = None,
    scheduler: str | None = None, use_dask: bool = False, progress: bool = True,
) -> ReconSummary:
    """Reconstruct detector ``rows`` (all by default) of the scan in ``path`` into ``output``
    (default: beside it, ``<stem>_recon.h5``); see the module docstring."""
    began = time.perf_counter()
    path = Path(path).resolve()
    output = Path(output) if output is not None else path.with_name(f"{path.stem}_recon.h5")
    if output.resolve() == path:
        raise ConfigError(f"the output {output} would replace the scan file")
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "gpu":
        _cupy()
    if chunk_rows is not None and chunk_rows < 1:
        raise ConfigError(f"--chunk-rows must be ≥ 1, got {chunk_rows}")
    with ScanFile(path) as scan:
        height, width = scan.shape
        start, stop = rows
        band = check_rows(range(0 if start is None else start,
                                height if stop is None else stop), height)
        centre_given = centre is not None
        centre = check_centre(centre, width) if centre is not None else centre_of_scan(scan)
        settings = ReconSettings(centre, filter_name, ring_removal)
        angles, layout = scan.angles_deg, scan.layout
    log.info("%s: %s scan, %d projections, centre %.2f (%s)", path, layout, len(angles),
             centre, "given" if centre_given else "found")
    step = chunk_rows or default_chunk_rows(len(angles), width)
    chunks = [range(s, min(s + step, band.stop)) for s in range(band.start, band.stop, step)]
    parameters = {
        "source": path, "source_layout": layout, "rows_start": band.start,
        "rows_stop": band.stop, "centre": centre, "centre_given": centre_given,
        "filter": filter_name, "ring_removal": ring_removal, "backend": backend,
        "rotation_angle": angles,
    }
    with (VolumeWriter(output, band, width, parameters) as writer,
          tqdm(total=len(band), unit="slice", desc="pimega recon", disable=not progress) as bar,
          _band_runner(scheduler, use_dask) as bands):
        for first_row, slices in bands(str(path), chunks, settings, backend):
            writer.write(first_row, slices)
            bar.update(len(slices))
    return ReconSummary(output, band, width, centre, centre_given,
                        time.perf_counter() - began)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pimega recon",
        description="Reconstruct a tomography scan (this project's files, NXtomo, DXchange) "
                    "into an HDF5 file (NeXus NXdata, parameters beside it).")
    parser.add_argument("file", type=Path, metavar="FILE", help="scan file to reconstruct")
    parser.add_argument("--output", type=Path, help="output file (default FILE_recon.h5)")
    parser.add_argument("--rows", type=parse_rows, default=(None, None), metavar="START:STOP",
                        help="detector rows to reconstruct (default all)")
    parser.add_argument("--centre", type=float, help="rotation centre, detector column "
                        "(default: found from projections 180° apart)")
    parser.add_argument("--filter", choices=FILTERS, default="ram-lak", help="ramp filter")
    parser.add_argument("--ring-removal", action="store_true", help="suppress ring artefacts")
    parser.add_argument("--backend", choices=BACKENDS, default="cpu",
                        help="cpu (numba, every core) or gpu (CuPy)")
    parser.add_argument("--dask", action="store_true",
                        help="spread the bands over a Dask LocalCluster")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="spread the bands over this Dask cluster (e.g. tcp://host:8786)")
    parser.add_argument("--chunk-rows", type=int, metavar="N",
                        help="detector rows per band / task (default: about 1 GiB of work)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str]) -> int:
    """``pimega recon``; errors in the input raise :class:`PimegaError` with the reason."""
    args = build_parser().parse_args(argv)
    summary = reconstruct_file(
        args.file, args.output, args.rows, args.centre, args.filter, args.ring_removal,
        args.backend, args.chunk_rows, args.scheduler, args.dask, not args.no_progress)
    n_rows = len(summary.rows)
    print(f"{summary.output}: {n_rows} slices of {summary.width}×{summary.width} "
          f"(rows {summary.rows.start}:{summary.rows.stop}), centre {summary.centre:.2f} "
          f"({'given' if summary.centre_given else 'found'}), {summary.seconds:.1f} s, "
          f"{n_rows / summary.seconds:.2f} slices/s")
    return 0
