"""``pimega bench --backend gpu``: the GPU pipeline against the host→device bandwidth of one run.

Figures, as ``pimega bench`` prints them (figure, value, unit, baseline, ratio):

- ``gpu_h2d_pinned_GBps``: pinned host → device copies, against pageable ones of the same bytes.
- ``gpu_pipeline_<layout>_<depth>bit_fps``: frames/s of the whole conveyor (pinned payloads →
  device → decode + assemble → pinned images, with the whole image's stats and a preview of
  every batch's last frame) for one module at 12 and 24 bit, a 2×2 array at 12 and 24 bit,
  and one module at 12 bit with dark / flat / mask corrections (``_corrected``, float32
  images). The baseline is the frames/s that the measured pinned bandwidth carries in, so the
  ratio is the pipeline's input bandwidth over the host→device bandwidth.

Without a device, and under numba-cuda's simulator, :func:`run` returns
``{"ran": False, "reason": ...}``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from pimega.core.errors import ConfigError
from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.pipeline.correct import Corrections
from pimega.pipeline.gpu.backend import SLOTS, GpuBackend
from pimega.pipeline.stats import RoiSettings

PREVIEW_FACTOR = 4


def _figure(name: str, value: float, unit: str, baseline: float) -> dict[str, Any]:
    return {"figure": name, "value": value, "unit": unit, "baseline": baseline,
            "ratio": value / baseline}


def copy_seconds(backend: GpuBackend, host: np.ndarray, repeats: int) -> float:
    """Best wall time of copying ``host`` into device memory (one stream, then synchronised)."""
    device = backend.device
    stream = device.stream()
    target = device.empty(host.nbytes, np.uint8, stream)
    source = host.reshape(-1).view(np.uint8)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        device.copy_h2d(target, source, stream)
        device.synchronize(stream)
        best = min(best, time.perf_counter() - t0)
    return best


def pipeline_fps(backend: GpuBackend, layout: ArrayLayout, depth: int, n_frames: int,
                 corrections: Corrections) -> float:
    """Frames/s of ``n_frames`` random frames through a processor, batches back to back.

    Payloads and images rotate through ``SLOTS · batch_size`` pinned frames: as many as
    can be in flight. One round first, untimed, compiles the kernels.
    """
    with backend.processor(layout, depth, corrections) as processor:
        ring = backend.batch_size * SLOTS
        payloads = backend.host_empty((ring, layout.n_modules, processor.payload_size),
                                      np.uint8)
        payloads[...] = np.random.default_rng(0).integers(0, 256, payloads.shape, np.uint8)
        images = backend.host_empty((ring, *layout.shape), processor.out_dtype)
        roi = RoiSettings()

        def batches(count: int) -> None:
            tickets = []
            for first in range(0, count, backend.batch_size):
                frames = [(list(payloads[i % ring]), images[i % ring])
                          for i in range(first, min(first + backend.batch_size, count))]
                tickets.append(processor.submit(frames, roi, PREVIEW_FACTOR))
            for ticket in tickets:
                processor.collect(ticket)

        batches(ring)
        t0 = time.perf_counter()
        batches(n_frames)
        return n_frames / (time.perf_counter() - t0)


def run(n_frames: int = 400, batch_size: int = 4, repeats: int = 5) -> dict[str, Any]:
    """The figures of the module docstring, the device and its status after the runs."""
    try:
        backend = GpuBackend(batch_size=batch_size)
    except ConfigError as exc:
        return {"backend": "gpu", "ran": False, "reason": str(exc)}
    if backend.device.simulated:
        return {"backend": "gpu", "ran": False,
                "reason": "numba-cuda's simulator runs here: it measures no device"}
    try:
        pinned = backend.host_empty(256 * 2**20, np.uint8)
        pinned[...] = 1
        pinned_s = copy_seconds(backend, pinned, repeats)
        pageable_s = copy_seconds(backend, np.ones_like(pinned), repeats)
        h2d_gb_s = pinned.nbytes / pinned_s / 1e9
        figures = [_figure("gpu_h2d_pinned_GBps", h2d_gb_s, "GB/s",
                           pinned.nbytes / pageable_s / 1e9)]
        module = ArrayLayout(ModuleGeometry())
        array = ArrayLayout(ModuleGeometry(), 2, 2)
        cases = [("module", module, 12, Corrections()), ("module", module, 24, Corrections()),
                 ("2x2", array, 12, Corrections()), ("2x2", array, 24, Corrections())]
        rng = np.random.default_rng(1)
        dark = rng.integers(0, 4, module.shape).astype(np.uint16)
        flat = rng.integers(100, 200, module.shape).astype(np.uint16)
        cases.append(("module_corrected", module, 12,
                      Corrections(dark=dark, flat=flat,
                                  bad_pixel_mask=rng.random(module.shape) < 1e-3)))
        for name, layout, depth, corrections in cases:
            fps = pipeline_fps(backend, layout, depth, n_frames, corrections)
            frame_bytes = layout.n_modules * layout.module.payload_size(depth)
            figures.append(_figure(f"gpu_pipeline_{name}_{depth}bit_fps", fps, "frames/s",
                                   h2d_gb_s * 1e9 / frame_bytes))
        return {"backend": "gpu", "ran": True, "device": backend.device_name,
                "batch_size": batch_size, "frames": n_frames, "h2d_gb_s": h2d_gb_s,
                "figures": figures, "status": asdict(backend.status())}
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m pimega.cli.bench_gpu [--json]``: exit status 1 when it could not run."""
    parser = argparse.ArgumentParser(prog="pimega bench --backend gpu", description=__doc__)
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--batch", type=int, default=4, help="frames a batch")
    args = parser.parse_args(argv)
    result = run(args.frames, args.batch)
    if args.json:
        print(json.dumps(result), flush=True)
    elif not result["ran"]:
        print(f"GPU bench did not run: {result['reason']}")
    else:
        for f in result["figures"]:
            print(f"{f['figure']:36s} {f['value']:10.3f} {f['unit']:9s} "
                  f"baseline {f['baseline']:10.3f}  ratio {f['ratio']:6.2f}")
    return 0 if result["ran"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
