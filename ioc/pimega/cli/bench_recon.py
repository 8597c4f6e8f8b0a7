"""``pimega bench --recon``: CPU FBP slices/s against scikit-image's iradon and ASTRA's CPU FBP.

All methods reconstruct the same sinograms in the same run: exact line integrals of the
simulator's 3-D Shepp–Logan phantom (``pimega.sim.phantom``) through a few detector rows
near the middle, noiseless, the rotation axis at column ``width // 2`` as ``iradon``
expects. Each method's error is the RMSE against the phantom's density in those planes,
inside the disc every projection covers. ASTRA's parallel geometry puts the axis at the
detector's middle, so it gets one extra (empty) column and a volume shifted by half a pixel:
the same data on the same grid.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from pimega.core.errors import ConfigError
from pimega.sim.phantom import density_slice, line_integrals
from pimega.tomo.fbp import fbp
from pimega.tomo.filters import check_filter

EDGE_MARGIN_PX = 2  # pixels left out of the error at the rim of the reconstructed disc


def phantom_band(width: int, n_angles: int, n_rows: int) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """Angles (degrees), sinograms (rows, angles, width + 1) and true slices (rows, width,
    width) of ``n_rows`` detector rows around the middle, axis at column ``width // 2``.

    The detector is one column wider than the slices so that its middle column,
    ``width // 2``, is the phantom's axis; sinograms are in pixel units (line integral ×
    pixels per phantom unit), so an FBP gives the phantom's density.
    """
    shape = (width, width + 1)
    first = width // 2 - n_rows // 2
    rows = slice(first, first + n_rows)
    angles = 180.0 * np.arange(n_angles) / n_angles
    projections = np.stack([line_integrals(shape, float(a), rows=rows) for a in angles])
    projections *= np.float32(width / 2)
    truth = np.stack([density_slice(shape, r)[:width, :width] for r in range(first, rows.stop)])
    return angles, np.ascontiguousarray(projections.transpose(1, 0, 2)), truth


def _rmse(slices: np.ndarray, truth: np.ndarray) -> float:
    width = truth.shape[-1]
    y, x = np.mgrid[:width, :width] - width // 2
    disc = x**2 + y**2 <= (width // 2 - EDGE_MARGIN_PX) ** 2
    return float(np.sqrt(np.mean((slices[..., disc] - truth[..., disc]) ** 2)))


def _measure(reconstruct: Callable[[], np.ndarray], truth: np.ndarray) -> dict[str, Any]:
    """Figures of ``reconstruct`` (which returns the first n slices): slices/s, RMSE against
    the phantom, and the process's CPU seconds per wall second (the cores it kept busy)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    slices = reconstruct()
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {"slices_per_s": len(slices) / wall, "rmse": _rmse(slices, truth[: len(slices)]),
            "slices": len(slices), "cores_busy": cpu / wall}


def _astra(angles: np.ndarray, sinograms: np.ndarray, truth: np.ndarray, filter_name: str,
           n_slices: int) -> dict[str, Any]:
    try:
        import astra  # pyright: ignore[reportMissingImports]
    except ImportError as exc:
        return {"skipped": f"astra-toolbox is not importable ({exc}); pip install astra-toolbox"}
    width = truth.shape[-1]
    half = width / 2
    volume = astra.create_vol_geom(width, width, -half - 0.5, half - 0.5, -half + 0.5,
                                   half + 0.5)
    geometry = astra.create_proj_geom("parallel", 1.0, width + 1, np.radians(angles))
    projector = astra.create_projector("linear", geometry, volume)

    def reconstruct(s: int) -> np.ndarray:
        sinogram = astra.data2d.create("-sino", geometry, sinograms[s])
        result = astra.data2d.create("-vol", volume)
        config = astra.astra_dict("FBP")
        config.update(ProjectorId=projector, ProjectionDataId=sinogram,
                      ReconstructionDataId=result, FilterType=filter_name)
        algorithm = astra.algorithm.create(config)
        try:
            astra.algorithm.run(algorithm)
            return astra.data2d.get(result)
        finally:
            astra.algorithm.delete(algorithm)
            astra.data2d.delete([sinogram, result])

    try:
        return _measure(lambda: np.stack([reconstruct(s) for s in range(n_slices)]), truth)
    finally:
        astra.projector.delete(projector)


def run(width: int = 1536, n_angles: int = 1500, n_slices: int = 4, reference_slices: int = 1,
        filter_name: str = "ram-lak") -> dict[str, Any]:
    """Measure FBP on ``n_slices`` slices, iradon and ASTRA on ``reference_slices`` of them.

    Returns the sizes, the date, numba's ``threads`` and, per method (``pimega``,
    ``iradon``, ``astra``), its ``slices_per_s``, ``rmse`` against the phantom, the
    ``slices`` it made and the ``cores_busy`` — or ``skipped`` with the reason — plus
    ``speedup_vs_iradon`` and ``speedup_vs_astra`` (None when ASTRA was skipped).
    """
    try:
        from skimage.transform import iradon
    except ImportError as exc:
        raise ConfigError(f"the reconstruction bench compares with scikit-image's iradon: "
                          f"{exc}; pip install scikit-image") from None

    check_filter(filter_name)
    if min(n_slices, reference_slices) < 1 or width < 8 or n_angles < 2:
        raise ConfigError(f"the bench needs ≥ 1 slice of each, width ≥ 8 and ≥ 2 angles; got "
                          f"{n_slices}, {reference_slices}, {width}, {n_angles}")
    angles, sinograms, truth = phantom_band(width, n_angles, n_slices)
    detector = np.ascontiguousarray(sinograms[..., :width])
    centre = width // 2
    fbp(detector[:1, :2], angles[:2], centre, filter_name)  # compile before the clock runs
    pimega = _measure(lambda: fbp(detector, angles, centre, filter_name), truth)

    skimage_filter = "ramp" if filter_name == "ram-lak" else filter_name
    references = min(reference_slices, n_slices)
    skimage = _measure(lambda: np.stack([iradon(
        detector[s].T, angles, output_size=width, filter_name=skimage_filter,
        interpolation="linear", circle=True) for s in range(references)]), truth)
    astra = _astra(angles, sinograms, truth, filter_name, references)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "width": width, "n_angles": n_angles, "filter": filter_name,
        "threads": numba.get_num_threads(),
        "methods": {"pimega": pimega, "iradon": skimage, "astra": astra},
        "speedup_vs_iradon": pimega["slices_per_s"] / skimage["slices_per_s"],
        "speedup_vs_astra": (pimega["slices_per_s"] / astra["slices_per_s"]
                             if "slices_per_s" in astra else None),
    }
