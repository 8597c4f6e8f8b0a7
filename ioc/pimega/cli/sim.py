"""``pimega-sim``: send simulated π-MEGA frames (wire format v1) to a TCP receiver."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pimega import __version__
from pimega.cli.arguments import finite
from pimega.core.errors import ConfigError, PimegaError
from pimega.core.geometry import BIT_DEPTHS, ArrayLayout, ModuleGeometry
from pimega.ingest.rdma import PyverbsVerbs, RdmaLink
from pimega.sim.patterns import COUNTER_PERIOD
from pimega.sim.rdma_sender import RdmaSimulator
from pimega.sim.sender import PATTERNS, PhantomParams, SimConfig, Simulator


def _chips(text: str) -> tuple[int, int]:
    """``6x6`` → (chips across, chips down)."""
    try:
        across, down = (int(part) for part in text.lower().split("x"))
    except ValueError:
        message = f"expected ACROSSxDOWN such as 6x6, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if across < 1 or down < 1 or max(across, down) > 255:
        raise argparse.ArgumentTypeError(f"chips across and down must be 1…255, got {text!r}")
    return across, down


def _ports(text: str) -> list[int]:
    """``5000`` or ``5000,5001,5002,5003`` (one per module)."""
    try:
        ports = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PORT or PORT,PORT,…, got {text!r}") from None
    if not all(0 < port < 65536 for port in ports):
        raise argparse.ArgumentTypeError(f"ports must be 1…65535, got {text!r}")
    return ports


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pimega-sim",
        description="Simulated π-MEGA detector: sends wire-format v1 frames over TCP, "
        "one connection per module, to a receiver that listens on HOST:PORT.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    net = parser.add_argument_group("receiver")
    net.add_argument("--host", default="127.0.0.1", help="receiver address (default %(default)s)")
    net.add_argument("--port", type=_ports, required=True,
                     help="receiver port, or one port per module separated by commas")
    net.add_argument("--connect-timeout", type=finite(0, True), default=10.0,
                     help="seconds to wait for the receiver to listen (default %(default)s)")
    net.add_argument("--transport", choices=["tcp", "rdma"], default="tcp",
                     help="rdma: every module on one RDMA connection to HOST:PORT (the "
                          "receiver's RDMA interface; needs pyverbs and an RDMA device)")
    det = parser.add_argument_group("detector")
    det.add_argument("--modules", type=_positive, default=1,
                     help="modules: 1, 4 (2×2), or N in one row (default %(default)s)")
    det.add_argument("--module-id", type=int, default=0, metavar="N",
                     help="the array module the (first) simulated module stands for: its "
                     "counter pattern is that module's (default %(default)s)")
    det.add_argument("--chips", type=_chips, default=(6, 6), metavar="XxY",
                     help="chips across x down per module (default 6x6)")
    det.add_argument("--chip-size", type=_positive, default=256,
                     help="pixels per chip side (default %(default)s)")
    det.add_argument("--depth", type=int, choices=BIT_DEPTHS, default=12,
                     help="counter depth in bits (default %(default)s)")
    run = parser.add_argument_group("acquisition")
    run.add_argument("--frames", type=int, default=100, help="frames (default %(default)s)")
    run.add_argument("--rate", type=finite(0, True), default=0.0,
                     help="frames per second, 0 = as fast as possible (default %(default)s)")
    run.add_argument("--pattern", choices=PATTERNS, default="counter",
                     help="counter (bit-exact check) or phantom (tomography scan)")
    run.add_argument("--crc", action="store_true", help="add a CRC-32 of each payload")
    run.add_argument("--period", type=_positive, default=COUNTER_PERIOD,
                     help="frames in the counter cycle (default %(default)s)")
    scan = parser.add_argument_group("phantom scan")
    defaults = PhantomParams()
    scan.add_argument("--darks", type=int, default=defaults.n_darks)
    scan.add_argument("--flats", type=int, default=defaults.n_flats)
    scan.add_argument("--flat-level", type=float, default=defaults.flat_level,
                      help="mean counts of a flat (scaled down to fit the depth)")
    scan.add_argument("--dark-level", type=float, default=defaults.dark_level)
    scan.add_argument("--angle-range", type=float, default=defaults.angle_range,
                      help="degrees covered by the projections")
    scan.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return parser


def _config(args: argparse.Namespace) -> SimConfig:
    across, down = args.chips
    module = ModuleGeometry(chips_x=across, chips_y=down, chip_size=args.chip_size)
    phantom = PhantomParams(
        n_darks=args.darks, n_flats=args.flats, flat_level=args.flat_level,
        dark_level=args.dark_level, angle_range=args.angle_range, seed=args.seed,
    )
    return SimConfig(
        layout=ArrayLayout.square(args.modules, module), bit_depth=args.depth,
        n_frames=args.frames, frame_rate_hz=args.rate, pattern=args.pattern,
        with_crc=args.crc, period=args.period, phantom=phantom, first_module=args.module_id,
    )


def summary(sim: Simulator) -> str:
    """One line: frames, bytes, seconds, achieved frame rate and throughput."""
    frames = min(sim.frames_sent, default=0)
    total_bytes = sum(sim.bytes_sent)
    seconds = sim.elapsed_s
    fps = frames / seconds if seconds else 0.0
    gbit_s = total_bytes * 8 / seconds / 1e9 if seconds else 0.0
    return (
        f"pimega-sim: {frames} frames x {len(sim.frames_sent)} modules, {total_bytes} bytes "
        f"in {seconds:.3f} s: {fps:.1f} fps, {gbit_s:.2f} Gbit/s"
    )


def wait_for_run(sim: Simulator | RdmaSimulator) -> bool:
    """Wait until the run ends; True when Ctrl-C cut it short (it is stopped then)."""
    try:
        while not sim.wait(0.5):
            pass
    except KeyboardInterrupt:
        sim.stop()
        return True
    return False


def _send_rdma(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The simulator as an RDMA sender: every module on one connection to HOST:PORT."""
    if len(args.port) != 1:
        parser.error("--transport rdma carries every module on one connection: give one port")
    try:
        config = _config(args)
        verbs = PyverbsVerbs()
        sim = RdmaSimulator(lambda modules: RdmaLink.connect(
            verbs, args.host, args.port[0], modules, timeout=args.connect_timeout), config)
        sim.connect()
    except ConfigError as exc:
        parser.error(str(exc))
    except PimegaError as exc:
        print(f"pimega-sim: error: {exc}", file=sys.stderr)
        return 1
    sim.acquire()
    interrupted = wait_for_run(sim)
    sim.close()
    print(f"pimega-sim: {sim.frames_sent} frames x {config.layout.n_modules} modules over RDMA, "
          f"{sim.bytes_sent} bytes in {sim.elapsed_s:.3f} s, {sim.overruns} overruns")
    if sim.error:
        print(f"pimega-sim: {sim.error}", file=sys.stderr)
    return 130 if interrupted else 1 if sim.error else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.transport == "rdma":
        return _send_rdma(args, parser)
    try:
        sim = Simulator(args.host, args.port if len(args.port) > 1 else args.port[0],
                        _config(args))
    except ConfigError as exc:
        parser.error(str(exc))
    with sim:
        try:
            sim.connect(args.connect_timeout)
        except OSError as exc:
            print(f"pimega-sim: error: {exc}", file=sys.stderr)
            return 1
        sim.acquire()
        interrupted = wait_for_run(sim)
        print(summary(sim))
    failures = [f"module {m}: {why}" for m, why in enumerate(sim.errors) if why]
    for failure in failures:
        print(f"pimega-sim: {failure}", file=sys.stderr)
    if interrupted:
        print("pimega-sim: interrupted", file=sys.stderr)
        return 130
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
