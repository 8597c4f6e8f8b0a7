"""``pimega``: the back-end's tools — ``bench`` (figures) and ``acquire`` (sim → engine → file)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pimega import __version__
from pimega.cli import bench, recon
from pimega.core.errors import PimegaError
from pimega.core.geometry import ArrayLayout, ModuleGeometry
from pimega.runtime.settings import CaptureSettings
from pimega.screens import commands as generated_files
from pimega.sim.sender import SimConfig

from .nodes import replay_node, simulated_node


def parse_chips(text: str) -> tuple[int, int]:
    """``"6x6"`` → (6, 6): chips across × down."""
    try:
        across, down = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"chips must look like 6x6, got {text!r}") from None
    return across, down


def add_geometry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modules", type=int, choices=[1, 2, 4], default=1,
                        help="modules in the array: 1, 2 (1x2) or 4 (2x2)")
    parser.add_argument("--chips", type=parse_chips, default=(6, 6),
                        help="chips across x down per module (default 6x6)")
    parser.add_argument("--chip-size", type=int, default=256, help="pixels per chip side")


def layout_from(args: argparse.Namespace) -> ArrayLayout:
    across, down = args.chips
    return ArrayLayout.square(args.modules, ModuleGeometry(across, down, args.chip_size))


def acquire(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pimega acquire",
        description="Run simulator → TCP → pipeline → HDF5 once, without EPICS, and report.")
    add_geometry_arguments(parser)
    parser.add_argument("--depth", type=int, choices=[1, 6, 12, 24], default=12)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--period", type=float, default=0.001, help="acquire period, s")
    parser.add_argument("--pattern", choices=["counter", "phantom"], default="counter")
    parser.add_argument("--compression", choices=["none", "bslz4"], default="none")
    parser.add_argument("--output", type=Path, default=Path("pimega_000001.h5"))
    parser.add_argument("--replay", type=Path, metavar="FILE",
                        help="frames from a file (NeXus written by pimega, or raw wire frames) "
                             "instead of the simulator")
    args = parser.parse_args(argv)
    layout = layout_from(args)
    node = (replay_node(layout, args.replay) if args.replay else simulated_node(
        layout, SimConfig(layout=layout, pattern=args.pattern)))
    with node as engine:
        engine.configure(bit_depth=args.depth, n_images=args.frames,
                         acquire_time_s=args.period, acquire_period_s=args.period)
        engine.start_capture(CaptureSettings(str(args.output), compression=args.compression))
        engine.start()
        engine.wait()
        engine.stop_capture()
        engine.wait_capture()
        status = engine.status()
    print(json.dumps({
        "file": str(args.output), "state": str(status.state), "message": status.message,
        "frames_processed": status.frames_processed, "frames_written": status.frames_written,
        "frames_dropped": status.frames_dropped, "corrupt_frames": status.corrupt_frames,
        "capture_error": status.capture.error,
    }))
    return 0 if status.frames_written == args.frames else 1


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "acquire": (acquire, "simulator or replay -> pipeline -> HDF5 once, without EPICS"),
    "recon": (recon.main, "reconstruct slices or a volume from a scan file"),
    "bench": (bench.run, "the performance figures, each against a baseline of the same run"),
    "opi": (generated_files.opi, "write the Phoebus screens generated from the PV groups"),
    "db": (generated_files.db, "write db/: the PV list and autosave request files"),
}
USAGE = "usage: pimega COMMAND [options]   (pimega COMMAND --help for its options)\n\n" + \
    "\n".join(f"  {name:<8} {text}" for name, (_, text) in COMMANDS.items()) + \
    "\n\nAlso: pimega-ioc (the IOC), pimega-sim (the detector simulator); --version."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if argv[:1] in (["--version"], ["-V"]):
        print(f"pimega {__version__}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        help_wanted = argv[:1] in (["-h"], ["--help"])
        print(USAGE, file=sys.stdout if help_wanted else sys.stderr)
        return 0 if help_wanted else 2
    try:
        return COMMANDS[argv[0]][0](argv[1:])
    except PimegaError as exc:
        print(f"pimega {argv[0]}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
